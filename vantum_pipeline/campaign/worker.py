"""Calls on many machines: the worker's side (``vantum worker --redis URL``).

A worker takes call jobs from the arq queue on Redis and places each call with
a :class:`~vantum_pipeline.campaign.dispatch.Dialer` (on the production path,
a ``PhoneDialer`` that serves Twilio's webhooks and media streams at the
worker's own public URL). For each job, in this order:

1. decode it; bad data (a poison job) fails that job alone with a clear error,
   reported to the coordinator as an ``error`` attempt;
2. look at the attempt's dial marker: ``done`` → nothing to do (the job ran
   before); ``dialing``/``placed`` by a worker that is still alive → the job
   waits (deferred) for that worker to finish it; by a worker that died →
   reconcile through Twilio's call status (never redial a prospect who is still
   on the line or whose call completed; a call of the prospect's earlier
   attempt is never taken for this one) and report that;
3. take the cluster-wide leases (concurrent calls, each service's connection
   limit, calls per second); without them the job goes back to the queue,
   deferred, and does not count as failed;
4. check the cluster-wide do-not-call set, mark the attempt ``dialing``, place
   the call, keep the leases renewed while it lasts, and put ``placed`` and
   ``finished`` on the campaign's result stream (``finished`` and the ``done``
   marker in one transaction). A dial that failed without Twilio's answer is
   looked up among Twilio's calls (:class:`~.twilio_rest.ConfirmingDialer`);
   when Twilio cannot be asked, the marker stays open and the job runs again.

The dial marker is the attempt's lock: a job can run twice at once (its
in-progress key lapsed while its worker was stalled, and arq handed it out
again), so step 4 takes the marker in one Lua script, and only if it is still
as step 2 read it (its ``claim``); a run that finds it taken since dials
nobody and leaves the job to the queue. A worker never runs one job twice at
once itself.

A worker renews, every ``lease_ttl / 3`` seconds, its leases, its health
key (``vantum:worker:<id>``, which says it is alive) and arq's in-progress key
of each job it runs. Killed with SIGKILL, it renews nothing: within
``lease_ttl`` seconds its places come free, it counts as dead, and its jobs'
in-progress keys lapse, so another worker runs each job again and step 2
reconciles it. Redis unreachable (a restart): connections reconnect, and the
writes that matter are retried under the shared retry policy
(:mod:`.redis_link`); a job that cannot reach Redis before it dials goes back
to the queue.

Built on arq 0.28's ``Worker``: besides its public options, this module sets
its in-progress timeout and, when arq's poll loop died on a Redis error, gives
back the job places the loop had taken for jobs it never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from loguru import logger

from vantum_pipeline.campaign.config import CampaignConfig, parse_campaign
from vantum_pipeline.campaign.dispatch import CallJob, Dialer, dialer_overloaded
from vantum_pipeline.campaign.jobs import BadJob, Keys, decode_job, encode_event, encode_job, encode_record
from vantum_pipeline.campaign.leases import ClusterLeases, Lease
from vantum_pipeline.campaign.redis_link import is_connection_error, redis_settings, with_redis
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.campaign.twilio_rest import (
    ConfirmingDialer,
    UnconfirmedCall,
    ask_twilio,
    follow_to_end,
    reconciled_record,
)
from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.telephony.numbers import mask_number, validate_e164

__all__ = ["CampaignWorker", "DialerFactory", "RedisDoNotCall"]

#: Builds the dialer of one campaign: ``factory(config, dnc)`` → ``async with`` dialer.
DialerFactory = Callable[[CampaignConfig, "RedisDoNotCall"], AbstractAsyncContextManager[Dialer]]

#: A retry because the cluster is full is not a failure: the job may wait a long time.
_MAX_TRIES = 1_000_000
#: Seconds a job waits on the queue when the worker that took it is overloaded.
OVERLOAD_DEFER = 2.0
_MARKER_TTL = 7 * 24 * 3600
#: Seconds after a dial marker within which its worker may still be placing the call (REST retries included).
_PLACING_WINDOW = 60.0

#: Take the attempt's dial marker for one run of its job, if it is still as that run read it.
#: KEYS: the marker; ARGV: the claim read ('' for none), this run's claim, worker, at, ttl (s).
#: 1: this run may dial (or already had the claim: a retried write); 0: another run took it since.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'state') == 'done' then return 0 end
local claim = redis.call('HGET', KEYS[1], 'claim') or ''
if claim == ARGV[2] then return 1 end
if claim ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'dialing', 'worker', ARGV[3], 'at', ARGV[4], 'claim', ARGV[2])
redis.call('HDEL', KEYS[1], 'sid')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
"""


class RedisDoNotCall:
    """The cluster-wide DNC set, as the ``DoNotCall`` protocol a call's opt-out uses.

    ``add`` is synchronous (the protocol's shape): it queues the write, which
    a task of the worker flushes at once, to the set every worker checks and to
    the coordinator's stream (its store keeps the list).
    """

    def __init__(self, worker: CampaignWorker, campaign_id: str) -> None:
        self.worker = worker
        self.campaign_id = campaign_id
        self.local: set[str] = set()

    def add(self, number: str, *, source: str = "call") -> None:
        normalized = validate_e164(number)
        self.local.add(normalized)
        self.worker._dnc_writes.put_nowait((self.campaign_id, normalized, source))

    def blocks(self, number: str) -> bool:
        return number in self.local


class CampaignWorker:
    """One worker process's job runner; ``await worker.run()`` until cancelled or ``stop()``."""

    def __init__(
        self,
        redis_url: str,
        dialer_factory: DialerFactory,
        *,
        limits: Mapping[str, int] | None = None,
        calls_per_second: float = 1.0,
        lease_ttl: float = 15.0,
        max_jobs: int = 10,
        job_timeout: float = 900.0,
        queue_name: str = Keys.QUEUE,
        worker_id: str | None = None,
        reconcile_timeout: float = 120.0,
        poll_delay: float = 0.2,
    ) -> None:
        if max_jobs < 1:
            raise ConfigurationError(f"max_jobs must be >= 1, got {max_jobs}")
        self.redis_url = redis_url
        self.dialer_factory = dialer_factory
        self.limits = dict(limits if limits is not None else {"calls": 100, "deepgram": 50})
        self.calls_per_second = calls_per_second
        self.lease_ttl = lease_ttl
        self.max_jobs = max_jobs
        self.job_timeout = job_timeout
        self.queue_name = queue_name
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.reconcile_timeout = reconcile_timeout
        self.poll_delay = poll_delay
        self._redis: Any = None
        self._leases: ClusterLeases | None = None
        self._claim: Any = None
        self._dialers: dict[str, tuple[AbstractAsyncContextManager[Dialer], Dialer, RedisDoNotCall]] = {}
        self._dialer_lock = asyncio.Lock()
        self._dnc_writes: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(maxsize=10_000)
        self._arq: Any = None
        self._active: set[str] = set()
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self.redis_ok = False
        #: Counters for the health endpoint.
        self.started_at = time.time()
        self.calls = 0
        self.running = 0
        self.refusals = 0
        #: Jobs put back on the queue because this worker was overloaded when it took them.
        self.overloaded_deferrals = 0
        self.poison = 0
        self.reconciled = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Take jobs until cancelled or :meth:`stop`; the calls in progress then finish (bounded)."""
        from arq.connections import create_pool
        from arq.worker import Worker, func

        self._redis = await create_pool(redis_settings(self.redis_url))
        self._claim = self._redis.register_script(_CLAIM)
        self._leases = ClusterLeases(
            self._redis,
            namespace="cluster",
            limits=self.limits,
            calls_per_second=self.calls_per_second,
            ttl=self.lease_ttl,
        )
        self._arq = Worker(
            functions=[func(self.place_call, name="place_call", max_tries=_MAX_TRIES, timeout=self.job_timeout)],
            redis_pool=self._redis,
            queue_name=self.queue_name,
            max_jobs=self.max_jobs,
            handle_signals=False,
            poll_delay=self.poll_delay,
            keep_result=24 * 3600,
            health_check_interval=10,
            health_check_key=f"{self.queue_name}:health:{self.worker_id}",
        )
        loop = asyncio.get_running_loop()
        helpers = [
            loop.create_task(self._flush_dnc(), name="worker-dnc"),
            loop.create_task(self._keep_alive(), name="worker-alive"),
        ]
        logger.info("worker {} taking jobs from {} (max {} at once)", self.worker_id, self.queue_name, self.max_jobs)
        # arq keeps a job "in progress" for its whole timeout; here only while this worker renews
        # it (_keep_alive), so the job of a worker that died runs again within a few lease ttls.
        self._arq.in_progress_timeout_s = max(3 * self.lease_ttl, 5.0)
        try:
            await self._poll()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.delete(Keys.worker(self.worker_id)), timeout=2.0)
            await self._arq.close()
            for campaign_id in list(self._dialers):
                await self._close_dialer(campaign_id)
            await self._redis.aclose()

    async def _poll(self) -> None:
        """arq's poll loop, started again after Redis went away (arq's own loop ends on the first error)."""
        from redis.exceptions import RedisError

        failures = 0
        while True:
            loop = asyncio.get_running_loop()
            main = loop.create_task(self._arq.main(), name="worker-poll")
            self._main = main
            started = loop.time()
            try:
                await main
                return
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not self._stopping or (current is not None and current.cancelling()):
                    raise
                running = [task for task in self._arq.tasks.values() if not task.done()]
                if running:
                    logger.info("worker {}: waiting for {} job(s) in progress", self.worker_id, len(running))
                    await asyncio.wait(running, timeout=self.job_timeout)
                return
            except (RedisError, OSError) as exc:
                failures = 1 if loop.time() - started > 30.0 else failures + 1
                self.redis_ok = False
                delay = min(0.25 * 2**failures, 5.0)
                logger.warning(
                    "worker {}: Redis went away ({}: {}); polling again in {:.1f}s",
                    self.worker_id,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self._repair_arq()
                await asyncio.sleep(delay)
                if failures > 1000:
                    raise

    def _repair_arq(self) -> None:
        """Give back the job places arq took for jobs it never started (its poll died in between)."""
        running = sum(1 for task in self._arq.tasks.values() if not task.done())
        while self._arq.job_counter > running:
            self._arq.job_counter -= 1
            with contextlib.suppress(ValueError):
                self._arq.sem.release()

    def stop(self) -> None:
        """Take no new job; :meth:`run` returns once the calls in progress ended (bounded by
        the job timeout). Cancelling ``run()`` instead abandons them (their jobs run again elsewhere)."""
        self._stopping = True
        if self._main is not None:
            self._main.cancel()

    def health(self) -> dict[str, Any]:
        """What ``/health`` answers, and what the worker's Redis key holds (``vantum campaign status`` sums it)."""
        return {
            "worker": self.worker_id,
            "up_s": round(time.time() - self.started_at, 1),
            "calls": self.calls,
            "running": self.running,
            "jobs": len(self._active),
            "max_jobs": self.max_jobs,
            "lease_refusals": self.refusals,
            "overloaded_deferrals": self.overloaded_deferrals,
            "poison_jobs": self.poison,
            "reconciled": self.reconciled,
            "redis_ok": self.redis_ok,
            "limits": self.limits,
            "calls_per_second": self.calls_per_second,
        }

    async def _keep_alive(self) -> None:
        """Every ``lease_ttl / 3`` s: say this worker is alive, and keep its jobs' in-progress keys."""
        interval = self.lease_ttl / 3
        ttl_ms = int(self.lease_ttl * 1000)
        while True:
            try:
                async with asyncio.timeout(interval * 2):
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.set(Keys.worker(self.worker_id), json.dumps(self.health()), px=ttl_ms)
                        for job_id in self._active:  # set, not renewed: a key that lapsed in a stall is back
                            pipe.set(Keys.IN_PROGRESS + job_id, b"1", px=ttl_ms)
                        await pipe.execute()
                self.redis_ok = True
            except Exception as exc:
                if self.redis_ok:
                    logger.warning("worker {}: Redis unreachable ({}); retrying", self.worker_id, type(exc).__name__)
                self.redis_ok = False
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ the job

    async def place_call(self, ctx: dict[str, Any], job_text: str) -> str:
        """arq job ``place_call``: see the module docstring. Returns the outcome."""
        from arq.worker import Retry

        job_id = str(ctx.get("job_id", ""))
        try:
            job = decode_job(job_text)
            if job.job_id != job_id:
                raise BadJob(f"job id {job_id!r} does not match its attempt {job.job_id!r}")
        except BadJob as exc:
            await self._refuse(job_id, exc)
            raise
        if job_id in self._active:
            # Its in-progress key lapsed while this worker was stalled, and arq handed it out again:
            # the run in progress here goes on; this one leaves it (and the queue) alone.
            logger.warning("job {}: already running on this worker; this second run waits", job_id)
            raise Retry(defer=self.lease_ttl)
        self._active.add(job_id)
        try:
            try:
                # arq keeps a job in progress for its whole timeout; this worker's renewals keep it
                # only while the worker lives, so a dead worker's job is run again within lease_ttl.
                await self._redis.pexpire(Keys.IN_PROGRESS + job_id, int(self.lease_ttl * 1000))
                prepared = await self._prepare(job)
            except BadJob as exc:
                await self._refuse(job_id, exc)
                raise
            except ServiceError as exc:  # Twilio cannot say what became of the last worker's call
                logger.warning("job {}: reconciliation failed ({}); back to the queue, not dialled", job_id, exc)
                raise Retry(defer=30.0) from None
            except Exception as exc:
                if is_connection_error(exc):
                    logger.warning("job {}: Redis unreachable before the dial ({}); back to the queue", job_id, exc)
                    raise Retry(defer=1.0) from None
                # Our bug, not the job's: logged, and reported so that the coordinator is not left waiting.
                logger.opt(exception=exc).error("worker {}: job {} failed before its dial", self.worker_id, job_id)
                note = f"worker error before the dial: {type(exc).__name__}: {exc}"
                record = AttemptRecord("error", notes=note[:300])
                await self._report_finished(Keys(job.attempt.campaign_id), job_id, encode_job(job), record)
                raise
            if isinstance(prepared, str):
                return prepared
            if not isinstance(prepared, tuple):
                raise Retry(defer=float(prepared))
            lease, dialer, dnc, claim = prepared
            keys = Keys(job.attempt.campaign_id)
            try:
                async with self._leases_of().keep(lease):
                    dialled = await self._dial(job, keys, dialer, dnc, claim)
            except UnconfirmedCall as exc:
                # The marker stays dialing/placed, owned by nobody: the job's next run, on any
                # worker, asks Twilio again (_recover) instead of waiting for this live worker.
                logger.warning("job {}: {}; the job runs again to settle it", job_id, exc)
                with contextlib.suppress(Exception):
                    await self._redis.hset(keys.dial(job_id), "worker", "")
                raise Retry(defer=30.0) from None
            if dialled is None:  # another run of this job took its marker after this run read it
                raise Retry(defer=self.lease_ttl)
            await self._report_finished(keys, job_id, encode_job(job), dialled)
            return dialled.outcome
        finally:
            self._active.discard(job_id)

    def _leases_of(self) -> ClusterLeases:
        if self._leases is None:
            raise ConfigurationError("CampaignWorker.place_call runs under run() only")
        return self._leases

    async def _prepare(self, job: CallJob) -> str | float | tuple[Lease, Dialer, RedisDoNotCall, str]:
        """Before the dial: the outcome when the job is settled (str), the delay when it must wait
        (float), or the leases and dialer of a call to place now, with the marker's claim as read
        here (the dial takes the marker only if nobody claimed it since)."""
        job_id = job.job_id
        keys = Keys(job.attempt.campaign_id)
        marker = await self._redis.hgetall(keys.dial(job_id))
        state = marker.get(b"state", b"").decode()
        claim = marker.get(b"claim", b"").decode()
        if state == "done":
            logger.info("job {} ran before: its result is on the stream", job_id)
            return "done before"
        opened = await self._dialer(job.attempt.campaign_id)
        if opened is None:
            return self.lease_ttl
        dialer, dnc = opened
        if state in ("dialing", "placed"):
            owner = marker.get(b"worker", b"").decode()
            if owner and owner != self.worker_id and await self._redis.exists(Keys.worker(owner)):
                logger.info("job {}: worker {} is still on it; waiting", job_id, owner)
                return self.lease_ttl
            recovered = await self._recover(job, marker, dialer)
            if isinstance(recovered, float):
                return recovered
            if recovered is not None:
                if await self._reported_by_owner(keys, job_id):
                    return "done by its worker"
                self.reconciled += 1
                await self._report_finished(keys, job_id, encode_job(job), recovered)
                return recovered.outcome
        if dialer_overloaded(dialer):
            # Back to the queue, undialled: another worker, or this one once on time, takes it.
            self.overloaded_deferrals += 1
            logger.info("job {}: this worker is overloaded (its event loop runs late); back to the queue", job_id)
            return OVERLOAD_DEFER
        grant = await self._leases_of().acquire(job_id)
        if not isinstance(grant, Lease):
            self.refusals += 1
            with contextlib.suppress(Exception):
                await self._redis.hincrby(keys.metrics, "lease_refusals", 1)
            return max(0.05, min(grant.retry_after, 5.0))
        return grant, dialer, dnc, claim

    async def _refuse(self, job_id: str, exc: BadJob) -> None:
        """A poison job: logged, and reported to its coordinator as an ``error`` attempt."""
        self.poison += 1
        logger.error("worker {}: job {} refused: {}", self.worker_id, job_id, exc)
        campaign = job_id.split(":", 1)[0]
        if campaign:
            record = AttemptRecord("error", notes=f"bad job: {exc}"[:300])
            await self._report_finished(Keys(campaign), job_id, "", record)

    async def _dial(
        self, job: CallJob, keys: Keys, dialer: Dialer, dnc: RedisDoNotCall, read_claim: str
    ) -> AttemptRecord | None:
        """Place the call if this run still owns the attempt; None: another run of the job
        claimed its marker since this one read it (``read_claim``), and this run dials nobody."""
        job_id = job.job_id
        # A job can run twice at once: its in-progress key lapses while its worker is stalled
        # (load, a Redis restart) and another worker, or this one, takes it again. The marker
        # is the lock: taken atomically, and only if it is still as _prepare read it; taken
        # before the DNC check too, so that only the run that dials reports the attempt.
        claim = uuid.uuid4().hex
        args = [read_claim, claim, self.worker_id, repr(time.time()), _MARKER_TTL]
        claimed = await with_redis(  # never dial without the marker
            lambda: self._claim(keys=[keys.dial(job_id)], args=args), what="dial marker"
        )
        if not int(claimed):
            logger.warning("job {}: another run of it took the attempt after this one looked: not dialled", job_id)
            return None
        if await self._redis.sismember(Keys.DNC, job.number) or dnc.blocks(job.number):
            logger.info("job {}: {} is on the do-not-call list: not dialled", job_id, mask_number(job.number))
            return AttemptRecord(outcome="do_not_call_list", notes="on the do-not-call list: not dialled")
        job_text = encode_job(job)

        async def placed(sid: str) -> None:
            async def write() -> None:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hset(keys.dial(job_id), mapping={"state": "placed", "sid": sid})
                    pipe.xadd(keys.results, encode_event("placed", job_id, job_text, sid=sid), maxlen=100_000)
                    await pipe.execute()

            try:
                await with_redis(write, what="placed")
            except Exception as exc:  # the call goes on; the finished report carries the sid
                logger.warning("job {}: reporting call {} as placed failed: {}", job_id, sid, exc)

        self.calls += 1
        self.running += 1
        # A dial that failed without Twilio's answer is looked up among Twilio's calls at once.
        confirming = ConfirmingDialer(dialer, self._earlier_sids, timeout=self.reconcile_timeout)
        try:
            record = await confirming.call(job, placed)
        except UnconfirmedCall:
            raise
        except Exception as exc:  # one broken call never hurts another
            logger.opt(exception=exc).error("worker {}: call {} failed: {}", self.worker_id, job_id, exc)
            record = AttemptRecord(outcome="error", notes=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self.running -= 1
        return record

    async def _report_finished(self, keys: Keys, job_id: str, job_text: str, record: AttemptRecord) -> None:
        event = encode_event("finished", job_id, job_text, record=encode_record(record))

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(keys.results, event, maxlen=100_000)
                pipe.hset(keys.dial(job_id), mapping={"state": "done", "outcome": record.outcome})
                pipe.expire(keys.dial(job_id), _MARKER_TTL)
                await pipe.execute()

        # Lost only if Redis stays away past the policy: the marker then still says dialing/placed,
        # and the job's next run reconciles the call through Twilio.
        await with_redis(write, what="result")
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(keys.metrics, f"outcome:{record.outcome}", 1)
                pipe.hincrbyfloat(keys.metrics, "spend_usd", float(record.cost))
                pipe.set(Keys.worker(self.worker_id), json.dumps(self.health()), px=int(self.lease_ttl * 1000))
                await pipe.execute()
        except Exception as exc:  # counters only: the result itself is on the stream
            logger.warning("job {}: metrics not counted: {}", job_id, exc)

    async def _reported_by_owner(self, keys: Keys, job_id: str) -> bool:
        """Whether the worker that placed the call reports it after all, within a few lease ttls.

        A worker cut off from Redis for longer than its lease ttl (a slow restart) looks dead
        but may still run its call: its own result (the conversation's) beats a reconciled one.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3 * self.lease_ttl
        while loop.time() < deadline:
            if await self._redis.hget(keys.dial(job_id), "state") == b"done":
                logger.info("job {}: its worker reported the call itself", job_id)
                return True
            await asyncio.sleep(min(0.5, self.lease_ttl / 3))
        return False

    async def _recover(self, job: CallJob, marker: dict[bytes, bytes], dialer: Dialer) -> AttemptRecord | float | None:
        """The attempt's last worker died: settle it through Twilio. None: it was never placed
        (dial now); a float: too early to say (wait that long)."""
        job_id = job.job_id
        sid = marker.get(b"sid", b"").decode() or None
        if sid is None:
            at = float(marker.get(b"at", b"0") or 0)
            since = at - 60.0
            found = await ask_twilio(lambda: dialer.find_calls(job.number, since))
            # Calls of the prospect's earlier attempts may be in the window too: they are not this one.
            earlier = await self._earlier_sids(job)
            found = [call for call in found if call.sid not in earlier]
            if not found:
                if time.time() - at < _PLACING_WINDOW:
                    # A worker cut off from Redis may still be placing it (REST retries): not yet.
                    return _PLACING_WINDOW / 4
                logger.info("job {}: its last worker died before placing the call: dialling now", job_id)
                return None
            sid = found[-1].sid
        status = await follow_to_end(dialer, sid, timeout=self.reconcile_timeout)
        record = reconciled_record(sid, status, notes="reconciled after its worker was lost")
        logger.warning(
            "job {}: its worker died mid-call; Twilio says {} -> {} (not redialled by this attempt)",
            job_id,
            record.twilio_status,
            record.outcome,
        )
        return record

    async def _earlier_sids(self, job: CallJob) -> set[str]:
        keys = Keys(job.attempt.campaign_id)
        row = job.attempt
        sids: set[str] = set()
        for attempt in range(1, row.attempt):
            sid = await self._redis.hget(keys.dial(f"{row.campaign_id}:{row.prospect_id}:{attempt}"), "sid")
            if sid:
                sids.add(sid.decode())
        return sids

    # ------------------------------------------------------------------ per campaign

    async def _dialer(self, campaign_id: str) -> tuple[Dialer, RedisDoNotCall] | None:
        """The campaign's dialer, opened on first use. None: not now (another campaign's calls
        hold this worker's server, or the dialer could not open): the job waits in the queue.

        A worker serves one campaign at a time (its Twilio server has one port and one public
        URL): a job of another campaign waits until this worker's calls of the current one ended.
        """
        async with self._dialer_lock:
            if campaign_id in self._dialers:
                _, dialer, dnc = self._dialers[campaign_id]
                return dialer, dnc
            busy = {job_id.split(":", 1)[0] for job_id in self._active} & set(self._dialers)
            if busy:
                return None
            for other in list(self._dialers):
                await self._close_dialer(other)
            raw = await self._redis.get(Keys(campaign_id).config)
            if raw is None:
                raise BadJob(f"campaign {campaign_id!r} has no configuration in Redis (no coordinator started it)")
            try:
                data = json.loads(raw)
                config = parse_campaign(data["text"], Path(data.get("path", "campaign.toml")))
            except (ValueError, KeyError, TypeError, ConfigurationError) as exc:
                raise BadJob(f"campaign {campaign_id!r}: its configuration in Redis is not valid: {exc}") from None
            dnc = RedisDoNotCall(self, campaign_id)
            manager = self.dialer_factory(config, dnc)
            try:
                dialer = await manager.__aenter__()
            except ConfigurationError as exc:
                # This worker's setup, not the job's data: the job stays queued for a worker that can dial.
                logger.error("worker {}: cannot dial for campaign {}: {}", self.worker_id, campaign_id, exc)
                return None
            self._dialers[campaign_id] = (manager, dialer, dnc)
            return dialer, dnc

    async def _close_dialer(self, campaign_id: str) -> None:
        manager, _, _ = self._dialers.pop(campaign_id)
        try:
            await asyncio.wait_for(manager.__aexit__(None, None, None), timeout=10.0)
        except Exception as exc:
            logger.warning("worker {}: closing the dialer of campaign {} failed: {}", self.worker_id, campaign_id, exc)

    async def _flush_dnc(self) -> None:
        while True:
            campaign_id, number, source = await self._dnc_writes.get()
            event = encode_event("dnc", f"{campaign_id}:dnc", number=number, source=source)
            for attempt in range(10):
                try:
                    await self._redis.sadd(Keys.DNC, number)
                    await self._redis.xadd(Keys(campaign_id).results, event, maxlen=100_000)
                    break
                except Exception as exc:
                    logger.warning("worker {}: DNC write failed ({}); retrying", self.worker_id, exc)
                    await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
