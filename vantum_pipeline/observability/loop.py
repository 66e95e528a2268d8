"""How late the event loop runs: the sign that a process carries more calls than its core can.

One asyncio process serves all of its calls on one core. While their work fits,
every wait on the loop (a playout tick, a socket read, a timer) comes back on
time. Once it does not, every wait comes back late, for every call at once:
bot audio reaches the line after its play time (an audible gap), and each
turn's answer waits behind the others' work. Nothing in one call's pipeline
shows this as an error.

``LoopMonitor`` measures it directly. A task sleeps ``interval`` seconds at a
time and records how much later than asked it woke up: the loop's *lag*. An
idle or comfortably loaded loop lags well under a millisecond; a saturated one
by tens of milliseconds and more. The monitor keeps the lags of the last
``window`` seconds (bounded: one per interval) for :meth:`LoopMonitor.lag`,
and observes each one into the ``loop.lag`` histogram of a metrics registry
(seconds), so that the worker pool's merged metrics and the Prometheus export
show it too. It logs a warning when the lag over its window (p90) crosses
``warn_at`` and a line when it falls back under.

``TwilioServer`` runs one (``server.loop_monitor``) and refuses to place new
calls while the p90 lag exceeds its ``overload_lag``: the calls in progress
keep their core, and the refused call ends at once as ``retry_later``, which a
campaign retries later. The cost is one timer wake-up per interval (20 a
second by default) for the whole process.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from types import TracebackType

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.metrics import MetricsRegistry

__all__ = ["LAG_BUCKETS", "LOOP_LAG_METRIC", "LoopMonitor"]

#: The histogram each lag is observed into (seconds).
LOOP_LAG_METRIC = "loop.lag"
#: Its buckets' upper bounds (seconds): a loop on time lags well under a millisecond.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class LoopMonitor:
    """Measures the running event loop's lag; see the module docstring.

    ``interval``: seconds between measurements; ``window``: seconds of
    measurements :meth:`lag` looks at; ``registry``: where the ``loop.lag``
    histogram goes (None: nowhere); ``warn_at``: the p90 lag (seconds) above
    which a warning is logged (None: never); ``min_samples``: how many
    measurements the window must hold before the loop can count as late
    (:meth:`overloaded`, the warning), so that one stall (a start-up step, a
    collection) on a window of few measurements is not taken for a trend.
    One monitor per server: the server that stops it stops it for all.
    """

    def __init__(
        self,
        *,
        interval: float = 0.05,
        window: float = 5.0,
        registry: MetricsRegistry | None = None,
        warn_at: float | None = 0.05,
        min_samples: int = 10,
    ) -> None:
        if not 0.001 <= interval <= 10.0:
            raise ConfigurationError(f"LoopMonitor interval must be 0.001-10 s, got {interval!r}")
        if not interval <= window <= 3600.0:
            raise ConfigurationError(
                f"LoopMonitor window must be from the interval ({interval} s) to 3600 s, got {window!r}"
            )
        if warn_at is not None and not warn_at > 0:
            raise ConfigurationError(f"LoopMonitor warn_at must be > 0 s or None, got {warn_at!r}")
        if not 1 <= min_samples <= math.ceil(window / interval):
            raise ConfigurationError(
                f"LoopMonitor min_samples must be 1 to the window's {math.ceil(window / interval)} "
                f"measurements, got {min_samples!r}"
            )
        self.interval = interval
        self.min_samples = min_samples
        self.window = window
        self.registry = registry
        self.warn_at = warn_at
        #: (loop time of the measurement, lag in seconds), the last ``window`` seconds' worth.
        self._lags: deque[tuple[float, float]] = deque(maxlen=math.ceil(window / interval) + 1)
        #: The largest lag measured since the start.
        self.worst = 0.0
        #: Measurements taken since the start.
        self.measured = 0
        self._warned = False
        self._due = math.inf  # when the measurement under way should end (loop time)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopMonitor:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start measuring on the running loop (again after a stop: the window starts empty)."""
        if self.running:
            return
        self._lags.clear()
        self._warned = False
        self._due = math.inf
        self._task = asyncio.get_running_loop().create_task(self._measure(), name="loop-monitor")

    async def stop(self, timeout: float = 1.0) -> None:
        """Stop measuring; the measurements taken stay readable. Cancel-safe."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)

    def lag(self, quantile: float = 0.9) -> float:
        """The ``quantile`` of the lags measured over the last ``window`` seconds (0.0 before any).

        The measurement under way counts too once it is overdue, so a loop held
        longer than the window reads as late, not as a window without lags. The
        newest measurement stands until the next one, however old.
        """
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in 0..1, got {quantile!r}")
        lags = [lag for _, lag in self._recent()]
        if not lags:
            return 0.0
        lags.sort()
        return lags[max(0, math.ceil(quantile * len(lags)) - 1)]  # nearest rank

    def overloaded(self, threshold: float) -> bool:
        """Whether the p90 lag over the window exceeds ``threshold`` seconds, on at least ``min_samples``."""
        p90 = self._trend()
        return p90 is not None and p90 > threshold

    def _trend(self) -> float | None:
        """The p90 lag over the window; None while the window holds fewer than ``min_samples`` measurements."""
        p90 = self.lag(0.9)  # drops what left the window first, so the count below is the window's
        return p90 if len(self._lags) >= self.min_samples else None

    def _recent(self) -> list[tuple[float, float]]:
        """The window's measurements, with the one under way when it is overdue."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            return list(self._lags)  # read from outside the loop: the window as it stands
        lags = self._lags
        while len(lags) > 1 and lags[0][0] < now - self.window:
            lags.popleft()
        recent = list(lags)
        if self.running and now > self._due:
            recent.append((now, now - self._due))
        return recent

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = loop.time()
            lag, self._due = max(0.0, now - self._due), math.inf
            self._record(now, lag)

    def _record(self, now: float, lag: float) -> None:
        self._lags.append((now, lag))
        self.measured += 1
        self.worst = max(self.worst, lag)
        if self.registry is not None:
            self.registry.histogram(LOOP_LAG_METRIC, bounds=LAG_BUCKETS).observe(lag)
        if self.warn_at is None:
            return
        p90 = self._trend()
        if p90 is None:
            return
        if p90 > self.warn_at and not self._warned:
            self._warned = True
            logger.warning(
                "the event loop runs {:.0f} ms late (p90 over the last {:.0f} s, worst {:.0f} ms): "
                "this process has more work than its core can do on time",
                1000 * p90,
                self.window,
                1000 * max(lag for _, lag in self._recent()),
            )
        elif p90 <= self.warn_at / 2 and self._warned:
            self._warned = False
            logger.info("the event loop is on time again ({:.1f} ms late, p90)", 1000 * p90)
