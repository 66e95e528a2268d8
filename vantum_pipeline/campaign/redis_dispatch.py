"""Calls on many machines: the coordinator's side of the Redis dispatch.

``RedisDispatcher`` is a :class:`~vantum_pipeline.campaign.dispatch.Dispatcher`
like the in-process one, so the campaign runner (rules, store, budget,
reconciliation) is the same program on one machine or on many. What differs is
where a claimed attempt goes: into an arq queue on Redis, with the attempt's
deterministic id (``campaign:prospect:attempt``) as the job id, so the same
attempt can never be queued twice. ``vantum worker`` processes on any machine
take the jobs, each within the cluster-wide limits (:mod:`.leases`), place the
calls, and put what happened on the campaign's result stream (``placed``,
``finished``, ``dnc``), which this dispatcher reads as a consumer group and
hands to the runner: an entry is acknowledged only after the runner recorded
it, so a coordinator killed in between reads it again after its restart (the
store ignores an attempt recorded twice).

After a restart, :meth:`adopt` takes back the attempts that the workers still
hold (queued, running, or with a result not yet read); the runner reconciles
the others through Twilio as on one machine.

    async with RedisDispatcher(url, campaign_id=config.id, config_text=text,
                               config_path=path, max_outstanding=50) as dispatcher:
        runner = CampaignRunner(config, store, dialer=None, dispatcher=dispatcher)
        dispatcher.bind(runner, dnc=runner.dnc)
        await runner.run()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from types import TracebackType
from typing import Any

from loguru import logger

from vantum_pipeline.campaign.dispatch import CallJob, ResultSink
from vantum_pipeline.campaign.dnc import DoNotCall
from vantum_pipeline.campaign.jobs import BadJob, Keys, decode_event, decode_record, encode_job
from vantum_pipeline.campaign.redis_link import redis_settings, with_redis
from vantum_pipeline.campaign.store import AttemptRecord, AttemptRow
from vantum_pipeline.errors import ConfigurationError, PipelineError

__all__ = ["GROUP", "RedisDispatcher", "cluster_metrics"]

#: The consumer group of the coordinators on a campaign's result stream.
GROUP = "coordinator"


class RedisDispatcher:
    """Hands due calls to ``vantum worker`` processes through Redis; see the module docstring.

    ``max_outstanding`` bounds the jobs queued or running at once (keep it near
    the cluster's concurrent-call limit: the rules are applied when a prospect
    is claimed, so a short queue keeps the claim close to the dial).
    """

    def __init__(
        self,
        redis_url: str,
        *,
        campaign_id: str,
        config_text: str,
        config_path: str = "campaign.toml",
        max_outstanding: int,
        queue_name: str = Keys.QUEUE,
        consumer: str = "coordinator-1",
        read_block: float = 0.5,
        reconnect_delay: float = 0.5,
    ) -> None:
        if max_outstanding < 1:
            raise ConfigurationError(f"max_outstanding must be >= 1, got {max_outstanding}")
        self.redis_url = redis_url
        self.keys = Keys(campaign_id)
        self.config_text = config_text
        self.config_path = config_path
        self.max_outstanding = max_outstanding
        self.queue_name = queue_name
        self.consumer = consumer
        self.read_block = read_block
        self.reconnect_delay = reconnect_delay
        self.sink: ResultSink | None = None
        self.dnc: DoNotCall | None = None
        self._outstanding: dict[str, CallJob] = {}
        self._pool: Any = None
        self._consumer_task: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        # Results are read once the runner has adopted what the workers still hold (or submitted a
        # job): a result read before its attempt was adopted would be dropped as not outstanding,
        # and the attempt then waited on for ever.
        self._adopted = asyncio.Event()
        #: Counters for a status line: jobs submitted, events read, duplicate results ignored.
        self.submitted = 0
        self.events_read = 0
        self.duplicates = 0

    def bind(self, sink: ResultSink, *, dnc: DoNotCall | None = None) -> None:
        """Where results go (the runner), and the DNC list that workers' opt-outs join."""
        self.sink = sink
        self.dnc = dnc

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RedisDispatcher:
        from arq import create_pool

        self._pool = await create_pool(redis_settings(self.redis_url, conn_retries=10))
        await self._pool.set(self.keys.config, json.dumps({"text": self.config_text, "path": self.config_path}))
        await self._ensure_group()
        self._consumer_task = asyncio.get_running_loop().create_task(self._consume(), name="campaign-results")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop_consumer()
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    async def _ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self._pool.xgroup_create(self.keys.results, GROUP, id="0", mkstream=True)
        except ResponseError as exc:  # BUSYGROUP: it exists since an earlier run
            if "BUSYGROUP" not in str(exc):
                raise

    async def _stop_consumer(self) -> None:
        task, self._consumer_task = self._consumer_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ Dispatcher

    @property
    def in_flight(self) -> int:
        return len(self._outstanding)

    def free_slots(self) -> int:
        return max(0, self.max_outstanding - len(self._outstanding))

    async def publish_dnc(self, numbers: list[str]) -> None:
        """Put numbers on the cluster-wide DNC set the workers check before each dial."""
        if numbers and self._pool is not None:
            await self._pool.sadd(Keys.DNC, *numbers)

    async def publish_figures(self, payload: str, *, ttl: float) -> None:
        """Put the campaign's console figures (JSON) where the workers' consoles read them, for ``ttl`` seconds."""
        if self._pool is not None:
            await self._pool.set(self.keys.figures, payload, px=int(ttl * 1000))

    async def submit(self, job: CallJob) -> None:
        if self._pool is None:
            raise PipelineError("RedisDispatcher used outside 'async with'")
        if len(self._outstanding) >= self.max_outstanding:
            raise PipelineError(f"dispatcher full ({self.max_outstanding} jobs): job {job.job_id} refused")
        self._outstanding[job.job_id] = job
        self._drained.clear()
        self._adopted.set()  # a runner that submits has settled what was left open
        text = encode_job(job)
        # A retry after a lost reply finds the job queued (arq refuses the id): never two jobs.
        queued = await with_redis(
            lambda: self._pool.enqueue_job("place_call", text, _job_id=job.job_id, _queue_name=self.queue_name),
            what="enqueue",
        )
        self.submitted += 1
        if queued is None:
            # arq knows this id already (queued, running, or its result kept): the attempt is on
            # its way, and its result will come on the stream like any other.
            logger.info("job {} is already with the workers: not queued again", job.job_id)

    async def adopt(self, attempts: list[AttemptRow]) -> list[AttemptRow]:
        """Take back the open attempts the workers still hold; return the others.

        An attempt is still held when its job is queued or running, when a
        worker marked it dialled and not yet done, or when its result waits on
        the stream: its result will arrive. The rest are the runner's to
        reconcile through Twilio.
        """
        if self._pool is None:
            raise PipelineError("RedisDispatcher used outside 'async with'")
        left: list[AttemptRow] = []
        for attempt in attempts:
            job_id = attempt.job_id
            queued, marker = await with_redis(functools.partial(self._held, job_id), what="adopt")
            if queued or marker in (b"dialing", b"placed", b"done"):
                self._outstanding[job_id] = CallJob(attempt)
                self._drained.clear()
                logger.info("attempt {} is still with the workers: adopted", job_id)
            else:
                left.append(attempt)
        self._adopted.set()
        return left

    async def _held(self, job_id: str) -> tuple[int, bytes | None]:
        queued = await self._pool.exists(f"arq:job:{job_id}", Keys.IN_PROGRESS + job_id)
        marker = await self._pool.hget(self.keys.dial(job_id), "state")
        return int(queued), marker

    async def aclose(self, *, graceful: bool = True, timeout: float = 60.0) -> None:
        """Wait (bounded) for the outstanding jobs' results; then stop reading.

        Not graceful: stop reading at once; the jobs stay with the workers and
        a later run adopts them.
        """
        if graceful and self._outstanding:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                logger.warning(
                    "{} job(s) still with the workers after {:.0f}s: a later run adopts them",
                    len(self._outstanding),
                    timeout,
                )
        await self._stop_consumer()

    # ------------------------------------------------------------------ results

    async def _consume(self) -> None:
        """Read the result stream for as long as the dispatcher lives; cancel to stop."""
        # First what this consumer read and did not acknowledge before a restart (from ``cursor``
        # on, so that an entry that cannot be recorded is passed over, not read in a loop).
        backlog, cursor = True, "0"
        await self._adopted.wait()  # owned by the dispatcher, cancelled by its exit; see __init__
        while True:
            try:
                reply = await self._pool.xreadgroup(
                    GROUP,
                    self.consumer,
                    {self.keys.results: cursor if backlog else ">"},
                    count=100,
                    block=None if backlog else int(self.read_block * 1000),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "campaign {}: reading results failed ({}: {}); retrying in {}s",
                    self.keys.campaign_id,
                    type(exc).__name__,
                    exc,
                    self.reconnect_delay,
                )
                await asyncio.sleep(self.reconnect_delay)
                if "NOGROUP" in str(exc):  # the stream went away with a Redis that lost its data
                    with contextlib.suppress(Exception):
                        await self._ensure_group()
                backlog, cursor = True, "0"  # read again what was delivered and not acknowledged
                continue
            entries = reply[0][1] if reply else []
            if backlog:
                if not entries:
                    backlog = False
                    continue
                last = entries[-1][0]
                cursor = last.decode() if isinstance(last, bytes) else str(last)
            done = [entry_id for entry_id, fields in entries if await self._handle(entry_id, fields)]
            if done:
                await self._ack(done)

    async def _ack(self, entry_ids: list[Any]) -> None:
        try:
            await with_redis(functools.partial(self._pool.xack, self.keys.results, GROUP, *entry_ids), what="ack")
        except Exception as exc:  # read again later: the store ignores a result recorded twice
            logger.warning("campaign {}: {} result(s) not acknowledged: {}", self.keys.campaign_id, len(entry_ids), exc)

    async def _handle(self, entry_id: Any, fields: dict[Any, Any]) -> bool:
        """Record one result; False when it must stay unacknowledged (read again after a restart)."""
        self.events_read += 1
        try:
            kind, event = decode_event(fields)
            await self._apply(kind, event)
        except BadJob as exc:
            logger.error("campaign {}: result {} refused: {}", self.keys.campaign_id, entry_id, exc)
        except Exception as exc:
            logger.opt(exception=exc).error("campaign {}: recording result {} failed", self.keys.campaign_id, entry_id)
            return False
        return True

    async def _apply(self, kind: str, event: dict[str, str]) -> None:
        if self.sink is None:
            raise PipelineError("RedisDispatcher has no sink: call bind() first")
        job_id = event["job_id"]
        if kind == "dnc":
            number = event.get("number", "")
            if self.dnc is not None and number:
                self.dnc.add(number, source=event.get("source", "call"))
            return
        job = self._outstanding.get(job_id)
        if job is None:
            # Recorded already (a result read twice across a restart) or settled by reconciliation.
            self.duplicates += 1
            logger.info("{} result for job {} that is not outstanding: ignored", kind, job_id)
            return
        if kind == "placed":
            await self.sink.placed(job, event.get("sid", ""))
            return
        record = decode_record(event["record"]) if event.get("record") else AttemptRecord("error", notes="no record")
        await self.sink.finished(job, record)
        self._outstanding.pop(job_id, None)
        if not self._outstanding:
            self._drained.set()

    async def metrics(self) -> dict[str, Any]:
        """The campaign's counters and the live workers' health, summed over every worker."""
        return await cluster_metrics(self._pool, self.keys.campaign_id)


async def cluster_metrics(redis: Any, campaign_id: str) -> dict[str, Any]:
    """The campaign's counters (outcomes, spend, lease refusals: every worker adds to them) and
    the live workers' health summed (calls in progress, calls placed, poison jobs, reconciled)."""
    raw = await redis.hgetall(Keys(campaign_id).metrics)
    campaign = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
    workers: list[dict[str, Any]] = []
    async for key in redis.scan_iter(match=Keys.WORKER + "*", count=100):
        value = await redis.get(key)
        if value is None:
            continue  # expired between the scan and the read
        try:
            workers.append(json.loads(value))
        except ValueError:
            logger.warning("worker health {!r} is not JSON: ignored", key)
    summed = {
        name: sum(int(w.get(name, 0)) for w in workers)
        for name in ("running", "jobs", "calls", "lease_refusals", "overloaded_deferrals", "poison_jobs", "reconciled")
    }
    return {
        "campaign": campaign,
        "workers": len(workers),
        "summed": summed,
        "per_worker": workers,
        "read_at": time.time(),
    }
