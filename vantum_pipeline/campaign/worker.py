"""Calls on many machines: the worker's side (``vantum worker --redis URL``).

A worker takes call jobs from the arq queue on Redis and places each call with
a :class:`~vantum_pipeline.campaign.dispatch.Dialer` (on the production path,
a ``PhoneDialer`` that serves Twilio's webhooks and media streams at the
worker's own public URL). For each job, in this order:

1. decode it; bad data (a poison job) fails that job alone with a clear error,
   reported to the coordinator as an ``error`` attempt;
2. look at the attempt's dial marker: ``done`` → nothing to do (the job ran
   before); ``dialing``/``placed`` → the worker that ran it died mid-call:
   reconcile through Twilio's call status (never redial a prospect who is still
   on the line or whose call completed) and report that;
3. take the cluster-wide leases (concurrent calls, each service's connection
   limit, calls per second); without them the job goes back to the queue,
   deferred, and does not count as failed;
4. check the cluster-wide do-not-call set, mark the attempt ``dialing``, place
   the call, keep the leases renewed while it lasts, and put ``placed`` and
   ``finished`` on the campaign's result stream (``finished`` and the ``done``
   marker in one transaction).

A worker killed with SIGKILL leaves its leases to expire and its jobs'
in-progress keys to lapse (``job_timeout`` + 10 s); another worker then runs
the job again and step 2 reconciles it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from loguru import logger

from vantum_pipeline.campaign.config import CampaignConfig, parse_campaign
from vantum_pipeline.campaign.dispatch import TWILIO_STATUS_OUTCOMES, CallJob, CallStatus, Dialer
from vantum_pipeline.campaign.jobs import BadJob, Keys, decode_job, encode_event, encode_job, encode_record
from vantum_pipeline.campaign.leases import ClusterLeases, Lease
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.telephony.numbers import mask_number, validate_e164

__all__ = ["CampaignWorker", "DialerFactory", "RedisDoNotCall"]

#: Builds the dialer of one campaign: ``factory(config, dnc)`` → ``async with`` dialer.
DialerFactory = Callable[[CampaignConfig, "RedisDoNotCall"], AbstractAsyncContextManager[Dialer]]

#: A retry because the cluster is full is not a failure: the job may wait a long time.
_MAX_TRIES = 1_000_000
_MARKER_TTL = 7 * 24 * 3600


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
        self._dialers: dict[str, tuple[AbstractAsyncContextManager[Dialer], Dialer, RedisDoNotCall]] = {}
        self._dialer_lock = asyncio.Lock()
        self._dnc_writes: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(maxsize=10_000)
        self._arq: Any = None
        #: Counters for the health endpoint.
        self.started_at = time.time()
        self.calls = 0
        self.running = 0
        self.refusals = 0
        self.poison = 0
        self.reconciled = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Take jobs until cancelled or :meth:`stop`; the calls in progress then finish (bounded)."""
        from arq.connections import RedisSettings, create_pool
        from arq.worker import Worker, func

        settings = RedisSettings.from_dsn(self.redis_url)
        settings.conn_retries = 30
        settings.conn_retry_delay = 1
        self._redis = await create_pool(settings)
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
        flusher = asyncio.get_running_loop().create_task(self._flush_dnc(), name="worker-dnc")
        logger.info("worker {} taking jobs from {} (max {} at once)", self.worker_id, self.queue_name, self.max_jobs)
        try:
            await self._arq.main()
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._arq.close()
            for manager, _, _ in self._dialers.values():
                try:
                    await asyncio.wait_for(manager.__aexit__(None, None, None), timeout=10.0)
                except Exception as exc:
                    logger.warning("worker {}: closing a dialer failed: {}", self.worker_id, exc)
            self._dialers.clear()
            await self._redis.aclose()

    def health(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "up_s": round(time.time() - self.started_at, 1),
            "calls": self.calls,
            "running": self.running,
            "lease_refusals": self.refusals,
            "poison_jobs": self.poison,
            "reconciled": self.reconciled,
            "redis": self._redis is not None,
        }

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
            self.poison += 1
            logger.error("worker {}: job {} refused: {}", self.worker_id, job_id, exc)
            campaign = job_id.split(":", 1)[0]
            if campaign:
                record = AttemptRecord("error", notes=f"bad job: {exc}"[:300])
                await self._report_finished(Keys(campaign), job_id, "", record)
            raise
        keys = Keys(job.attempt.campaign_id)
        marker = await self._redis.hgetall(keys.dial(job_id))
        state = marker.get(b"state", b"").decode()
        if state == "done":
            logger.info("job {} ran before: its result is on the stream", job_id)
            return "done before"
        dialer, dnc = await self._dialer(job.attempt.campaign_id)
        if state in ("dialing", "placed"):
            recovered = await self._recover(job, marker, dialer)
            if recovered is not None:
                self.reconciled += 1
                await self._report_finished(keys, job_id, encode_job(job), recovered)
                return recovered.outcome
        assert self._leases is not None
        grant = await self._leases.acquire(job_id)
        if not isinstance(grant, Lease):
            self.refusals += 1
            await self._redis.hincrby(keys.metrics, "lease_refusals", 1)
            raise Retry(defer=max(0.05, min(grant.retry_after, 5.0)))
        async with self._leases.keep(grant):
            record = await self._dial(job, keys, dialer, dnc)
        await self._report_finished(keys, job_id, encode_job(job), record)
        return record.outcome

    async def _dial(self, job: CallJob, keys: Keys, dialer: Dialer, dnc: RedisDoNotCall) -> AttemptRecord:
        job_id = job.job_id
        if await self._redis.sismember(Keys.DNC, job.number) or dnc.blocks(job.number):
            logger.info("job {}: {} is on the do-not-call list: not dialled", job_id, mask_number(job.number))
            return AttemptRecord(outcome="do_not_call_list", notes="on the do-not-call list: not dialled")
        await self._redis.hset(
            keys.dial(job_id), mapping={"state": "dialing", "worker": self.worker_id, "at": str(time.time())}
        )
        await self._redis.expire(keys.dial(job_id), _MARKER_TTL)
        job_text = encode_job(job)

        async def placed(sid: str) -> None:
            await self._redis.hset(keys.dial(job_id), mapping={"state": "placed", "sid": sid})
            await self._redis.xadd(keys.results, encode_event("placed", job_id, job_text, sid=sid), maxlen=100_000)

        self.calls += 1
        self.running += 1
        try:
            record = await dialer.call(job, placed)
        except Exception as exc:  # one broken call never hurts another
            logger.opt(exception=exc).error("worker {}: call {} failed: {}", self.worker_id, job_id, exc)
            record = AttemptRecord(outcome="error", notes=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self.running -= 1
        await self._redis.hincrby(keys.metrics, f"outcome:{record.outcome}", 1)
        await self._redis.hincrbyfloat(keys.metrics, "spend_usd", float(record.cost))
        return record

    async def _report_finished(self, keys: Keys, job_id: str, job_text: str, record: AttemptRecord) -> None:
        event = encode_event("finished", job_id, job_text, record=encode_record(record))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.results, event, maxlen=100_000)
            pipe.hset(keys.dial(job_id), mapping={"state": "done", "outcome": record.outcome})
            pipe.expire(keys.dial(job_id), _MARKER_TTL)
            await pipe.execute()

    async def _recover(self, job: CallJob, marker: dict[bytes, bytes], dialer: Dialer) -> AttemptRecord | None:
        """The attempt's last worker died: settle it through Twilio. None: it was never placed."""
        job_id = job.job_id
        sid = marker.get(b"sid", b"").decode() or None
        if sid is None:
            since = float(marker.get(b"at", b"0") or 0) - 60.0
            found = await self._ask(lambda: dialer.find_calls(job.number, since))
            if not found:
                logger.info("job {}: its last worker died before placing the call: dialling now", job_id)
                return None
            sid = found[-1].sid
        status = await self._until_ended(dialer, sid)
        if status is None:
            outcome, twilio_status, duration = "interrupted", None, 0.0
        else:
            twilio_status, duration = status.status, status.duration
            outcome = TWILIO_STATUS_OUTCOMES.get(status.status, "error")
            if outcome == "completed":
                outcome = "interrupted"  # answered, but the conversation's result died with the worker
        logger.warning(
            "job {}: its worker died mid-call; Twilio says {} -> {} (not redialled by this attempt)",
            job_id,
            twilio_status,
            outcome,
        )
        return AttemptRecord(
            outcome,
            twilio_status=twilio_status,
            call_sid=sid,
            duration=duration,
            notes="reconciled after its worker was lost",
        )

    async def _until_ended(self, dialer: Dialer, sid: str) -> CallStatus | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconcile_timeout
        delay = 0.25
        while True:
            status: CallStatus | None = await self._ask(lambda: dialer.call_status(sid))
            if status is None or status.ended:
                return status
            if loop.time() >= deadline:
                logger.warning("call {} still {} after {:.0f}s: hanging up", sid, status.status, self.reconcile_timeout)
                await self._ask(lambda: dialer.hang_up(sid))
                deadline = loop.time() + 30.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _ask(self, request: Callable[[], Any], tries: int = 5) -> Any:
        for attempt in range(tries):
            try:
                return await request()
            except ServiceError as exc:
                logger.warning("reconciliation request failed ({}/{}): {}", attempt + 1, tries, exc)
                await asyncio.sleep(min(2.0**attempt, 8.0))
        raise ServiceError(f"Twilio did not answer {tries} reconciliation requests", service="twilio", retryable=True)

    # ------------------------------------------------------------------ per campaign

    async def _dialer(self, campaign_id: str) -> tuple[Dialer, RedisDoNotCall]:
        async with self._dialer_lock:
            if campaign_id in self._dialers:
                _, dialer, dnc = self._dialers[campaign_id]
                return dialer, dnc
            raw = await self._redis.get(Keys(campaign_id).config)
            if raw is None:
                raise BadJob(f"campaign {campaign_id!r} has no configuration in Redis (no coordinator started it)")
            data = json.loads(raw)
            config = parse_campaign(data["text"], Path(data.get("path", "campaign.toml")))
            dnc = RedisDoNotCall(self, campaign_id)
            manager = self.dialer_factory(config, dnc)
            dialer = await manager.__aenter__()
            self._dialers[campaign_id] = (manager, dialer, dnc)
            return dialer, dnc

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
