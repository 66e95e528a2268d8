"""EspeakTTSService: local text-to-speech with the same frames as the Cartesia service.

An engine of the ``TTSService`` skeleton (``services/tts.py``): turns, output
order, fallback and cache are the same code as the Cartesia service's; the
last resort of a ``FailoverTTSService``, since it needs no network.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import PCM16, StartFrame
from vantum_pipeline.services.offline.espeak import BOT_VOICE, EspeakSynthesizer, EspeakVoice, Synthesis
from vantum_pipeline.services.tts import TTSService, TTSTiming, TTSTurn, TurnState
from vantum_pipeline.services.tts_cache import TTSCacheKey

__all__ = ["EspeakSettings", "EspeakTTSService"]

SERVICE = "espeak"


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


@dataclass(slots=True)
class _Job:
    turn: TTSTurn
    attempt: int
    text: str | None  # None: the context is complete


class EspeakTTSService(TTSService):
    """Offline text-to-speech; see the module docstring."""

    service: ClassVar[str] = SERVICE
    speak_passed_as: ClassVar[str] = "text"

    def __init__(self, settings: EspeakSettings | None = None, *, name: str | None = None) -> None:
        self.settings = settings or EspeakSettings()
        # Local synthesis is never late and never fails for a retry to help.
        timing = TTSTiming(max_retries=0, first_audio_timeout=None, stall_timeout=None,
                           drain_timeout=self.settings.drain_timeout)  # fmt: skip
        super().__init__(timing=timing, name=name)
        self._synthesizer = EspeakSynthesizer(self.settings.voice)
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue(maxsize=self.settings.max_pending)
        self._out_rate = self.settings.sample_rate or 16000

    @property
    def characters(self) -> int:
        """Characters synthesized (what the product would pay for with a cloud TTS)."""
        return self.characters_sent

    def output_format(self) -> tuple[int, str]:
        return self._out_rate, PCM16

    def audio_format(self) -> tuple[int, str]:
        return self._synthesizer.sample_rate, PCM16

    def cache_key(self, text: str) -> TTSCacheKey:
        voice = self.settings.voice
        return TTSCacheKey(text.strip(), repr(voice), "espeak-ng", PCM16, self._out_rate, 1.0)

    async def on_start(self, frame: StartFrame) -> None:
        self._out_rate = self.settings.sample_rate or frame.audio_out_sample_rate
        await self.engine_start()

    # ------------------------------------------------------------- engine

    async def engine_start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-synth")
            self.create_task(self._run(), "synthesis", essential=True)

    async def engine_close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def open_attempt(self, turn: TTSTurn) -> None:
        if self._executor is None:
            raise ServiceError("the synthesis worker is not running", service=SERVICE, retryable=False)

    async def send_text(self, turn: TTSTurn, transcript: str) -> None:
        await self._jobs.put(_Job(turn, turn.attempt, transcript.strip()))

    async def send_end(self, turn: TTSTurn) -> None:
        await self._jobs.put(_Job(turn, turn.attempt, None))

    def abandon_attempt(self, turn: TTSTurn, error: ServiceError | None) -> None:
        """Nothing to cancel remotely: the worker skips jobs of an abandoned attempt
        and a synthesis in progress stops at its next 100 ms buffer."""

    # ------------------------------------------------------------- worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._jobs.get()
            try:
                await self._do(job, loop)
            except ServiceError as exc:
                job.turn.host.tts_failed(job.turn, exc)

    def _current(self, job: _Job) -> bool:
        turn = job.turn
        return turn.state is TurnState.LIVE and turn.provider is self and turn.attempt == job.attempt

    async def _do(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        turn = job.turn
        if not self._current(job):
            return
        if job.text is None:
            await turn.host.tts_done(turn)
            return
        text = job.text
        try:
            result: Synthesis = await loop.run_in_executor(self._executor, self._synthesize, text, job)
        except RuntimeError as exc:  # espeak-ng failed, or the executor is shut down
            raise ServiceError(f"espeak-ng failed: {exc}", service=SERVICE, retryable=False) from exc
        if not self._current(job):
            return
        position = turn.attempt_position
        if result.words:
            await turn.host.tts_words(turn, tuple((w, round(position + s, 3), round(position + e, 3))
                                                  for w, s, e in result.words))  # fmt: skip
        step = 2 * int(result.sample_rate * self.settings.frame_seconds)
        for start in range(0, len(result.audio), step):
            if not self._current(job):
                return
            await turn.host.tts_audio(turn, result.audio[start : start + step], result.sample_rate, PCM16)
        turn.host.tts_sentence_done(turn)

    def _synthesize(self, text: str, job: _Job) -> Synthesis:
        return self._synthesizer.synthesize(text, should_stop=lambda: not self._current(job))
