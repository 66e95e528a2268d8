"""FakeDeepgramSpeak: Deepgram's Aura text-to-speech websocket (``/v1/speak``) on 127.0.0.1.

The protocol of deepgram-sdk 7.x's ``speak.v1.connect()`` (read from its
``speak/v1/socket_client.py`` and ``client.py``)::

    GET /v1/speak?model=aura-2-thalia-en&encoding=mulaw&sample_rate=8000
        Authorization: Token <key>            (401 without it; 400 for a bad query)
    server → {"type": "Metadata", "request_id", "model_name", "model_version", "model_uuid"}
    client → {"type": "Speak", "text": "Hello there."}     (text is queued)
    client → {"type": "Flush"}                             (synthesize what is queued)
    server → binary frames of raw audio, then {"type": "Flushed", "sequence_id": n}
    client → {"type": "Clear"}   server → {"type": "Cleared", "sequence_id": n}  (queued audio dropped)
    client → {"type": "Close"}   the server sends what is pending and closes (1000)
    server → {"type": "Warning", "description", "code"} for a message it cannot use

Encodings ``linear16`` (8, 16, 24, 32 or 48 kHz), ``mulaw`` and ``alaw``
(8 or 16 kHz), raw, no header. The audio comes from the ``Synthesizer`` of
``testing/cartesia.py`` (``ToneSynthesizer`` by default), cut into chunks of
``chunk_ms``.

    async with FakeDeepgramSpeak() as fake:
        client = AsyncDeepgramClient(api_key="test", environment=fake.environment())
        async with client.speak.v1.connect(model="aura-2-thalia-en", encoding="mulaw", sample_rate="8000") as ws:
            await ws.send_text(SpeakV1Text(text="Hello there."))
            await ws.send_flush()

Faults (``fake.faults``, one-shot ones reset themselves): ``reject_upgrades``
(the next N upgrades answered with ``reject_status``), ``first_chunk_delay``
/ ``chunk_delay`` (seconds), ``drop_after_chunks`` (the socket is closed
abruptly once that many audio chunks were sent on it), ``warning_on_flush``
(the next Flush is answered by a Warning and no audio), ``stall_after_chunks``
(silence, socket open). Records: ``connections`` (query, texts received,
flushes, clears, chunks and bytes sent, how it closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import numpy as np
from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from vantum_pipeline.audio.mulaw import lin2ulaw
from vantum_pipeline.testing.cartesia import Synthesizer, ToneSynthesizer, synthesize

if TYPE_CHECKING:
    from deepgram.environment import DeepgramClientEnvironment

__all__ = ["FakeDeepgramSpeak", "SpeakConnection", "SpeakFaults"]

SPEAK_PATH = "/v1/speak"
_RATES = {"linear16": (8000, 16000, 24000, 32000, 48000), "mulaw": (8000, 16000), "alaw": (8000, 16000)}


@dataclass
class SpeakFaults:
    reject_upgrades: int = 0
    reject_status: int = 503
    first_chunk_delay: float = 0.0
    chunk_delay: float = 0.0
    drop_after_chunks: int | None = None
    warning_on_flush: bool = False
    stall_after_chunks: int | None = None


@dataclass(eq=False)
class SpeakConnection:
    """What the fake saw and did on one socket."""

    query: dict[str, str]
    texts: list[str] = field(default_factory=list)
    flushes: int = 0
    clears: int = 0
    chunks_sent: int = 0
    audio_bytes: int = 0
    closed_by: str | None = None


def _alaw(pcm16: bytes) -> bytes:
    """G.711 A-law, as the reference C coder (g711.c) computes it."""
    pcm = np.frombuffer(pcm16, dtype="<i2").astype(np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    value = np.where(pcm >= 0, pcm, -pcm - 1)
    ends = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    segment = np.searchsorted(ends, value)  # first end >= value
    shift = np.where(segment < 2, 1, segment)
    coded = (np.minimum(segment, 7) << 4) | ((value >> shift) & 0x0F)
    coded = np.where(segment >= 8, 0x7F, coded)
    return ((coded ^ mask) & 0xFF).astype(np.uint8).tobytes()


class FakeDeepgramSpeak:
    """The fake Aura server; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        synthesizer: Synthesizer | None = None,
        chunk_ms: int = 40,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.synthesizer: Synthesizer = synthesizer or ToneSynthesizer()
        self.chunk_ms = chunk_ms
        self.faults = SpeakFaults()
        self.connections: list[SpeakConnection] = []
        self.rejected = 0
        self._pending: dict[ServerConnection, SpeakConnection] = {}
        self._server: Server | None = None

    async def __aenter__(self) -> FakeDeepgramSpeak:
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._upgrade, ping_interval=None, max_size=2**20
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    await server.wait_closed()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def environment(self) -> DeepgramClientEnvironment:
        from deepgram.environment import DeepgramClientEnvironment

        http = f"http://{self.host}:{self.port}"
        return DeepgramClientEnvironment(base=http, production=self.ws_url, agent=self.ws_url, agent_rest=http)

    @property
    def texts(self) -> list[str]:
        """Every text received, on every connection, in order."""
        return [text for connection in self.connections for text in connection.texts]

    # ------------------------------------------------------------ upgrade

    async def _upgrade(self, ws: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query))
        if url.path != SPEAK_PATH:
            return _refuse(404, f"no such endpoint: {url.path}")
        if self.faults.reject_upgrades > 0:
            self.faults.reject_upgrades -= 1
            self.rejected += 1
            return _refuse(self.faults.reject_status, "injected failure")
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer") or not key.strip():
            return _refuse(401, "Invalid credentials.")
        if self.api_key is not None and key.strip() != self.api_key:
            return _refuse(401, "Invalid credentials.")
        encoding = query.get("encoding", "linear16")
        try:
            rate = int(query.get("sample_rate", "24000"))
        except ValueError:
            return _refuse(400, f"sample_rate must be a number, got {query.get('sample_rate')!r}")
        if encoding not in _RATES or rate not in _RATES[encoding]:
            return _refuse(400, f"unsupported encoding/sample_rate: {encoding} at {rate} Hz")
        self._pending[ws] = SpeakConnection(query)
        return None

    # ------------------------------------------------------------ stream

    async def _handle(self, ws: ServerConnection) -> None:
        """Read messages while a worker speaks what each Flush asked for: a
        Clear stops the sentence being spoken, as on the real service."""
        connection = self._pending.pop(ws)
        self.connections.append(connection)
        encoding = connection.query.get("encoding", "linear16")
        rate = int(connection.query.get("sample_rate", "24000"))
        queued: list[str] = []
        flushes: asyncio.Queue[str] = asyncio.Queue()
        sequence = [0]
        idle = asyncio.Event()  # nothing left to speak
        idle.set()

        async def speak_flushes() -> None:
            while True:
                text = await flushes.get()
                if not await self._speak(ws, connection, text, encoding, rate):
                    return
                sequence[0] += 1
                await ws.send(json.dumps({"type": "Flushed", "sequence_id": sequence[0]}))
                if flushes.empty():
                    idle.set()

        speaker = asyncio.create_task(speak_flushes(), name="fake-deepgram-speak:speaker")
        try:
            await ws.send(
                json.dumps(
                    {
                        "type": "Metadata",
                        "request_id": str(uuid.uuid4()),
                        "model_name": connection.query.get("model", "aura-asteria-en"),
                        "model_version": "2025-01-01.0",
                        "model_uuid": str(uuid.uuid4()),
                    }
                )
            )
            async for raw in ws:
                if isinstance(raw, bytes):
                    await _warn(ws, "INVALID_INPUT", "binary messages are not accepted")
                    continue
                try:
                    message = json.loads(raw)
                    kind = message["type"]
                except (ValueError, KeyError, TypeError):
                    await _warn(ws, "INVALID_JSON", "the message is not a JSON object with a type")
                    continue
                if kind == "Speak":
                    text = message.get("text")
                    if not isinstance(text, str):
                        await _warn(ws, "INVALID_INPUT", "Speak needs a text string")
                        continue
                    connection.texts.append(text)
                    queued.append(text)
                elif kind == "Flush":
                    connection.flushes += 1
                    text, queued = "".join(queued), []
                    if self.faults.warning_on_flush:
                        self.faults.warning_on_flush = False
                        await _warn(ws, "SYNTHESIS_FAILED", "synthesis failed (injected fault)")
                        continue
                    idle.clear()
                    flushes.put_nowait(text)
                elif kind == "Clear":
                    connection.clears += 1
                    queued = []
                    speaker.cancel()
                    await asyncio.wait({speaker}, timeout=1.0)
                    while not flushes.empty():
                        flushes.get_nowait()
                    idle.set()
                    sequence[0] += 1
                    await ws.send(json.dumps({"type": "Cleared", "sequence_id": sequence[0]}))
                    speaker = asyncio.create_task(speak_flushes(), name="fake-deepgram-speak:speaker")
                elif kind == "Close":
                    connection.closed_by = "close"
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5.0):
                            await idle.wait()  # what was flushed is still spoken
                    await ws.close(1000)
                    return
                else:
                    await _warn(ws, "UNKNOWN_MESSAGE_TYPE", f"unknown message type {kind!r}")
        except ConnectionClosed:
            pass
        finally:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await speaker
            connection.closed_by = connection.closed_by or "client"

    async def _speak(
        self, ws: ServerConnection, connection: SpeakConnection, text: str, encoding: str, rate: int
    ) -> bool:
        """Send ``text``'s audio in chunks; False when a fault ended the socket."""
        if not text.strip():
            return True
        synthesis = await synthesize(self.synthesizer, text, rate)
        pcm = synthesis.audio
        audio = lin2ulaw(pcm) if encoding == "mulaw" else _alaw(pcm) if encoding == "alaw" else pcm
        width = 2 if encoding == "linear16" else 1
        step = max(width, rate * self.chunk_ms // 1000 * width)
        faults = self.faults
        for start in range(0, len(audio), step):
            delay = faults.first_chunk_delay if connection.chunks_sent == 0 else faults.chunk_delay
            if delay > 0:
                await asyncio.sleep(delay)
            if faults.drop_after_chunks is not None and connection.chunks_sent >= faults.drop_after_chunks:
                faults.drop_after_chunks = None
                connection.closed_by = "dropped"
                logger.debug("FakeDeepgramSpeak: dropping the socket (injected fault)")
                ws.transport.abort()
                return False
            if faults.stall_after_chunks is not None and connection.chunks_sent >= faults.stall_after_chunks:
                faults.stall_after_chunks = None
                await ws.wait_closed()
                return False
            chunk = audio[start : start + step]
            await ws.send(chunk)
            connection.chunks_sent += 1
            connection.audio_bytes += len(chunk)
        return True


async def _warn(ws: ServerConnection, code: str, description: str) -> None:
    await ws.send(json.dumps({"type": "Warning", "description": description, "code": code}))


def _refuse(status: int, message: str) -> Response:
    body = json.dumps({"err_code": "REQUEST_ERROR", "err_msg": message}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status, "Error", headers, body)
