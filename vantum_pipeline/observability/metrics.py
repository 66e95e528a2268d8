"""In-process metrics: counters and histograms per service, and a snapshot.

One ``MetricsRegistry`` per process (or per test). A series is a metric name
and a service, e.g. ``("service.request", "openai")`` or
``("latency.llm_ttft", "openai")``. Counters only go up; histograms keep a
count, a sum, fixed buckets (what Prometheus needs) and the most recent
values (for percentiles in the snapshot).

    registry = MetricsRegistry()
    registry.counter("service.request", "openai").inc()
    registry.histogram("latency.llm_ttft", "openai").observe(0.42)
    registry.snapshot()["error_rate"]["openai"]

The names the services emit (as ``MetricsFrame``) are listed below;
``MetricsCollector`` (collector.py) turns frames into these series.

Thread-safe: the Prometheus exporter reads it from its own thread. Bounded:
at most ``max_series`` series; beyond that, new series are folded into the
service ``"other"`` and counted in ``dropped_series``.

Across processes: ``process_registry()`` is the process's own registry (a
``TwilioWorkerPool`` worker's pipelines feed it through their collectors);
``export()`` gives a registry's state as plain data and ``merge()`` adds such
a state to another registry: counters and histogram counts, sums and buckets
add up, extremes combine, and the recent values (for percentiles) are pooled,
the newest kept.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "LATENCY_BUCKETS",
    "Counter",
    "Histogram",
    "HistogramSummary",
    "MetricsRegistry",
    "process_registry",
]

# Names carried by MetricsFrame.metric (see the brief's contract).
USAGE_STT_SECONDS: Final = "usage.stt_seconds"
USAGE_LLM_PROMPT_TOKENS: Final = "usage.llm_prompt_tokens"
USAGE_LLM_COMPLETION_TOKENS: Final = "usage.llm_completion_tokens"
USAGE_TTS_CHARACTERS: Final = "usage.tts_characters"
USAGE_CALL_SECONDS: Final = "usage.call_seconds"
LATENCY_STT_FINAL: Final = "latency.stt_final"
LATENCY_LLM_TTFT: Final = "latency.llm_ttft"
LATENCY_TTS_TTFB: Final = "latency.tts_ttfb"
LATENCY_VOICE_TO_VOICE: Final = "latency.voice_to_voice"
SERVICE_REQUEST: Final = "service.request"
SERVICE_ERROR: Final = "service.error"
SERVICE_RATE_LIMITED: Final = "service.rate_limited"
SERVICE_RETRY: Final = "service.retry"
STT_LOW_CONFIDENCE: Final = "stt.low_confidence"
PROTOCOL_MALFORMED: Final = "protocol.malformed"
#: A turn moved from one provider to another (labels ``from``, ``to``, ``kind``).
PROVIDER_SWITCH: Final = "provider.switch"
#: A provider's circuit breaker changed state: 0 closed, 1 half-open, 2 open.
PROVIDER_STATE: Final = "provider.state"
#: Cost in US dollars, per service (the collector adds it from usage).
COST_USD: Final = "cost.usd"

USAGE_PREFIX: Final = "usage."
LATENCY_PREFIX: Final = "latency."

#: Seconds; spans an STT final (~0.1 s) to a slow voice-to-voice (~5 s).
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

OTHER_SERVICE: Final = "other"


class Counter:
    """A monotonically increasing value."""

    __slots__ = ("_lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0 or math.isnan(amount):
            raise ValueError(f"a counter only goes up, got {amount}")
        with self._lock:
            self.value += amount


@dataclass(frozen=True, slots=True)
class HistogramSummary:
    count: int
    sum: float
    min: float | None
    max: float | None
    mean: float | None
    p50: float | None
    p95: float | None
    #: Cumulative counts per upper bound (``math.inf`` last), for exporters.
    buckets: tuple[tuple[float, int], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "p50": self.p50,
            "p95": self.p95,
        }


class Histogram:
    """Observations of one quantity; ``recent`` values kept for percentiles."""

    __slots__ = ("_bounds", "_counts", "_lock", "_recent", "count", "max", "min", "sum")

    def __init__(self, lock: threading.Lock, bounds: tuple[float, ...] = LATENCY_BUCKETS, recent: int = 1024) -> None:
        self._lock = lock
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._recent: deque[float] = deque(maxlen=recent)
        self.count = 0
        self.sum = 0.0
        self.min: float | None = None
        self.max: float | None = None

    def observe(self, value: float) -> None:
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        with self._lock:
            self._counts[bisect.bisect_left(self._bounds, value)] += 1
            self._recent.append(value)
            self.count += 1
            self.sum += value
            self.min = value if self.min is None else min(self.min, value)
            self.max = value if self.max is None else max(self.max, value)

    def export(self) -> dict[str, Any]:
        with self._lock:
            return {
                "bounds": self._bounds,
                "counts": list(self._counts),
                "recent": list(self._recent),
                "count": self.count,
                "sum": self.sum,
                "min": self.min,
                "max": self.max,
            }

    def merge(self, state: Mapping[str, Any]) -> None:
        """Add another histogram's ``export()``; its buckets must be these."""
        if tuple(state["bounds"]) != self._bounds:
            raise ValueError(f"cannot merge a histogram with buckets {tuple(state['bounds'])} into {self._bounds}")
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, state["counts"], strict=True)]
            self._recent.extend(state["recent"])
            self.count += state["count"]
            self.sum += state["sum"]
            for name, pick in (("min", min), ("max", max)):
                theirs, ours = state[name], getattr(self, name)
                if theirs is not None:
                    setattr(self, name, theirs if ours is None else pick(ours, theirs))

    def summary(self) -> HistogramSummary:
        with self._lock:
            recent = sorted(self._recent)
            counts = list(self._counts)
            count, total, low, high = self.count, self.sum, self.min, self.max
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self._bounds, math.inf), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramSummary(
            count=count,
            sum=total,
            min=low,
            max=high,
            mean=total / count if count else None,
            p50=_percentile(recent, 0.50),
            p95=_percentile(recent, 0.95),
            buckets=tuple(cumulative),
        )


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ordered list."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class MetricsRegistry:
    """Counters and histograms keyed by (name, service)."""

    def __init__(self, *, max_series: int = 2000) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}
        self._max_series = max_series
        #: Series refused by the ``max_series`` bound (folded into "other").
        self.dropped_series = 0

    def counter(self, name: str, service: str = "") -> Counter:
        key = (name, service)
        found = self._counters.get(key)
        if found is not None:
            return found
        with self._lock:
            key = self._bounded_key(key, self._counters)
            found = self._counters.get(key)
            if found is None:
                found = self._counters[key] = Counter(self._lock)
            return found

    def histogram(self, name: str, service: str = "", bounds: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        """The histogram ``(name, service)``; ``bounds``: its buckets' upper bounds when this call creates it."""
        key = (name, service)
        found = self._histograms.get(key)
        if found is not None:
            return found
        with self._lock:
            key = self._bounded_key(key, self._histograms)
            found = self._histograms.get(key)
            if found is None:
                found = self._histograms[key] = Histogram(self._lock, bounds)
            return found

    def _bounded_key(self, key: tuple[str, str], table: dict[tuple[str, str], Any]) -> tuple[str, str]:
        if key in table or len(self._counters) + len(self._histograms) < self._max_series:
            return key
        self.dropped_series += 1
        return (key[0], OTHER_SERVICE)

    def value(self, name: str, service: str = "") -> float:
        """A counter's value (0 when it was never incremented)."""
        found = self._counters.get((name, service))
        return 0.0 if found is None else found.value

    def error_rate(self, service: str) -> float | None:
        """Lifetime errors / requests of ``service`` (None before any request)."""
        requests = self.value(SERVICE_REQUEST, service)
        if not requests:
            return None
        return min(1.0, self.value(SERVICE_ERROR, service) / requests)

    def counters(self) -> dict[tuple[str, str], float]:
        with self._lock:
            return {key: counter.value for key, counter in self._counters.items()}

    def histograms(self) -> dict[tuple[str, str], HistogramSummary]:
        with self._lock:
            items = list(self._histograms.items())
        return {key: histogram.summary() for key, histogram in items}

    def export(self) -> dict[str, Any]:
        """The registry's state as plain data (picklable), for ``merge`` in another process."""
        with self._lock:
            counters = {key: counter.value for key, counter in self._counters.items()}
            histograms = list(self._histograms.items())
        return {
            "counters": counters,
            "histograms": {key: histogram.export() for key, histogram in histograms},
            "dropped_series": self.dropped_series,
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        """Add another registry's ``export()`` to this one (see the module docstring)."""
        for (name, service), value in state["counters"].items():
            if value:
                self.counter(name, service).inc(value)
        for (name, service), histogram in state["histograms"].items():
            self.histogram(name, service, tuple(histogram["bounds"])).merge(histogram)
        self.dropped_series += state["dropped_series"]

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serializable view::

        {"counters": {"service.request": {"openai": 12.0}, ...},
         "histograms": {"latency.llm_ttft": {"openai": {"count": 3, "mean": ..., "p95": ...}}},
         "error_rate": {"openai": 0.0833}}
        """
        counters: dict[str, dict[str, float]] = {}
        for (name, service), value in self.counters().items():
            counters.setdefault(name, {})[service] = value
        histograms: dict[str, dict[str, dict[str, Any]]] = {}
        for (name, service), summary in self.histograms().items():
            histograms.setdefault(name, {})[service] = summary.as_dict()
        error_rate: dict[str, float] = {}
        for service in counters.get(SERVICE_REQUEST, {}):
            rate = self.error_rate(service)
            if rate is not None:
                error_rate[service] = rate
        return {"counters": counters, "histograms": histograms, "error_rate": error_rate}


_process_registry: MetricsRegistry | None = None


def process_registry() -> MetricsRegistry:
    """This process's registry, made on first use: what a pool worker's pipelines report to."""
    global _process_registry
    if _process_registry is None:
        _process_registry = MetricsRegistry()
    return _process_registry
