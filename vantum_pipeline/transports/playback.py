"""Where playback is: the line timeline of an output device, sans I/O.

An output transport writes audio a little ahead of real time; the device (a
sound card, Twilio's buffer on the far end of a websocket) plays it later. To
know what the listener actually heard we keep one *line timeline*: positions
are seconds of audio written since the last clear, and three sources say how
far playback got:

- the clock: audio written to an idle line starts playing at once and plays
  at real-time rate (plus a fixed device latency, if any);
- playback markers (Twilio ``mark``): a marker placed after the audio ending
  at position P is echoed when P has played, which pins the position down;
  between echoes the position is interpolated by the clock, never beyond the
  next marker still pending;
- a clear: the device drops what it holds; markers pending at that moment
  were not played (Twilio echoes them anyway: such echoes are ignored).

Every method takes ``now`` (seconds on a monotonic clock) so the class is a
pure state machine that tests can drive with made-up times.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["PlaybackTimeline", "Segment"]


@dataclass(slots=True, frozen=True)
class Segment:
    """The line positions ``[start, end)`` that one write occupied."""

    start: float
    end: float


class PlaybackTimeline:
    """Line position of one output device; see the module docstring.

    ``uses_markers``: whether the device echoes markers (then the heard
    position is bounded by the pending markers); ``latency``: seconds between
    writing to an idle line and the start of playback (device buffer);
    ``max_markers``: bound on pending markers (the oldest is forgotten, which
    only loses precision).
    """

    def __init__(self, *, uses_markers: bool, latency: float = 0.0, max_markers: int = 1024) -> None:
        self.uses_markers = uses_markers
        self.latency = latency
        self.max_markers = max_markers
        self.written = 0.0
        # Pacing anchor: playback reached ``_anchor_pos`` at ``_anchor_time``.
        self._anchor_pos = 0.0
        self._anchor_time = 0.0
        # Heard anchor: confirmed by a marker echo (or an idle-line write).
        self._heard_pos = 0.0
        self._heard_time = 0.0
        self._heard_floor = 0.0
        self._pending: OrderedDict[str, float] = OrderedDict()
        #: Echoes of markers we did not (or no longer) expect: after a clear.
        self.ignored_echoes = 0

    # ------------------------------------------------------------ queries

    def clock_position(self, now: float) -> float:
        """Playback position by the clock alone (used for pacing)."""
        return min(self.written, self._anchor_pos + max(0.0, now - self._anchor_time))

    def heard_position(self, now: float) -> float:
        """Best estimate of what has been played, never decreasing between clears."""
        if self.uses_markers:
            bound = next(iter(self._pending.values())) if self._pending else self.written
            elapsed = max(0.0, now - self._heard_time)
            position = min(bound, self._heard_pos + elapsed)
        else:
            position = min(self.written, self._anchor_pos + max(0.0, now - self._anchor_time - self.latency))
        self._heard_floor = max(self._heard_floor, min(position, self.written))
        return self._heard_floor

    def ahead(self, now: float) -> float:
        """Seconds of written audio the clock says are not played yet."""
        return self.written - self.clock_position(now)

    def next_write_time(self, lead: float) -> float:
        """When the next write is due so that at most ``lead`` seconds are queued."""
        return self._anchor_time + (self.written - self._anchor_pos) - lead

    def drained(self, now: float) -> bool:
        """Everything written has played (markers echoed, when used)."""
        if self.uses_markers:
            return not self._pending and self.heard_position(now) >= self.written - 1e-9
        return self.heard_position(now) >= self.written - 1e-9

    @property
    def pending_markers(self) -> int:
        return len(self._pending)

    # ----------------------------------------------------------- updates

    def write(self, duration: float, now: float) -> Segment:
        """Record a write of ``duration`` seconds; returns the positions it occupies."""
        if self.clock_position(now) >= self.written:
            # The line ran dry: this audio starts playing now, not when the
            # previous audio ended.
            self._anchor_pos = self.written
            self._anchor_time = now
            if not self._pending:
                self._heard_pos = self.written
                self._heard_time = now + self.latency
        start = self.written
        self.written += max(0.0, duration)
        return Segment(start, self.written)

    def add_marker(self, name: str) -> float:
        """Register a marker placed after everything written so far."""
        if len(self._pending) >= self.max_markers:
            self._pending.popitem(last=False)
        self._pending[name] = self.written
        return self.written

    def marker_echoed(self, name: str, now: float) -> bool:
        """A marker came back: the audio before it has played.

        Returns False (and counts it) for a marker we do not expect, such as
        one echoed because of a clear.
        """
        position = self._pending.get(name)
        if position is None:
            self.ignored_echoes += 1
            return False
        # Echoes come in order; an earlier pending one was lost: drop it too.
        while self._pending:
            first, _ = self._pending.popitem(last=False)
            if first == name:
                break
        if position >= self._heard_pos:
            self._heard_pos = position
            self._heard_time = now
        return True

    def clear(self, now: float) -> float:
        """The device dropped what it held. Returns the final heard position
        (to be read before the timeline restarts at zero)."""
        heard = self.heard_position(now)
        self.written = 0.0
        self._anchor_pos = 0.0
        self._anchor_time = now
        self._heard_pos = 0.0
        self._heard_time = now
        self._heard_floor = 0.0
        self._pending.clear()
        return heard
