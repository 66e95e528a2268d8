"""PocketsphinxSTTService: local speech-to-text with the same frames as the Deepgram service.

    InputAudioRawFrame → UserStartedSpeakingFrame, InterimTranscriptionFrame*,
                         TranscriptionFrame, EndOfTurnFrame, UserStoppedSpeakingFrame

The callee's audio (pcm16 at any rate, or 8 kHz μ-law passed through from the
phone) is converted to 16 kHz and fed to a ``PocketsphinxRecognizer`` built
at ``StartFrame`` from the campaign's expected phrases. Its events become:

- speech start → ``UserStartedSpeakingFrame`` and, while the bot speaks
  (``BotStartedSpeakingFrame`` … ``BotStoppedSpeakingFrame`` seen upstream),
  ``push_interruption()`` — both left to a local VAD once one announces
  itself with its own ``UserStartedSpeakingFrame`` (``defer_to_local_vad``);
- partial hypotheses → ``InterimTranscriptionFrame``;
- the final of an utterance (``endpointing`` seconds of silence, like
  Deepgram's ``speech_final``) → ``TranscriptionFrame`` (words with times in
  seconds of the audio received) then ``EndOfTurnFrame`` with the turn's
  text and confidence, ``low_confidence`` below ``min_confidence``, then
  ``UserStoppedSpeakingFrame``. An empty final (noise) only stops the user.
- A local VAD's ``UserStoppedSpeakingFrame`` finalizes the utterance at once
  (as ``Finalize`` does with Deepgram); so does ``EndFrame``.

Decoding is CPU work: it runs in a thread of the service's own, one batch of
audio at a time, never on the event loop. Audio waiting for the decoder is
bounded (``max_backlog`` seconds; the oldest is dropped beyond it, counted in
``dropped_seconds``).

Metrics (labels ``service=pocketsphinx``): ``latency.stt_final`` (arrival of
the audio holding the last word → final transcript), ``usage.stt_seconds``
(at the end; free), ``service.request`` (the stream), ``stt.low_confidence``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from loguru import logger

from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    MULAW,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.services.interruptions import InterruptionPolicy
from vantum_pipeline.services.offline.agent import SalesScript
from vantum_pipeline.services.offline.language_model import DomainLanguageModel
from vantum_pipeline.services.offline.recognizer import (
    SAMPLE_RATE,
    FinalTranscript,
    PartialTranscript,
    PocketsphinxRecognizer,
    RecognitionEvent,
    SpeechStarted,
)
from vantum_pipeline.services.stt import STTService
from vantum_pipeline.settings import InterruptionSettings

__all__ = ["PocketsphinxSTTService", "PocketsphinxSettings"]

SERVICE = "pocketsphinx"


@dataclass(frozen=True)
class PocketsphinxSettings:
    """What the recognizer expects to hear, and the Deepgram-like turn settings.

    ``phrases``: what callers say on this campaign (default: the sales
    script's callee phrases); ``pronunciations``: ARPAbet for words the CMU
    dictionary lacks. ``endpointing`` is seconds of silence ending an
    utterance (Deepgram's ``endpointing``, 300 ms in the product).
    """

    phrases: tuple[str, ...] = field(default_factory=lambda: SalesScript().callee_phrases)
    pronunciations: Mapping[str, str] = field(default_factory=lambda: dict(SalesScript().pronunciations))
    search: Literal["ngram", "grammar"] = "ngram"
    endpointing: float = 0.3
    interim_interval: float = 0.2
    min_confidence: float = 0.5
    interrupt_on_speech_started: bool = True
    #: When speech over the bot interrupts it (see ``InterruptionSettings``).
    interruptions: InterruptionSettings = field(default_factory=InterruptionSettings)
    speaking_frames: bool = True
    defer_to_local_vad: bool = True
    audio_passthrough: bool = False
    #: Audio waiting for the decoder beyond this many seconds is dropped (oldest first).
    max_backlog: float = 10.0
    #: How long EndFrame waits for the decoder to finish the audio it holds.
    drain_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not self.phrases:
            raise ConfigurationError("PocketsphinxSettings.phrases must list what callers may say")
        if not 0 <= self.min_confidence <= 1:
            raise ConfigurationError(
                f"PocketsphinxSettings.min_confidence must be in [0, 1], got {self.min_confidence}"
            )
        for name in ("max_backlog", "drain_timeout", "interim_interval"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"PocketsphinxSettings.{name} must be > 0, got {getattr(self, name)}")

    def build_model(self) -> DomainLanguageModel:
        return DomainLanguageModel.from_phrases(self.phrases, pronunciations=self.pronunciations)


class PocketsphinxSTTService(STTService):
    """Offline speech-to-text; see the module docstring."""

    service = SERVICE

    def __init__(
        self,
        settings: PocketsphinxSettings | None = None,
        *,
        model: DomainLanguageModel | None = None,
        interruption_policy: InterruptionPolicy | None = None,
        name: str | None = None,
    ) -> None:
        s = settings or PocketsphinxSettings()
        super().__init__(
            bytes_per_second=2 * SAMPLE_RATE,
            speaking_frames=s.speaking_frames,
            interrupt_on_speech_started=s.interrupt_on_speech_started,
            defer_to_local_vad=s.defer_to_local_vad,
            interruptions=s.interruptions,
            interruption_policy=interruption_policy,
            name=name,
        )
        self.settings = s
        self._model = model
        self._executor: ThreadPoolExecutor | None = None
        self._recognizer: PocketsphinxRecognizer | None = None
        self._ready = asyncio.Event()
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._audio = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._resampler: StreamResampler | None = None
        self._in_rate: int | None = None
        self._received = 0  # bytes of 16 kHz audio received
        self._finalize_wanted = False
        self._reported = 0
        self._failed = False
        #: Seconds of audio dropped because the decoder fell behind.
        self.dropped_seconds = 0.0
        #: Every final transcript, for records and tests.
        self.finals: list[FinalTranscript] = []

    # ------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame):
            self._on_audio(frame)
            await self.hear(frame)
            if self.settings.audio_passthrough:
                await self.push_frame(frame, direction)
            return
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._start()
            return
        if isinstance(
            frame, UserStartedSpeakingFrame | BotStartedSpeakingFrame | BotStoppedSpeakingFrame | InterruptionFrame
        ):
            await self.observe(frame)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            if frame.source != SERVICE:
                self._request_finalize()
        elif isinstance(frame, EndFrame):
            await self._drain_speech()
            await self._report_usage()
        elif isinstance(frame, CancelFrame):
            self._backlog.clear()
            self._backlog_bytes = 0
            if self._worker is not None:
                self._worker.cancel()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        if self._executor is not None:
            # The decoder thread finishes its current batch (milliseconds) on its own.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --------------------------------------------------------------- audio

    def _start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-decoder")
        self._worker = self.create_task(self._run(), "decoder", essential=True)

    def _on_audio(self, frame: InputAudioRawFrame) -> None:
        if frame.num_channels != 1:
            raise ConfigurationError(f"{self.name}: mono audio expected, got {frame.num_channels} channels")
        pcm = ulaw2lin(frame.audio) if frame.encoding == MULAW else frame.audio
        if self._in_rate != frame.sample_rate:
            self._in_rate = frame.sample_rate
            self._resampler = StreamResampler(frame.sample_rate, SAMPLE_RATE)
        assert self._resampler is not None
        pcm = self._resampler.resample(pcm)
        if not pcm:
            return
        self._received += len(pcm)
        self.audio_arrived(self._received)
        self._backlog.append(pcm)
        self._backlog_bytes += len(pcm)
        limit = int(self.settings.max_backlog * 2 * SAMPLE_RATE)
        while self._backlog_bytes > limit and len(self._backlog) > 1:
            dropped = self._backlog.popleft()
            self._backlog_bytes -= len(dropped)
            self.dropped_seconds += len(dropped) / (2 * SAMPLE_RATE)
            logger.warning("{}: the decoder fell behind: {:.2f}s of audio dropped", self.name, self.dropped_seconds)
        self._idle.clear()
        self._audio.set()

    def _request_finalize(self) -> None:
        self._finalize_wanted = True
        self._idle.clear()
        self._audio.set()

    async def _drain_speech(self) -> None:
        """At EndFrame: decode what is queued, then close the utterance in progress."""
        if self._worker is None or self._worker.done():
            return
        self._request_finalize()
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                await self._idle.wait()
        except TimeoutError:
            logger.warning("{}: decoder still busy after {:.1f}s at the end", self.name, self.settings.drain_timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            recognizer = await loop.run_in_executor(self._executor, self._build_recognizer)
        except Exception as exc:
            self._failed = True
            self._idle.set()
            await self.push_error(f"{self.name}: could not load the recognizer: {exc}", fatal=True, exception=exc)
            return
        self._recognizer = recognizer
        self._ready.set()
        await self.metric("service.request", 1)
        while True:
            await self._audio.wait()
            self._audio.clear()
            audio = b"".join(self._backlog)
            self._backlog.clear()
            self._backlog_bytes = 0
            finalize, self._finalize_wanted = self._finalize_wanted, False
            events = await loop.run_in_executor(self._executor, self._decode, recognizer, audio, finalize)
            for event in events:
                await self._on_event(event)
            if not self._backlog and not self._finalize_wanted:
                self._idle.set()

    def _build_recognizer(self) -> PocketsphinxRecognizer:
        s = self.settings
        model = self._model or s.build_model()
        return PocketsphinxRecognizer(
            model, search=s.search, endpoint_silence=s.endpointing, partial_interval=s.interim_interval
        )

    @staticmethod
    def _decode(recognizer: PocketsphinxRecognizer, audio: bytes, finalize: bool) -> list[RecognitionEvent]:
        events = recognizer.feed(audio) if audio else []
        if finalize:
            events.extend(recognizer.finish())
        return events

    # -------------------------------------------------------------- events

    async def _on_event(self, event: RecognitionEvent) -> None:
        if isinstance(event, SpeechStarted):
            await self.speech_started()
        elif isinstance(event, PartialTranscript):
            await self.push_transcript(InterimTranscriptionFrame(event.text, timestamp=event.start))
        elif isinstance(event, FinalTranscript):
            await self._on_final(event)

    async def _on_final(self, final: FinalTranscript) -> None:
        if not final.text:
            await self.user_stopped()
            return
        self.finals.append(final)
        await self.push_transcript(
            TranscriptionFrame(final.text, timestamp=final.start, confidence=final.confidence, words=final.words)
        )
        await self.measure_latency(final.words[-1][2])
        low = final.confidence < self.settings.min_confidence
        await self.end_turn(EndOfTurnFrame(final.text, confidence=final.confidence, low_confidence=low))

    # ------------------------------------------------------------- metrics

    async def _report_usage(self) -> None:
        seconds = (self._received - self._reported) / (2 * SAMPLE_RATE)
        if seconds > 0:
            self._reported = self._received
            await self.metric("usage.stt_seconds", seconds, "s")
