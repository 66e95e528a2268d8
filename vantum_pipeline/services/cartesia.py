"""Cartesia streaming text-to-speech on the official SDK's websocket.

``CartesiaTTSService`` speaks the TextFrames of each assistant turn (the
sentences from ``SentenceAggregator``) and every ``TTSSpeakFrame``.

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
(sans-I/O) and sends requests with ``conn.send()``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ProtocolError, ServiceError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
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
from vantum_pipeline.observability.metrics import (
    LATENCY_TTS_TTFB,
    PROTOCOL_MALFORMED,
    SERVICE_ERROR,
    SERVICE_RATE_LIMITED,
    SERVICE_REQUEST,
    SERVICE_RETRY,
    USAGE_TTS_CHARACTERS,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.services.cartesia_messages import ServerMessage, parse_server_message
from vantum_pipeline.services.fallback_audio import fallback_audio, fallback_text
from vantum_pipeline.services.tts_cache import CachedAudio, TTSCache, TTSCacheKey
from vantum_pipeline.settings import Secret, load_env, optional_env, require_secret

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
_AUDIO_FRAME_SECONDS = 0.1  # cached / fallback audio is pushed in frames of this length


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


# ------------------------------------------------------------------ turns


class _State(enum.Enum):
    LIVE = "live"  # a context is running (or about to)
    RECOVERING = "recovering"  # failed; waiting to retry or to fall back
    FINISHED = "finished"  # done, fallen back, or played from the cache
    CANCELLED = "cancelled"  # interrupted


@dataclass(eq=False)
class _Turn:
    """One assistant turn (or TTSSpeakFrame): our context id over its attempts."""

    turn_id: str
    epoch: int
    category: str | None = None
    cache_key: TTSCacheKey | None = None
    silent: bool = False  # a warm-up: audio goes to the cache only
    sentences: list[str] = field(default_factory=list)
    closing: bool = False  # the text is complete
    state: _State = _State.LIVE
    attempt: int = 0
    context_id: str = ""  # the Cartesia context of the current attempt
    generation: int = -1  # the socket the current context runs on
    sent: int = 0  # sentences sent in the current context
    resume_from: int = 0  # first sentence of the current context
    close_sent: bool = False
    first_sent_at: float = 0.0  # first text of the turn (TTFB)
    attempt_sent_at: float = 0.0
    last_event_at: float = 0.0
    got_audio: bool = False  # in the current attempt
    ttfb_reported: bool = False
    started_out: bool = False  # TTSStartedFrame pushed
    audio_seconds: float = 0.0  # audio pushed for the turn
    attempt_offset: float = 0.0  # audio_seconds when the current attempt began
    words_done: int = 0  # words of resume_from.. covered by timestamps
    carry: bytes = b""  # odd byte of a pcm16 chunk
    audio: bytearray = field(default_factory=bytearray)  # kept for the cache
    words: list[tuple[str, float, float]] = field(default_factory=list)
    backlog: list[Frame] = field(default_factory=list)  # frames waiting for earlier turns
    recovery: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class UnspokenText:
    """Text of a turn that could not be synthesized (a fallback played instead)."""

    context_id: str
    text: str
    reason: str
    fallback: str


class CartesiaTTSService(FrameProcessor):
    """Cartesia websocket TTS; see the module docstring."""

    def __init__(self, settings: CartesiaSettings, *, cache: TTSCache | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        self.settings = settings
        self.cache = cache if cache is not None else TTSCache(settings.cache_size, settings.cache_max_bytes)
        self.unspoken: deque[UnspokenText] = deque(maxlen=100)
        self.characters_sent = 0
        self.stale_chunks_dropped = 0
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.malformed = 0
        self.connections_opened = 0
        self._policy = RetryPolicy(max_retries=settings.max_retries, base_delay=settings.retry_delay)
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._client: AsyncCartesia | None = None
        self._conn: Any = None  # the SDK's AsyncTTSResourceConnection
        self._generation = 0
        self._connect_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._out_lock = asyncio.Lock()
        self._by_context: dict[str, _Turn] = {}
        self._order: list[_Turn] = []  # turns with output pending, in speaking order
        self._open: _Turn | None = None  # the LLM turn receiving sentences
        self._in_response = False
        self._forgotten: deque[str] = deque(maxlen=64)  # cancelled / failed context ids
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._stopping = False

    # ------------------------------------------------------------ public

    @property
    def cost_usd(self) -> float:
        """What the characters sent so far cost at ``price_per_1k_chars``."""
        return self.characters_sent * self.settings.price_per_1k_chars / 1000

    # ------------------------------------------------------------ frames

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
            await self._interrupt()
        elif isinstance(frame, StartFrame):
            await self._start()
        elif isinstance(frame, EndFrame):
            await self._end_of_call()
        elif isinstance(frame, CancelFrame):
            self._stopping = True
            self._cancel_all()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        self._stopping = True
        await self._close_socket()
        if self._client is not None:
            try:
                await self._client.close()
            except Exception as exc:  # closing an HTTP pool must not fail a shutdown
                logger.debug("{}: closing the Cartesia client: {}", self.name, exc)
            self._client = None

    async def _start(self) -> None:
        from cartesia import AsyncCartesia

        self._client = AsyncCartesia(
            api_key=self.settings.api_key.reveal(),
            base_url=self.settings.base_url,
            websocket_base_url=self.settings.websocket_base_url,
            max_retries=0,
        )
        self.create_task(self._watchdog(), "watchdog")
        self.create_task(self._connect_early(), "connect")

    async def _connect_early(self) -> None:
        """Open the socket before the first turn needs it; warm the cache."""
        try:
            await self._ensure_connected()
        except ServiceError as exc:
            logger.warning("{}: could not connect at start ({}); the first turn will retry", self.name, exc)
            self.errors += 1
            await self._metric(SERVICE_ERROR, 1)
            if exc.status == 429:
                await self._metric(SERVICE_RATE_LIMITED, 1)
            return
        for phrase in self.settings.warm_phrases:
            key = self._cache_key(phrase)
            if key in self.cache:
                continue
            turn = _Turn(self._new_id(), self.epoch, cache_key=key, silent=True, closing=True)
            turn.sentences.append(phrase)
            await self._begin(turn)

    async def _on_text(self, frame: TextFrame) -> None:
        if not frame.text.strip():
            await self.push_frame(frame)
            return
        turn = self._open
        if turn is None or turn.epoch != self.handling_epoch:
            turn = _Turn(self._new_id(), self.handling_epoch, closing=not self._in_response)
            if self._in_response:
                self._open = turn
            turn.sentences.append(frame.text)
            await self._begin(turn)
        elif turn.state is _State.FINISHED:
            # The turn fell back to a pre-recorded phrase: the rest of the reply is not spoken either.
            self.unspoken.append(UnspokenText(turn.turn_id, frame.text, "the turn had already failed", "none"))
        else:
            turn.sentences.append(frame.text)
            if turn.state is _State.LIVE:
                await self._pump(turn)
        if not self.is_stale(frame):
            await self.push_frame(frame)

    async def _on_speak(self, frame: TTSSpeakFrame) -> None:
        if not frame.text.strip():
            return
        key = self._cache_key(frame.text)
        cached = self.cache.get(key)
        turn = _Turn(self._new_id(), self.handling_epoch, category=frame.category, cache_key=key, closing=True)
        turn.sentences.append(frame.text)
        # The assistant aggregator takes the phrase from the TTSSpeakFrame
        # itself; it must see it before the phrase's TTSStartedFrame.
        await self.push_frame(frame)
        if cached is None:
            await self._begin(turn)
            return
        async with self._out_lock:
            self._order.append(turn)
        self._quiet.clear()
        await self._emit(turn, TTSStartedFrame(context_id=turn.turn_id))
        turn.started_out = True
        await self._play(turn, turn.turn_id, cached)
        await self._finish(turn)

    async def _close_open_turn(self) -> None:
        turn, self._open = self._open, None
        if turn is not None and not turn.closing:
            turn.closing = True
            if turn.state is _State.LIVE:
                await self._pump(turn)

    async def _interrupt(self) -> None:
        self._open = None
        self._in_response = False
        self._cancel_all()

    def _cancel_all(self) -> None:
        """Cancel every turn: server-side contexts, recoveries, held output.

        Synchronous on purpose: the receive loop may be blocked pushing audio
        into a full output transport (which sees the interruption after us),
        holding the output lock; waiting for it here would stall the
        interruption. The cancel messages go out from a task.
        """
        live = [t for t in {*self._by_context.values(), *self._order} if t.state is not _State.CANCELLED]
        to_cancel = [t.context_id for t in live if t.state is _State.LIVE and t.generation == self._generation]
        for turn in live:
            turn.state = _State.CANCELLED
            self._forget(turn)
            if turn.recovery is not None and turn.recovery is not asyncio.current_task():
                turn.recovery.cancel()
        self._order.clear()
        self._quiet.set()
        if to_cancel and self._conn is not None:
            self.create_task(self._send_cancels(self._conn, to_cancel), "cancel")

    async def _send_cancels(self, conn: Any, context_ids: list[str]) -> None:
        for context_id in context_ids:
            try:
                async with asyncio.timeout(0.5):
                    await conn.send({"context_id": context_id, "cancel": True})
            except Exception as exc:  # best effort: the context is forgotten anyway
                logger.debug("{}: cancel of {} not sent: {}", self.name, context_id, exc)

    async def _end_of_call(self) -> None:
        """At EndFrame: end the open turn and let queued speech finish (bounded)."""
        await self._close_open_turn()
        try:
            async with asyncio.timeout(self.settings.drain_timeout):
                await self._quiet.wait()
        except TimeoutError:
            logger.warning("{}: speech still pending after {:.1f}s at the end", self.name, self.settings.drain_timeout)
            self._cancel_all()
        self._stopping = True
        await self._close_socket()

    # ------------------------------------------------------------ attempts

    def _new_id(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _cache_key(self, text: str) -> TTSCacheKey:
        s = self.settings
        return TTSCacheKey(text.strip(), s.voice_id, s.model, s.encoding, s.sample_rate, s.speed)

    async def _begin(self, turn: _Turn) -> None:
        """Open a new turn: TTSStartedFrame, then its first attempt."""
        if not turn.silent:
            async with self._out_lock:
                self._order.append(turn)
            self._quiet.clear()
            await self._emit(turn, TTSStartedFrame(context_id=turn.turn_id))
            turn.started_out = True
        turn.first_sent_at = time.monotonic()
        try:
            await self._open_context(turn)
        except ServiceError as exc:
            self._fail(turn, exc)

    async def _open_context(self, turn: _Turn) -> None:
        """Start an attempt: a new Cartesia context on a healthy socket; send the text."""
        await self._ensure_connected()
        if turn.state is _State.CANCELLED:
            return
        turn.context_id = turn.turn_id if turn.attempt == 0 else f"{turn.turn_id}-r{turn.attempt}"
        turn.generation = self._generation
        turn.sent = turn.resume_from
        turn.close_sent = False
        turn.got_audio = False
        turn.words_done = 0
        turn.carry = b""
        turn.attempt_offset = turn.audio_seconds
        turn.attempt_sent_at = turn.last_event_at = time.monotonic()
        turn.state = _State.LIVE
        self._by_context[turn.context_id] = turn
        self.requests += 1
        await self._metric(SERVICE_REQUEST, 1)
        await self._pump(turn)

    async def _pump(self, turn: _Turn) -> None:
        """Send the turn's unsent sentences, and its end once the text is complete."""
        try:
            async with self._send_lock:
                while turn.sent < len(turn.sentences) and turn.state is _State.LIVE:
                    text = turn.sentences[turn.sent]
                    transcript = text if text.endswith((" ", "\n")) else text + " "
                    await self._send(turn, transcript, keep_going=True)
                    turn.sent += 1
                    self.characters_sent += len(transcript)
                    await self._metric(USAGE_TTS_CHARACTERS, len(transcript), unit="characters")
                if turn.closing and not turn.close_sent and turn.state is _State.LIVE:
                    await self._send(turn, "", keep_going=False)
                    turn.close_sent = True
                    turn.last_event_at = time.monotonic()
        except ServiceError as exc:
            self._fail(turn, exc)

    async def _send(self, turn: _Turn, transcript: str, *, keep_going: bool) -> None:
        s = self.settings
        request: dict[str, Any] = {
            "context_id": turn.context_id,
            "model_id": s.model,
            "voice": {"id": s.voice_id},
            "output_format": s.output_format(),
            "transcript": transcript,
            "continue": keep_going,
            "language": s.language,
            "add_timestamps": s.add_timestamps,
            "max_buffer_delay_ms": s.max_buffer_delay_ms,
            **s.speed_fields(),
        }
        conn = self._conn
        if conn is None or turn.generation != self._generation:
            raise ServiceError("the websocket closed", service=SERVICE, retryable=True)
        try:
            async with asyncio.timeout(s.connect_timeout):
                await conn.send(request)
        except Exception as exc:
            self._lost(turn.generation)
            raise _service_error(exc) from exc

    def _forget(self, turn: _Turn) -> None:
        if turn.context_id and self._by_context.get(turn.context_id) is turn:
            del self._by_context[turn.context_id]
            self._forgotten.append(turn.context_id)

    def _fail(self, turn: _Turn, error: ServiceError) -> None:
        """A turn's attempt failed: recover in a task (retry or fall back)."""
        if turn.state is not _State.LIVE:
            return
        turn.state = _State.RECOVERING
        self._forget(turn)
        turn.recovery = self.create_task(self._recover(turn, error), f"recover:{turn.turn_id}")

    async def _recover(self, turn: _Turn, error: ServiceError) -> None:
        while True:
            self.errors += 1
            logger.warning("{}: turn {} attempt {} failed: {}", self.name, turn.turn_id, turn.attempt + 1, error)
            await self._metric(SERVICE_ERROR, 1)
            if error.status == 429:
                await self._metric(SERVICE_RATE_LIMITED, 1)
            if turn.context_id and error.status is None and self._conn is not None:
                if turn.generation == self._generation:  # a stalled context must not speak later
                    await self._send_cancels(self._conn, [turn.context_id])
            wait = self._policy.delay(turn.attempt + 1, error.retry_after)
            if turn.silent or not error.retryable or turn.attempt >= self.settings.max_retries:
                break
            if error.retry_after is not None and error.retry_after > self.settings.max_retry_wait:
                break
            turn.attempt += 1
            self.retries += 1
            await self._metric(SERVICE_RETRY, 1)
            await asyncio.sleep(min(wait, self.settings.max_retry_wait))
            if turn.state is not _State.RECOVERING:
                return
            turn.resume_from = self._resume_point(turn)
            turn.audio.clear()  # a stitched reply is not cached
            turn.cache_key = None if turn.resume_from else turn.cache_key
            try:
                await self._open_context(turn)
                return
            except ServiceError as exc:
                turn.state = _State.RECOVERING
                error = exc
        if turn.state is _State.RECOVERING:
            await self._fall_back(turn, str(error))

    def _resume_point(self, turn: _Turn) -> int:
        """First sentence whose words were not all covered by timestamps."""
        covered = turn.words_done
        index = turn.resume_from
        while index < turn.sent and covered >= len(turn.sentences[index].split()):
            covered -= len(turn.sentences[index].split())
            index += 1
        return index

    async def _fall_back(self, turn: _Turn, reason: str) -> None:
        if turn.silent:
            turn.state = _State.FINISHED
            return
        start = self._resume_point(turn) if turn.got_audio else turn.resume_from
        text = " ".join(turn.sentences[start:]).strip()
        category = turn.category if turn.category in ("greeting", "goodbye") else "error"
        self.unspoken.append(UnspokenText(turn.turn_id, text, reason, category))
        logger.error(
            "{}: {} characters of {} not spoken ({}); playing the {!r} fallback",
            self.name,
            len(text),
            turn.turn_id,
            reason,
            category,
        )
        await self.push_error(
            f"{self.name}: text of {turn.turn_id} not spoken ({len(text)} characters): {reason}; "
            f"played the pre-recorded {category!r} phrase"
        )
        audio = fallback_audio(category, self.settings.sample_rate, self.settings.frame_encoding)
        if turn.started_out:
            await self._emit(turn, TTSStoppedFrame(context_id=turn.turn_id))
            turn.started_out = False
        fallback_id = f"{turn.turn_id}-fallback"
        await self._emit(turn, TTSSpeakFrame(fallback_text(category), category=category))
        await self._emit(turn, TTSStartedFrame(context_id=fallback_id))
        await self._play(turn, fallback_id, audio)
        await self._emit(turn, TTSStoppedFrame(context_id=fallback_id))
        await self._finish(turn)

    # ------------------------------------------------------------ socket

    async def _ensure_connected(self) -> None:
        if self._conn is not None:
            return
        async with self._connect_lock:
            if self._conn is not None:
                return
            if self._client is None or self._stopping:
                raise ServiceError("the service is not running", service=SERVICE, retryable=False)
            manager = self._client.tts.websocket_connect(
                websocket_connection_options={"open_timeout": self.settings.connect_timeout, "max_queue": 64}  # type: ignore[typeddict-unknown-key]
            )
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
        """The socket of ``generation`` is gone: fail its live turns."""
        if generation != self._generation or self._conn is None:
            return
        conn, self._conn = self._conn, None
        self.create_task(_close_quietly(conn), "close")
        error = ServiceError("the websocket closed", service=SERVICE, retryable=True)
        for turn in list(self._by_context.values()):
            if turn.generation == generation:
                self._fail(turn, error)
        if not self._stopping:
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
                if not self._stopping and generation == self._generation:
                    logger.warning("{}: websocket closed ({})", self.name, exc)
                self._lost(generation)
                return
            try:
                message = parse_server_message(raw)
            except ProtocolError as exc:
                self.malformed += 1
                logger.warning("{}: {} (raw: {!r})", self.name, exc, exc.raw)
                await self._metric(PROTOCOL_MALFORMED, 1)
                continue
            await self._on_message(message)

    async def _on_message(self, message: ServerMessage) -> None:
        turn = self._by_context.get(message.context_id or "")
        if turn is None:
            if message.type == "chunk" and message.context_id in self._forgotten:
                self.stale_chunks_dropped += 1
            elif message.type == "error":
                logger.warning("{}: error for {}: {}", self.name, message.context_id, message.error)
            return
        turn.last_event_at = time.monotonic()
        if message.type == "chunk":
            await self._on_chunk(turn, message.audio)
        elif message.type == "timestamps" and message.words:
            offset = turn.attempt_offset
            words = tuple((w, round(s + offset, 4), round(e + offset, 4)) for w, s, e in message.words)
            turn.words_done += len(words)
            if turn.cache_key is not None:
                turn.words.extend(words)
            if not turn.silent:
                await self._emit(turn, TTSWordTimestampsFrame(words=words, context_id=turn.turn_id))
        elif message.type == "done":
            self._forget(turn)
            self._store(turn)
            await self._finish(turn)
        elif message.type == "error":
            status = message.status_code
            retryable = status is None or status == 429 or status >= 500
            self._fail(turn, ServiceError(message.error, service=SERVICE, retryable=retryable, status=status))

    async def _on_chunk(self, turn: _Turn, audio: bytes) -> None:
        if not turn.got_audio:
            turn.got_audio = True
            if not turn.ttfb_reported and not turn.silent:
                turn.ttfb_reported = True
                await self._metric(LATENCY_TTS_TTFB, time.monotonic() - turn.first_sent_at, unit="s")
        if self.settings.encoding == "pcm_s16le":
            audio = turn.carry + audio
            cut = len(audio) - len(audio) % 2
            audio, turn.carry = audio[:cut], audio[cut:]
        if not audio:
            return
        if turn.cache_key is not None:
            if len(turn.audio) + len(audio) > self.cache.max_bytes // 4:
                turn.cache_key = None  # too long to cache: stop keeping it
                turn.audio = bytearray()
            else:
                turn.audio += audio
        turn.audio_seconds += self.settings.seconds(len(audio))
        if not turn.silent:
            await self._emit(turn, self._audio_frame(audio, turn.turn_id))

    def _store(self, turn: _Turn) -> None:
        if turn.cache_key is None or turn.attempt_offset or not turn.audio:
            return
        s = self.settings
        self.cache.put(
            turn.cache_key, CachedAudio(bytes(turn.audio), s.sample_rate, s.frame_encoding, tuple(turn.words))
        )
        turn.audio = bytearray()

    # ------------------------------------------------------------ output

    def _audio_frame(self, audio: bytes, context_id: str) -> TTSAudioRawFrame:
        s = self.settings
        return TTSAudioRawFrame(audio, s.sample_rate, 1, s.frame_encoding, context_id=context_id)

    async def _emit(self, turn: _Turn, frame: Frame) -> None:
        """Push a frame of ``turn`` now if it is the turn being spoken, else hold it."""
        if turn.silent:
            return
        frame.epoch = turn.epoch
        async with self._out_lock:
            if turn.state is _State.CANCELLED:  # checked under the lock: an interruption may come while waiting
                return
            if self._order and self._order[0] is not turn:
                turn.backlog.append(frame)
                return
            await self.push_frame(frame)

    async def _play(self, turn: _Turn, context_id: str, cached: CachedAudio) -> None:
        """Cached or pre-recorded audio, with its word timings, in frames of 100 ms."""
        width = 1 if cached.encoding == MULAW else 2
        step = max(width, int(cached.sample_rate * _AUDIO_FRAME_SECONDS) * width)
        if cached.words:
            await self._emit(turn, TTSWordTimestampsFrame(words=cached.words, context_id=context_id))
        for start in range(0, len(cached.audio), step):
            await self._emit(turn, self._audio_frame(cached.audio[start : start + step], context_id))

    async def _finish(self, turn: _Turn) -> None:
        """The turn's output is complete: TTSStopped; if it was being spoken,
        the turns after it speak (their held frames go out now)."""
        if turn.state is _State.CANCELLED:
            return
        if turn.started_out:
            await self._emit(turn, TTSStoppedFrame(context_id=turn.turn_id))
            turn.started_out = False
        turn.state = _State.FINISHED
        if turn.silent:
            return
        async with self._out_lock:
            if self._order and self._order[0] is turn:
                self._order.pop(0)
                while self._order:
                    head = self._order[0]
                    backlog, head.backlog = head.backlog, []
                    for frame in backlog:
                        await self.push_frame(frame)
                    # An interruption may have cleared the order meanwhile.
                    if head.state is not _State.FINISHED or not self._order or self._order[0] is not head:
                        break
                    self._order.pop(0)
            if not self._order:
                self._quiet.set()

    # ------------------------------------------------------------ timers and metrics

    async def _watchdog(self) -> None:
        """Fail turns whose audio does not come: the wait on the peer has a timeout."""
        s = self.settings
        tick = max(0.02, min(s.first_audio_timeout, s.stall_timeout) / 8)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for turn in list(self._by_context.values()):
                if turn.state is not _State.LIVE:
                    continue
                if not turn.got_audio and now - turn.attempt_sent_at > s.first_audio_timeout:
                    message = f"no audio {s.first_audio_timeout:.1f}s after the text was sent"
                elif turn.close_sent and now - turn.last_event_at > s.stall_timeout:
                    message = f"no message for {s.stall_timeout:.1f}s before the end of the context"
                else:
                    continue
                self._fail(turn, ServiceError(message, service=SERVICE, retryable=True))

    async def _metric(self, name: str, value: float, *, unit: str = "") -> None:
        await self.push_frame(MetricsFrame(name, float(value), unit, self.name, {"service": SERVICE}))


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
