"""The campaign's wall clock, injectable.

Calling hours, retry delays and callbacks are decisions about wall-clock
time in the prospect's time zone; tests and the offline demo give the
runner a clock of their own so that "Tuesday 10:30 in New York" or "one
second before the clocks change" is a value, not a wait. Pacing and
timeouts use the event loop's monotonic clock, never this one.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

__all__ = ["Clock", "FrozenClock", "OffsetClock", "SystemClock"]


class Clock(Protocol):
    """Now, as an aware UTC datetime."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class OffsetClock:
    """The system clock shifted so that it read ``start`` when created: time
    runs at its real pace from a chosen moment (the demo's "Tuesday morning")."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("OffsetClock needs an aware datetime")
        self._offset = start - dt.datetime.now(dt.UTC)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self._offset


class FrozenClock:
    """A clock that moves only when told (tests)."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self._now = start.astimezone(dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)

    def set(self, when: dt.datetime) -> None:
        self._now = when.astimezone(dt.UTC)
