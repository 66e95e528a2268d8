"""Where due calls go: the ``Dispatcher`` protocol and its in-process implementation.

The runner decides *who* is due (rules, store); a dispatcher decides *where
and when* the call is placed, within the account's limits. The interface is
deliberately small, so that a queue-backed dispatcher (jobs on Redis, run by
workers on other machines) can stand in for the in-process one:

- ``free_slots()``: how many more jobs it takes now (the runner claims no
  more attempts than that);
- ``submit(job)``: hand over one claimed attempt; ``job.job_id`` (campaign,
  prospect, attempt number) is deterministic, so a queue can refuse a
  duplicate;
- results come back through the ``ResultSink`` given at construction:
  ``placed(job, sid)`` as soon as Twilio accepted the call, ``finished(job,
  record)`` once it ended;
- ``aclose(graceful=...)``: let the calls in progress finish (or cancel them).

``InProcessDispatcher`` runs each job as a task it owns, with at most
``max_concurrent`` jobs at once and call starts at least ``1 /
calls_per_second`` apart (Twilio's calls-per-second limit for the account).
Both are measured (``max_active_seen``, ``starts``).

A dialer may also say it can place no call now: an ``overloaded()`` method
returning True (``PhoneDialer``'s does while its Twilio server's event loop
runs late; see ``TwilioServer``'s ``overload_lag``). Meanwhile the in-process
dispatcher reports no free slot, so the runner claims no attempt and the
prospects stay due: an overloaded process burns none of their attempts.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from loguru import logger

from vantum_pipeline.campaign.dnc import DoNotCall
from vantum_pipeline.campaign.store import AttemptRecord, AttemptRow
from vantum_pipeline.errors import ConfigurationError, PipelineError
from vantum_pipeline.telephony.numbers import mask_number

__all__ = [
    "TWILIO_STATUS_OUTCOMES",
    "CallJob",
    "CallStatus",
    "CampaignEvent",
    "Dialer",
    "Dispatcher",
    "EventCallback",
    "InProcessDispatcher",
    "Pacer",
    "PlacedCallback",
    "ResultSink",
    "dialer_overloaded",
]

PlacedCallback = Callable[[str], Awaitable[None]]

#: A final Twilio ``CallStatus`` as a campaign outcome.
TWILIO_STATUS_OUTCOMES = {
    "completed": "completed",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "canceled",
}


@dataclass(frozen=True, slots=True)
class CampaignEvent:
    """Something a live view may show. ``kind``: dialing, placed, line (a
    transcript line: ``role`` and ``text``), ended, deferred, skipped, note."""

    kind: str
    job_id: str = ""
    prospect_id: str = ""
    text: str = ""
    role: str = ""
    outcome: str = ""
    at: float = field(default_factory=time.time)


EventCallback = Callable[[CampaignEvent], None]


@dataclass(frozen=True, slots=True)
class CallJob:
    """One claimed attempt: who to call and what the call needs to know."""

    attempt: AttemptRow
    name: str = ""
    company: str = ""
    timezone: str = "UTC"
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.attempt.job_id

    @property
    def number(self) -> str:
        return self.attempt.number

    @property
    def log_id(self) -> str:
        return self.attempt.log_id


@dataclass(frozen=True, slots=True)
class CallStatus:
    """A call as Twilio reports it (``GET …/Calls/{sid}.json``)."""

    sid: str
    status: str
    duration: float = 0.0
    answered_by: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "busy", "no-answer", "failed", "canceled")


@runtime_checkable
class Dialer(Protocol):
    """Places one call and follows it to its end (the telephony side)."""

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        """Place the call, ``await placed(sid)`` once Twilio accepted it, return
        its record when it ended. A call that fails is an outcome, not an exception."""
        ...

    async def call_status(self, sid: str) -> CallStatus | None:
        """Twilio's view of a call (None: Twilio does not know it)."""
        ...

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        """Calls to ``number`` created at or after ``since`` (Unix time)."""
        ...

    async def hang_up(self, sid: str) -> None: ...


def dialer_overloaded(dialer: Dialer) -> bool:
    """Whether ``dialer`` says it can place no call now (its optional ``overloaded()``; see the module docstring)."""
    check = getattr(dialer, "overloaded", None)
    return bool(check()) if callable(check) else False


class ResultSink(Protocol):
    async def placed(self, job: CallJob, sid: str) -> None: ...

    async def finished(self, job: CallJob, record: AttemptRecord) -> None: ...


class Dispatcher(Protocol):
    """Where due calls go; see the module docstring."""

    def free_slots(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    async def submit(self, job: CallJob) -> None: ...

    async def adopt(self, attempts: list[AttemptRow]) -> list[AttemptRow]:
        """After a restart: keep the open attempts whose calls this dispatcher still
        runs (their results will come); return the others, for reconciliation. The
        runner calls it once before its first submit, with no attempts on a fresh run."""
        ...

    async def aclose(self, *, graceful: bool = True, timeout: float = 60.0) -> None: ...


class Pacer:
    """Spaces starts by at least ``1 / rate`` seconds: each start is released
    ``1 / rate`` after the previous one actually started (a late wake-up pushes
    the next slot back rather than letting two starts bunch up), and a caller
    arriving after its slot starts at once."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ConfigurationError(f"calls_per_second must be > 0, got {rate}")
        self.interval = 1.0 / rate
        self._clock = clock
        self._next: float | None = None
        self._lock = asyncio.Lock()

    async def wait(self) -> float:
        """Wait for this caller's slot; returns when it started (monotonic). Cancel-safe."""
        async with self._lock:
            now = self._clock()
            if self._next is not None and self._next > now:
                await asyncio.sleep(self._next - now)
                now = self._clock()
                while now < self._next:  # a sleep may return a hair early on a coarse clock
                    await asyncio.sleep(self._next - now)
                    now = self._clock()
            self._next = now + self.interval
            return now


class InProcessDispatcher:
    """Runs calls in this process; see the module docstring."""

    def __init__(
        self,
        dialer: Dialer,
        sink: ResultSink,
        *,
        max_concurrent: int,
        calls_per_second: float,
        dnc: DoNotCall | None = None,
        keep_starts: int = 10_000,
    ) -> None:
        if max_concurrent < 1:
            raise ConfigurationError(f"max_concurrent_calls must be >= 1, got {max_concurrent}")
        self.dialer = dialer
        self.sink = sink
        self.max_concurrent = max_concurrent
        self.pacer = Pacer(calls_per_second)
        self.dnc = dnc
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: The most jobs ever active at once, and when each call was started (monotonic).
        self.max_active_seen = 0
        self.starts: deque[float] = deque(maxlen=keep_starts)
        self.dialled = 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def free_slots(self) -> int:
        if dialer_overloaded(self.dialer):
            return 0
        return max(0, self.max_concurrent - len(self._tasks))

    async def submit(self, job: CallJob) -> None:
        if len(self._tasks) >= self.max_concurrent:
            raise PipelineError(f"dispatcher full ({self.max_concurrent} calls): job {job.job_id} refused")
        if job.job_id in self._tasks:
            raise PipelineError(f"job {job.job_id} is already running")
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"campaign-call:{job.job_id}")
        self._tasks[job.job_id] = task
        self.max_active_seen = max(self.max_active_seen, len(self._tasks))
        task.add_done_callback(lambda _: self._tasks.pop(job.job_id, None))

    async def _run(self, job: CallJob) -> None:
        try:
            record = await self._call(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one broken call never hurts another
            logger.opt(exception=exc).error("campaign call {} failed: {}", job.log_id, exc)
            record = AttemptRecord(outcome="error", notes=f"{type(exc).__name__}: {exc}"[:200])
        try:
            await self.sink.finished(job, record)
        except Exception as exc:
            logger.opt(exception=exc).error("campaign call {}: recording its result failed: {}", job.log_id, exc)

    async def _call(self, job: CallJob) -> AttemptRecord:
        started = await self.pacer.wait()
        # Checked at the last moment: another call may have added the number since the claim.
        if self.dnc is not None and self.dnc.blocks(job.number):
            number = mask_number(job.number)
            logger.info("campaign call {}: {} is on the do-not-call list: not dialled", job.log_id, number)
            return AttemptRecord(outcome="do_not_call_list", notes="on the do-not-call list: not dialled")
        self.starts.append(started)
        self.dialled += 1

        async def placed(sid: str) -> None:
            await self.sink.placed(job, sid)

        return await self.dialer.call(job, placed)

    async def adopt(self, attempts: list[AttemptRow]) -> list[AttemptRow]:
        """A new process runs no call of an earlier one: every open attempt is reconciled."""
        return attempts

    async def aclose(self, *, graceful: bool = True, timeout: float = 60.0) -> None:
        """Wait (bounded) for the calls in progress, or cancel them."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        if graceful:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
        else:
            pending = set(tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
