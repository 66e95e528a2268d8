"""FakeCartesia: a local stand-in for Cartesia's text-to-speech API.

Speaks the wire protocol of the real service (``cartesia`` SDK 4.x,
``cartesia-version: 2026-08-14``) on 127.0.0.1, so the real SDK can be
pointed at it::

    async with FakeCartesia() as fake:
        client = AsyncCartesia(api_key="test", base_url=fake.http_url, websocket_base_url=fake.ws_url)
        async with client.tts.websocket_connect() as conn:
            ...
        assert fake.transcripts == {"turn-1": "Hello there. "}

What it serves
--------------
``GET /tts/websocket`` (websocket)
    Auth by headers (``Authorization: Bearer <key>``, or the older
    ``X-API-Key: <key>`` the service still takes, and ``cartesia-version``)
    or by query (``api_key`` and ``cartesia_version``): 401 without a key (or
    with a key other than ``api_key`` when one is set), 400 without a
    version. Several contexts run at once on one socket, told apart by
    ``context_id``. Generation requests (JSON text) carry a ``transcript``;
    with ``continue: true`` more text follows, and a request with
    ``continue: false`` (the SDK's ``no_more_inputs()``: empty transcript)
    ends the context: once its audio is out, ``done`` is sent. Each piece of
    text is synthesized as it arrives, cut into base64 ``chunk`` messages of
    ``chunk_ms`` in the requested ``output_format`` (raw ``pcm_s16le``,
    ``pcm_f32le`` or ``pcm_mulaw``, at any rate the API accepts);
    ``add_timestamps`` adds ``timestamps`` messages (word timings, seconds
    from the start of the context's audio) as the audio covering them goes
    out. ``flush: true`` is answered by ``flush_done`` once the text before it
    is spoken. ``{"context_id", "cancel": true}`` stops the context (no
    ``done``); ``faults.late_chunks`` chunks may still follow it, as chunks in
    flight do on the real service. A bad request gets an ``error`` message
    (``done: true``) for its context; the socket stays open. The server
    closes a socket idle for ``idle_timeout`` seconds.
``POST /tts/bytes``
    The same request without ``context_id``/``continue``; answers the whole
    audio (raw, or a WAV file when ``output_format.container`` is ``wav``).

Where the audio comes from
--------------------------
A ``Synthesizer``: ``synthesize(text, sample_rate) -> Synthesis(pcm16, words)``
where ``pcm16`` is mono 16-bit little-endian PCM at ``sample_rate`` and
``words`` is ``((word, start_s, end_s), ...)`` relative to the start of that
audio. It is called in a worker thread. The default, ``ToneSynthesizer``,
makes a deterministic tone per word (a plausible 65 ms per character, pauses
between words and after sentences) with a little noise; an espeak-ng
synthesizer can be plugged in behind the same protocol.

Fault injection (``fake.faults``, changeable at any time)
----------------------------------------------------------
``first_chunk_delay`` / ``chunk_delay`` (seconds); ``error_requests`` (the
next N contexts, or ``/tts/bytes`` requests, get an error with
``error_status``); ``reject_upgrades`` (the next N websocket upgrades are
refused with ``reject_status`` and ``Retry-After: retry_after``);
``drop_after_chunks`` (the next context to send that many chunks has its
socket closed: with ``drop_close_code``, or abruptly when it is None);
``malformed_after_chunks`` (the next context to send that many chunks sends a
frame that is not JSON before its next chunk); ``stall_after_chunks`` (the
next context to send that many chunks goes silent, socket open);
``late_chunks`` (chunks still sent after a cancel). The one-shot faults reset
themselves to None once triggered.

What it records
---------------
``messages`` (every client message, parsed), ``contexts`` (per context:
transcript pieces, settings, chunks and audio sent, cancelled/done/error),
``transcripts`` (context id -> text received), ``cancels``, ``upgrades``
(every websocket handshake with its status), ``bytes_requests``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import math
import uuid
import wave
import zlib
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
from aiohttp import WSMsgType, web
from loguru import logger

__all__ = [
    "CartesiaFaults",
    "ContextRecord",
    "FakeCartesia",
    "Synthesis",
    "Synthesizer",
    "ToneSynthesizer",
    "encode_audio",
]

API_VERSION = "2026-08-14"
ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw")
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
_SPEEDS = ("slow", "normal", "fast")
_MAX_MESSAGE = 1 << 20
_TITLES = {400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests", 500: "Internal Server Error"}


class Synthesis(NamedTuple):
    """Audio for a piece of text: mono pcm16 and word timings in seconds."""

    audio: bytes
    words: tuple[tuple[str, float, float], ...]


class Synthesizer(Protocol):
    """Turns text into speech for the fake. Called from a worker thread,
    unless it has a true ``runs_inline`` attribute (cheap synthesizers, such
    as :class:`ToneSynthesizer`), so a slow one never stalls the event loop."""

    def synthesize(self, text: str, sample_rate: int) -> Synthesis: ...


async def synthesize(synthesizer: Synthesizer, text: str, sample_rate: int) -> Synthesis:
    """``synthesizer``'s audio for ``text``: inline if it ``runs_inline``, else in a worker thread."""
    if getattr(synthesizer, "runs_inline", False):
        return synthesizer.synthesize(text, sample_rate)
    return await asyncio.to_thread(synthesizer.synthesize, text, sample_rate)


class ToneSynthesizer:
    """Deterministic stand-in for speech: one tone per word.

    A word lasts ``seconds_per_char`` per character (at least 120 ms), words
    are separated by ``word_gap`` of silence and a sentence end adds
    ``sentence_gap``. Each word's pitch and noise come from its text, so the
    same text always gives the same bytes, and the last
    ``CACHED`` syntheses are kept (a fake under load says the same sentences
    over and over). Cheap enough to run on the event loop (``runs_inline``).
    """

    runs_inline = True
    CACHED = 32

    def __init__(
        self,
        *,
        seconds_per_char: float = 0.065,
        word_gap: float = 0.08,
        sentence_gap: float = 0.25,
        amplitude: float = 0.3,
    ) -> None:
        self.seconds_per_char = seconds_per_char
        self.word_gap = word_gap
        self.sentence_gap = sentence_gap
        self.amplitude = amplitude
        # The cache wraps the plain function, not a bound method: no reference cycle through self.
        self._cached = functools.lru_cache(maxsize=self.CACHED)(ToneSynthesizer._synthesize)

    def synthesize(self, text: str, sample_rate: int) -> Synthesis:
        shape = (self.seconds_per_char, self.word_gap, self.sentence_gap, self.amplitude)
        synthesis: Synthesis = self._cached(text, sample_rate, shape)
        return synthesis

    @staticmethod
    def _synthesize(text: str, sample_rate: int, shape: tuple[float, float, float, float]) -> Synthesis:
        seconds_per_char, word_gap, sentence_gap, amplitude = shape
        pieces: list[np.ndarray[Any, np.dtype[np.float64]]] = []
        words: list[tuple[str, float, float]] = []
        t = 0.0
        for word in text.split():
            duration = max(0.12, seconds_per_char * len(word))
            n = round(duration * sample_rate)
            seed = zlib.crc32(word.encode())
            rng = np.random.default_rng(seed)
            freq = 140.0 + seed % 160
            x = np.arange(n) / sample_rate
            envelope = np.minimum(1.0, np.minimum(x, duration - x) / 0.015)
            tone = np.sin(2 * math.pi * freq * x) + 0.4 * np.sin(4 * math.pi * freq * x)
            pieces.append(amplitude * envelope * (tone / 1.4 + 0.08 * rng.standard_normal(n)))
            words.append((word, round(t, 4), round(t + n / sample_rate, 4)))
            t += n / sample_rate
            gap = word_gap + (sentence_gap if word[-1] in ".!?" else 0.0)
            gap_samples = round(gap * sample_rate)
            pieces.append(np.zeros(gap_samples))
            t += gap_samples / sample_rate
        if not pieces:
            return Synthesis(b"", ())
        samples = np.clip(np.concatenate(pieces), -1.0, 1.0)
        return Synthesis((samples * 32767).astype("<i2").tobytes(), tuple(words))


def encode_audio(pcm16: bytes, encoding: str) -> bytes:
    """Raw pcm16 in the API's ``encoding`` (``pcm_s16le``, ``pcm_f32le``, ``pcm_mulaw``)."""
    if encoding == "pcm_s16le":
        return pcm16
    if encoding == "pcm_f32le":
        return (np.frombuffer(pcm16, dtype="<i2").astype("<f4") / 32768.0).astype("<f4").tobytes()
    if encoding == "pcm_mulaw":
        from vantum_pipeline.audio.mulaw import lin2ulaw

        encoded: bytes = lin2ulaw(pcm16)
        return encoded
    raise ValueError(f"unsupported encoding {encoding!r}")


def _bytes_per_sample(encoding: str) -> int:
    return {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1}[encoding]


@dataclass
class CartesiaFaults:
    """Fault injection; see the module docstring. One-shot faults clear themselves."""

    first_chunk_delay: float = 0.0
    chunk_delay: float = 0.0
    error_requests: int = 0
    error_status: int = 500
    error_title: str = "Internal Server Error"
    error_message: str = "generation failed (injected fault)"
    reject_upgrades: int = 0
    reject_status: int = 500
    retry_after: float | None = None
    drop_after_chunks: int | None = None
    drop_close_code: int | None = 1011
    malformed_after_chunks: int | None = None
    stall_after_chunks: int | None = None
    late_chunks: int = 0


@dataclass
class ContextRecord:
    """What the fake saw and did for one context."""

    context_id: str
    model_id: str = ""
    voice: Any = None
    output_format: dict[str, Any] = field(default_factory=dict)
    language: str | None = None
    speed: Any = None
    add_timestamps: bool = False
    max_buffer_delay_ms: int | None = None
    pieces: list[str] = field(default_factory=list)
    chunks_sent: int = 0
    audio_bytes: int = 0
    flushes: int = 0
    cancelled: bool = False
    done: bool = False
    error: str | None = None

    @property
    def transcript(self) -> str:
        return "".join(self.pieces)


class _RequestError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Piece:
    text: str
    flush: bool
    final: bool


class _Context:
    """A context being generated on one socket."""

    def __init__(self, record: ContextRecord) -> None:
        self.record = record
        self.queue: asyncio.Queue[_Piece] = asyncio.Queue(maxsize=256)
        self.cancelled = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.audio_seconds = 0.0
        self.started = False
        self.failed = False


class _Connection:
    """One websocket: its contexts and a send lock (chunks of contexts interleave)."""

    def __init__(self, fake: FakeCartesia, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.fake = fake
        self.ws = ws
        self.request = request
        self.contexts: dict[str, _Context] = {}
        self.lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: dict[str, Any] | str) -> None:
        if self.closed:
            return
        async with self.lock:
            await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def close(self, code: int | None) -> None:
        """Close the socket: with a close frame, or abruptly when ``code`` is None."""
        self.closed = True
        if code is None:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
        else:
            await self.ws.close(code=code, message=b"server closed the connection")

    async def error(self, context_id: str | None, message: str, status: int = 400, title: str = "Bad Request") -> None:
        await self.send(
            {
                "type": "error",
                "context_id": context_id,
                "done": True,
                "status_code": status,
                "title": title,
                "message": message,
                "error_code": "bad_request" if status == 400 else "generation_error",
                "request_id": uuid.uuid4().hex,
            }
        )


class FakeCartesia:
    """The fake server; an async context manager. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        synthesizer: Synthesizer | None = None,
        chunk_ms: int = 40,
        idle_timeout: float = 300.0,
        faults: CartesiaFaults | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.synthesizer: Synthesizer = synthesizer or ToneSynthesizer()
        self.chunk_ms = chunk_ms
        self.idle_timeout = idle_timeout
        self.faults = faults or CartesiaFaults()
        self.messages: list[dict[str, Any]] = []
        self.contexts: dict[str, ContextRecord] = {}
        self.cancels: list[str] = []
        self.upgrades: list[dict[str, Any]] = []
        self.bytes_requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._connections: set[_Connection] = set()

    # -------------------------------------------------------------- lifecycle

    @property
    def http_url(self) -> str:
        """``base_url`` for ``AsyncCartesia``."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``websocket_base_url`` for ``AsyncCartesia`` (the SDK adds ``/tts/websocket``)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def transcripts(self) -> dict[str, str]:
        """Context id -> all the text received for it."""
        return {cid: record.transcript for cid, record in self.contexts.items()}

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def __aenter__(self) -> FakeCartesia:
        app = web.Application()
        app.router.add_get("/tts/websocket", self._websocket)
        app.router.add_post("/tts/bytes", self._bytes)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for connection in list(self._connections):
            await self._stop_contexts(connection)
            try:
                async with asyncio.timeout(1.0):
                    await connection.close(1001)
            except (TimeoutError, ConnectionError):
                pass
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -------------------------------------------------------------- auth

    def _check_auth(self, request: web.Request) -> tuple[int, str]:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            key = header[7:].strip()
        else:
            key = request.headers.get("X-API-Key") or request.query.get("api_key", "")
        version = request.headers.get("cartesia-version") or request.query.get("cartesia_version")
        if not key or (self.api_key is not None and key != self.api_key):
            return 401, "Invalid API key"
        if not version:
            return 400, "The cartesia-version header (or cartesia_version query parameter) is required"
        return 200, ""

    def _reject(self, status: int, message: str) -> web.Response:
        headers = {}
        if status == 429 and self.faults.retry_after is not None:
            headers["Retry-After"] = f"{self.faults.retry_after:g}"
        body = {"status_code": status, "title": _TITLES.get(status, "Error"), "message": message}
        return web.json_response(body, status=status, headers=headers)

    # -------------------------------------------------------------- websocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        status, message = self._check_auth(request)
        if status == 200 and self.faults.reject_upgrades > 0:
            self.faults.reject_upgrades -= 1
            status, message = self.faults.reject_status, "rejected (injected fault)"
        self.upgrades.append({"status": status, "query": dict(request.query), "headers": dict(request.headers)})
        if status != 200:
            return self._reject(status, message)
        ws = web.WebSocketResponse(max_msg_size=_MAX_MESSAGE, heartbeat=None)
        await ws.prepare(request)
        connection = _Connection(self, ws, request)
        self._connections.add(connection)
        try:
            while not connection.closed:
                try:
                    msg = await ws.receive(timeout=self.idle_timeout)
                except TimeoutError:
                    logger.debug("FakeCartesia: closing a socket idle for {:.0f}s", self.idle_timeout)
                    await connection.close(1000)
                    break
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(connection, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await connection.error(None, "binary frames are not accepted: send JSON text")
                else:
                    break  # close, closing, error
        finally:
            self._connections.discard(connection)
            connection.closed = True
            await self._stop_contexts(connection)
        return ws

    async def _stop_contexts(self, connection: _Connection) -> None:
        tasks = [c.task for c in connection.contexts.values() if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    async def _on_text(self, connection: _Connection, data: str) -> None:
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            await connection.error(None, "message is not valid JSON")
            return
        if not isinstance(message, dict):
            await connection.error(None, "message must be a JSON object")
            return
        self.messages.append(message)
        context_id = message.get("context_id")
        if not isinstance(context_id, str) or not context_id:
            await connection.error(None, "context_id is required")
            return
        if message.get("cancel") is True:
            await self._cancel(connection, context_id)
            return
        context = connection.contexts.get(context_id)
        if context is not None and context.record.done:
            context = None  # a finished id may be reused for a new generation
        try:
            if context is None:
                context = self._open_context(connection, message)
            piece = self._piece(context, message)
        except _RequestError as exc:
            record = self.contexts.setdefault(context_id, ContextRecord(context_id))
            record.error = str(exc)
            await connection.error(context_id, str(exc), exc.status)
            return
        if context.failed or context.cancelled.is_set():
            return  # more input for a context that errored or was cancelled: ignored, as the service does
        try:
            context.queue.put_nowait(piece)
        except asyncio.QueueFull:
            await connection.error(context_id, "too many pending inputs for this context", 429)

    def _open_context(self, connection: _Connection, message: dict[str, Any]) -> _Context:
        record = ContextRecord(message["context_id"])
        record.model_id = _require_str(message, "model_id")
        record.voice = _voice(message.get("voice"))
        record.output_format = _output_format(message.get("output_format"), raw_only=True)
        record.language = message.get("language")
        record.speed = _speed(message)
        record.add_timestamps = bool(message.get("add_timestamps", False))
        delay = message.get("max_buffer_delay_ms")
        if delay is not None and (not isinstance(delay, int) or not 0 <= delay <= 5000):
            raise _RequestError(f"max_buffer_delay_ms must be an integer in [0, 5000], got {delay!r}")
        record.max_buffer_delay_ms = delay
        self.contexts[record.context_id] = record
        context = _Context(record)
        connection.contexts[record.context_id] = context
        if self.faults.error_requests > 0:
            self.faults.error_requests -= 1
            context.failed = True
            record.error = self.faults.error_message
            context.task = asyncio.get_running_loop().create_task(
                connection.error(
                    record.context_id, self.faults.error_message, self.faults.error_status, self.faults.error_title
                )
            )
            return context
        context.task = asyncio.get_running_loop().create_task(self._generate(connection, context))
        return context

    def _piece(self, context: _Context, message: dict[str, Any]) -> _Piece:
        transcript = message.get("transcript")
        if not isinstance(transcript, str):
            raise _RequestError("transcript must be a string")
        keep_going = message.get("continue", False)
        if not isinstance(keep_going, bool):
            raise _RequestError("continue must be a boolean")
        context.record.pieces.append(transcript)
        flush = message.get("flush") is True
        if flush:
            context.record.flushes += 1
        return _Piece(transcript, flush, not keep_going)

    async def _cancel(self, connection: _Connection, context_id: str) -> None:
        self.cancels.append(context_id)
        context = connection.contexts.get(context_id)
        if context is None:
            return  # cancelling an unknown or finished context is harmless
        context.record.cancelled = True
        context.cancelled.set()
        if context.queue.empty():
            context.queue.put_nowait(_Piece("", False, True))  # wake a generator waiting for text

    async def _generate(self, connection: _Connection, context: _Context) -> None:
        record = context.record
        fmt = record.output_format
        rate, encoding = int(fmt["sample_rate"]), str(fmt["encoding"])
        chunk_bytes = max(1, rate * self.chunk_ms // 1000) * _bytes_per_sample(encoding)
        flush_id = 1
        late = 0
        try:
            while True:
                piece = await context.queue.get()
                if context.cancelled.is_set() and (not piece.text or late >= self.faults.late_chunks):
                    return
                if piece.text.strip():
                    synthesis = await synthesize(self.synthesizer, piece.text, rate)
                    audio = encode_audio(synthesis.audio, encoding)
                    offset = context.audio_seconds
                    words = [(w, s + offset, e + offset) for w, s, e in synthesis.words]
                    sent_words = 0
                    for start in range(0, len(audio), chunk_bytes):
                        if context.cancelled.is_set():
                            if late >= self.faults.late_chunks:
                                return
                            late += 1
                        if not await self._before_chunk(connection, context):
                            return
                        data = audio[start : start + chunk_bytes]
                        await connection.send(
                            {
                                "type": "chunk",
                                "context_id": record.context_id,
                                "data": base64.b64encode(data).decode("ascii"),
                                "done": False,
                                "status_code": 206,
                                "step_time": round(1000 * max(self.faults.chunk_delay, 0.001), 3),
                                "flush_id": flush_id,
                            }
                        )
                        record.chunks_sent += 1
                        record.audio_bytes += len(data)
                        context.audio_seconds += len(data) / _bytes_per_sample(encoding) / rate
                        if record.add_timestamps:
                            covered = [w for w in words[sent_words:] if w[2] <= context.audio_seconds + 1e-6]
                            if covered:
                                await self._timestamps(connection, record.context_id, covered, flush_id)
                                sent_words += len(covered)
                    if record.add_timestamps and sent_words < len(words):
                        await self._timestamps(connection, record.context_id, words[sent_words:], flush_id)
                if context.cancelled.is_set():
                    return
                if piece.flush:
                    await connection.send(
                        {
                            "type": "flush_done",
                            "context_id": record.context_id,
                            "done": False,
                            "flush_done": True,
                            "flush_id": flush_id,
                            "status_code": 206,
                        }
                    )
                    flush_id += 1
                if piece.final:
                    record.done = True
                    await connection.send(
                        {"type": "done", "context_id": record.context_id, "done": True, "status_code": 200}
                    )
                    return
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("FakeCartesia: context {} stopped: {}", record.context_id, exc)

    async def _before_chunk(self, connection: _Connection, context: _Context) -> bool:
        """Delays and faults before a chunk; False when the context must stop sending."""
        faults = self.faults
        sent = context.record.chunks_sent
        if not context.started:
            context.started = True
            if faults.first_chunk_delay > 0:
                await asyncio.sleep(faults.first_chunk_delay)
        elif faults.chunk_delay > 0:
            await asyncio.sleep(faults.chunk_delay)
        if faults.drop_after_chunks is not None and sent >= faults.drop_after_chunks:
            faults.drop_after_chunks = None
            logger.debug("FakeCartesia: dropping the socket after {} chunks (injected fault)", sent)
            await connection.close(faults.drop_close_code)
            return False
        if faults.malformed_after_chunks is not None and sent >= faults.malformed_after_chunks:
            faults.malformed_after_chunks = None
            await connection.send('{"type": "chunk", "context_id": ' + json.dumps(context.record.context_id) + ', "da')
            return True
        if faults.stall_after_chunks is not None and sent >= faults.stall_after_chunks:
            faults.stall_after_chunks = None
            await context.cancelled.wait()  # silent until cancelled or the socket goes
            return False
        return True

    async def _timestamps(
        self, connection: _Connection, context_id: str, words: list[tuple[str, float, float]], flush_id: int
    ) -> None:
        await connection.send(
            {
                "type": "timestamps",
                "context_id": context_id,
                "done": False,
                "status_code": 206,
                "flush_id": flush_id,
                "word_timestamps": {
                    "words": [w for w, _, _ in words],
                    "start": [round(s, 4) for _, s, _ in words],
                    "end": [round(e, 4) for _, _, e in words],
                },
            }
        )

    # -------------------------------------------------------------- bytes

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        status, message = self._check_auth(request)
        if status != 200:
            return self._reject(status, message)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._reject(400, "body is not valid JSON")
        if not isinstance(body, dict):
            return self._reject(400, "body must be a JSON object")
        self.bytes_requests.append(body)
        if self.faults.error_requests > 0:
            self.faults.error_requests -= 1
            return self._reject(self.faults.error_status, self.faults.error_message)
        try:
            _require_str(body, "model_id")
            _voice(body.get("voice"))
            fmt = _output_format(body.get("output_format"), raw_only=False)
            transcript = body.get("transcript")
            if not isinstance(transcript, str) or not transcript.strip():
                raise _RequestError("transcript must be a non-empty string")
        except _RequestError as exc:
            return self._reject(exc.status, str(exc))
        if self.faults.first_chunk_delay > 0:
            await asyncio.sleep(self.faults.first_chunk_delay)
        rate = int(fmt["sample_rate"])
        synthesis = await synthesize(self.synthesizer, transcript, rate)
        if fmt["container"] == "wav":
            return web.Response(body=_wav(synthesis.audio, rate), content_type="audio/wav")
        audio = encode_audio(synthesis.audio, str(fmt["encoding"]))
        return web.Response(body=audio, content_type="application/octet-stream")


# ------------------------------------------------------------------ validation


def _require_str(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value:
        raise _RequestError(f"{name} is required and must be a non-empty string")
    return value


def _voice(voice: Any) -> Any:
    """A voice id string, ``{"id": ...}`` or the older ``{"mode": "id", "id": ...}``."""
    if isinstance(voice, str) and voice:
        return voice
    if isinstance(voice, dict) and isinstance(voice.get("id"), str) and voice["id"]:
        if voice.get("mode", "id") != "id":
            raise _RequestError(f"voice mode {voice.get('mode')!r} is not accepted in this API version")
        return voice
    raise _RequestError("voice must be a voice id or an object with an id")


def _output_format(fmt: Any, *, raw_only: bool) -> dict[str, Any]:
    if not isinstance(fmt, dict):
        raise _RequestError("output_format is required")
    container = fmt.get("container")
    if container != "raw" and (raw_only or container != "wav"):
        raise _RequestError(f"output_format.container {container!r} is not supported here")
    if fmt.get("encoding") not in ENCODINGS:
        raise _RequestError(
            f"output_format.encoding must be one of {', '.join(ENCODINGS)}, got {fmt.get('encoding')!r}"
        )
    if fmt.get("sample_rate") not in SAMPLE_RATES:
        raise _RequestError(f"output_format.sample_rate {fmt.get('sample_rate')!r} is not supported")
    return dict(fmt)


def _speed(message: dict[str, Any]) -> Any:
    speed = message.get("speed")
    if speed is not None and speed not in _SPEEDS:
        raise _RequestError(f"speed must be one of {', '.join(_SPEEDS)}, got {speed!r}")
    config = message.get("generation_config")
    if isinstance(config, dict) and "speed" in config:
        value = config["speed"]
        if not isinstance(value, int | float) or not 0.6 <= value <= 1.5:
            raise _RequestError(f"generation_config.speed must be in [0.6, 1.5], got {value!r}")
        return value
    return speed


def _wav(pcm16: bytes, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm16)
    return out.getvalue()
