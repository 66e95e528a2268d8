"""Deepgram Aura text-to-speech on deepgram-sdk's speak websocket.

    DeepgramTTSService(DeepgramTTSSettings.from_env().for_twilio(), name="deepgram-aura")

An engine of the ``TTSService`` skeleton (``services/tts.py``): turns, output
order, retries, fallback and cache are the skeleton's; a backup voice for a
``FailoverTTSService``, or a TTS of its own.

The socket (``/v1/speak?model&encoding&sample_rate``, see
``testing/deepgram_speak.py`` for the protocol) carries one stream: no
contexts. So sentences are spoken one at a time, in the order turns are
spoken, by one worker: ``{"type": "Speak", "text"}`` then ``{"type":
"Flush"}``, the binary audio that follows belongs to that sentence, and
``Flushed`` ends it (the skeleton's per-sentence completion: a retry resumes
at the first sentence not finished). Word timestamps are not offered.
μ-law at 8 kHz is offered (``for_twilio()``): phone audio needs no
conversion.

The socket is opened by the first attempt (a backup costs no connection
until it is needed; ``connect_early`` opens it at start) and reopened by the
next attempt after it drops. An attempt fails when the socket cannot be
opened or drops, on a ``Warning`` for its sentence, and, watched by the
skeleton, when its audio does not come. Abandoning an attempt (an
interruption, a failure) sends ``Clear``; audio still in flight for it is
dropped and counted in ``stale_chunks_dropped``.

Metrics as the skeleton's, labelled ``service=deepgram-tts``; ``cost_usd``
at ``price_per_1k_chars``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import MULAW, PCM16
from vantum_pipeline.services.shared_clients import shared_client
from vantum_pipeline.services.tts import TTSService, TTSTiming, TTSTurn, TurnState
from vantum_pipeline.services.tts_cache import TTSCacheKey
from vantum_pipeline.settings import Secret, load_env, require_secret

__all__ = ["DeepgramTTSService", "DeepgramTTSSettings"]

SERVICE = "deepgram-tts"
_RATES = {"linear16": (8000, 16000, 24000, 32000, 48000), "mulaw": (8000, 16000)}


@dataclass(frozen=True, slots=True)
class DeepgramTTSSettings:
    """Aura settings. ``url``: websocket base (None: Deepgram's; a
    ``FakeDeepgramSpeak``'s ``ws_url`` in tests)."""

    api_key: Secret
    model: str = "aura-2-thalia-en"
    encoding: str = "linear16"
    sample_rate: int = 16000
    url: str | None = None
    connect_early: bool = False
    connect_timeout: float = 5.0
    send_timeout: float = 2.0
    max_retries: int = 1
    retry_delay: float = 0.25
    max_retry_wait: float = 2.0
    first_audio_timeout: float = 4.0
    stall_timeout: float = 4.0
    drain_timeout: float = 8.0
    max_pending: int = 64
    price_per_1k_chars: float = 0.030
    cache_size: int = 32

    def __post_init__(self) -> None:
        if self.encoding not in _RATES:
            raise ConfigurationError(f"DeepgramTTSSettings.encoding must be linear16 or mulaw, got {self.encoding!r}")
        if self.sample_rate not in _RATES[self.encoding]:
            raise ConfigurationError(
                f"Deepgram Aura offers {self.encoding} at {_RATES[self.encoding]} Hz, not {self.sample_rate}"
            )
        if self.max_pending < 1 or self.connect_timeout <= 0 or self.send_timeout <= 0:
            raise ConfigurationError("max_pending, connect_timeout and send_timeout must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DeepgramTTSSettings:
        """From ``DEEPGRAM_API_KEY`` (the same key as the speech-to-text)."""
        return cls(api_key=require_secret(load_env(env), "DEEPGRAM_API_KEY"), **overrides)

    def for_twilio(self) -> DeepgramTTSSettings:
        """The same settings with Twilio's format: μ-law at 8 kHz."""
        return dataclasses.replace(self, encoding="mulaw", sample_rate=8000)

    @property
    def frame_encoding(self) -> str:
        return MULAW if self.encoding == "mulaw" else PCM16


@dataclass(slots=True)
class _Job:
    turn: TTSTurn
    attempt: int
    text: str | None  # None: the attempt's text is complete


class DeepgramTTSService(TTSService):
    """Deepgram Aura websocket TTS; see the module docstring."""

    service: ClassVar[str] = SERVICE

    def __init__(self, settings: DeepgramTTSSettings, *, name: str | None = None) -> None:
        super().__init__(
            timing=TTSTiming.of(settings),
            cache_size=settings.cache_size,
            name=name,
        )
        self.settings = settings
        self.connections_opened = 0
        self.stale_chunks_dropped = 0
        self._client: Any = None
        self._connection: Any = None  # the SDK's connect() context manager
        self._socket: Any = None
        self._connect_lock = asyncio.Lock()
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue(maxsize=settings.max_pending)
        self._playing: _Job | None = None
        self._sentence_over = asyncio.Event()
        # After a Clear, audio still in flight belongs to the abandoned sentence:
        # the next sentence waits for the Cleared that marks its end.
        self._cleared = asyncio.Event()
        self._cleared.set()
        self._worker: asyncio.Task[None] | None = None

    @property
    def cost_usd(self) -> float:
        return self.characters_sent * self.settings.price_per_1k_chars / 1000

    def output_format(self) -> tuple[int, str]:
        return self.settings.sample_rate, self.settings.frame_encoding

    def cache_key(self, text: str) -> TTSCacheKey:
        s = self.settings
        return TTSCacheKey(text.strip(), s.model, "aura", s.encoding, s.sample_rate, 1.0)

    # ------------------------------------------------------------ engine

    async def engine_start(self) -> None:
        from deepgram import AsyncDeepgramClient
        from deepgram.environment import DeepgramClientEnvironment

        s = self.settings
        self.stopping = False
        key = s.api_key.reveal()

        def make() -> AsyncDeepgramClient:
            if s.url is None:
                return AsyncDeepgramClient(api_key=key)
            http = s.url.replace("ws://", "http://").replace("wss://", "https://")
            environment = DeepgramClientEnvironment(base=http, production=s.url, agent=s.url, agent_rest=http)
            return AsyncDeepgramClient(api_key=key, environment=environment)

        # One client per process and configuration (see shared_clients), as the STT does.
        self._client = shared_client(("deepgram-speak", key, s.url), make)
        if self._worker is None:
            self._worker = self.create_task(self._run(), "speak")
        if s.connect_early:
            self.create_task(self._connect_quietly(), "connect")

    async def engine_stop(self) -> None:
        await self._close_socket()

    async def engine_close(self) -> None:
        await self._close_socket()
        self._client = None  # shared with the process's other calls: not ours to close

    async def open_attempt(self, turn: TTSTurn) -> None:
        if self._client is None or self.stopping:
            raise ServiceError("the service is not running", service=SERVICE, retryable=False)
        await self._ensure_connected()

    async def send_text(self, turn: TTSTurn, transcript: str) -> None:
        await self._jobs.put(_Job(turn, turn.attempt, transcript))

    async def send_end(self, turn: TTSTurn) -> None:
        await self._jobs.put(_Job(turn, turn.attempt, None))

    def abandon_attempt(self, turn: TTSTurn, error: ServiceError | None) -> None:
        job = self._playing
        if job is None or job.turn is not turn:
            return  # its queued sentences are skipped by the worker
        self._sentence_over.set()
        socket = self._socket
        if socket is not None:
            if error is not None and error.status is None:
                self.create_task(self._close_socket(), "close")  # a stalled socket is not trusted again
            else:
                self._cleared.clear()
                self.create_task(self._clear(socket), "clear")

    # ------------------------------------------------------------ socket

    async def _connect_quietly(self) -> None:
        try:
            await self._ensure_connected()
        except ServiceError as exc:
            logger.warning("{}: could not connect at start ({}); the first turn will retry", self.name, exc)

    async def _ensure_connected(self) -> Any:
        if self._socket is not None:
            return self._socket
        async with self._connect_lock:
            if self._socket is not None:
                return self._socket
            s = self.settings
            connection = self._client.speak.v1.connect(
                model=s.model, encoding=s.encoding, sample_rate=str(s.sample_rate)
            )
            try:
                async with asyncio.timeout(s.connect_timeout):
                    socket = await connection.__aenter__()
            except Exception as exc:
                raise _service_error(exc) from exc
            self._connection, self._socket = connection, socket
            self.connections_opened += 1
            self.create_task(self._read_socket(socket), f"receive:{self.connections_opened}")
            return socket

    async def _close_socket(self) -> None:
        connection, self._connection, self._socket = self._connection, None, None
        self._sentence_over.set()
        self._cleared.set()  # a new socket has nothing in flight
        if connection is None:
            return
        try:
            async with asyncio.timeout(1.0):
                await connection.__aexit__(None, None, None)
        except Exception as exc:  # closing a dead socket may raise anything; it is gone either way
            logger.debug("{}: closing the speak socket: {}", self.name, exc)

    async def _clear(self, socket: Any) -> None:
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await socket.send_clear()
        except Exception as exc:  # the socket is in doubt: start the next sentence on a new one
            logger.debug("{}: Clear not sent: {}", self.name, exc)
            await self._close_socket()

    async def _read_socket(self, socket: Any) -> None:
        from deepgram.speak.v1.types import SpeakV1Cleared, SpeakV1Flushed, SpeakV1Warning
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                message = await socket.recv()
            except ConnectionClosed as exc:
                if socket is self._socket:
                    self._socket = self._connection = None
                    if not self.stopping:
                        logger.warning("{}: speak socket closed ({})", self.name, exc)
                    self._fail_playing(ServiceError("the speak socket closed", service=SERVICE, retryable=True))
                return
            except ValueError as exc:  # not JSON
                logger.warning("{}: malformed message from Deepgram: {}", self.name, exc)
                continue
            job = self._playing
            if isinstance(message, bytes):
                if job is not None and self._current(job) and self._cleared.is_set():
                    await job.turn.host.tts_audio(
                        job.turn, message, self.settings.sample_rate, self.settings.frame_encoding
                    )
                else:
                    self.stale_chunks_dropped += 1
            elif isinstance(message, SpeakV1Cleared):
                self._cleared.set()
                self._sentence_over.set()
            elif isinstance(message, SpeakV1Flushed):
                if self._cleared.is_set():
                    self._sentence_over.set()
            elif isinstance(message, SpeakV1Warning):
                logger.warning("{}: Deepgram warning {}: {}", self.name, message.code, message.description)
                self._fail_playing(
                    ServiceError(f"{message.code}: {message.description}", service=SERVICE, retryable=True)
                )

    def _fail_playing(self, error: ServiceError) -> None:
        job = self._playing
        self._sentence_over.set()
        if job is not None and self._current(job):
            job.turn.host.tts_failed(job.turn, error)

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
            try:
                await self._speak(job)
            except ServiceError as exc:
                if self._current(job):
                    job.turn.host.tts_failed(job.turn, exc)

    async def _speak(self, job: _Job) -> None:
        from deepgram.speak.v1.types import SpeakV1Text
        from websockets.exceptions import ConnectionClosed

        if not self._cleared.is_set():
            try:
                async with asyncio.timeout(self.settings.send_timeout):
                    await self._cleared.wait()
            except TimeoutError:
                await self._close_socket()  # no Cleared: the socket is in doubt
        socket = await self._ensure_connected()
        self._playing = job
        self._sentence_over.clear()
        try:
            try:
                async with asyncio.timeout(self.settings.send_timeout):
                    await socket.send_text(SpeakV1Text(type="Speak", text=job.text or ""))
                    await socket.send_flush()
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                await self._close_socket()
                raise ServiceError(f"sending to Deepgram failed: {type(exc).__name__}", service=SERVICE,
                                   retryable=True) from exc  # fmt: skip
            # The skeleton's watchdog fails a sentence whose audio stops coming; that ends this wait.
            await self._sentence_over.wait()
        finally:
            self._playing = None
        if self._current(job):
            job.turn.host.tts_sentence_done(job.turn)


def _service_error(exc: BaseException) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return ServiceError(
            f"speak websocket refused with HTTP {status}",
            service=SERVICE,
            retryable=status == 429 or status >= 500,
            status=status,
        )
    return ServiceError(f"connection failed: {type(exc).__name__}: {exc}", service=SERVICE, retryable=True)
