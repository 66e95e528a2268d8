"""EspeakTTSService: local text-to-speech with the same frames as the Cartesia service.

    TextFrame / TTSSpeakFrame → TTSStartedFrame(cid), TTSWordTimestampsFrame(cid)*,
                                TTSAudioRawFrame(cid)*, TTSStoppedFrame(cid)

Turns mirror the Cartesia service's contexts: the sentences of one LLM
response (between ``LLMFullResponseStartFrame`` and ``LLMFullResponseEndFrame``)
are one context; a TextFrame outside a response and every ``TTSSpeakFrame``
are a context each. Each TextFrame is passed on downstream once queued for
synthesis (a ``TTSSpeakFrame`` passes on as a TextFrame), so the assistant
aggregator knows the full text. Contexts are spoken strictly one after the
other by one worker task; word timestamps are seconds from the start of the
context's audio.

espeak-ng renders at its native 22,050 Hz in a thread of the service's own
(never on the event loop); the audio is resampled to the pipeline's output
rate (``StartFrame.audio_out_sample_rate``, or ``sample_rate``) and pushed in
``frame_seconds`` pieces, each stamped with the epoch of the turn that opened
its context.

Interruption: every context is cancelled. A synthesis in progress stops at
its next 100 ms buffer, queued sentences are dropped, and no frame of the old
turn is pushed after the interruption.

Metrics (labels ``service=espeak``): ``latency.tts_ttfb`` (text received →
first audio pushed, per context), ``usage.tts_characters`` (per sentence;
free), ``service.request`` (per context).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from loguru import logger

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.services.offline.espeak import BOT_VOICE, EspeakSynthesizer, EspeakVoice, Synthesis

__all__ = ["EspeakSettings", "EspeakTTSService"]

SERVICE = "espeak"
_LABELS = {"service": SERVICE}


@dataclass(frozen=True)
class EspeakSettings:
    """``sample_rate`` None: the pipeline's output rate."""

    voice: EspeakVoice = field(default_factory=lambda: BOT_VOICE)
    sample_rate: int | None = None
    frame_seconds: float = 0.1
    #: Sentences waiting for synthesis; beyond it process_frame waits (backpressure).
    max_pending: int = 64
    #: How long EndFrame waits for queued speech to be pushed out.
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.sample_rate is not None and not 8000 <= self.sample_rate <= 48000:
            raise ConfigurationError(f"EspeakSettings.sample_rate must be 8000..48000 Hz, got {self.sample_rate}")
        if not 0.01 <= self.frame_seconds <= 1.0:
            raise ConfigurationError(f"EspeakSettings.frame_seconds must be 0.01..1 s, got {self.frame_seconds}")
        if self.max_pending < 1:
            raise ConfigurationError(f"EspeakSettings.max_pending must be >= 1, got {self.max_pending}")


class _Turn:
    """One TTS context: its id, the epoch that opened it, how far its audio got."""

    __slots__ = ("cancelled", "context_id", "epoch", "first_text_at", "position", "started")

    def __init__(self, context_id: str, epoch: int) -> None:
        self.context_id = context_id
        self.epoch = epoch
        self.cancelled = threading.Event()  # read by the synthesis thread
        self.started = False
        self.position = 0.0  # seconds of audio pushed so far
        self.first_text_at: float | None = None


@dataclass(slots=True)
class _Job:
    turn: _Turn
    text: str | None  # None: the context is complete
    received_at: float = 0.0


class EspeakTTSService(FrameProcessor):
    """Offline text-to-speech; see the module docstring."""

    def __init__(self, settings: EspeakSettings | None = None, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.settings = settings or EspeakSettings()
        self._synthesizer = EspeakSynthesizer(self.settings.voice)
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue(maxsize=self.settings.max_pending)
        self._turns: list[_Turn] = []
        self._open: _Turn | None = None
        self._in_response = False
        self._out_rate = self.settings.sample_rate or 16000
        self._ids = itertools.count(1)
        self._prefix = f"espeak-{uuid.uuid4().hex[:6]}"
        self._idle = asyncio.Event()
        self._idle.set()
        #: Characters synthesized (what the product would pay for with a cloud TTS).
        self.characters = 0

    # ------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, TextFrame):
            await self._on_text(frame)
            return
        if isinstance(frame, TTSSpeakFrame):
            await self._on_speak(frame)
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            self._in_response = True
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._in_response = False
            await self._close_open_turn()
        elif isinstance(frame, InterruptionFrame):
            self._cancel_all()
        elif isinstance(frame, StartFrame):
            self._out_rate = self.settings.sample_rate or frame.audio_out_sample_rate
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-synth")
            self.create_task(self._run(), "synthesis", essential=True)
        elif isinstance(frame, EndFrame):
            await self._close_open_turn()
            await self._drain_speech()
        elif isinstance(frame, CancelFrame):
            self._cancel_all()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        self._cancel_all()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -------------------------------------------------------------- turns

    def _new_turn(self) -> _Turn:
        turn = _Turn(f"{self._prefix}-{next(self._ids)}", self.handling_epoch)
        self._turns.append(turn)
        return turn

    async def _queue(self, turn: _Turn, text: str | None) -> None:
        self._idle.clear()
        await self._jobs.put(_Job(turn, text, time.monotonic()))

    async def _on_text(self, frame: TextFrame) -> None:
        if frame.text.strip():
            turn = self._open
            if turn is None or turn.epoch != self.handling_epoch or turn.cancelled.is_set():
                turn = self._new_turn()
                if self._in_response:
                    self._open = turn
            await self._queue(turn, frame.text)
            if turn is not self._open:
                await self._queue(turn, None)
        if not self.is_stale(frame):
            await self.push_frame(frame)

    async def _on_speak(self, frame: TTSSpeakFrame) -> None:
        if not frame.text.strip():
            return
        turn = self._new_turn()
        await self._queue(turn, frame.text)
        await self._queue(turn, None)
        if not self.is_stale(frame):
            await self.push_frame(TextFrame(frame.text))

    async def _close_open_turn(self) -> None:
        turn, self._open = self._open, None
        if turn is not None and not turn.cancelled.is_set():
            await self._queue(turn, None)

    def _cancel_all(self) -> None:
        for turn in self._turns:
            turn.cancelled.set()
        self._turns.clear()
        self._open = None
        self._in_response = False
        while not self._jobs.empty():
            self._jobs.get_nowait()
        if self._jobs.empty():
            self._idle.set()

    async def _drain_speech(self) -> None:
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                await self._idle.wait()
        except TimeoutError:
            logger.warning("{}: speech still pending after {:.1f}s at the end", self.name, self.settings.drain_timeout)
            self._cancel_all()

    # ------------------------------------------------------------- worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._jobs.get()
            try:
                await self._do(job, loop)
            finally:
                if self._jobs.empty():
                    self._idle.set()

    async def _do(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        turn = job.turn
        if turn.cancelled.is_set() or turn.epoch < self.epoch:
            return
        if not turn.started:
            turn.started = True
            turn.first_text_at = job.received_at
            await self._emit(turn, TTSStartedFrame(context_id=turn.context_id))
            await self._metric("service.request", 1)
        if job.text is None:
            await self._emit(turn, TTSStoppedFrame(context_id=turn.context_id))
            if turn in self._turns:
                self._turns.remove(turn)
            return
        text = job.text
        result: Synthesis = await loop.run_in_executor(self._executor, self._synthesize, text, turn)
        self.characters += len(text)
        await self._metric("usage.tts_characters", len(text), "characters")
        if turn.cancelled.is_set():
            return
        audio = _resample(result.audio, result.sample_rate, self._out_rate)
        offset = turn.position
        if result.words:
            words = tuple((w, round(offset + s, 3), round(offset + e, 3)) for w, s, e in result.words)
            await self._emit(turn, TTSWordTimestampsFrame(words=words, context_id=turn.context_id))
        step = 2 * int(self._out_rate * self.settings.frame_seconds)
        for start in range(0, len(audio), step):
            if turn.cancelled.is_set():
                return
            piece = audio[start : start + step]
            frame = TTSAudioRawFrame(piece, self._out_rate, context_id=turn.context_id)
            await self._emit(turn, frame)
            if turn.first_text_at is not None:
                await self._metric("latency.tts_ttfb", time.monotonic() - turn.first_text_at, "s")
                turn.first_text_at = None
        turn.position = offset + len(audio) / (2 * self._out_rate)

    def _synthesize(self, text: str, turn: _Turn) -> Synthesis:
        return self._synthesizer.synthesize(text, should_stop=turn.cancelled.is_set)

    async def _emit(self, turn: _Turn, frame: Frame) -> None:
        # The worker belongs to no turn: its frames carry the epoch of the turn that opened the context.
        frame.epoch = turn.epoch
        await self.push_frame(frame)

    async def _metric(self, metric: str, value: float, unit: str = "") -> None:
        await self.push_frame(MetricsFrame(metric=metric, value=value, unit=unit, processor=self.name, labels=_LABELS))


def _resample(audio: bytes, in_rate: int, out_rate: int) -> bytes:
    if in_rate == out_rate or not audio:
        return audio
    resampler = StreamResampler(in_rate, out_rate)
    return resampler.resample(audio) + resampler.flush()
