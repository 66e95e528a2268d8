"""A circuit breaker per provider: the health that failover services route by.

A provider's breaker is an explicit state machine::

    CLOSED ──failure_threshold consecutive failures (or slow first bytes)──▶ OPEN
    OPEN ──open_seconds later, the next turn is let through as a probe──▶ HALF_OPEN
    HALF_OPEN ──the probe succeeds──▶ CLOSED
    HALF_OPEN ──the probe fails──▶ OPEN (for open_seconds again)

While OPEN the provider gets no turn; in HALF_OPEN one turn at a time (the
probe). A probe that neither succeeds nor fails within ``probe_timeout``
(interrupted by a barge-in, say) lets the next turn probe instead. A success
resets the count of consecutive failures; a fast first byte, the count of slow ones. Every transition is reported to
``on_change`` (the failover services turn it into the ``provider.state``
metric and a log line).

Sans-I/O: no task, no sleep; time comes from ``clock`` (monotonic seconds),
so tests drive it by hand.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from vantum_pipeline.errors import ConfigurationError

__all__ = ["BreakerSettings", "BreakerState", "CircuitBreaker"]


class BreakerState(enum.IntEnum):
    """Values of the ``provider.state`` metric."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """``failure_threshold`` consecutive failures open the breaker, as do
    ``slow_threshold`` consecutive first bytes slower than ``slow_first_byte``
    seconds (None: speed is not judged). ``open_seconds``: how long an open
    breaker keeps its provider out before a probe."""

    failure_threshold: int = 2
    slow_first_byte: float | None = None
    slow_threshold: int = 3
    open_seconds: float = 30.0
    probe_timeout: float = 15.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.slow_threshold < 1:
            raise ConfigurationError(
                f"failure_threshold and slow_threshold must be >= 1, got {self.failure_threshold}/{self.slow_threshold}"
            )
        if self.slow_first_byte is not None and self.slow_first_byte <= 0:
            raise ConfigurationError(f"slow_first_byte must be > 0 or None, got {self.slow_first_byte}")
        if self.open_seconds < 0 or self.probe_timeout <= 0:
            raise ConfigurationError(
                f"open_seconds must be >= 0 and probe_timeout > 0, got {self.open_seconds}/{self.probe_timeout}"
            )


_TRANSITIONS: dict[tuple[BreakerState, str], BreakerState] = {
    (BreakerState.CLOSED, "trip"): BreakerState.OPEN,
    (BreakerState.OPEN, "probe"): BreakerState.HALF_OPEN,
    (BreakerState.HALF_OPEN, "success"): BreakerState.CLOSED,
    (BreakerState.HALF_OPEN, "trip"): BreakerState.OPEN,
}


class CircuitBreaker:
    """One provider's breaker; see the module docstring."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitBreaker, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive
        self.slow = 0  # consecutive slow first bytes
        self.opened_at: float | None = None
        self.trips = 0
        self._probe_at: float | None = None
        self._clock = clock
        self._on_change = on_change

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state.name}>"

    def allows(self) -> bool:
        """Whether a new turn may go to this provider now. In OPEN past
        ``open_seconds``, or HALF_OPEN with no probe running, this claims the
        probe: call it only for a turn that will be sent."""
        now = self._clock()
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self.opened_at is not None and now - self.opened_at < self.settings.open_seconds:
                return False
            self._move("probe")
            self._probe_at = now
            return True
        if self._probe_at is None or now - self._probe_at >= self.settings.probe_timeout:
            self._probe_at = now
            return True
        return False

    @property
    def open_for(self) -> float:
        """Seconds since the breaker last opened (0 when closed)."""
        if self.state is BreakerState.CLOSED or self.opened_at is None:
            return 0.0
        return self._clock() - self.opened_at

    def record_success(self) -> None:
        """A turn completed (slowness is judged by ``record_first_byte`` alone)."""
        self.failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self._probe_at = None
            self._move("success")

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.settings.failure_threshold
        ):
            self._trip()

    def record_first_byte(self, seconds: float) -> None:
        """Judge a first byte's delay; slow ones count towards opening."""
        limit = self.settings.slow_first_byte
        if limit is None:
            return
        if seconds <= limit:
            self.slow = 0
            return
        self.slow += 1
        if self.state is BreakerState.CLOSED and self.slow >= self.settings.slow_threshold:
            self._trip()

    def _trip(self) -> None:
        self.opened_at = self._clock()
        self._probe_at = None
        self.trips += 1
        self._move("trip")

    def _move(self, event: str) -> None:
        old = self.state
        new = _TRANSITIONS.get((old, event))
        if new is None:
            return
        self.state = new
        if new is BreakerState.CLOSED:
            self.opened_at = None
        if self._on_change is not None:
            self._on_change(self, old, new)
