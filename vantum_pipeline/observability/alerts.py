"""Alerts: daily cost over a threshold, a service's error rate over 5 % in a
sliding window, a service rate-limiting us, a provider's circuit breaker
open for longer than ``provider_open_minutes`` (the failover services report
their breakers as ``provider.state`` metrics).

An alert fires once per condition: when the condition becomes true it is
sent to every sink, and not again while it stays true; it re-arms when the
condition clears (the error rate falls back under the threshold, a new day
starts, the window holds no more 429s). Conditions are evaluated as events
arrive (``MetricsCollector`` feeds the monitor) and on ``evaluate()``, which
an app may call periodically so that a quiet service's alert re-arms.

    sinks = [LogAlertSink(), CallbackAlertSink(post_to_slack)]
    async with AlertMonitor(AlertSettings.from_env(), sinks=sinks) as alerts:
        collector = MetricsCollector(registry, tracker, alerts=alerts)

Sinks: ``LogAlertSink`` (a log line; the default) and ``CallbackAlertSink``
(an async callback of the app: Slack, a pager). A callback runs in the sink's
own task, one at a time, each bounded by a timeout, from a bounded queue, so
a slow webhook never slows a call down; alerts that find the queue full are
dropped and counted.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import env_float, env_int, load_env

__all__ = [
    "PROVIDER_OPEN",
    "Alert",
    "AlertMonitor",
    "AlertSettings",
    "AlertSink",
    "CallbackAlertSink",
    "LogAlertSink",
]

DAILY_COST: Final = "daily_cost"
ERROR_RATE: Final = "error_rate"
RATE_LIMITED: Final = "rate_limited"
PROVIDER_OPEN: Final = "provider_open"

#: Services tracked in the sliding windows; more are folded into "other".
MAX_SERVICES: Final = 64


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Thresholds, from ``ALERT_DAILY_COST_USD`` (unset: no cost alert),
    ``ALERT_ERROR_RATE`` (0.05), ``ALERT_ERROR_RATE_WINDOW_S`` (300),
    ``ALERT_ERROR_RATE_MIN_REQUESTS`` (20), ``ALERT_RATE_LIMIT_HITS``
    (429s within the window that fire the rate-limit alert, 1; 0 disables it)
    and ``ALERT_PROVIDER_OPEN_MINUTES`` (a provider's breaker open this long
    fires, 5; unset in the environment keeps the default)."""

    daily_cost_threshold: float | None = None
    error_rate_threshold: float = 0.05
    error_rate_window: float = 300.0
    error_rate_min_requests: int = 20
    rate_limit_hits: int = 1
    provider_open_minutes: float = 5.0

    def __post_init__(self) -> None:
        if not self.provider_open_minutes > 0:
            raise ConfigurationError(f"provider_open_minutes must be > 0, got {self.provider_open_minutes}")
        if not 0 <= self.error_rate_threshold < 1:
            raise ConfigurationError(f"error_rate_threshold must be in [0, 1), got {self.error_rate_threshold}")
        if not self.error_rate_window > 0:
            raise ConfigurationError(f"error_rate_window must be > 0 seconds, got {self.error_rate_window}")
        if self.error_rate_min_requests < 1:
            raise ConfigurationError(f"error_rate_min_requests must be >= 1, got {self.error_rate_min_requests}")
        if self.rate_limit_hits < 0:
            raise ConfigurationError(f"rate_limit_hits must be >= 0, got {self.rate_limit_hits}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AlertSettings:
        env = load_env(env)
        default = cls()
        rate = env_float(env, "ALERT_ERROR_RATE", default.error_rate_threshold, minimum=0.0, maximum=0.999)
        window = env_float(env, "ALERT_ERROR_RATE_WINDOW_S", default.error_rate_window, minimum=1.0)
        min_requests = env_int(env, "ALERT_ERROR_RATE_MIN_REQUESTS", default.error_rate_min_requests, minimum=1)
        hits = env_int(env, "ALERT_RATE_LIMIT_HITS", default.rate_limit_hits, minimum=0)
        minutes = env_float(env, "ALERT_PROVIDER_OPEN_MINUTES", default.provider_open_minutes, minimum=0.01)
        assert rate is not None and window is not None and min_requests is not None and hits is not None
        assert minutes is not None
        return cls(
            daily_cost_threshold=env_float(env, "ALERT_DAILY_COST_USD", minimum=0.0),
            error_rate_threshold=rate,
            error_rate_window=window,
            error_rate_min_requests=min_requests,
            rate_limit_hits=hits,
            provider_open_minutes=minutes,
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One firing of one condition."""

    kind: str
    key: str
    message: str
    value: float
    threshold: float
    service: str | None = None
    #: Wall-clock time (seconds since the epoch).
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "message": self.message,
            "value": self.value,
            "threshold": self.threshold,
            "service": self.service,
            "at": self.at,
        }


class AlertSink(Protocol):
    def notify(self, alert: Alert) -> None:
        """Take the alert; must not block (hand slow work to a task)."""


class LogAlertSink:
    """Writes each alert as a log line (level WARNING by default)."""

    def __init__(self, level: str = "WARNING") -> None:
        self.level = level

    def notify(self, alert: Alert) -> None:
        logger.log(self.level, "ALERT {}: {}", alert.key, alert.message)


AlertCallback = Callable[[Alert], Awaitable[None]]


class CallbackAlertSink:
    """Delivers alerts to an async callback, from a task it owns.

    Start it (``await sink.start()`` or through ``AlertMonitor``'s ``async
    with``) and close it with ``await sink.aclose()``: pending alerts are
    delivered within ``close_timeout``, the rest are dropped. At most
    ``max_pending`` alerts wait; more are dropped and counted in ``dropped``.
    A callback that raises or outlives ``callback_timeout`` is logged, and the
    next alert is delivered normally.
    """

    def __init__(
        self,
        callback: AlertCallback,
        *,
        max_pending: int = 100,
        callback_timeout: float = 10.0,
        close_timeout: float = 5.0,
    ) -> None:
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be >= 1, got {max_pending}")
        self._callback = callback
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=max_pending)
        self._callback_timeout = callback_timeout
        self._close_timeout = close_timeout
        self._worker: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    async def start(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._deliver(), name="alerts:callback")

    def notify(self, alert: Alert) -> None:
        if self._worker is None or self._worker.done():
            self.dropped += 1
            logger.error("alert {} not delivered to the callback: the sink is not started", alert.key)
            return
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.error("alert {} dropped: {} alerts already wait for the callback", alert.key, self._queue.qsize())

    async def _deliver(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                async with asyncio.timeout(self._callback_timeout):
                    await self._callback(alert)
                self.delivered += 1
            except TimeoutError:
                self.failed += 1
                logger.error("alert callback for {} took more than {:.1f}s", alert.key, self._callback_timeout)
            except Exception as exc:
                self.failed += 1
                logger.opt(exception=exc).error("alert callback for {} failed: {}", alert.key, exc)
            finally:
                self._queue.task_done()

    async def aclose(self) -> None:
        """Deliver what is pending (bounded by ``close_timeout``), then stop. Idempotent."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if not worker.done():
            try:
                async with asyncio.timeout(self._close_timeout):
                    await self._queue.join()
            except TimeoutError:
                logger.error("alert callback: {} alerts undelivered at close", self._queue.qsize())
            worker.cancel()
            await asyncio.wait({worker}, timeout=1.0)
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1


class _Window:
    """Counts per second over a sliding window, for one service."""

    __slots__ = ("buckets", "errors", "limited", "requests")

    def __init__(self) -> None:
        # (second, requests, errors, rate_limited); at most window seconds long.
        self.buckets: deque[list[int]] = deque()
        self.requests = 0
        self.errors = 0
        self.limited = 0

    def add(self, second: int, requests: int, errors: int, limited: int) -> None:
        if self.buckets and self.buckets[-1][0] == second:
            bucket = self.buckets[-1]
            bucket[1] += requests
            bucket[2] += errors
            bucket[3] += limited
        else:
            self.buckets.append([second, requests, errors, limited])
        self.requests += requests
        self.errors += errors
        self.limited += limited

    def expire(self, oldest: int) -> None:
        while self.buckets and self.buckets[0][0] < oldest:
            _, requests, errors, limited = self.buckets.popleft()
            self.requests -= requests
            self.errors -= errors
            self.limited -= limited


class AlertMonitor:
    """Evaluates the alert conditions of a process (shared by its calls).

    ``clock`` (monotonic) drives the sliding windows; ``wall_clock`` (epoch
    seconds) decides what "today" is, in UTC. Feed it from the event loop.
    """

    def __init__(
        self,
        settings: AlertSettings | None = None,
        *,
        sinks: Sequence[AlertSink] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        history: int = 100,
    ) -> None:
        self.settings = settings or AlertSettings()
        self.sinks: list[AlertSink] = list(sinks) if sinks is not None else [LogAlertSink()]
        self._clock = clock
        self._wall_clock = wall_clock
        self._windows: dict[str, _Window] = {}
        self._active: dict[str, Alert] = {}
        self._day: datetime.date | None = None
        self._day_cost = 0.0
        self._open_since: dict[str, float] = {}  # provider → clock time its breaker opened
        #: The most recent firings, oldest first.
        self.history: deque[Alert] = deque(maxlen=history)

    async def __aenter__(self) -> AlertMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the sinks that deliver from a task."""
        for sink in self.sinks:
            start = getattr(sink, "start", None)
            if start is not None:
                await start()

    async def aclose(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "aclose", None)
            if close is not None:
                await close()

    # -------------------------------------------------------------- inputs

    def add_cost(self, usd: float) -> None:
        """Dollars spent now (by any call); feeds the daily total."""
        if not usd > 0:
            return
        self._roll_day()
        self._day_cost += usd
        self._check_daily_cost()

    def record_request(self, service: str, count: int = 1) -> None:
        self._record(service, requests=count)

    def record_error(self, service: str, count: int = 1) -> None:
        self._record(service, errors=count)

    def record_rate_limited(self, service: str, count: int = 1) -> None:
        self._record(service, limited=count)

    def record_provider_state(self, provider: str, state: int) -> None:
        """A provider's breaker changed: 0 closed, 1 half-open, 2 open. The
        alert fires once it has stayed open (or half-open, probing) for
        ``provider_open_minutes``, and clears when it closes."""
        if state == 0:
            self._open_since.pop(provider, None)
        elif provider not in self._open_since:
            if len(self._open_since) >= MAX_SERVICES:
                return
            self._open_since[provider] = self._clock()
        self._check_provider(provider)

    def evaluate(self) -> None:
        """Re-check every condition now (lets quiet conditions clear, and
        long-open providers fire: call it periodically)."""
        self._roll_day()
        self._check_daily_cost()
        for service in list(self._windows):
            self._check_service(service)
        for provider in {*self._open_since, *(k.split(":", 1)[1] for k in self._active if k.startswith(PROVIDER_OPEN))}:
            self._check_provider(provider)

    def _check_provider(self, provider: str) -> None:
        limit = self.settings.provider_open_minutes * 60
        since = self._open_since.get(provider)
        open_for = 0.0 if since is None else self._clock() - since
        self._set(
            f"{PROVIDER_OPEN}:{provider}",
            firing=since is not None and open_for >= limit,
            clear=since is None,
            make=lambda: Alert(
                kind=PROVIDER_OPEN,
                key=f"{PROVIDER_OPEN}:{provider}",
                message=(
                    f"provider {provider} has been failing over to its backup for {open_for / 60:.1f} minutes "
                    f"(its circuit breaker is not closed), more than {self.settings.provider_open_minutes:g}"
                ),
                value=open_for / 60,
                threshold=self.settings.provider_open_minutes,
                service=provider,
                at=self._wall_clock(),
            ),
        )

    # ------------------------------------------------------------- figures

    @property
    def daily_cost(self) -> float:
        """Dollars spent today (UTC)."""
        self._roll_day()
        return self._day_cost

    def active(self) -> dict[str, Alert]:
        """Conditions currently firing, by key (``"error_rate:openai"``)."""
        return dict(self._active)

    def error_rate(self, service: str) -> float | None:
        """Errors / requests of ``service`` in the window (None without requests)."""
        window = self._windows.get(service)
        if window is None:
            return None
        window.expire(self._oldest_second())
        return None if window.requests <= 0 else min(1.0, window.errors / window.requests)

    # ----------------------------------------------------------- internals

    def _oldest_second(self) -> int:
        return int(self._clock() - self.settings.error_rate_window) + 1

    def _record(self, service: str, *, requests: int = 0, errors: int = 0, limited: int = 0) -> None:
        window = self._windows.get(service)
        if window is None:
            if len(self._windows) >= MAX_SERVICES:
                service = "other"
            window = self._windows.setdefault(service, _Window())
        window.add(int(self._clock()), requests, errors, limited)
        self._check_service(service)

    def _check_service(self, service: str) -> None:
        settings = self.settings
        window = self._windows[service]
        window.expire(self._oldest_second())
        rate = None if window.requests <= 0 else min(1.0, window.errors / window.requests)
        self._set(
            f"{ERROR_RATE}:{service}",
            firing=rate is not None
            and window.requests >= settings.error_rate_min_requests
            and rate > settings.error_rate_threshold,
            clear=rate is None or rate <= settings.error_rate_threshold,
            make=lambda: Alert(
                kind=ERROR_RATE,
                key=f"{ERROR_RATE}:{service}",
                message=(
                    f"{service} error rate {rate:.1%} over the last {settings.error_rate_window:.0f}s "
                    f"({window.errors} errors / {window.requests} requests), above {settings.error_rate_threshold:.1%}"
                ),
                value=rate or 0.0,
                threshold=settings.error_rate_threshold,
                service=service,
                at=self._wall_clock(),
            ),
        )
        if settings.rate_limit_hits:
            self._set(
                f"{RATE_LIMITED}:{service}",
                firing=window.limited >= settings.rate_limit_hits,
                clear=window.limited == 0,
                make=lambda: Alert(
                    kind=RATE_LIMITED,
                    key=f"{RATE_LIMITED}:{service}",
                    message=(
                        f"{service} rate-limited us {window.limited} time(s) "
                        f"in the last {settings.error_rate_window:.0f}s"
                    ),
                    value=float(window.limited),
                    threshold=float(settings.rate_limit_hits),
                    service=service,
                    at=self._wall_clock(),
                ),
            )

    def _roll_day(self) -> None:
        today = datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC).date()
        if today != self._day:
            self._day = today
            self._day_cost = 0.0

    def _check_daily_cost(self) -> None:
        threshold = self.settings.daily_cost_threshold
        if threshold is None:
            return
        self._set(
            DAILY_COST,
            firing=self._day_cost > threshold,
            clear=self._day_cost <= threshold,
            make=lambda: Alert(
                kind=DAILY_COST,
                key=DAILY_COST,
                message=f"cost today ({self._day} UTC) is ${self._day_cost:.2f}, above the ${threshold:.2f} threshold",
                value=self._day_cost,
                threshold=threshold,
                at=self._wall_clock(),
            ),
        )

    def _set(self, key: str, *, firing: bool, clear: bool, make: Callable[[], Alert]) -> None:
        if key in self._active:
            if clear:
                del self._active[key]
                logger.info("alert {} cleared", key)
            return
        if firing:
            alert = make()
            self._active[key] = alert
            self.history.append(alert)
            for sink in self.sinks:
                try:
                    sink.notify(alert)
                except Exception as exc:  # one broken sink must not silence the others
                    logger.opt(exception=exc).error("alert sink {!r} failed: {}", sink, exc)
