"""FakeDeepgram against the official deepgram-sdk: the stream as the service
would produce it, and every injected fault as the SDK sees the real one."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import (
    ListenV1Configure,
    ListenV1ConfigureSuccess,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

from tests.standalone import standalone_fake
from vantum_pipeline.testing.deepgram import (
    DeepgramFaults,
    FakeDeepgram,
    Recognition,
    ScriptedLine,
    ScriptedRecognizer,
    StreamTiming,
    Word,
)
from vantum_pipeline.testing.deepgram_stream import ListenOptions, ListenStream
from vantum_pipeline.testing.signals import frames, mulaw, silence, speech

pytestmark = pytest.mark.timeout(30)

KEY = "dg-test-key-1234"
PRODUCT = {
    "model": "nova-2",
    "language": "en-US",
    "encoding": "linear16",
    "sample_rate": 16000,
    "channels": 1,
    "interim_results": "true",
    "punctuate": "true",
    "smart_format": "true",
    "vad_events": "true",
    "utterance_end_ms": 1000,
    "endpointing": 300,
}


def client_for(fake: FakeDeepgram, key: str = KEY) -> AsyncDeepgramClient:
    return AsyncDeepgramClient(api_key=key, environment=fake.environment())


@contextlib.asynccontextmanager
async def listen(fake: FakeDeepgram, **options: Any) -> AsyncIterator[Any]:
    async with client_for(fake).listen.v1.connect(**{**PRODUCT, **options}) as socket:
        yield socket


async def send(socket: Any, audio: bytes, sample_rate: int = 16000, sample_width: int = 2) -> None:
    for chunk in frames(audio, sample_rate, sample_width=sample_width):
        await socket.send_media(chunk)


async def drain(socket: Any, timeout: float = 5.0) -> list[Any]:
    """Every message until the server closes the socket."""
    messages: list[Any] = []
    with contextlib.suppress(ConnectionClosedOK):
        async with asyncio.timeout(timeout):
            while True:
                messages.append(await socket.recv())
    return messages


async def recv_until(socket: Any, predicate: Any, timeout: float = 5.0) -> list[Any]:
    messages: list[Any] = []
    async with asyncio.timeout(timeout):
        while not messages or not predicate(messages[-1]):
            messages.append(await socket.recv())
    return messages


def finals(messages: list[Any]) -> list[ListenV1Results]:
    return [m for m in messages if isinstance(m, ListenV1Results) and m.is_final]


def transcript(result: ListenV1Results) -> str:
    return result.channel.alternatives[0].transcript


# ----------------------------------------------------------------- the stream


async def test_two_utterances_with_deepgram_timing() -> None:
    recognizer = ScriptedRecognizer(["yes I am interested", "Tuesday works, thanks!"])
    audio = silence(0.5) + speech(1.2) + silence(1.6) + speech(0.9, seed=1) + silence(1.3)
    async with FakeDeepgram(api_key=KEY, recognizer=recognizer) as fake, listen(fake) as socket:
        await send(socket, audio)
        await socket.send_close_stream()
        messages = await drain(socket)

    kinds = [type(m).__name__.removeprefix("ListenV1") for m in messages]
    assert kinds[0] == "SpeechStarted" and kinds[-1] == "Metadata"
    started = [m for m in messages if isinstance(m, ListenV1SpeechStarted)]
    assert [round(m.timestamp, 2) for m in started] == [0.5, 3.3]

    spoken = [m for m in finals(messages) if transcript(m)]
    assert [transcript(m) for m in spoken] == ["Yes I am interested.", "Tuesday works, thanks!"]
    assert all(m.speech_final and not m.from_finalize for m in spoken)
    first = spoken[0]
    # Words lie inside the speech (0.5-1.7 s); the endpointer fires 300 ms into the silence.
    words = first.channel.alternatives[0].words
    assert [w.word for w in words] == ["yes", "i", "am", "interested"]
    assert words[0].punctuated_word == "Yes" and words[-1].punctuated_word == "interested."
    assert 0.5 <= words[0].start < words[-1].end <= 1.7
    assert first.start + first.duration == pytest.approx(2.0, abs=0.03)
    assert first.channel.alternatives[0].confidence == pytest.approx(0.95)

    # Interims before each final, revising the same segment.
    interims = [m for m in messages if isinstance(m, ListenV1Results) and not m.is_final]
    assert interims and all(transcript(i) for i in interims)
    assert transcript(interims[0]) == "Yes"

    # UtteranceEnd 1 s after the last word of each utterance, naming that word's end.
    ends = [m for m in messages if isinstance(m, ListenV1UtteranceEnd)]
    assert [e.last_word_end for e in ends] == [words[-1].end, spoken[1].channel.alternatives[0].words[-1].end]
    assert kinds.index("UtteranceEnd") > kinds.index("Results")

    # Final results tile the timeline; Metadata closes with the audio duration.
    tiles = finals(messages)
    for before, after in itertools.pairwise(tiles):
        assert after.start == pytest.approx(before.start + before.duration, abs=1e-3)
    metadata = messages[-1]
    assert isinstance(metadata, ListenV1Metadata)
    assert metadata.duration == pytest.approx(len(audio) / 32000)
    connection = fake.connections[0]
    assert connection.closed_by == "close_stream" and connection.close_code == 1000
    assert bytes(connection.audio) == audio
    assert connection.query["model"] == "nova-2" and connection.query["endpointing"] == "300"
    assert connection.headers["Authorization"] == "Token ***"
    assert KEY not in repr(fake.attempts) + repr(fake.connections)
    assert recognizer.recognized == ["yes I am interested", "Tuesday works, thanks!"]


async def test_punctuation_off_gives_plain_words() -> None:
    recognizer = ScriptedRecognizer(["Hello, World"])
    async with FakeDeepgram(recognizer=recognizer) as fake, listen(fake, punctuate="false", smart_format="false") as s:
        await send(s, speech(0.6) + silence(0.5))
        await s.send_close_stream()
        messages = await drain(s)
    assert [transcript(m) for m in finals(messages) if transcript(m)] == ["hello world"]


async def test_mulaw_phone_audio() -> None:
    recognizer = ScriptedRecognizer(["this is a phone call"])
    pcm = silence(0.3, 8000) + speech(1.0, 8000) + silence(0.6, 8000)
    async with FakeDeepgram(recognizer=recognizer) as fake, listen(fake, encoding="mulaw", sample_rate=8000) as s:
        await send(s, mulaw(pcm), 8000, sample_width=1)
        await s.send_close_stream()
        messages = await drain(s)
    [final] = [m for m in finals(messages) if transcript(m)]
    assert transcript(final) == "This is a phone call." and final.speech_final
    assert 0.3 <= final.channel.alternatives[0].words[0].start < 0.45
    assert fake.connections[0].audio_seconds == pytest.approx(1.9)


async def test_finalize_flushes_with_from_finalize() -> None:
    recognizer = ScriptedRecognizer(["hold on a second"])
    async with FakeDeepgram(recognizer=recognizer) as fake, listen(fake, endpointing=2000) as socket:
        await send(socket, speech(1.0))
        await socket.send_finalize()
        flushed = await recv_until(socket, lambda m: isinstance(m, ListenV1Results) and m.is_final)
        await socket.send_finalize()  # nothing pending: an empty final answers it
        empty = await recv_until(socket, lambda m: isinstance(m, ListenV1Results) and m.is_final)
        await socket.send_close_stream()
        await drain(socket)
    final = flushed[-1]
    assert transcript(final) == "Hold on a second." and final.from_finalize and not final.speech_final
    assert transcript(empty[-1]) == "" and empty[-1].from_finalize
    assert len(fake.connections[0].received_of_type("Finalize")) == 2


async def test_configure_is_acknowledged() -> None:
    async with FakeDeepgram() as fake, listen(fake) as socket:
        await socket.send_configure(ListenV1Configure(keyterms=["Vantum"]))
        answer = await socket.recv()
        await socket.send_close_stream()
        await drain(socket)
    assert isinstance(answer, ListenV1ConfigureSuccess) and answer.keyterms == ["Vantum"]
    assert fake.connections[0].received_of_type("Configure")[0]["keyterms"] == ["Vantum"]


async def test_idle_stream_is_closed_like_the_service_unless_kept_alive() -> None:
    async with FakeDeepgram(idle_timeout=1.0) as fake:
        async with listen(fake) as idle:
            with pytest.raises(ConnectionClosedError) as closed:
                async with asyncio.timeout(5):
                    await idle.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        assert "NET-0001" in closed.value.rcvd.reason
        assert fake.connections[0].closed_by == "idle"

        async with listen(fake) as kept:
            for _ in range(8):  # 2.4 s, more than two idle timeouts, with room for a loaded machine
                await kept.send_keep_alive()
                await asyncio.sleep(0.3)
            assert not fake.connections[1].is_closed
            await kept.send_close_stream()
            assert isinstance((await drain(kept))[-1], ListenV1Metadata)
        assert len(fake.connections[1].received_of_type("KeepAlive")) == 8


async def test_long_speech_is_cut_into_final_segments_and_silence_gets_empty_finals() -> None:
    timing = StreamTiming(max_segment=1.0)
    recognizer = ScriptedRecognizer(["one two three four five six seven eight nine ten"])
    async with FakeDeepgram(recognizer=recognizer, timing=timing) as fake, listen(fake) as socket:
        await send(socket, speech(3.2) + silence(2.5))
        await socket.send_close_stream()
        messages = await drain(socket)
    texts = [transcript(m) for m in finals(messages)]
    spoken = [t for t in texts if t]
    assert len(spoken) >= 3  # cut every second of speech
    assert " ".join(spoken).replace(".", "").lower() == "one two three four five six seven eight nine ten"
    assert [m.speech_final for m in finals(messages) if transcript(m)][-1] is True
    assert "" in texts[texts.index(spoken[-1]) :]  # the silence after it


# --------------------------------------------------------------- the upgrade


async def test_wrong_or_missing_key_is_refused_with_401() -> None:
    async with FakeDeepgram(api_key=KEY) as fake:
        with pytest.raises(ApiError) as refused:
            async with client_for(fake, key="not-the-key").listen.v1.connect(**PRODUCT):
                pass
        assert refused.value.status_code == 401
        assert fake.attempts[0].status == 401 and fake.connections == []
        assert "not-the-key" not in repr(fake.attempts)


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("encoding", "opus", "encoding"),
        ("model", "nova-9000", "model"),
        ("interim_results", "maybe", "interim_results"),
        ("sample_rate", "fast", "sample_rate"),
        ("endpointing", "-5", "endpointing"),
    ],
)
async def test_bad_parameters_are_refused_with_400(option: str, value: str, named: str) -> None:
    async with FakeDeepgram() as fake:
        with pytest.raises(ApiError) as refused:
            async with listen(fake, **{option: value}):
                pass
    assert refused.value.status_code == 400
    assert named in fake.attempts[0].reason
    assert named in refused.value.__context__.headers["dg-error"]  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [401, 400, 429, 500, 503])
async def test_injected_upgrade_status(status: int) -> None:
    async with FakeDeepgram() as fake:
        fake.inject(DeepgramFaults(status=status, retry_after=7 if status == 429 else None))
        with pytest.raises(ApiError) as refused:
            async with listen(fake):
                pass
        assert refused.value.status_code == status
        if status == 429:
            assert refused.value.__context__.headers["Retry-After"] == "7"  # type: ignore[union-attr]
        async with listen(fake) as socket:  # the next connection is healthy again
            await socket.send_close_stream()
            await drain(socket)
    assert [a.status for a in fake.attempts] == [status, 101]


async def test_refuse_next_connections_then_accept() -> None:
    async with FakeDeepgram() as fake:
        fake.refuse(2)
        statuses = []
        for _ in range(3):
            try:
                async with listen(fake) as socket:
                    await socket.send_close_stream()
                    await drain(socket)
                statuses.append(101)
            except ApiError as exc:
                statuses.append(exc.status_code)
    assert statuses == [503, 503, 101]


async def test_stalled_upgrade_never_answers() -> None:
    async with FakeDeepgram(faults=DeepgramFaults(stall=True)) as fake:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5), listen(fake):
                pass
        assert len(fake.attempts) == 1 and fake.attempts[0].status == 0


# ------------------------------------------------------------ stream faults


async def test_drop_mid_utterance_after_audio_bytes() -> None:
    recognizer = ScriptedRecognizer(["never finished"])
    audio = silence(0.5) + speech(1.5)
    async with FakeDeepgram(recognizer=recognizer) as fake:
        fake.inject(DeepgramFaults(drop_after_audio_bytes=32000))  # 1 s: mid-utterance
        async with listen(fake) as socket:
            with pytest.raises(ConnectionClosedError) as dropped:
                async with asyncio.timeout(5):
                    await send(socket, audio)
                    while True:
                        await socket.recv()
        connection = fake.connections[0]
        assert dropped.value.rcvd is None  # no close frame: 1006 for the client
        assert connection.closed_by == "dropped" and len(connection.audio) >= 32000
        assert recognizer.pending == ["never finished"]  # no final was produced

        fake.inject(DeepgramFaults(drop_after_audio_bytes=32000, drop_close_code=1011))
        async with listen(fake) as socket:
            with pytest.raises(ConnectionClosedError) as closed:
                async with asyncio.timeout(5):
                    await send(socket, audio)
                    while True:
                        await socket.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_drop_after_messages() -> None:
    recognizer = ScriptedRecognizer(["one two three four"])
    async with FakeDeepgram(recognizer=recognizer, faults=DeepgramFaults(drop_after_messages=2)) as fake:
        async with listen(fake) as socket:
            received = []
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    await send(socket, silence(0.2) + speech(2.0) + silence(1.0))
                    while True:
                        received.append(await socket.recv())
    assert len(received) == 2 and len(fake.connections[0].sent) == 2


async def test_malformed_frame_breaks_the_sdk_parse_but_not_the_socket() -> None:
    recognizer = ScriptedRecognizer(["still here"])
    async with FakeDeepgram(recognizer=recognizer, faults=DeepgramFaults(malformed_after_messages=0)) as fake:
        async with listen(fake) as socket:
            await send(socket, speech(0.6) + silence(0.5))
            with pytest.raises(json.JSONDecodeError):
                await socket.recv()
            await socket.send_close_stream()
            rest = await drain(socket)
    assert [transcript(m) for m in finals(rest) if transcript(m)] == ["Still here."]
    assert not isinstance(fake.connections[0].sent[0], dict)


async def test_error_message_then_close() -> None:
    faults = DeepgramFaults(error_after_messages=1, error_description="model overloaded")
    async with FakeDeepgram(recognizer=ScriptedRecognizer(["hi"]), faults=faults) as fake, listen(fake) as socket:
        await send(socket, speech(1.0) + silence(0.5))
        received = []
        with pytest.raises(ConnectionClosedError) as closed:
            async with asyncio.timeout(5):
                while True:
                    received.append(await socket.recv())
    assert isinstance(received[-1], ListenV1Error) and received[-1].description == "model overloaded"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert fake.connections[0].closed_by == "error"


async def test_delays_before_first_result_and_each_message() -> None:
    faults = DeepgramFaults(first_result_delay=0.3, message_delay=0.05)
    loop = asyncio.get_running_loop()
    async with FakeDeepgram(recognizer=ScriptedRecognizer(["slow"]), faults=faults) as fake, listen(fake) as socket:
        started = loop.time()
        await send(socket, speech(0.7) + silence(0.4))
        await socket.send_close_stream()
        messages = await drain(socket)
        elapsed = loop.time() - started
    assert elapsed >= 0.3 + 0.05 * len(messages)
    assert any(isinstance(m, ListenV1Results) for m in messages)


async def test_silent_server_records_but_never_answers() -> None:
    async with FakeDeepgram(faults=DeepgramFaults(silent=True), idle_timeout=0.2) as fake, listen(fake) as socket:
        await send(socket, speech(0.5) + silence(0.5))
        await socket.send_close_stream()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.6):
                await socket.recv()
        connection = fake.connections[0]
        assert len(connection.audio) == 32000 and connection.received_of_type("CloseStream")
        assert connection.sent == [] and not connection.is_closed


async def test_live_connection_handle_sends_raw_and_drops() -> None:
    async with FakeDeepgram() as fake, listen(fake) as socket:
        connection = await fake.wait_for_connection()
        await connection.send_raw("garbage")
        with pytest.raises(json.JSONDecodeError):
            await socket.recv()
        connection.drop()
        with pytest.raises(ConnectionClosedError):
            await socket.recv()
        await connection.wait_closed()
        assert connection.closed_by == "dropped"


# -------------------------------------------------------- recognizers, CLI


class SlowRecognizer:
    """Not ``runs_inline``: the fake must call it off the event loop."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def transcribe(self, pcm16: bytes, sample_rate: int, *, final: bool = True) -> Recognition:
        self.threads.add(threading.current_thread().name)
        if not final:
            return Recognition.EMPTY
        return Recognition("threaded words", 0.8, (Word("threaded", 0.1, 0.3, 0.8), Word("words", 0.35, 0.6, 0.8)))


async def test_custom_recognizer_runs_off_the_event_loop() -> None:
    recognizer = SlowRecognizer()
    async with FakeDeepgram(recognizer=recognizer) as fake, listen(fake) as socket:
        await send(socket, speech(0.8) + silence(0.5))
        await socket.send_close_stream()
        messages = await drain(socket)
    assert [transcript(m) for m in finals(messages) if transcript(m)] == ["Threaded words."]
    assert recognizer.threads and threading.current_thread().name not in recognizer.threads


async def test_scripted_line_confidence() -> None:
    recognizer = ScriptedRecognizer([ScriptedLine("mumble mumble", 0.3)])
    async with FakeDeepgram(recognizer=recognizer) as fake, listen(fake) as socket:
        await send(socket, speech(0.8) + silence(0.5))
        await socket.send_close_stream()
        [final] = [m for m in finals(await drain(socket)) if transcript(m)]
    assert final.channel.alternatives[0].confidence == pytest.approx(0.3)


async def test_stream_engine_without_network_endpointing_disabled() -> None:
    """Sans-I/O: no speech_final without endpointing; UtteranceEnd closes the utterance."""
    recognizer = ScriptedRecognizer(["no endpointing here"])

    async def transcribe(pcm: bytes, rate: int, final: bool) -> Recognition:
        return recognizer.transcribe(pcm, rate, final=final)

    query = {k: str(v) for k, v in {**PRODUCT, "endpointing": "false"}.items()}
    stream = ListenStream(ListenOptions.parse(query), transcribe)
    out = await stream.feed_audio(silence(0.2) + speech(1.0) + silence(1.5))
    kinds = [m["type"] for m in out]
    results = [m for m in out if m["type"] == "Results" and m["is_final"]]
    assert [m["speech_final"] for m in results] == [False]
    assert results[0]["channel"]["alternatives"][0]["transcript"] == "No endpointing here."
    # The final comes after 0.5 s of silence (segment gap), the UtteranceEnd 1 s after the last word.
    assert results[0]["start"] + results[0]["duration"] == pytest.approx(1.7, abs=0.03)
    assert kinds.index("UtteranceEnd") > kinds.index("Results")
    assert (await stream.close())[-1]["type"] == "Metadata"


async def test_command_line_runs_the_fake_standalone() -> None:
    async with standalone_fake("deepgram", timeout=20) as (line, urls):
        assert "FakeDeepgram listening" in line
        ws_url = urls["ws_url"]
        http_url = ws_url.replace("ws://", "http://")
        environment = DeepgramClientEnvironment(base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url)
        client = AsyncDeepgramClient(api_key="any", environment=environment)
        async with client.listen.v1.connect(**PRODUCT) as socket:
            await socket.send_close_stream()
            assert isinstance((await drain(socket))[-1], ListenV1Metadata)
