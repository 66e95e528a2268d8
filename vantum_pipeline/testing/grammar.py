"""Check a frame sequence against the stream grammar of ``vantum_pipeline.frames``.

    violations = check_stream(harness.downstream)
    assert violations == []

or put a ``GrammarChecker`` between two processors and read its
``violations`` afterwards. The rules, per direction (downstream):

- ``StartFrame`` comes first;
- nothing in band follows ``EndFrame``, nothing at all follows ``CancelFrame``;
- ``LLMFullResponseStartFrame`` … ``LLMFullResponseEndFrame`` and
  ``TTSStartedFrame`` … ``TTSStoppedFrame`` do not nest with themselves and
  close what they opened; ``LLMTextFrame`` only inside a response and
  ``TTSAudioRawFrame`` only inside speech;
- an ``InterruptionFrame`` closes every open bracket.
"""

from __future__ import annotations

from collections.abc import Iterable

from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["GrammarChecker", "StreamGrammar", "check_stream"]


class StreamGrammar:
    """Incremental checker: feed frames one by one, read ``violations``."""

    def __init__(self, *, require_start: bool = True) -> None:
        self.violations: list[str] = []
        self._started = not require_start
        self._ended = False
        self._cancelled = False
        self._in_response = False
        self._in_speech = False

    def _fail(self, frame: Frame, why: str) -> None:
        self.violations.append(f"{frame.tag}: {why}")

    def feed(self, frame: Frame) -> None:
        if self._cancelled:
            self._fail(frame, "after CancelFrame")
            return
        if isinstance(frame, StartFrame):
            if self._started:
                self._fail(frame, "second StartFrame")
            self._started = True
            return
        if not self._started:
            self._fail(frame, "before StartFrame")
        if isinstance(frame, CancelFrame):
            self._cancelled = True
            return
        if frame.in_band and self._ended:
            self._fail(frame, "in band after EndFrame")
        if isinstance(frame, EndFrame):
            self._ended = True
        elif isinstance(frame, InterruptionFrame):
            self._in_response = self._in_speech = False
        elif isinstance(frame, LLMFullResponseStartFrame):
            if self._in_response:
                self._fail(frame, "response started inside a response")
            self._in_response = True
        elif isinstance(frame, LLMFullResponseEndFrame):
            if not self._in_response:
                self._fail(frame, "response end without a start")
            self._in_response = False
        elif isinstance(frame, LLMTextFrame):
            if not self._in_response:
                self._fail(frame, "LLM text outside a response")
        elif isinstance(frame, TTSStartedFrame):
            if self._in_speech:
                self._fail(frame, "TTS started inside speech")
            self._in_speech = True
        elif isinstance(frame, TTSStoppedFrame):
            if not self._in_speech:
                self._fail(frame, "TTS stopped without a start")
            self._in_speech = False
        elif isinstance(frame, TTSAudioRawFrame):
            if not self._in_speech:
                self._fail(frame, "TTS audio outside TTSStarted/TTSStopped")


def check_stream(frames: Iterable[Frame], *, require_start: bool = True) -> list[str]:
    """The grammar violations of a downstream frame sequence (empty when none)."""
    grammar = StreamGrammar(require_start=require_start)
    for frame in frames:
        grammar.feed(frame)
    return grammar.violations


class GrammarChecker(FrameProcessor):
    """Pass-through processor that checks the downstream frames it sees."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self._grammar = StreamGrammar()

    @property
    def violations(self) -> list[str]:
        return self._grammar.violations

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            self._grammar.feed(frame)
        await self.push_frame(frame, direction)
