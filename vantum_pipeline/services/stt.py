"""What every speech-to-text service shares, whatever its engine.

- the user-speaking state: ``UserStartedSpeakingFrame`` / ``UserStoppedSpeakingFrame``
  (``source`` = the service's name) when the engine hears speech start and
  the turn end, unless ``speaking_frames`` is off;
- barge-in: speech starting while the bot speaks (``BotStartedSpeakingFrame``
  … ``BotStoppedSpeakingFrame``, sent upstream by the output transport) calls
  ``push_interruption()``, unless ``interrupt_on_speech_started`` is off;
- deference to a local VAD: once a ``UserStartedSpeakingFrame`` from
  elsewhere comes through (``defer_to_local_vad``), the VAD owns the speaking
  frames and the interruptions, so they are not doubled;
- the end of a turn: ``EndOfTurnFrame`` after the user-stopped frame, with a
  log line and an ``stt.low_confidence`` metric when it is flagged;
- metrics labelled with the service, and ``latency.stt_final``: from the
  arrival of the audio holding the turn's last word to its final transcript.

A subclass calls ``track(frame)`` for the frames it sees, ``audio_arrived(end)``
for each chunk it sends to its engine, and ``speech_started()``,
``user_stopped()``, ``end_turn(frame)``, ``measure_latency(last_word_end)``
when its engine says so.
"""

from __future__ import annotations

import time
from collections import deque
from typing import ClassVar

from loguru import logger

from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndOfTurnFrame,
    Frame,
    MetricsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.processor import FrameProcessor

__all__ = ["STTService"]


class STTService(FrameProcessor):
    """Base of the speech-to-text services; see the module docstring."""

    #: The metric label and the ``source`` of the speaking frames this service emits.
    service: ClassVar[str] = "stt"

    def __init__(
        self,
        *,
        bytes_per_second: int,
        speaking_frames: bool = True,
        interrupt_on_speech_started: bool = True,
        defer_to_local_vad: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self._bytes_per_second = bytes_per_second
        self._speaking_frames = speaking_frames
        self._interrupt_on_speech_started = interrupt_on_speech_started
        self._defer_to_local_vad = defer_to_local_vad
        self._bot_speaking = False
        self._user_speaking = False
        self._local_vad = False
        # (end position of a chunk in bytes of the stream, when it arrived): bounded.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)
        self._labels = {"service": self.service}

    def track(self, frame: Frame) -> None:
        """Follow the bot's speaking state and a local VAD's presence."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, UserStartedSpeakingFrame):
            if self._defer_to_local_vad and not self._local_vad and frame.source != self.service:
                self._local_vad = True
                logger.debug("{}: a local VAD reports speech: its speaking frames are used", self.name)

    def audio_arrived(self, end: int) -> None:
        """Note that the stream's audio up to byte ``end`` has arrived now."""
        self._arrivals.append((end, time.monotonic()))

    async def speech_started(self) -> None:
        """The engine heard speech start: announce it, and barge in if the bot speaks."""
        if self._local_vad:
            return  # the VAD upstream already announced it (and interrupted)
        if self._speaking_frames and not self._user_speaking:
            self._user_speaking = True
            await self.push_frame(UserStartedSpeakingFrame(source=self.service))
        if self._interrupt_on_speech_started and self._bot_speaking:
            await self.push_interruption()

    async def user_stopped(self) -> None:
        """The user stopped speaking (announced once per start)."""
        if self._user_speaking:
            self._user_speaking = False
            await self.push_frame(UserStoppedSpeakingFrame(source=self.service))

    async def end_turn(self, frame: EndOfTurnFrame) -> None:
        """Close the user's turn: user stopped, then the turn's transcript."""
        await self.user_stopped()
        if frame.low_confidence:
            logger.info("{}: low-confidence turn ({:.2f}): {!r}", self.name, frame.confidence or 0.0, frame.text)
            await self.metric("stt.low_confidence", 1)
        await self.push_frame(frame)

    async def metric(self, metric: str, value: float, unit: str = "") -> None:
        await self.push_frame(
            MetricsFrame(metric=metric, value=value, unit=unit, processor=self.name, labels=self._labels)
        )

    async def measure_latency(self, last_word_end: float) -> None:
        """``latency.stt_final``: from the arrival of the audio holding the word
        ending at ``last_word_end`` seconds of the stream to now."""
        position = last_word_end * self._bytes_per_second
        for end, arrived in self._arrivals:
            if end >= position:
                await self.metric("latency.stt_final", max(0.0, time.monotonic() - arrived), "s")
                return
