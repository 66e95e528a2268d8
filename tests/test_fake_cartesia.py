"""FakeCartesia conformance: the real cartesia SDK (4.x) against the fake, faults included."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import websockets
from cartesia import APIStatusError, AsyncCartesia
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from tests.standalone import standalone_fake
from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.testing.cartesia import FakeCartesia, Synthesis, ToneSynthesizer

PCM16K = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
VOICE = {"id": "a0e99841-438c-4a64-b679-ae501e7d6091"}

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCartesia]:
    async with FakeCartesia() as server:
        yield server


def client_for(fake: FakeCartesia, api_key: str = "test-key") -> AsyncCartesia:
    return AsyncCartesia(api_key=api_key, base_url=fake.http_url, websocket_base_url=fake.ws_url, max_retries=0)


async def collect(conn: Any, until: int = 1, timeout: float = 5.0) -> list[Any]:
    """Raw SDK events off the socket (``conn.recv()``) until ``until`` done/error events."""
    events: list[Any] = []
    finished = 0
    async with asyncio.timeout(timeout):
        while finished < until:
            event = await conn.recv()
            events.append(event)
            finished += event.type in ("done", "error")
    return events


def audio_of(events: list[Any], context_id: str | None = None) -> bytes:
    return b"".join(
        base64.b64decode(e.data) for e in events if e.type == "chunk" and context_id in (None, e.context_id)
    )


# ------------------------------------------------------------------ happy paths


async def test_sdk_context_streams_continuations_with_timestamps(fake: FakeCartesia) -> None:
    async with client_for(fake).tts.websocket_connect() as conn:
        ctx = conn.context(
            "turn-1", model_id="sonic-2", voice=VOICE, output_format=PCM16K, add_timestamps=True, language="en"
        )
        await ctx.push("Hello there. ")
        await ctx.push("How are you today? ")
        await ctx.no_more_inputs()
        async with asyncio.timeout(5):
            events = [event async for event in ctx.receive()]
    assert events[-1].type == "done" and events[-1].status_code == 200
    assert {e.context_id for e in events} == {"turn-1"}
    words = [w for e in events if e.type == "timestamps" for w in e.word_timestamps.words]
    assert words == ["Hello", "there.", "How", "are", "you", "today?"]
    starts = [s for e in events if e.type == "timestamps" for s in e.word_timestamps.start]
    assert starts == sorted(starts) and starts[0] == 0.0
    audio = audio_of(events)
    assert len(audio) % 2 == 0
    ends = [s for e in events if e.type == "timestamps" for s in e.word_timestamps.end]
    assert ends[-1] <= len(audio) / 2 / 16000  # timestamps lie within the audio sent
    assert fake.transcripts == {"turn-1": "Hello there. How are you today? "}
    record = fake.contexts["turn-1"]
    assert record.model_id == "sonic-2" and record.add_timestamps and record.done
    assert [m.get("continue") for m in fake.messages] == [True, True, False]
    assert fake.upgrades[0]["headers"]["cartesia-version"] == "2026-08-14"
    assert fake.upgrades[0]["headers"]["Authorization"] == "Bearer test-key"


async def test_several_contexts_are_multiplexed_on_one_socket(fake: FakeCartesia) -> None:
    fake.faults.chunk_delay = 0.002  # lets the two contexts interleave
    async with client_for(fake).tts.websocket_connect() as conn:
        for cid, text in (("a", "First context speaks here. "), ("b", "Second one. ")):
            await conn.send(
                {
                    "context_id": cid,
                    "model_id": "sonic-2",
                    "voice": VOICE,
                    "output_format": PCM16K,
                    "transcript": text,
                    "continue": False,
                }
            )
        events = await collect(conn, until=2)
    order = [e.context_id for e in events if e.type == "chunk"]
    assert set(order) == {"a", "b"}
    assert order != sorted(order)  # interleaved, not one after the other
    assert [e.context_id for e in events if e.type == "done"].count("a") == 1
    assert len(fake.upgrades) == 1


@pytest.mark.parametrize(("encoding", "rate", "width"), [("pcm_mulaw", 8000, 1), ("pcm_f32le", 24000, 4)])
async def test_output_formats_and_rates(fake: FakeCartesia, encoding: str, rate: int, width: int) -> None:
    fmt = {"container": "raw", "encoding": encoding, "sample_rate": rate}
    async with client_for(fake).tts.websocket_connect() as conn:
        ctx = conn.context("f", model_id="sonic-2", voice=VOICE, output_format=fmt)
        await ctx.push("Testing the format.", continue_=False)
        async with asyncio.timeout(5):
            audio = audio_of([e async for e in ctx.receive()])
    reference = ToneSynthesizer().synthesize("Testing the format.", rate).audio
    assert len(audio) == len(reference) // 2 * width
    if encoding == "pcm_mulaw":
        decoded = np.frombuffer(ulaw2lin(audio), dtype="<i2").astype(float)
        original = np.frombuffer(reference, dtype="<i2").astype(float)
        assert np.corrcoef(decoded, original)[0, 1] > 0.99
    else:
        samples = np.frombuffer(audio, dtype="<f4")
        assert np.abs(samples).max() <= 1.0 and np.abs(samples).max() > 0.1


async def test_flush_is_answered_by_flush_done(fake: FakeCartesia) -> None:
    async with client_for(fake).tts.websocket_connect() as conn:
        ctx = conn.context("fl", model_id="sonic-2", voice=VOICE, output_format=PCM16K)
        await ctx.push("Part one. ", flush=True)
        await ctx.push("Part two. ", flush=True)
        await ctx.no_more_inputs()
        async with asyncio.timeout(5):
            events = [e async for e in ctx.receive()]
    flushes = [e for e in events if e.type == "flush_done"]
    assert [f.flush_id for f in flushes] == [1, 2]
    first_flush = events.index(flushes[0])
    assert {e.flush_id for e in events[:first_flush] if e.type == "chunk"} == {1}


async def test_query_parameter_auth_is_accepted(fake: FakeCartesia) -> None:
    url = f"{fake.ws_url}/tts/websocket?api_key=k&cartesia_version=2024-06-10"
    async with websockets.connect(url) as ws:
        await ws.send(
            json.dumps(
                {"context_id": "q", "model_id": "sonic-2", "voice": "v", "output_format": PCM16K, "transcript": "Hi. "}
            )
        )
        async with asyncio.timeout(5):
            while json.loads(await ws.recv())["type"] != "done":
                pass
    assert fake.upgrades[0]["status"] == 200
    assert fake.transcripts["q"] == "Hi. "


async def test_bytes_endpoint_with_the_sdk(fake: FakeCartesia) -> None:
    client = client_for(fake)
    response = await client.tts.generate(
        model_id="sonic-2", transcript="Hello there.", voice="v", output_format={**PCM16K, "container": "wav"}
    )
    wav = await response.read()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    response = await client.tts.generate(model_id="sonic-2", transcript="Hello there.", voice="v", output_format=PCM16K)
    assert await response.read() == ToneSynthesizer().synthesize("Hello there.", 16000).audio
    assert len(fake.bytes_requests) == 2


async def test_a_plugged_synthesizer_is_used() -> None:
    class Beep:
        def synthesize(self, text: str, sample_rate: int) -> Synthesis:
            return Synthesis(b"\x01\x00" * sample_rate, (("beep", 0.0, 1.0),))

    async with FakeCartesia(synthesizer=Beep()) as fake:
        async with client_for(fake).tts.websocket_connect() as conn:
            ctx = conn.context("p", model_id="sonic-2", voice=VOICE, output_format=PCM16K, add_timestamps=True)
            await ctx.push("anything", continue_=False)
            async with asyncio.timeout(5):
                events = [e async for e in ctx.receive()]
    assert audio_of(events) == b"\x01\x00" * 16000
    assert [w for e in events if e.type == "timestamps" for w in e.word_timestamps.words] == ["beep"]


def test_tone_synthesizer_is_deterministic_and_plausibly_long() -> None:
    synth = ToneSynthesizer()
    text = "Thanks for taking my call today."
    first, again = synth.synthesize(text, 16000), synth.synthesize(text, 16000)
    assert first == again
    seconds = len(first.audio) / 2 / 16000
    assert 1.5 < seconds < 4.0  # about 2 s for 32 characters, like speech
    assert [w for w, _, _ in first.words] == text.split()
    assert all(s < e for _, s, e in first.words)
    assert synth.synthesize("", 16000) == Synthesis(b"", ())


def test_tone_synthesizer_cache_gives_what_a_fresh_synthesis_gives() -> None:
    """The kept syntheses are keyed on everything that shapes the audio: the
    text, the rate and the voice's settings, changed after construction too."""
    synth = ToneSynthesizer()
    texts = [f"Line number {i}." for i in range(ToneSynthesizer.CACHED + 3)]
    for _ in range(2):  # the second pass reads partly from the cache, partly after eviction
        for text in texts:
            assert synth.synthesize(text, 8000) == ToneSynthesizer().synthesize(text, 8000)
    slow = synth.synthesize("Hello there.", 16000)
    synth.seconds_per_char = 0.1
    synth.amplitude = 0.5
    slower = synth.synthesize("Hello there.", 16000)
    assert slower == ToneSynthesizer(seconds_per_char=0.1, amplitude=0.5).synthesize("Hello there.", 16000)
    assert len(slower.audio) > len(slow.audio)
    assert synth.synthesize("Hello there.", 8000) != synth.synthesize("Hello there.", 16000)


def test_a_tone_synthesizer_and_its_cache_are_freed_without_the_collector() -> None:
    synth = ToneSynthesizer()
    synth.synthesize("Hello there.", 8000)
    gone = weakref.ref(synth)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del synth
        assert gone() is None  # no reference cycle through its cache
    finally:
        if was_enabled:
            gc.enable()


# ------------------------------------------------------------------ cancel


async def test_cancel_stops_chunks_and_late_chunks_are_bounded(fake: FakeCartesia) -> None:
    # 50 ms between chunks: "at most one already on the wire" below holds unless the loop stalls that
    # long between the cancel's send and its handling (10 ms was within reach of a loaded machine).
    fake.faults.chunk_delay = 0.05
    fake.faults.late_chunks = 2
    async with client_for(fake).tts.websocket_connect() as conn:
        await conn.send(
            {
                "context_id": "c",
                "model_id": "sonic-2",
                "voice": VOICE,
                "output_format": PCM16K,
                "transcript": "A long sentence that takes a good while to say out loud. ",
                "continue": True,
            }
        )
        async with asyncio.timeout(5):
            while (await conn.recv()).type != "chunk":
                pass
        await conn.send({"context_id": "c", "cancel": True})
        late: list[Any] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                while True:
                    late.append(await conn.recv())
    assert 0 < len(late) <= 2 + 1  # the late chunks, plus at most one already on the wire
    assert all(e.type == "chunk" for e in late)  # no done after a cancel
    assert fake.cancels == ["c"] and fake.contexts["c"].cancelled and not fake.contexts["c"].done
    total = fake.contexts["c"].chunks_sent
    assert total < 2.5 * 16000 * 2 / (40 * 32)  # far fewer chunks than the whole sentence


# ------------------------------------------------------------------ faults


async def test_error_fault_reaches_the_sdk_as_an_error_event_then_recovers(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 1
    fake.faults.error_status = 503
    async with client_for(fake).tts.websocket_connect() as conn:
        for cid in ("bad", "good"):
            ctx = conn.context(cid, model_id="sonic-2", voice=VOICE, output_format=PCM16K)
            await ctx.push("Hello. ", continue_=False)
            async with asyncio.timeout(5):
                events = [e async for e in ctx.receive()]
            if cid == "bad":
                assert [e.type for e in events] == ["error"]
                assert events[0].status_code == 503 and events[0].done and events[0].context_id == "bad"
            else:
                assert events[-1].type == "done" and audio_of(events)


async def test_invalid_request_gets_an_error_for_its_context(fake: FakeCartesia) -> None:
    async with client_for(fake).tts.websocket_connect() as conn:
        await conn.send({"context_id": "x", "model_id": "sonic-2", "transcript": "Hi", "output_format": PCM16K})
        [event] = await collect(conn)
        assert event.type == "error" and event.status_code == 400 and "voice" in event.message
        bad_format = {**PCM16K, "sample_rate": 12345}
        await conn.send(
            {"context_id": "y", "model_id": "m", "voice": "v", "transcript": "Hi", "output_format": bad_format}
        )
        [event] = await collect(conn)
        assert event.context_id == "y" and "sample_rate" in event.message


@pytest.mark.parametrize(("status", "retry_after"), [(401, None), (429, 3.0), (500, None)])
async def test_upgrade_refused_with_http_status(fake: FakeCartesia, status: int, retry_after: float | None) -> None:
    api_key = "test-key"
    if status == 401:
        fake.api_key = "the-right-key"
    else:
        fake.faults.reject_upgrades = 1
        fake.faults.reject_status = status
        fake.faults.retry_after = retry_after
    with pytest.raises(InvalidStatus) as caught:
        await client_for(fake, api_key).tts.websocket_connect().enter()
    assert caught.value.response.status_code == status
    if retry_after is not None:
        assert caught.value.response.headers["Retry-After"] == "3"
    if status != 401:
        conn = await client_for(fake).tts.websocket_connect().enter()  # the fault was one-shot
        await conn.close()


@pytest.mark.parametrize(("key", "status"), [("right", 101), ("wrong", 401)])
async def test_the_x_api_key_header_is_accepted_and_checked(key: str, status: int) -> None:
    headers = {"X-API-Key": key, "Cartesia-Version": "2024-06-10"}
    async with FakeCartesia(api_key="right") as fake:
        url = f"{fake.ws_url}/tts/websocket"
        if status == 101:
            async with websockets.connect(url, additional_headers=headers):
                pass
        else:
            with pytest.raises(InvalidStatus) as caught:
                await websockets.connect(url, additional_headers=headers)
            assert caught.value.response.status_code == status


async def test_missing_version_is_refused(fake: FakeCartesia) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await websockets.connect(f"{fake.ws_url}/tts/websocket?api_key=k")
    assert caught.value.response.status_code == 400


@pytest.mark.parametrize(("code", "expected"), [(1011, 1011), (None, 1006)])
async def test_socket_closed_mid_context(fake: FakeCartesia, code: int | None, expected: int) -> None:
    fake.faults.drop_after_chunks = 3
    fake.faults.drop_close_code = code
    conn = await client_for(fake).tts.websocket_connect().enter()
    await conn.send(
        {
            "context_id": "d",
            "model_id": "sonic-2",
            "voice": VOICE,
            "output_format": PCM16K,
            "transcript": "This context will not finish because the socket drops. ",
        }
    )
    chunks = 0
    with pytest.raises(ConnectionClosedError) as caught:
        async with asyncio.timeout(5):
            while True:
                chunks += (await conn.recv()).type == "chunk"
    assert chunks == 3
    assert caught.value.rcvd is None if expected == 1006 else caught.value.rcvd.code == expected
    await conn.close()


async def test_malformed_frame_fails_to_parse_in_the_sdk(fake: FakeCartesia) -> None:
    fake.faults.malformed_after_chunks = 1
    async with client_for(fake).tts.websocket_connect() as conn:
        await conn.send(
            {
                "context_id": "m",
                "model_id": "sonic-2",
                "voice": VOICE,
                "output_format": PCM16K,
                "transcript": "Hello there. ",
            }
        )
        assert (await conn.recv()).type == "chunk"
        with pytest.raises(json.JSONDecodeError):
            await conn.recv()
        rest = await collect(conn)  # the socket is still usable afterwards
        assert rest[-1].type == "done"


async def test_stall_keeps_the_socket_open_and_silent(fake: FakeCartesia) -> None:
    fake.faults.stall_after_chunks = 2
    async with client_for(fake).tts.websocket_connect() as conn:
        await conn.send(
            {
                "context_id": "s",
                "model_id": "sonic-2",
                "voice": VOICE,
                "output_format": PCM16K,
                "transcript": "Stalling after two chunks of this sentence. ",
            }
        )
        assert [(await conn.recv()).type for _ in range(2)] == ["chunk", "chunk"]
        with pytest.raises(TimeoutError):
            await conn.recv_bytes(timeout=0.3)
        await conn.send({"context_id": "s", "cancel": True})
        await conn.send(
            {
                "context_id": "t",
                "model_id": "sonic-2",
                "voice": VOICE,
                "output_format": PCM16K,
                "transcript": "Next one works. ",
            }
        )
        assert (await collect(conn))[-1].type == "done"


async def test_first_chunk_delay_is_honoured(fake: FakeCartesia) -> None:
    fake.faults.first_chunk_delay = 0.3
    async with client_for(fake).tts.websocket_connect() as conn:
        start = time.perf_counter()
        await conn.send(
            {"context_id": "slow", "model_id": "sonic-2", "voice": VOICE, "output_format": PCM16K, "transcript": "Hi. "}
        )
        await conn.recv()
        assert time.perf_counter() - start >= 0.3


async def test_idle_socket_is_closed_by_the_server() -> None:
    async with FakeCartesia(idle_timeout=0.2) as fake:
        conn = await client_for(fake).tts.websocket_connect().enter()
        with pytest.raises(ConnectionClosedOK):
            async with asyncio.timeout(5):
                await conn.recv()
        await conn.close()


async def test_bytes_endpoint_faults(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 1
    with pytest.raises(APIStatusError) as caught:
        await client_for(fake).tts.generate(model_id="sonic-2", transcript="Hi.", voice="v", output_format=PCM16K)
    assert caught.value.status_code == 500
    fake.api_key = "the-right-key"
    with pytest.raises(APIStatusError) as caught:
        await client_for(fake, "wrong").tts.generate(
            model_id="sonic-2", transcript="Hi.", voice="v", output_format=PCM16K
        )
    assert caught.value.status_code == 401


# ------------------------------------------------------------------ command line


async def test_runs_standalone_from_the_command_line() -> None:
    async with standalone_fake("cartesia") as (line, urls):
        assert "FakeCartesia listening" in line and urls["ws_url"].startswith("ws://127.0.0.1:")
        ws_url = urls["ws_url"]
        client = AsyncCartesia(api_key="k", base_url=ws_url.replace("ws:", "http:"), websocket_base_url=ws_url)
        async with client.tts.websocket_connect() as conn:
            await conn.send(
                {
                    "context_id": "cli",
                    "model_id": "sonic-2",
                    "voice": "v",
                    "output_format": PCM16K,
                    "transcript": "Hi. ",
                }
            )
            assert str((await collect(conn))[-1].type) == "done"
