"""The demo's live transcript: who says what, as it happens.

``CallConsole`` prints timestamped lines (seconds since the demo started) to
a stream. It is fed from both sides of the call:

- ``stt_tap()``, a pass-through processor placed right after the bot's STT:
  the callee's interim and final transcripts as the bot hears them, and the
  barge-in (the InterruptionFrame every processor receives);
- ``tts_tap()``, placed right after the bot's TTS: each sentence the bot
  starts to say;
- ``callee_event(kind, text, at)``: the simulated callee's own view (what it
  heard of the bot, what it says, when it barges in);
- ``note(text)``: anything else (latencies, the outcome).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from vantum_pipeline.frames import (
    Frame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    TextFrame,
    TranscriptionFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["CallConsole"]


class CallConsole:
    """Timestamped lines on ``stream`` (None: print nothing, e.g. in tests)."""

    def __init__(self, stream: TextIO | None = sys.stdout, *, interims: bool = True) -> None:
        self.stream = stream
        self.interims = interims
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._last_interim = ""

    def _print(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:5.1f}s] {text}"
        self.lines.append(line)
        if self.stream is not None:
            print(line, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._print(text)

    def say(self, who: str, text: str) -> None:
        self._print(f"{who:<7} {text}")

    def callee_event(self, kind: str, text: str, at: float) -> None:
        if kind == "callee":
            self.say("CALLEE", text)
        elif kind == "barge_in":
            self.say("CALLEE", f"{text}   <- talks over the bot")
        elif kind == "bot":
            self._print(f"        (the callee heard: {text!r})")

    def stt_tap(self) -> FrameProcessor:
        return _SttTap(self)

    def tts_tap(self) -> FrameProcessor:
        return _TtsTap(self)

    def _interim(self, text: str) -> None:
        if self.interims and text and text != self._last_interim:
            self._last_interim = text
            self._print(f"        ... {text}")

    def _final(self, frame: TranscriptionFrame) -> None:
        self._last_interim = ""
        confidence = f", confidence {frame.confidence:.2f}" if frame.confidence is not None else ""
        self._print(f"        (the bot heard: {frame.text!r}{confidence})")


class _SttTap(FrameProcessor):
    def __init__(self, console: CallConsole) -> None:
        super().__init__(name="console-stt")
        self.console = console

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterimTranscriptionFrame):
            self.console._interim(frame.text)
        elif isinstance(frame, TranscriptionFrame):
            self.console._final(frame)
        elif isinstance(frame, InterruptionFrame):
            self.console._print("  ✂     barge-in: the bot stops talking")
        await self.push_frame(frame, direction)


class _TtsTap(FrameProcessor):
    def __init__(self, console: CallConsole) -> None:
        super().__init__(name="console-tts")
        self.console = console

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if type(frame) is TextFrame and direction is FrameDirection.DOWNSTREAM and frame.text.strip():
            self.console.say("BOT", frame.text.strip())
        await self.push_frame(frame, direction)
