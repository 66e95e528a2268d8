"""The Twilio transport on a real aiohttp media socket whose far end has gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from vantum_pipeline.frames import TTSAudioRawFrame
from vantum_pipeline.testing.pipeline import run_pipeline
from vantum_pipeline.transports.twilio.serializer import TwilioSerializer
from vantum_pipeline.transports.twilio.transport import TwilioTransport, TwilioTransportParams

pytestmark = pytest.mark.timeout(30)

CALL_SID = "CA" + "1" * 32
STREAM_SID = "MZ" + "1" * 32


def _message(event: str, **body: object) -> str:
    return json.dumps({"event": event, "streamSid": STREAM_SID, **body})


START = _message(
    "start",
    start={
        "accountSid": "AC" + "0" * 32,
        "streamSid": STREAM_SID,
        "callSid": CALL_SID,
        "customParameters": {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
)


@contextlib.asynccontextmanager
async def hung_up_socket() -> AsyncIterator[tuple[web.WebSocketResponse, TwilioSerializer]]:
    """A server-side media socket after the callee sent ``start`` and ``stop`` and its
    connection was reset: aiohttp's transport is closing, the ``stop`` not yet read."""
    handed: asyncio.Future[tuple[web.WebSocketResponse, TwilioSerializer]] = asyncio.Future()
    release = asyncio.Event()

    async def media(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        serializer = TwilioSerializer()
        message = await socket.receive()
        serializer.deserialize(message.data)
        async with asyncio.timeout(5):
            while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110 (no event for a reset)
                await asyncio.sleep(0.01)
        handed.set_result((socket, serializer))
        await release.wait()
        return socket

    app = web.Application()
    app.router.add_get("/media", media)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        # The callee, speaking the websocket protocol by hand (sans-I/O) so that it can
        # reset its connection right after its last messages, as a phone network does.
        client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/media"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client.send_request(client.connect())
        writer.write(b"".join(client.data_to_send()))
        async with asyncio.timeout(5):
            while client.handshake_exc is None and client.state.name == "CONNECTING":
                client.receive_data(await reader.read(4096))
        for text in (START, _message("media", media={"payload": "//8=", "track": "inbound"}), _message("stop")):
            client.send_text(text.encode())
        writer.write(b"".join(client.data_to_send()))
        await writer.drain()
        writer.transport.abort()
        async with asyncio.timeout(5):
            yield await handed
    finally:
        release.set()
        await runner.cleanup()


async def test_writes_to_a_socket_the_callee_reset_are_dropped_not_an_output_failure():
    async with hung_up_socket() as (socket, serializer):
        transport = TwilioTransport(socket, serializer)
        audio = TTSAudioRawFrame(b"\x00\x00" * 1600, 16000)  # 0.1 s
        collected = await run_pipeline([transport.output()], [audio], timeout=10, audio_out_sample_rate=16000)
    assert collected.finish_reason == "end"  # before the fix: "error", "Cannot write to closing transport"
    assert transport.peer_gone
    assert transport.violation is None


async def test_the_input_still_ends_the_call_as_a_hang_up_after_a_refused_write():
    async with hung_up_socket() as (socket, serializer):
        transport = TwilioTransport(socket, serializer)
        await transport.output().clear_output()  # refused by the closing socket: dropped
        assert transport.peer_gone
        collected = await run_pipeline([transport.input(), transport.output()], [], send_end=False, timeout=10)
    assert collected.finish_reason == "cancel"  # a hang-up, not an error
    # What was read before the reset ends it ("stop"), or the socket's end does.
    assert transport.end_reason in ("stop", "socket closed without 'stop'")
    assert transport.violation is None


class SilentSocket:
    """A media socket whose far end stays connected and says nothing."""

    closed = False

    async def send_str(self, data: str) -> None:
        pass

    async def receive(self, timeout: float | None = None) -> object:
        await asyncio.Event().wait()  # until cancelled
        raise AssertionError("unreachable")

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


async def test_a_stream_silent_for_receive_timeout_ends_as_a_hang_up():
    serializer = TwilioSerializer()
    serializer.deserialize(START)
    transport = TwilioTransport(SilentSocket(), serializer, TwilioTransportParams(receive_timeout=0.3))
    collected = await run_pipeline([transport.input(), transport.output()], [], send_end=False, timeout=10)
    assert collected.finish_reason == "cancel"
    assert transport.end_reason == "no message from Twilio for 0.3s"
    assert transport.violation is None


class ScriptedSocket(SilentSocket):
    """A media socket whose far end sends ``texts``, then closes normally."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)

    async def receive(self, timeout: float | None = None) -> object:
        from aiohttp import WSMessage, WSMsgType

        await asyncio.sleep(0.01)
        if self.texts:
            return WSMessage(WSMsgType.TEXT, self.texts.pop(0), None)
        return WSMessage(WSMsgType.CLOSE, 1000, None)


@pytest.mark.parametrize(
    ("texts", "level", "reason"),
    [
        ([_message("stop")], "INFO", "stop"),  # a hang-up: how calls end
        ([], "WARNING", "socket closed without 'stop'"),  # the socket went away without a word
    ],
)
async def test_a_hang_up_ends_the_call_without_a_warning(texts: list[str], level: str, reason: str) -> None:
    from loguru import logger

    serializer = TwilioSerializer()
    serializer.deserialize(START)
    media = _message("media", media={"payload": "//8=", "track": "inbound"})
    transport = TwilioTransport(ScriptedSocket([media, *texts]), serializer)
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        collected = await run_pipeline([transport.input(), transport.output()], [], send_end=False, timeout=10)
    finally:
        logger.remove(sink)
    assert collected.finish_reason == "cancel"
    assert transport.end_reason == reason
    finishing = [lvl for lvl, message in lines if "finishing: cancel" in message]
    assert finishing == [level]
