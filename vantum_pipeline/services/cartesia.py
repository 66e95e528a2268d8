"""Cartesia streaming text-to-speech on the official SDK's websocket.

``CartesiaTTSService`` speaks the TextFrames of each assistant turn (the
sentences from ``SentenceAggregator``) and every ``TTSSpeakFrame``. The turn
skeleton (turns, output order, retry and fallback, cache) is ``TTSService``
in ``services/tts.py``; this module is its Cartesia engine.

How a call uses the socket
--------------------------
One websocket per call, opened at ``StartFrame`` and reopened when it drops
(in the background between turns, or by the next turn). Each assistant turn
is one Cartesia *context*: its sentences are sent into it with
``continue: true`` as they arrive, so prosody flows across them, and the
``LLMFullResponseEndFrame`` ends it (empty transcript, ``continue: false``).
A TextFrame outside an LLM response is a turn by itself. Word timestamps are
requested. Downstream, a turn is::

    TTSStartedFrame(cid)  (TTSAudioRawFrame(cid) | TTSWordTimestampsFrame(cid))*  TTSStoppedFrame(cid)

with ``cid`` our turn id (stable across retries). Turns are output strictly
one after the other: audio of a later turn that arrives early is held until
the earlier turn is done. Each TextFrame is passed on downstream once it has
been queued for synthesis, and each ``TTSSpeakFrame`` just before its
``TTSStartedFrame``, so the assistant aggregator knows the full text.

Frames produced by the receive loop carry the epoch of the turn that opened
their context. On an interruption every context of the turn is cancelled on
the server, its id is forgotten (chunks that still arrive for it are dropped
and counted in ``stale_chunks_dropped``), and the framework drops any
old-epoch frame still in flight: no old-epoch audio reaches the transport.

Failures (the product's rule: retry once, then fall back)
---------------------------------------------------------
A turn fails on: a refused or failed connection, the socket dropping, an
``error`` message for its context, no audio ``first_audio_timeout`` seconds
after its text was sent, or silence for ``stall_timeout`` seconds after it
was ended. A retryable failure (connection, 429, 5xx, timeout) is retried
``max_retries`` times (default once) after ``retry_delay`` (or the service's
Retry-After, unless longer than ``max_retry_wait``) in a new context on a
healthy socket; the retry resumes at the first sentence not fully covered by
word timestamps already received, so sentences already spoken in full are not
repeated (a sentence cut in the middle is said again from its start).
When retries are exhausted (or the failure is not retryable, e.g. 401), the
pre-recorded phrase for the situation plays instead (``greeting`` or
``goodbye`` for a TTSSpeakFrame of that category, else ``error``) as its own
context ``<cid>-fallback`` announced by a ``TTSSpeakFrame`` of its text (so
the assistant aggregator records what was said instead), the call goes on,
and the text that was not spoken is recorded: appended to
``service.unspoken`` (``UnspokenText``: context id, text, reason, fallback)
and reported upstream as a non-fatal ErrorFrame naming the context and the
number of characters. Sentences that arrive for a turn after it fell back are
appended to ``unspoken`` too (no second fallback phrase).

Cache
-----
``TTSSpeakFrame`` phrases (greetings, fallbacks, "one moment please") are
cached once synthesized cleanly, keyed by text + voice + model + format +
speed (``TTSCache``, bounded); a cached phrase plays at once with no request.
``settings.warm_phrases`` are synthesized into the cache at start. Pass one
``cache=`` to the services of many calls to share it: a campaign's voicemail
or greeting is then synthesized once for all of them.

Metrics (MetricsFrame, labels ``service=cartesia``): ``latency.tts_ttfb`` per
turn (first text sent to first audio byte), ``usage.tts_characters`` per
transcript sent (retries included: they are billed), ``service.request`` per
context, ``service.error``, ``service.rate_limited``, ``service.retry``,
``protocol.malformed``. The ``cost_usd`` property adds up the characters at
``price_per_1k_chars``; ``cache.hits`` / ``cache.misses`` count the cache.

The ``cartesia`` SDK is imported here only. Its context helper is not used:
its reader task dies on a malformed message and, when the socket drops, just
ends; either way every context's ``receive()`` then waits forever. Its
automatic reconnect reuses the closed connection. This module reads the
socket itself (``conn.recv_bytes()``), parses with ``parse_server_message``
(sans-I/O) and sends requests with ``conn.send()``, as the SDK's
``GenerationRequest`` model (see ``_event``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ProtocolError, ServiceError
from vantum_pipeline.frames import MULAW, PCM16
from vantum_pipeline.observability.metrics import PROTOCOL_MALFORMED, SERVICE_ERROR, SERVICE_RATE_LIMITED
from vantum_pipeline.services.cartesia_messages import ServerMessage, parse_server_message
from vantum_pipeline.services.shared_clients import shared_client
from vantum_pipeline.services.tts import TTSService, TTSTiming, TTSTurn, TurnState, UnspokenText
from vantum_pipeline.services.tts_cache import TTSCache, TTSCacheKey
from vantum_pipeline.settings import Secret, load_env, optional_env, require_secret
from vantum_pipeline.warmup import http_stacks, import_available, register

if TYPE_CHECKING:
    from cartesia import AsyncCartesia

__all__ = [
    "CartesiaSettings",
    "CartesiaTTSService",
    "ServerMessage",
    "UnspokenText",
    "parse_server_message",
]

SERVICE = "cartesia"
#: The SDK's own default voice (used by ``no_more_inputs()`` when none is set).
DEFAULT_VOICE_ID = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
_ENCODINGS = {"pcm_s16le": PCM16, "pcm_mulaw": MULAW}


# ------------------------------------------------------------------ settings


@dataclass(frozen=True, slots=True)
class CartesiaSettings:
    """Cartesia TTS settings with the product's defaults.

    ``encoding``/``sample_rate``: ``pcm_s16le`` at 16 kHz by default;
    ``for_twilio()`` gives ``pcm_mulaw`` at 8 kHz, Twilio's own format, so
    phone audio needs no resampling or encoding. ``speed`` is a multiplier:
    sonic-3 models get it as ``generation_config.speed`` (0.6–1.5), older ones
    as ``slow``/``normal``/``fast``. ``base_url``/``websocket_base_url`` point
    the SDK elsewhere (a FakeCartesia in tests).
    """

    api_key: Secret
    voice_id: str = DEFAULT_VOICE_ID
    model: str = "sonic-2"
    speed: float = 1.0
    language: str = "en"
    encoding: str = "pcm_s16le"
    sample_rate: int = 16000
    max_buffer_delay_ms: int = 0
    add_timestamps: bool = True
    max_retries: int = 1
    retry_delay: float = 0.25
    max_retry_wait: float = 2.0
    connect_timeout: float = 5.0
    first_audio_timeout: float = 4.0
    stall_timeout: float = 4.0
    drain_timeout: float = 8.0
    price_per_1k_chars: float = 0.10
    cache_size: int = 32
    cache_max_bytes: int = 8_000_000
    warm_phrases: tuple[str, ...] = ()
    base_url: str | None = None
    websocket_base_url: str | None = None

    def __post_init__(self) -> None:
        if self.encoding not in _ENCODINGS:
            raise ConfigurationError(f"CartesiaSettings.encoding must be pcm_s16le or pcm_mulaw, got {self.encoding!r}")
        if self.sample_rate not in _SAMPLE_RATES:
            raise ConfigurationError(f"CartesiaSettings.sample_rate {self.sample_rate} is not one Cartesia offers")
        if self.encoding == "pcm_mulaw" and self.sample_rate != 8000:
            raise ConfigurationError("pcm_mulaw output is for the phone: use sample_rate=8000")
        if not 0.5 <= self.speed <= 2.0:
            raise ConfigurationError(f"CartesiaSettings.speed must be in [0.5, 2.0], got {self.speed}")
        if not 0 <= self.max_buffer_delay_ms <= 5000:
            raise ConfigurationError(f"max_buffer_delay_ms must be in [0, 5000], got {self.max_buffer_delay_ms}")
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> CartesiaSettings:
        """From ``CARTESIA_API_KEY`` (required), ``CARTESIA_VOICE_ID`` and ``CARTESIA_MODEL``."""
        values = load_env(env)
        settings = cls(
            api_key=require_secret(values, "CARTESIA_API_KEY"),
            voice_id=optional_env(values, "CARTESIA_VOICE_ID", DEFAULT_VOICE_ID) or DEFAULT_VOICE_ID,
            model=optional_env(values, "CARTESIA_MODEL", "sonic-2") or "sonic-2",
        )
        return replace(settings, **overrides) if overrides else settings

    def for_twilio(self) -> CartesiaSettings:
        """The same settings with Twilio's format: mu-law at 8 kHz."""
        return replace(self, encoding="pcm_mulaw", sample_rate=8000)

    @property
    def frame_encoding(self) -> str:
        """The frames' name for the output encoding (``pcm16`` or ``mulaw``)."""
        return _ENCODINGS[self.encoding]

    def output_format(self) -> dict[str, Any]:
        return {"container": "raw", "encoding": self.encoding, "sample_rate": self.sample_rate}

    def speed_fields(self) -> dict[str, Any]:
        """The request fields that carry ``speed`` for this model (none at 1.0)."""
        if self.speed == 1.0:
            return {}
        if self.model.startswith("sonic-3"):
            return {"generation_config": {"speed": min(1.5, max(0.6, self.speed))}}
        return {"speed": "slow" if self.speed < 0.9 else "fast" if self.speed > 1.1 else "normal"}

    def seconds(self, audio_bytes: int) -> float:
        width = 1 if self.encoding == "pcm_mulaw" else 2
        return audio_bytes / width / self.sample_rate


# ------------------------------------------------------------------ service


class CartesiaTTSService(TTSService):
    """Cartesia websocket TTS; see the module docstring."""

    service: ClassVar[str] = SERVICE

    def __init__(self, settings: CartesiaSettings, *, cache: TTSCache | None = None, name: str | None = None) -> None:
        super().__init__(
            timing=TTSTiming.of(settings),
            cache_size=settings.cache_size,
            cache_max_bytes=settings.cache_max_bytes,
            cache=cache,
            name=name,
        )
        self.settings = settings
        self.stale_chunks_dropped = 0
        self.malformed = 0
        self.connections_opened = 0
        self._client: AsyncCartesia | None = None
        self._conn: Any = None  # the SDK's AsyncTTSResourceConnection
        self._generation = 0
        self._connect_lock = asyncio.Lock()
        self._by_context: dict[str, tuple[TTSTurn, int]] = {}  # context id → (turn, socket generation)
        self._forgotten: deque[str] = deque(maxlen=64)  # cancelled / failed context ids
        self._refused_logged = False

    # ------------------------------------------------------------ public

    @property
    def cost_usd(self) -> float:
        """What the characters sent so far cost at ``price_per_1k_chars``."""
        return self.characters_sent * self.settings.price_per_1k_chars / 1000

    def output_format(self) -> tuple[int, str]:
        return self.settings.sample_rate, self.settings.frame_encoding

    def cache_key(self, text: str) -> TTSCacheKey:
        s = self.settings
        return TTSCacheKey(text.strip(), s.voice_id, s.model, s.encoding, s.sample_rate, s.speed)

    # ------------------------------------------------------------ engine

    async def engine_start(self) -> None:
        from cartesia import AsyncCartesia

        self.stopping = False
        key = self.settings.api_key.reveal()
        self._client = shared_client(
            ("cartesia", key, self.settings.base_url, self.settings.websocket_base_url),
            lambda: AsyncCartesia(
                api_key=key,
                base_url=self.settings.base_url,
                websocket_base_url=self.settings.websocket_base_url,
                max_retries=0,
            ),
        )
        self.create_task(self._connect_early(), "connect")

    async def engine_stop(self) -> None:
        self.stopping = True
        await self._close_socket()

    async def engine_close(self) -> None:
        self.stopping = True
        await self._close_socket()
        self._client = None  # shared with the process's other calls: not ours to close

    async def _connect_early(self) -> None:
        """Open the socket before the first turn needs it; warm the cache."""
        try:
            await self._ensure_connected()
        except ServiceError as exc:
            logger.warning("{}: could not connect at start ({}); the first turn will retry", self.name, exc)
            self.errors += 1
            await self.metric(SERVICE_ERROR, 1)
            if exc.status == 429:
                await self.metric(SERVICE_RATE_LIMITED, 1)
            return
        if self._host is not self:
            return  # a failover's member: the failover owns the cache
        for phrase in self.settings.warm_phrases:
            key = self.cache_key(phrase)
            if key in self.cache:
                continue
            turn = self.new_turn(closing=True, cache_key=key, silent=True, epoch=self.epoch)
            turn.sentences.append(phrase)
            await self._begin(turn)

    async def open_attempt(self, turn: TTSTurn) -> None:
        """A new Cartesia context on a healthy socket."""
        await self._ensure_connected()
        if turn.state is not TurnState.LIVE:
            return
        context_id = turn.turn_id if turn.attempt == 0 else f"{turn.turn_id}-r{turn.attempt}"
        turn.engine_ref = context_id
        self._by_context[context_id] = (turn, self._generation)

    async def send_text(self, turn: TTSTurn, transcript: str) -> None:
        await self._send(turn, transcript, keep_going=True)

    async def send_end(self, turn: TTSTurn) -> None:
        await self._send(turn, "", keep_going=False)

    def abandon_attempt(self, turn: TTSTurn, error: ServiceError | None) -> None:
        context_id = turn.engine_ref
        entry = self._by_context.pop(context_id, None) if isinstance(context_id, str) else None
        if entry is None:
            return
        self._forgotten.append(context_id)
        # A cancelled or stalled context must not speak later; a context the
        # server failed, or a socket that is gone, needs no cancel.
        if (error is None or error.status is None) and entry[1] == self._generation and self._conn is not None:
            self.create_task(self._send_cancels(self._conn, [context_id]), "cancel")

    async def _send_cancels(self, conn: Any, context_ids: list[str]) -> None:
        for context_id in context_ids:
            try:
                async with asyncio.timeout(0.5):
                    await conn.send({"context_id": context_id, "cancel": True})
            except Exception as exc:  # best effort: the context is forgotten anyway
                logger.debug("{}: cancel of {} not sent: {}", self.name, context_id, exc)

    async def _send(self, turn: TTSTurn, transcript: str, *, keep_going: bool) -> None:
        s = self.settings
        entry = self._by_context.get(turn.engine_ref or "")
        generation = entry[1] if entry is not None else -1
        request: dict[str, Any] = {
            "context_id": turn.engine_ref,
            "model_id": s.model,
            "voice": {"mode": "id", "id": s.voice_id},
            "output_format": s.output_format(),
            "transcript": transcript,
            "continue": keep_going,
            "language": s.language,
            "add_timestamps": s.add_timestamps,
            "max_buffer_delay_ms": s.max_buffer_delay_ms,
            **s.speed_fields(),
        }
        conn = self._conn
        if conn is None or generation != self._generation:
            raise ServiceError("the websocket closed", service=SERVICE, retryable=True)
        event = self._event(request)
        try:
            async with asyncio.timeout(s.connect_timeout):
                await conn.send(event)
        except Exception as exc:
            self._lost(generation)
            raise _service_error(exc) from exc

    def _event(self, request: dict[str, Any]) -> Any:
        """``request`` as the SDK's ``GenerationRequest`` model, which its ``send`` validates and
        serializes in pydantic's compiled code (about 10 µs a message). Given a dict, the SDK first
        walks its request types key by key in Python (about 200 µs a message, on every sentence's way
        to the first audio). A request the model refuses goes as the dict, logged once."""
        from cartesia.types import GenerationRequest
        from pydantic import ValidationError

        try:
            return GenerationRequest.model_validate(request)
        except ValidationError as exc:
            if not self._refused_logged:
                self._refused_logged = True
                logger.info("{}: the SDK's request model refuses this request; it goes as a dict ({})", self.name, exc)
            return request

    # ------------------------------------------------------------ socket

    async def _ensure_connected(self) -> None:
        if self._conn is not None:
            return
        async with self._connect_lock:
            if self._conn is not None:
                return
            if self._client is None or self.stopping:
                raise ServiceError("the service is not running", service=SERVICE, retryable=False)
            # No permessage-deflate: compressing audio and short JSON costs CPU and saves nothing.
            options = {"open_timeout": self.settings.connect_timeout, "max_queue": 64, "compression": None}
            manager = self._client.tts.websocket_connect(websocket_connection_options=options)  # type: ignore[arg-type]
            try:
                async with asyncio.timeout(self.settings.connect_timeout + 0.5):
                    conn = await manager.enter()
            except Exception as exc:
                raise _service_error(exc) from exc
            self._generation += 1
            self._conn = conn
            self.connections_opened += 1
            self.create_task(self._read_socket(conn, self._generation), f"receive:{self._generation}", essential=True)

    def _lost(self, generation: int) -> None:
        """The socket of ``generation`` is gone: fail its live attempts."""
        if generation != self._generation or self._conn is None:
            return
        conn, self._conn = self._conn, None
        self.create_task(_close_quietly(conn), "close")
        error = ServiceError("the websocket closed", service=SERVICE, retryable=True)
        for turn, turn_generation in list(self._by_context.values()):
            if turn_generation == generation:
                turn.host.tts_failed(turn, error)
        if not self.stopping:
            self.create_task(self._reconnect_between_turns(), "reconnect")

    async def _reconnect_between_turns(self) -> None:
        await asyncio.sleep(self.settings.retry_delay)
        try:
            await self._ensure_connected()
        except ServiceError as exc:
            logger.warning("{}: reconnect failed ({}); the next turn will try again", self.name, exc)

    async def _close_socket(self) -> None:
        conn, self._conn = self._conn, None
        self._generation += 1
        if conn is not None:
            await _close_quietly(conn)

    async def _read_socket(self, conn: Any, generation: int) -> None:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                raw = await conn.recv_bytes()
            except ConnectionClosed as exc:
                if not self.stopping and generation == self._generation:
                    logger.warning("{}: websocket closed ({})", self.name, exc)
                self._lost(generation)
                return
            try:
                message = parse_server_message(raw)
            except ProtocolError as exc:
                self.malformed += 1
                logger.warning("{}: {} (raw: {!r})", self.name, exc, exc.raw)
                await self.metric(PROTOCOL_MALFORMED, 1)
                continue
            await self._on_message(message)

    async def _on_message(self, message: ServerMessage) -> None:
        entry = self._by_context.get(message.context_id or "")
        if entry is None:
            if message.type == "chunk" and message.context_id in self._forgotten:
                self.stale_chunks_dropped += 1
            elif message.type == "error":
                logger.warning("{}: error for {}: {}", self.name, message.context_id, message.error)
            return
        turn = entry[0]
        host = turn.host
        if message.type == "chunk":
            await host.tts_audio(turn, message.audio, self.settings.sample_rate, self.settings.frame_encoding)
        elif message.type == "timestamps" and message.words:
            await host.tts_words(turn, message.words)
        elif message.type == "done":
            self._by_context.pop(message.context_id or "", None)
            self._forgotten.append(message.context_id or "")
            await host.tts_done(turn)
        elif message.type == "error":
            status = message.status_code
            retryable = status is None or status == 429 or status >= 500
            host.tts_failed(turn, ServiceError(message.error, service=SERVICE, retryable=retryable, status=status))


def _service_error(exc: BaseException) -> ServiceError:
    """Map an SDK / websockets failure to a ServiceError (retryable or not)."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        retry_after = None
        header = exc.response.headers.get("Retry-After")
        if header:
            try:
                retry_after = float(header)
            except ValueError:
                retry_after = None
        return ServiceError(
            f"websocket upgrade refused with HTTP {status}",
            service=SERVICE,
            retryable=status == 429 or status >= 500,
            status=status,
            retry_after=retry_after,
        )
    if isinstance(exc, ConnectionClosed | OSError | TimeoutError):
        return ServiceError(f"connection failed: {type(exc).__name__}: {exc}", service=SERVICE, retryable=True)
    return ServiceError(f"{type(exc).__name__}: {exc}", service=SERVICE, retryable=True)


async def _close_quietly(conn: Any) -> None:
    try:
        async with asyncio.timeout(1.0):
            await conn.close()
    except Exception as exc:  # closing a dead socket may raise anything; it is gone either way
        logger.debug("cartesia: closing the websocket: {}", exc)


def _warm_up() -> None:
    """The cartesia SDK (imported when the service first connects) and its request types, which its
    ``send`` loads on first use (see ``vantum_pipeline.warmup``)."""
    from cartesia._utils import maybe_transform
    from cartesia.types import GenerationRequest, WebsocketClientEventParam

    # The client's resources (its ``tts`` property imports the package, every resource with it).
    import_available(["cartesia.resources", "cartesia.lib._tts", "websockets.asyncio.client", "distro"])
    request = {
        "context_id": "warm-up",
        "model_id": "sonic-2",
        "transcript": "Hello.",
        "voice": {"mode": "id", "id": "warm-up"},
        "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
        "continue": False,
    }
    GenerationRequest.model_validate(request).to_json(use_api_names=True, exclude_defaults=True, exclude_unset=True)
    maybe_transform(request, WebsocketClientEventParam)


register("cartesia", _warm_up)
register("http", http_stacks)
