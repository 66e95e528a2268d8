"""What every speech-to-text service shares, whatever its engine.

- the user-speaking state: ``UserStartedSpeakingFrame`` / ``UserStoppedSpeakingFrame``
  (``source`` = the service's name) when the engine hears speech start and
  the turn end, unless ``speaking_frames`` is off;
- barge-in, judged by an interruption policy (``services/interruptions.py``;
  settings in ``InterruptionSettings``): speech starting while the bot speaks
  (``BotStartedSpeakingFrame`` … ``BotStoppedSpeakingFrame``, sent upstream by
  the output transport) is followed, on the input audio's level and the
  transcripts, until the policy fires: then ``push_interruption()``. Until
  then the bot keeps talking. A turn over the bot made only of backchannels
  ("mm-hmm", "right") leaves as an ``EndOfTurnFrame`` flagged
  ``backchannel`` (not a turn: the conversation layer does not answer it).
  After an interruption that no words follow (a cough, a click, only a
  backchannel), a ``FalseInterruptionFrame`` goes downstream: the
  conversation layer resumes the cut reply. Metrics:
  ``latency.barge_in_decision`` (speech start to the decision, labelled
  ``decision``), ``interruption.backchannel``, ``interruption.false``.
  ``interrupt_on_speech_started`` off: no barge-in at all;
- deference to a local VAD: once a ``UserStartedSpeakingFrame`` from
  elsewhere comes through (``defer_to_local_vad``), the VAD owns the speaking
  frames, and its speech starts are the ones judged (a VAD that interrupts by
  itself makes the policy "at once": build it with ``interrupt_bot=False``);
- the end of a turn: ``EndOfTurnFrame`` after the user-stopped frame, with a
  log line and an ``stt.low_confidence`` metric when it is flagged;
- metrics labelled with the service, and ``latency.stt_final``: from the
  arrival of the audio holding the turn's last word to its final transcript.

A subclass calls ``await observe(frame)`` for the speaking and interruption
frames it sees, ``await hear(frame)`` for each input audio frame,
``audio_arrived(end)`` for each chunk it sends to its engine,
``push_transcript(frame)`` for its interim and final transcripts, and
``speech_started()``, ``user_stopped()``, ``end_turn(frame)``,
``measure_latency(last_word_end)`` when its engine says so.
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
    FalseInterruptionFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    MetricsFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.processor import FrameProcessor
from vantum_pipeline.services.interruptions import (
    BargeInJudge,
    InterruptionPolicy,
    Verdict,
    judge_from_settings,
    level_dbfs,
)
from vantum_pipeline.settings import InterruptionSettings

__all__ = ["STTService"]


class STTService(FrameProcessor):
    """Base of the speech-to-text services; see the module docstring.

    ``interruptions``: the barge-in settings (default: the phone policy);
    ``interruption_policy``: a policy object that replaces the one the
    settings name (thresholds, backchannels and resume still come from them).
    """

    #: The metric label and the ``source`` of the speaking frames this service emits.
    service: ClassVar[str] = "stt"

    def __init__(
        self,
        *,
        bytes_per_second: int,
        speaking_frames: bool = True,
        interrupt_on_speech_started: bool = True,
        defer_to_local_vad: bool = True,
        interruptions: InterruptionSettings | None = None,
        interruption_policy: InterruptionPolicy | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self._bytes_per_second = bytes_per_second
        self._speaking_frames = speaking_frames
        self._interrupt_on_speech_started = interrupt_on_speech_started
        self._defer_to_local_vad = defer_to_local_vad
        self.interruptions = interruptions if interruptions is not None else InterruptionSettings()
        self.judge: BargeInJudge = judge_from_settings(self.interruptions, interruption_policy)
        # Levels are only needed to time speech and to notice a false interruption.
        self._needs_levels = not self.judge.policy.immediate or self.judge.resume
        self._user_speaking = False
        self._local_vad = False
        self._clock = 0.0  # seconds of input audio heard: the judge's clock
        self._speech_started_at: float | None = None  # monotonic, for the decision latency
        # (end position of a chunk in bytes of the stream, when it arrived): bounded.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)
        self._labels = {"service": self.service}

    @property
    def _bot_speaking(self) -> bool:
        return self.judge.bot_speaking

    async def observe(self, frame: Frame) -> None:
        """Follow the bot's speaking state, a local VAD, and interruptions."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self.judge.bot_started()
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.judge.bot_stopped()
        elif isinstance(frame, InterruptionFrame):
            self.judge.interrupted(self._clock)
        elif isinstance(frame, UserStartedSpeakingFrame) and frame.source != self.service:
            if self._defer_to_local_vad and not self._local_vad:
                self._local_vad = True
                logger.debug("{}: a local VAD reports speech: its speaking frames are used", self.name)
            if self._local_vad:
                await self._judge_speech_start()

    async def hear(self, frame: InputAudioRawFrame) -> None:
        """One frame of the user's audio: the judge's clock and speech timing."""
        self._clock += frame.duration
        if not self._interrupt_on_speech_started or not self._needs_levels or not self.judge.wants_audio:
            return
        verdict = self.judge.audio(self._clock, level_dbfs(frame.audio, frame.encoding), frame.duration)
        if verdict is not Verdict.NONE:  # nearly every frame: no coroutine to make and await
            await self._act(verdict)

    def audio_arrived(self, end: int) -> None:
        """Note that the stream's audio up to byte ``end`` has arrived now."""
        self._arrivals.append((end, time.monotonic()))

    async def speech_started(self) -> None:
        """The engine heard speech start: announce it, and judge it if the bot speaks."""
        if self._local_vad:
            return  # the VAD upstream already announced it (and it is the one judged)
        if self._speaking_frames and not self._user_speaking:
            self._user_speaking = True
            await self.push_frame(UserStartedSpeakingFrame(source=self.service))
        await self._judge_speech_start()

    async def push_transcript(self, frame: InterimTranscriptionFrame | TranscriptionFrame) -> None:
        """Push an interim or final transcript; the judge weighs its words."""
        await self.push_frame(frame)
        if self._interrupt_on_speech_started and self.judge.active:
            final = isinstance(frame, TranscriptionFrame)
            await self._act(self.judge.transcript(frame.text, final=final, now=self._clock))

    async def user_stopped(self) -> None:
        """The user stopped speaking (announced once per start); speech that gave
        no words at all ends here for the judge."""
        if self._user_speaking:
            self._user_speaking = False
            await self.push_frame(UserStoppedSpeakingFrame(source=self.service))
        if self.judge.active:
            await self._act(self.judge.turn_ended("", self._clock))

    async def end_turn(self, frame: EndOfTurnFrame) -> None:
        """Close the user's turn: user stopped, then the turn's transcript
        (flagged ``backchannel`` when it was one, over the bot)."""
        verdict = Verdict.NONE
        if self.judge.active:
            frame.backchannel = self.judge.turn_is_backchannel(frame.text)
            verdict = self.judge.turn_ended(frame.text, self._clock)
        if verdict is Verdict.INTERRUPT:
            # Words the policy let through while they were said: the callee has
            # finished and waits for an answer, so the bot stops now.
            await self._act(verdict)
            verdict = Verdict.NONE
        if self._user_speaking:
            self._user_speaking = False
            await self.push_frame(UserStoppedSpeakingFrame(source=self.service))
        if frame.low_confidence and not frame.backchannel:
            logger.info("{}: low-confidence turn ({:.2f}): {!r}", self.name, frame.confidence or 0.0, frame.text)
            await self.metric("stt.low_confidence", 1)
        await self.push_frame(frame)
        await self._act(verdict)

    async def metric(self, metric: str, value: float, unit: str = "", **labels: str) -> None:
        await self.push_frame(
            MetricsFrame(
                metric=metric,
                value=value,
                unit=unit,
                processor=self.name,
                labels={**self._labels, **labels} if labels else self._labels,
            )
        )

    async def measure_latency(self, last_word_end: float) -> None:
        """``latency.stt_final``: from the arrival of the audio holding the word
        ending at ``last_word_end`` seconds of the stream to now."""
        position = last_word_end * self._bytes_per_second
        for end, arrived in self._arrivals:
            if end >= position:
                await self.metric("latency.stt_final", max(0.0, time.monotonic() - arrived), "s")
                return

    # ------------------------------------------------------------ barge-in

    async def _judge_speech_start(self) -> None:
        if not self._interrupt_on_speech_started:
            return
        was_active = self.judge.active
        verdict = self.judge.speech_started(self._clock)
        if self.judge.active and not was_active:
            self._speech_started_at = time.monotonic()
        await self._act(verdict)

    async def _act(self, verdict: Verdict) -> None:
        if verdict is Verdict.NONE:
            return
        await self._decided(verdict)
        if verdict is Verdict.INTERRUPT:
            await self.push_interruption()
            self.judge.interrupted(self._clock)
        elif verdict is Verdict.BACKCHANNEL:
            await self.metric("interruption.backchannel", 1)
        elif verdict is Verdict.FALSE_INTERRUPTION:
            logger.debug("{}: no words after the interruption: the bot resumes", self.name)
            await self.metric("interruption.false", 1)
            await self.push_frame(FalseInterruptionFrame(lead_in_words=self.interruptions.resume_lead_in_words))

    async def _decided(self, verdict: Verdict) -> None:
        started, self._speech_started_at = self._speech_started_at, None
        if started is not None and verdict is not Verdict.FALSE_INTERRUPTION:
            await self.metric(
                "latency.barge_in_decision", max(0.0, time.monotonic() - started), "s", decision=verdict.value
            )
