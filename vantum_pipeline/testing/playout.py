"""PlayoutMeter: what the callee would hear, in time, at the end of a pipeline.

A phone plays the bot's audio at real time from the moment it arrives; when
the next piece arrives after the previous one finished playing, the callee
hears a gap (dead air). ``PlayoutMeter`` sits where the output transport
would, passes every frame on, and keeps the playout clock of the TTS audio::

    meter = PlayoutMeter()
    async with PipelineHarness([tts, meter]) as harness: ...
    assert meter.longest_gap() < 0.5

A gap is measured only inside one TTS context (between its
``TTSStartedFrame`` and ``TTSStoppedFrame``): silence between turns is the
conversation, not a fault. An interruption resets the clock. ``first_audio``
records the arrival time of each context's first audio.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vantum_pipeline.frames import Frame, InterruptionFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
from vantum_pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["Gap", "PlayoutMeter"]


@dataclass(frozen=True, slots=True)
class Gap:
    context_id: str | None
    at: float  # seconds into the context's playout where the silence began
    seconds: float


@dataclass
class _Context:
    started_at: float
    play_end: float | None = None  # clock time the audio received so far finishes playing
    played: float = 0.0  # seconds of audio received
    gaps: list[Gap] = field(default_factory=list)


class PlayoutMeter(FrameProcessor):
    """Measures the gaps a real-time player would leave; see the module docstring."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, name: str | None = None) -> None:
        super().__init__(name=name)
        self._clock = clock
        self._contexts: dict[str | None, _Context] = {}
        self.gaps: list[Gap] = []
        #: (context id, clock time) of every audio frame.
        self.arrivals: list[tuple[str | None, float]] = []

    def longest_gap(self) -> float:
        return max((g.seconds for g in self.gaps), default=0.0)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        now = self._clock()
        if isinstance(frame, TTSStartedFrame):
            self._contexts[frame.context_id] = _Context(now)
        elif isinstance(frame, TTSAudioRawFrame):
            self.arrivals.append((frame.context_id, now))
            context = self._contexts.setdefault(frame.context_id, _Context(now))
            if context.play_end is not None and now > context.play_end:
                gap = Gap(frame.context_id, context.played, now - context.play_end)
                context.gaps.append(gap)
                self.gaps.append(gap)
            start = now if context.play_end is None else max(now, context.play_end)
            context.play_end = start + frame.duration
            context.played += frame.duration
        elif isinstance(frame, TTSStoppedFrame):
            self._contexts.pop(frame.context_id, None)
        elif isinstance(frame, InterruptionFrame):
            self._contexts.clear()
        await self.push_frame(frame, direction)
