"""OpenAI text-to-speech (``/v1/audio/speech``) on the openai SDK.

    OpenAITTSService(OpenAITTSSettings.from_env(), name="openai-tts")

An engine of the ``TTSService`` skeleton (``services/tts.py``): a backup voice
for a ``FailoverTTSService`` (or a TTS of its own). Each sentence is one
streamed request (``audio.speech.with_streaming_response.create``,
``response_format="pcm"``: raw 16-bit mono at 24 kHz, read as it arrives);
the sentences of the turns are requested one at a time, in speaking order, by
one worker, and each finished response is the skeleton's per-sentence
completion (a retry resumes at the first sentence not finished). The
endpoint offers no μ-law: the skeleton resamples to the output rate (8 kHz
for the phone) and encodes. No word timestamps.

Abandoning an attempt (interruption, failure) cancels its request in flight:
the HTTP stream is closed at once. Errors: 429 and 5xx, timeouts and
connection errors are retryable; 400/401/403 are not. The SDK's own retries
are off (``max_retries=0``): the skeleton's policy (or the failover) is the
one in force.

Metrics as the skeleton's, labelled ``service=openai-tts``; ``cost_usd`` at
``price_per_1m_chars`` ($15 per million characters for ``tts-1``; the
``gpt-4o-mini-tts`` model is billed by tokens, about $0.015 a minute: set the
price to what your model costs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import PCM16
from vantum_pipeline.services.shared_clients import shared_client
from vantum_pipeline.services.tts import TTSService, TTSTiming, TTSTurn, TurnState
from vantum_pipeline.services.tts_cache import TTSCacheKey
from vantum_pipeline.settings import Secret, load_env, require_secret

__all__ = ["OpenAITTSService", "OpenAITTSSettings"]

SERVICE = "openai-tts"
#: ``pcm`` speech: 16-bit little-endian mono at this rate.
SPEECH_RATE = 24000


@dataclass(frozen=True, slots=True)
class OpenAITTSSettings:
    """``sample_rate``: the rate of the frames pushed (the 24 kHz speech is
    resampled to it; 8000 with ``mulaw`` for the phone via the failover's
    output format, or here for a standalone phone TTS)."""

    api_key: Secret
    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    speed: float = 1.0
    instructions: str | None = None
    base_url: str = "https://api.openai.com/v1"
    sample_rate: int = SPEECH_RATE
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    max_retries: int = 1
    retry_delay: float = 0.25
    max_retry_wait: float = 2.0
    first_audio_timeout: float = 5.0
    stall_timeout: float = 5.0
    drain_timeout: float = 10.0
    max_pending: int = 64
    chunk_bytes: int = 4800  # 100 ms of 24 kHz audio per read
    price_per_1m_chars: float = 15.0
    cache_size: int = 32

    def __post_init__(self) -> None:
        if not 0.25 <= self.speed <= 4.0:
            raise ConfigurationError(f"OpenAITTSSettings.speed must be 0.25..4.0, got {self.speed}")
        if not 8000 <= self.sample_rate <= 48000:
            raise ConfigurationError(f"OpenAITTSSettings.sample_rate must be 8000..48000, got {self.sample_rate}")
        if self.instructions is not None and self.model.startswith("tts-1"):
            raise ConfigurationError(f"{self.model} takes no instructions; use gpt-4o-mini-tts")
        if self.max_pending < 1 or self.chunk_bytes < 2:
            raise ConfigurationError("max_pending must be >= 1 and chunk_bytes >= 2")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> OpenAITTSSettings:
        """From ``OPENAI_API_KEY`` (the same key as the LLM)."""
        return cls(api_key=require_secret(load_env(env), "OPENAI_API_KEY"), **overrides)


@dataclass(slots=True)
class _Job:
    turn: TTSTurn
    attempt: int
    text: str | None  # None: the attempt's text is complete


class OpenAITTSService(TTSService):
    """OpenAI speech endpoint TTS; see the module docstring."""

    service: ClassVar[str] = SERVICE

    def __init__(self, settings: OpenAITTSSettings, *, name: str | None = None) -> None:
        super().__init__(
            timing=TTSTiming.of(settings),
            cache_size=settings.cache_size,
            name=name,
        )
        self.settings = settings
        self._client: Any = None
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.max_pending)
        self._request: asyncio.Task[None] | None = None
        self._playing: _Job | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def cost_usd(self) -> float:
        return self.characters_sent * self.settings.price_per_1m_chars / 1e6

    def output_format(self) -> tuple[int, str]:
        return self.settings.sample_rate, PCM16

    def audio_format(self) -> tuple[int, str]:
        return SPEECH_RATE, PCM16

    def cache_key(self, text: str) -> TTSCacheKey:
        s = self.settings
        return TTSCacheKey(text.strip(), s.voice, s.model, PCM16, s.sample_rate, s.speed)

    # ------------------------------------------------------------ engine

    async def engine_start(self) -> None:
        import openai

        s = self.settings
        self.stopping = False
        if self._client is None:
            key = s.api_key.reveal()
            # One client per process and configuration (see shared_clients), as the LLM does.
            self._client = shared_client(
                ("openai-speech", key, s.base_url, s.read_timeout, s.connect_timeout),
                lambda: openai.AsyncOpenAI(
                    api_key=key,
                    base_url=s.base_url,
                    max_retries=0,
                    timeout=openai.Timeout(s.read_timeout, connect=s.connect_timeout),
                ),
            )
        if self._worker is None:
            self._worker = self.create_task(self._run(), "speech")

    async def engine_close(self) -> None:
        self._client = None  # shared with the process's other calls: not ours to close

    async def open_attempt(self, turn: TTSTurn) -> None:
        if self._client is None or self.stopping:
            raise ServiceError("the service is not running", service=SERVICE, retryable=False)

    async def send_text(self, turn: TTSTurn, transcript: str) -> None:
        await self._jobs.put(_Job(turn, turn.attempt, transcript.strip()))

    async def send_end(self, turn: TTSTurn) -> None:
        await self._jobs.put(_Job(turn, turn.attempt, None))

    def abandon_attempt(self, turn: TTSTurn, error: ServiceError | None) -> None:
        job, request = self._playing, self._request
        if job is not None and job.turn is turn and request is not None and not request.done():
            request.cancel()  # closes the HTTP stream; queued sentences of the turn are skipped

    # ------------------------------------------------------------ worker

    def _current(self, job: _Job) -> bool:
        turn = job.turn
        return turn.state is TurnState.LIVE and turn.provider is self and turn.attempt == job.attempt

    async def _run(self) -> None:
        while True:
            job = await self._jobs.get()
            if not self._current(job):
                continue
            if job.text is None:
                await job.turn.host.tts_done(job.turn)
                continue
            if not job.text:
                job.turn.host.tts_sentence_done(job.turn)
                continue
            self._playing = job
            self._request = asyncio.get_running_loop().create_task(self._speak(job), name=f"{self.name}:request")
            try:
                await asyncio.wait({self._request})
                failure = None if self._request.cancelled() else self._request.exception()
                if failure is not None and not isinstance(failure, ServiceError):
                    logger.opt(exception=failure).error("{}: speech request failed: {}", self.name, failure)
                    failure = ServiceError(f"{type(failure).__name__}: {failure}", service=SERVICE, retryable=False)
                if failure is not None and self._current(job):
                    job.turn.host.tts_failed(job.turn, failure)
            finally:
                request, self._request, self._playing = self._request, None, None
                if request is not None and not request.done():
                    request.cancel()
                    await asyncio.wait({request}, timeout=1.0)

    async def _speak(self, job: _Job) -> None:
        import openai

        s = self.settings
        options: dict[str, Any] = {"model": s.model, "voice": s.voice, "input": job.text, "response_format": "pcm"}
        if s.speed != 1.0:
            options["speed"] = s.speed
        if s.instructions:
            options["instructions"] = s.instructions
        host = job.turn.host
        try:
            async with self._client.audio.speech.with_streaming_response.create(**options) as response:
                async for chunk in response.iter_bytes(s.chunk_bytes):
                    if not self._current(job):
                        return
                    await host.tts_audio(job.turn, chunk, SPEECH_RATE, PCM16)
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = "authentication failed: check OPENAI_API_KEY" if status == 401 else exc.message
            raise ServiceError(
                message, service=SERVICE, retryable=status in (408, 409, 429) or status >= 500, status=status
            ) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise ServiceError(f"{type(exc).__name__}", service=SERVICE, retryable=True) from exc
        except (OSError, ValueError) as exc:
            raise ServiceError(
                f"reading the audio failed: {type(exc).__name__}", service=SERVICE, retryable=True
            ) from exc
        except Exception as exc:
            # The body is read by the SDK's HTTP client outside its error mapping: a
            # connection cut mid-body surfaces as that client's own protocol error.
            if type(exc).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "httpcore2", "h11"):
                raise
            raise ServiceError(
                f"the audio stream broke: {type(exc).__name__}", service=SERVICE, retryable=True
            ) from exc
        if self._current(job):
            host.tts_sentence_done(job.turn)
