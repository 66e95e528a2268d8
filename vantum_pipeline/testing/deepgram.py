"""FakeDeepgram: Deepgram's live ``/v1/listen`` websocket on 127.0.0.1.

Point the official SDK at it and it transcribes what you send, following
Deepgram's protocol and timing rules (see ``deepgram_stream``), with what it
"hears" supplied by a :class:`Recognizer` (the default
:class:`ScriptedRecognizer` returns the lines a test scripts)::

    async with FakeDeepgram(recognizer=ScriptedRecognizer(["yes I am interested"])) as dg:
        client = AsyncDeepgramClient(api_key="test", environment=dg.environment())
        async with client.listen.v1.connect(model="nova-2", encoding="linear16", sample_rate=16000) as socket:
            ...

The upgrade checks ``Authorization: Token <key>`` (or ``Bearer``): 401 when
missing, or wrong when ``api_key`` is set; 400 naming the parameter when the
query is invalid. The server honours ``KeepAlive``, ``Finalize`` and
``CloseStream`` (and acknowledges ``Configure``), and closes a stream that received neither audio nor a
message for ``idle_timeout`` seconds with close code 1011 (NET-0001), as the
service does.

Every upgrade request is recorded in ``attempts`` and every accepted stream
in ``connections`` (query, headers with the key redacted, the websocket
extensions negotiated, audio received, control messages, messages sent, how
it closed). Like ``websockets``' server, it accepts permessage-deflate when
the client offers it. Faults are injected per connection with
:class:`DeepgramFaults`: as the default for all, or queued for the next
connections with :meth:`FakeDeepgram.inject` / :meth:`FakeDeepgram.refuse`.

Run standalone: ``python -m vantum_pipeline.testing deepgram --port 8080``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from vantum_pipeline.testing.deepgram_stream import InvalidQuery, ListenOptions, ListenStream, StreamTiming
from vantum_pipeline.testing.recognizer import Recognition, Recognizer, ScriptedLine, ScriptedRecognizer, Word

if TYPE_CHECKING:
    from deepgram.environment import DeepgramClientEnvironment

__all__ = [
    "DeepgramConnection",
    "DeepgramFaults",
    "FakeDeepgram",
    "Recognition",
    "Recognizer",
    "ScriptedLine",
    "ScriptedRecognizer",
    "StreamTiming",
    "UpgradeAttempt",
    "Word",
]

LISTEN_PATH = "/v1/listen"
#: Close reason of an idle stream, as Deepgram words it.
IDLE_REASON = "Deepgram did not receive audio data or a text message within the timeout window (NET-0001)"
MALFORMED_FRAME = '<<this is not JSON>> {"type": "Results"'
_OUTBOX_SIZE = 4096
_REDACTED = "***"


@dataclass(frozen=True, slots=True)
class DeepgramFaults:
    """What goes wrong on a connection. Message counts are server messages
    sent on that connection (0: before the first one)."""

    #: Answer the upgrade with this HTTP status (400, 401, 429, 500, 503, ...).
    status: int | None = None
    #: ``Retry-After`` header (seconds) sent with ``status``.
    retry_after: float | None = None
    #: Accept the TCP connection and never answer the upgrade.
    stall: bool = False
    #: Accept the stream and never send anything, nor close it on idle.
    silent: bool = False
    #: Seconds before the first ``Results`` message.
    first_result_delay: float = 0.0
    #: Seconds before every message.
    message_delay: float = 0.0
    #: Drop the connection after sending this many messages.
    drop_after_messages: int | None = None
    #: Drop the connection once this many audio bytes were received (the
    #: chunk that crosses the line is lost, as in a real network failure).
    drop_after_audio_bytes: int | None = None
    #: Answer nothing once this many audio bytes were received (a frozen
    #: service): what arrives after is read and ignored, a close frame is never
    #: answered, the TCP connection stays open until the client drops it.
    freeze_after_audio_bytes: int | None = None
    #: How a drop looks: None aborts the TCP connection (no close frame, the
    #: client sees 1006); a code (e.g. 1011) closes with that code.
    drop_close_code: int | None = None
    #: Send one non-JSON text frame after this many messages.
    malformed_after_messages: int | None = None
    #: Send an ``Error`` message after this many messages, then close (1011).
    error_after_messages: int | None = None
    error_description: str = "Internal server error while processing the stream"


HEALTHY = DeepgramFaults()


@dataclass(slots=True)
class UpgradeAttempt:
    """One websocket upgrade request and how it was answered (101 = accepted)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    status: int = 0
    reason: str = ""


@dataclass(eq=False)
class DeepgramConnection:
    """The record of one accepted stream; also a handle to act on it live."""

    index: int
    query: dict[str, str]
    headers: dict[str, str]
    options: ListenOptions
    faults: DeepgramFaults
    opened_at: float
    #: Websocket extensions negotiated in the upgrade (``permessage-deflate`` when the client offered it).
    extensions: tuple[str, ...] = ()
    audio: bytearray = field(default_factory=bytearray)
    #: The size of each binary (audio) message, in order.
    audio_messages: list[int] = field(default_factory=list)
    #: Text messages received, parsed (a dict) or raw when not JSON.
    received: list[dict[str, Any] | str] = field(default_factory=list)
    #: Messages sent: dicts, or the raw text of a malformed frame.
    sent: list[dict[str, Any] | str] = field(default_factory=list)
    closed_at: float | None = None
    close_code: int | None = None
    #: "client", "close_stream", "idle", "dropped", "error", "server_shutdown".
    closed_by: str | None = None
    _outbox: asyncio.Queue[dict[str, Any] | str | None] = field(
        default_factory=lambda: asyncio.Queue(_OUTBOX_SIZE), repr=False
    )
    _ws: ServerConnection | None = field(default=None, repr=False)
    _closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / self.options.bytes_per_sample / self.options.sample_rate

    def received_of_type(self, kind: str) -> list[dict[str, Any]]:
        """Control messages received with ``"type": kind`` (``"KeepAlive"``, ...)."""
        return [m for m in self.received if isinstance(m, dict) and m.get("type") == kind]

    def sent_of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if isinstance(m, dict) and m.get("type") == kind]

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    async def send_raw(self, text: str) -> None:
        """Queue a text frame as is (e.g. a malformed message), after those queued."""
        await self._outbox.put(text)

    async def send_message(self, message: dict[str, Any]) -> None:
        """Queue a JSON message, after those queued."""
        await self._outbox.put(message)

    def drop(self) -> None:
        """Abort the TCP connection now, without a close frame."""
        if self._ws is not None and not self.is_closed:
            self.closed_by = "dropped"
            self._ws.transport.abort()


class _Frozen(asyncio.Protocol):
    """Takes a frozen connection's bytes and ignores them; tells the websocket when the client drops it."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the transport closes, connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection.connection_lost(exc)


def _redact(headers: Headers) -> dict[str, str]:
    redacted = {}
    for name, value in headers.raw_items():
        if name.lower() in ("authorization", "sec-websocket-protocol"):
            scheme, _, secret = value.partition(" ")
            value = f"{scheme} {_REDACTED}" if secret else _REDACTED
        redacted[name] = value
    return redacted


def _error_response(status: int, message: str, *, request_id: str, retry_after: float | None = None) -> Response:
    """An HTTP error answer to the upgrade, with Deepgram's error body."""
    code = {400: "Bad Request", 401: "INVALID_AUTH", 429: "TOO_MANY_REQUESTS"}.get(status, "INTERNAL_SERVER_ERROR")
    body = json.dumps({"err_code": code, "err_msg": message, "request_id": request_id}).encode()
    headers = Headers()
    headers["Content-Type"] = "application/json"
    headers["Content-Length"] = str(len(body))
    headers["dg-request-id"] = request_id
    headers["dg-error"] = message
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return Response(status, reason, headers, body)


class FakeDeepgram:
    """The fake server; see the module docstring.

    ``api_key``: the key clients must present (None: any non-empty key).
    ``recognizer``: what is heard (default: a :class:`ScriptedRecognizer`
    with an empty script, which hears empty transcripts).
    ``faults``: the default faults of every connection.
    ``idle_timeout``: seconds without audio or message before the server
    closes a stream. ``timing``: pacing of results (see :class:`StreamTiming`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        recognizer: Recognizer | None = None,
        faults: DeepgramFaults | None = None,
        idle_timeout: float = 10.0,
        timing: StreamTiming | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.recognizer: Recognizer = recognizer if recognizer is not None else ScriptedRecognizer()
        self.faults = faults or HEALTHY
        self.idle_timeout = idle_timeout
        self.timing = timing or StreamTiming()
        self.attempts: list[UpgradeAttempt] = []
        self.connections: list[DeepgramConnection] = []
        self._queued: deque[DeepgramFaults] = deque()
        self._accepted: dict[ServerConnection, DeepgramConnection] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._stalled: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> FakeDeepgram:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            open_timeout=None,  # a stalled upgrade must stall; we cancel it at exit
            ping_interval=None,
            max_size=2**22,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        logger.debug("FakeDeepgram listening on {}", self.ws_url)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for task in list(self._stalled):
            task.cancel()  # an upgrade that stalls on purpose never ends by itself
        for connection in self.connections:
            if not connection.is_closed and connection.closed_by is None:
                connection.closed_by = "server_shutdown"
        server.close()
        try:
            async with asyncio.timeout(3.0):
                await server.wait_closed()
        except TimeoutError:
            logger.error("FakeDeepgram: connections still open 3s after shutdown")

    @property
    def ws_url(self) -> str:
        """For ``DeepgramClientEnvironment(production=...)``: the SDK appends ``/v1/listen``."""
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> DeepgramClientEnvironment:
        """A deepgram-sdk environment pointing every URL at this server."""
        from deepgram.environment import DeepgramClientEnvironment

        return DeepgramClientEnvironment(
            base=self.http_url, production=self.ws_url, agent=self.ws_url, agent_rest=self.http_url
        )

    # ---------------------------------------------------------------- faults

    def inject(self, faults: DeepgramFaults, connections: int = 1) -> None:
        """Use ``faults`` for the next ``connections`` upgrade requests (after
        those already queued), then the default again."""
        self._queued.extend([faults] * connections)

    def refuse(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next ``count`` upgrade requests with ``status``."""
        self.inject(DeepgramFaults(status=status, retry_after=retry_after), count)

    # ------------------------------------------------------------- observing

    async def wait_for_connection(self, count: int = 1, timeout: float = 5.0) -> DeepgramConnection:
        """Wait until ``count`` streams were accepted; return the ``count``-th."""
        async with asyncio.timeout(timeout):
            while len(self.connections) < count:
                await self._wait_change()
        return self.connections[count - 1]

    async def wait_for_attempts(self, count: int, timeout: float = 5.0) -> UpgradeAttempt:
        """Wait until ``count`` upgrade requests were answered; return the ``count``-th."""
        async with asyncio.timeout(timeout):
            while sum(1 for a in self.attempts if a.status) < count:
                await self._wait_change()
        return [a for a in self.attempts if a.status][count - 1]

    async def _wait_change(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # --------------------------------------------------------------- upgrade

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        loop = asyncio.get_running_loop()
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        attempt = UpgradeAttempt(url.path, query, _redact(request.headers), loop.time())
        self.attempts.append(attempt)
        faults = self._queued.popleft() if self._queued else self.faults
        request_id = str(uuid.uuid4())

        def answer(status: int, message: str, retry_after: float | None = None) -> Response:
            attempt.status, attempt.reason = status, message
            self._notify()
            return _error_response(status, message, request_id=request_id, retry_after=retry_after)

        if faults.stall:
            task = asyncio.current_task()
            assert task is not None
            self._stalled.add(task)
            try:
                await asyncio.Event().wait()  # until the server shuts down
            finally:
                self._stalled.discard(task)
        if url.path != LISTEN_PATH:
            return answer(404, f"no such endpoint: {url.path}")
        if faults.status is not None:
            return answer(faults.status, f"injected failure {faults.status}", faults.retry_after)
        scheme, _, key = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() not in ("token", "bearer") or not key.strip():
            return answer(401, "Invalid credentials: expected 'Authorization: Token <API key>'")
        if self.api_key is not None and key.strip() != self.api_key:
            return answer(401, "Invalid credentials.")
        try:
            options = ListenOptions.parse(query)
        except InvalidQuery as exc:
            return answer(400, str(exc))
        attempt.status = 101
        connection = DeepgramConnection(
            index=len(self.connections),
            query=query,
            headers=attempt.headers,
            options=options,
            faults=faults,
            opened_at=loop.time(),
        )
        self._accepted[ws] = connection
        return None

    # ------------------------------------------------------------ the stream

    async def _handle(self, ws: ServerConnection) -> None:
        connection = self._accepted.pop(ws)
        connection._ws = ws
        connection.extensions = tuple(extension.name for extension in ws.protocol.extensions)
        self.connections.append(connection)
        self._notify()
        stream = ListenStream(connection.options, self._transcribe, timing=self.timing, request_id=str(uuid.uuid4()))
        sender = asyncio.create_task(self._send_loop(ws, connection), name=f"fake-deepgram:send:{connection.index}")
        try:
            await self._receive_loop(ws, connection, stream)
        except ConnectionClosed:
            pass
        finally:
            # The socket is closed by now (by the client, a fault, idle, or the
            # sender after CloseStream): nothing more can be sent.
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
            # The close code is known once the TCP connection is gone.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await ws.wait_closed()
            connection.closed_at = asyncio.get_running_loop().time()
            connection.close_code = ws.close_code
            connection.closed_by = connection.closed_by or "client"
            connection._closed.set()
            self._notify()

    async def _receive_loop(self, ws: ServerConnection, connection: DeepgramConnection, stream: ListenStream) -> None:
        faults = connection.faults
        loop = asyncio.get_running_loop()
        last_activity = loop.time()
        # A close the server starts must not stop it reading: the client's
        # close frame may sit behind audio still in flight.
        closer: asyncio.Task[None] | None = None
        try:
            if faults.drop_after_audio_bytes == 0 or faults.drop_after_messages == 0:
                closer = self._drop(ws, connection)
            while True:
                timeout = None
                if not faults.silent and closer is None:
                    timeout = max(0.0, self.idle_timeout - (loop.time() - last_activity))
                try:
                    async with asyncio.timeout(timeout):
                        message = await ws.recv()
                except TimeoutError:
                    connection.closed_by = "idle"
                    closer = asyncio.create_task(ws.close(1011, IDLE_REASON))
                    continue
                last_activity = loop.time()
                if closer is not None:  # closing: record, don't act
                    if isinstance(message, bytes):
                        connection.audio += message
                        connection.audio_messages.append(len(message))
                    else:
                        connection.received.append(message)
                    continue
                if isinstance(message, bytes):
                    connection.audio += message
                    connection.audio_messages.append(len(message))
                if isinstance(message, bytes):
                    frozen = faults.freeze_after_audio_bytes
                    if frozen is not None and len(connection.audio) >= frozen:
                        await self._freeze(ws)
                        return
                    limit = faults.drop_after_audio_bytes
                    if limit is not None and len(connection.audio) >= limit:
                        closer = self._drop(ws, connection)
                    elif not stream.closed and not faults.silent:
                        await self._queue(connection, await stream.feed_audio(message))
                    continue
                await self._on_text(connection, stream, message)
        finally:
            if closer is not None:
                with contextlib.suppress(TimeoutError, ConnectionClosed):
                    async with asyncio.timeout(1.0):
                        await closer

    async def _freeze(self, ws: ServerConnection) -> None:
        """Answer nothing more (a close frame included) until the client drops
        the connection, at most ``idle_timeout``: the bytes are read and ignored."""
        ws.transport.set_protocol(_Frozen(ws))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.idle_timeout):
                await ws.wait_closed()

    async def _on_text(self, connection: DeepgramConnection, stream: ListenStream, message: str) -> None:
        faults = connection.faults
        try:
            parsed = json.loads(message)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            connection.received.append(message)
            logger.warning("FakeDeepgram: ignored a text frame that is not a JSON object: {!r}", message[:200])
            return
        connection.received.append(parsed)
        kind = parsed.get("type")
        if faults.silent or stream.closed:
            return
        if kind == "Finalize":
            await self._queue(connection, await stream.finalize())
        elif kind == "CloseStream":
            connection.closed_by = "close_stream"
            await self._queue(connection, await stream.close())
            await connection._outbox.put(None)  # the sender closes after the last message
        elif kind == "Configure":
            keyterms = parsed.get("keyterms")
            answer: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": stream.request_id}
            if isinstance(keyterms, list):
                answer["keyterms"] = keyterms
            await connection._outbox.put(answer)
        elif kind != "KeepAlive":
            logger.warning("FakeDeepgram: ignored a message of unknown type {!r}", kind)

    async def _queue(self, connection: DeepgramConnection, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            await connection._outbox.put(message)

    async def _send_loop(self, ws: ServerConnection, connection: DeepgramConnection) -> None:
        faults = connection.faults
        results_sent = False
        count = 0
        while True:
            message = await connection._outbox.get()
            if message is None:
                if connection.closed_by == "close_stream":
                    await ws.close(1000)
                return
            if faults.malformed_after_messages == count:
                await self._send(ws, connection, MALFORMED_FRAME)
            if faults.error_after_messages == count:
                await self._send(ws, connection, self._error(faults, connection))
                connection.closed_by = "error"
                await ws.close(1011, "error")
                return
            if isinstance(message, dict) and message.get("type") == "Results" and not results_sent:
                results_sent = True
                await asyncio.sleep(faults.first_result_delay)
            if faults.message_delay:
                await asyncio.sleep(faults.message_delay)
            await self._send(ws, connection, message)
            count += 1
            if faults.drop_after_messages is not None and count >= faults.drop_after_messages:
                closer = self._drop(ws, connection)
                if closer is not None:
                    await closer
                return

    @staticmethod
    def _error(faults: DeepgramFaults, connection: DeepgramConnection) -> dict[str, Any]:
        return {
            "type": "Error",
            "variant": "error",
            "description": faults.error_description,
            "message": faults.error_description,
            "code": "INTERNAL_SERVER_ERROR",
        }

    @staticmethod
    async def _send(ws: ServerConnection, connection: DeepgramConnection, message: dict[str, Any] | str) -> None:
        await ws.send(message if isinstance(message, str) else json.dumps(message))
        connection.sent.append(message)

    @staticmethod
    def _drop(ws: ServerConnection, connection: DeepgramConnection) -> asyncio.Task[None] | None:
        """Drop the connection as the faults say: abort now, or start closing
        with a code (the returned task, for the caller to await)."""
        connection.closed_by = "dropped"
        if connection.faults.drop_close_code is None:
            ws.transport.abort()
            return None
        return asyncio.create_task(ws.close(connection.faults.drop_close_code, "injected drop"))

    async def _transcribe(self, pcm16: bytes, sample_rate: int, final: bool) -> Recognition:
        recognizer = self.recognizer
        if getattr(recognizer, "runs_inline", False):
            return recognizer.transcribe(pcm16, sample_rate, final=final)
        return await asyncio.to_thread(recognizer.transcribe, pcm16, sample_rate, final=final)
