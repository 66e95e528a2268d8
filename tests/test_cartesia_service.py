"""CartesiaTTSService against FakeCartesia, through the real cartesia SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.errors import ConfigurationError, ProtocolError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.cartesia import (
    CartesiaSettings,
    CartesiaTTSService,
    parse_server_message,
)
from vantum_pipeline.services.fallback_audio import fallback_audio, fallback_text
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
from vantum_pipeline.testing.grammar import check_stream

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCartesia]:
    async with FakeCartesia() as server:
        yield server


def settings_for(fake: FakeCartesia, **overrides: Any) -> CartesiaSettings:
    base = CartesiaSettings(
        api_key=Secret("test-key"),
        voice_id="voice-1",
        base_url=fake.http_url,
        websocket_base_url=fake.ws_url,
        retry_delay=0.05,
        first_audio_timeout=1.0,
        stall_timeout=1.0,
        connect_timeout=2.0,
    )
    return replace(base, **overrides)


def reply(*sentences: str) -> list[Frame]:
    return [LLMFullResponseStartFrame(), *(TextFrame(s) for s in sentences), LLMFullResponseEndFrame()]


def of(frames: list[Frame], cls: type[Any], context_id: str | None = None) -> list[Any]:
    return [f for f in frames if isinstance(f, cls) and (context_id is None or f.context_id == context_id)]


def metrics(frames: list[Frame], name: str) -> list[float]:
    return [f.value for f in frames if isinstance(f, MetricsFrame) and f.metric == name]


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; AssertionError after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout:.1f}s")


async def speak(harness: PipelineHarness, frames: list[Frame], stops: int = 1, timeout: float = 8.0) -> None:
    for frame in frames:
        await harness.send(frame)
    await harness.wait_for(TTSStoppedFrame, count=stops, timeout=timeout)


# ------------------------------------------------------------------ one turn


async def test_two_sentence_turn_in_one_context_with_continuation_and_timestamps(fake: FakeCartesia) -> None:
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, reply("Hello there.", "How can I help you today?"))
    frames = harness.downstream
    [started] = of(frames, TTSStartedFrame)
    cid = started.context_id
    assert [f.context_id for f in of(frames, TTSStoppedFrame)] == [cid]
    assert list(fake.contexts) == [cid]  # one context for the whole turn
    assert fake.contexts[cid].pieces == ["Hello there. ", "How can I help you today? ", ""]
    assert [m["continue"] for m in fake.messages] == [True, True, False]
    assert all(m["add_timestamps"] and m["voice"] == {"mode": "id", "id": "voice-1"} for m in fake.messages)
    audio = of(frames, TTSAudioRawFrame)
    assert audio and {f.context_id for f in audio} == {cid}
    assert all(f.sample_rate == 16000 and f.encoding == PCM16 for f in audio)
    assert sum(len(f.audio) for f in audio) == fake.contexts[cid].audio_bytes
    words = [w for f in of(frames, TTSWordTimestampsFrame, cid) for w in f.words]
    assert [w for w, _, _ in words] == "Hello there. How can I help you today?".split()
    assert [s for _, s, _ in words] == sorted(s for _, s, _ in words)
    assert [f.text for f in of(frames, TextFrame) if type(f) is TextFrame] == [
        "Hello there.",
        "How can I help you today?",
    ]
    assert check_stream(frames) == []
    kinds = [type(f).__name__ for f in frames if not isinstance(f, MetricsFrame)]
    assert kinds.index("TTSStartedFrame") < kinds.index("TTSAudioRawFrame") < kinds.index("TTSStoppedFrame")
    assert len(metrics(frames, "latency.tts_ttfb")) == 1
    assert sum(metrics(frames, "usage.tts_characters")) == len("Hello there. How can I help you today? ")
    assert tts.characters_sent == 39 and tts.cost_usd == pytest.approx(39 * 0.10 / 1000)
    assert metrics(frames, "service.request") == [1.0]
    assert tts.connections_opened == 1


def test_a_request_goes_as_the_sdks_model_and_one_the_model_refuses_as_the_dict() -> None:
    # The SDK serializes its own model in compiled code; a dict it first walks key by key against
    # its request types (5 to 10 times the cost, on every sentence's way to the first audio).
    from cartesia.types import GenerationRequest
    from loguru import logger

    tts = CartesiaTTSService(CartesiaSettings(api_key=Secret("k"), voice_id="voice-1"))
    request = {
        "context_id": "turn-1",
        "model_id": "sonic-2",
        "voice": {"mode": "id", "id": "voice-1"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "transcript": "Hello there. ",
        "continue": True,
        "language": "en",
        "add_timestamps": True,
    }
    event = tts._event(request)
    assert isinstance(event, GenerationRequest)
    assert json.loads(event.to_json(use_api_names=True, exclude_defaults=True, exclude_unset=True)) == request
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        odd = {**request, "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 11025}}
        assert tts._event(odd) is odd
        assert tts._event(odd) is odd
    finally:
        logger.remove(sink)
    assert len([line for line in lines if "goes as a dict" in line]) == 1  # said once, not per sentence


async def test_the_socket_asks_for_no_compression(fake: FakeCartesia) -> None:
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, reply("Hello there."))
    assert fake.upgrades
    assert all("Sec-WebSocket-Extensions" not in u["headers"] for u in fake.upgrades)


async def test_first_sentence_reaches_cartesia_before_the_llm_finishes(fake: FakeCartesia) -> None:
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([SentenceAggregator(), tts]) as harness:
        await harness.send(LLMFullResponseStartFrame())
        for piece in ["Thanks", " for", " calling", ".", " Is", " now", " a"]:
            await harness.send(LLMTextFrame(piece))
        await harness.wait_for(TTSAudioRawFrame, timeout=5)  # audio of sentence one, mid-reply
        assert [m["transcript"] for m in fake.messages] == ["Thanks for calling. "]
        for piece in [" good", " time", "?"]:
            await harness.send(LLMTextFrame(piece))
        await harness.send(LLMFullResponseEndFrame())
        await harness.wait_for(TTSStoppedFrame, timeout=5)
    assert [m["transcript"] for m in fake.messages] == ["Thanks for calling. ", "Is now a good time? ", ""]
    assert check_stream(harness.downstream) == []


async def test_a_text_frame_outside_a_reply_is_a_turn_of_its_own(fake: FakeCartesia) -> None:
    async with PipelineHarness([CartesiaTTSService(settings_for(fake))]) as harness:
        await speak(harness, [TextFrame("Just this.")])
    assert [m["continue"] for m in fake.messages] == [True, False]


# ------------------------------------------------------------------ interruption


async def test_interruption_cancels_the_context_and_no_stale_chunk_is_delivered(fake: FakeCartesia) -> None:
    fake.faults.chunk_delay = 0.01
    fake.faults.late_chunks = 3
    tts = CartesiaTTSService(settings_for(fake))
    long = "This is a rather long sentence that keeps the voice busy for a good few seconds of audio."
    async with PipelineHarness([tts]) as harness:
        for frame in reply(long, "And a second sentence after it."):
            await harness.send(frame)
        first = await harness.wait_for(TTSAudioRawFrame, timeout=5)
        await harness.send(InterruptionFrame())
        await eventually(lambda: harness.task.state.interruptions > 0)
        cut = len(harness.downstream)  # everything after this left the pipeline after the interruption
        await eventually(lambda: tts.stale_chunks_dropped >= 1)  # late chunks arrive, and are dropped
        await asyncio.sleep(0.1)
        for frame in reply("Sorry, go ahead."):
            await harness.send(frame)
        await harness.wait_for(TTSStoppedFrame, timeout=5)
    frames = harness.downstream
    old = first.context_id
    assert fake.cancels == [old]
    assert tts.stale_chunks_dropped >= 1  # late chunks did arrive, and were dropped by context id
    assert of(frames[cut:], TTSAudioRawFrame, old) == []  # 0 stale chunks delivered
    assert all(f.epoch == harness.task.state.epoch for f in of(frames[cut:], TTSAudioRawFrame))
    new = of(frames[cut:], TTSStartedFrame)[0].context_id
    assert new != old and of(frames[cut:], TTSAudioRawFrame, new)
    assert of(frames, TTSStoppedFrame, old) == []  # the interruption closes the bracket
    assert check_stream([*frames[:cut], InterruptionFrame(), *frames[cut:]]) == []


class FullOutput(FrameProcessor):
    """Stands for an output transport whose buffer is full: an audio frame
    waits in process_frame until the interruption frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = asyncio.Event()
        self.freed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            self.freed.set()
        elif isinstance(frame, TTSAudioRawFrame) and not self.freed.is_set():
            self.blocked.set()
            await self.freed.wait()
            if self.is_stale(frame):
                return
        await self.push_frame(frame, direction)


async def test_interruption_while_the_output_applies_backpressure(fake: FakeCartesia) -> None:
    tts = CartesiaTTSService(settings_for(fake))
    output = FullOutput()
    async with PipelineHarness([tts, output]) as harness:
        for frame in reply("A reply long enough to fill the output buffer of the transport."):
            await harness.send(frame)
        await asyncio.wait_for(output.blocked.wait(), 5)  # the receive loop is stuck pushing audio
        await harness.send(InterruptionFrame())
        await speak(harness, reply("Yes?"))
    frames = harness.downstream
    old, new = (f.context_id for f in of(frames, TTSStartedFrame))
    assert fake.cancels == [old]
    assert of(frames, TTSAudioRawFrame, old) == []  # the blocked chunk was stale once freed
    assert of(frames, TTSAudioRawFrame, new) and fake.contexts[new].done


# ------------------------------------------------------------------ failures


async def test_error_then_success_is_retried_in_a_new_context(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 1
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, reply("Let me check that for you."))
    frames = harness.downstream
    [started] = of(frames, TTSStartedFrame)
    cid = started.context_id
    assert list(fake.contexts) == [cid, f"{cid}-r1"]
    assert fake.contexts[cid].error and fake.contexts[f"{cid}-r1"].done
    assert fake.contexts[f"{cid}-r1"].transcript == "Let me check that for you. "
    assert sum(len(f.audio) for f in of(frames, TTSAudioRawFrame, cid)) == fake.contexts[f"{cid}-r1"].audio_bytes
    assert metrics(frames, "service.error") == [1.0] and metrics(frames, "service.retry") == [1.0]
    assert tts.retries == 1 and not tts.unspoken
    assert not of(frames, TTSStartedFrame, f"{cid}-fallback")
    assert check_stream(frames) == []


async def test_two_errors_play_the_prerecorded_fallback_and_the_call_goes_on(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 2
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, reply("Our plan costs $49 a month.", "Want a demo?"), stops=2)
        await speak(harness, reply("Still here."), stops=3)
    frames = harness.downstream
    cid = of(frames, TTSStartedFrame)[0].context_id
    fallback = f"{cid}-fallback"
    expected = fallback_audio("error", 16000, PCM16)
    assert b"".join(f.audio for f in of(frames, TTSAudioRawFrame, fallback)) == expected.audio
    assert of(frames, TTSAudioRawFrame, cid) == []
    assert [w for f in of(frames, TTSWordTimestampsFrame, fallback) for w, _, _ in f.words] == fallback_text(
        "error"
    ).split()
    assert [(f.text, f.category) for f in of(frames, TTSSpeakFrame)] == [(fallback_text("error"), "error")]
    [unspoken] = tts.unspoken
    assert unspoken.context_id == cid and unspoken.text == "Our plan costs $49 a month. Want a demo?"
    assert unspoken.fallback == "error"
    errors = [f for f in harness.upstream if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and not errors[0].fatal and "not spoken (40 characters)" in errors[0].error
    assert metrics(frames, "service.error") == [1.0, 1.0] and metrics(frames, "service.retry") == [1.0]
    assert harness.task.finish_reason is None or harness.task.finish_reason == "end"
    last = of(frames, TTSStartedFrame)[-1].context_id
    assert fake.contexts[last].done and of(frames, TTSAudioRawFrame, last)  # the next turn speaks normally
    assert check_stream(frames) == []


async def test_greeting_fallback_for_a_greeting_that_fails(fake: FakeCartesia) -> None:
    fake.api_key = "another-key"  # 401: not retryable, straight to the fallback
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, [TTSSpeakFrame("Hello, this is Sarah from Vantum!", category="greeting")], stops=2)
    frames = harness.downstream
    cid = of(frames, TTSStartedFrame)[0].context_id
    greeting = fallback_audio("greeting", 16000, PCM16).audio
    assert b"".join(f.audio for f in of(frames, TTSAudioRawFrame, f"{cid}-fallback")) == greeting
    assert tts.retries == 0 and tts.unspoken[0].fallback == "greeting"
    assert all(u["status"] == 401 for u in fake.upgrades)


async def test_socket_drop_mid_turn_resumes_on_a_new_socket(fake: FakeCartesia) -> None:
    fake.faults.chunk_delay = 0.005
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(TextFrame("First sentence is spoken in full."))
        await harness.wait_for(TTSWordTimestampsFrame, count=6, timeout=5)  # all its words
        await asyncio.sleep(0.3)  # its audio is all out
        fake.faults.drop_after_chunks = 2  # the next chunks of this context: drop
        fake.faults.drop_close_code = None
        await speak(harness, [TextFrame("Second sentence gets cut off."), LLMFullResponseEndFrame()])
    frames = harness.downstream
    cid = of(frames, TTSStartedFrame)[0].context_id
    assert tts.connections_opened == 2 and len(fake.upgrades) == 2
    assert fake.contexts[f"{cid}-r1"].transcript == "Second sentence gets cut off. "  # resumed, not repeated
    words = [w for f in of(frames, TTSWordTimestampsFrame, cid) for w, _, _ in f.words]
    assert words[:5] == "First sentence is spoken in".split() and words[-5:] == "Second sentence gets cut off.".split()
    starts = [s for f in of(frames, TTSWordTimestampsFrame, cid) for _, s, _ in f.words]
    assert starts == sorted(starts)  # the retry's timings continue the turn's clock
    assert not tts.unspoken and check_stream(frames) == []


async def test_socket_closed_between_turns_is_reopened_in_the_background() -> None:
    async with FakeCartesia(idle_timeout=0.3) as fake:  # closes idle sockets, as the service does after 5 min
        tts = CartesiaTTSService(settings_for(fake))
        async with PipelineHarness([tts]) as harness:
            await speak(harness, reply("One."))
            await eventually(lambda: tts.connections_opened >= 2 and fake.open_connections >= 1)
            await speak(harness, reply("Two."), stops=2)
        second = of(harness.downstream, TTSStartedFrame)[1].context_id
    assert fake.contexts[second].done and tts.retries == 0 and not tts.unspoken
    assert [u["status"] for u in fake.upgrades] == [200] * len(fake.upgrades) and len(fake.upgrades) >= 2


async def test_stalled_context_times_out_and_is_retried(fake: FakeCartesia) -> None:
    fake.faults.stall_after_chunks = 1
    tts = CartesiaTTSService(settings_for(fake, stall_timeout=0.3, first_audio_timeout=0.5))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, reply("A reply that stalls after its first chunk."))
    cid = of(harness.downstream, TTSStartedFrame)[0].context_id
    assert fake.cancels == [cid]  # the stalled context is cancelled so it cannot speak later
    assert fake.contexts[f"{cid}-r1"].done and tts.retries == 1


async def test_malformed_message_is_counted_and_the_turn_completes(fake: FakeCartesia) -> None:
    fake.faults.malformed_after_chunks = 2
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, reply("Hello there, nice to meet you."))
    assert tts.malformed == 1 and metrics(harness.downstream, "protocol.malformed") == [1.0]
    assert tts.retries == 0 and not tts.unspoken


async def test_rate_limited_upgrade_is_retried_after_a_short_wait(fake: FakeCartesia) -> None:
    fake.faults.reject_upgrades = 2  # the early connect and the turn's first attempt
    fake.faults.reject_status = 429
    fake.faults.retry_after = 0.1
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await asyncio.sleep(0.2)
        await speak(harness, reply("Hi again."))
    # refused twice (the early connect, then the turn's first attempt); the retry got through
    assert metrics(harness.downstream, "service.rate_limited") == [1.0, 1.0]
    assert tts.retries == 1 and not tts.unspoken


# ------------------------------------------------------------------ cache, formats, order


async def test_cache_serves_a_repeated_phrase_with_no_request(fake: FakeCartesia) -> None:
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await speak(harness, [TTSSpeakFrame("One moment please.")])
        requests = len(fake.messages)
        await speak(harness, [TTSSpeakFrame("One moment please.")], stops=2)
        assert len(fake.messages) == requests and len(fake.contexts) == 1  # nothing asked of the fake
    first, second = (f.context_id for f in of(harness.downstream, TTSStartedFrame))
    audio = [b"".join(f.audio for f in of(harness.downstream, TTSAudioRawFrame, c)) for c in (first, second)]
    assert audio[0] and audio[0] == audio[1]
    words = [[w for f in of(harness.downstream, TTSWordTimestampsFrame, c) for w in f.words] for c in (first, second)]
    assert words[0] == words[1]
    assert (tts.cache.hits, tts.cache.misses) == (1, 1)
    assert [f.text for f in of(harness.downstream, TTSSpeakFrame)] == ["One moment please."] * 2
    kinds = [type(f).__name__ for f in harness.downstream]
    assert kinds.index("TTSSpeakFrame") < kinds.index("TTSStartedFrame")  # the aggregator sees the text first
    assert check_stream(harness.downstream) == []


async def test_warm_phrases_are_cached_at_start(fake: FakeCartesia) -> None:
    tts = CartesiaTTSService(settings_for(fake, warm_phrases=("Please hold.",)))
    async with PipelineHarness([tts]) as harness:
        await eventually(lambda: len(tts.cache) == 1)
        await speak(harness, [TTSSpeakFrame("Please hold.")])
    assert tts.cache.hits == 1 and len(fake.contexts) == 1
    assert of(harness.downstream, TTSAudioRawFrame)


async def test_mulaw_8k_output_for_the_phone(fake: FakeCartesia) -> None:
    settings = settings_for(fake).for_twilio()
    tts = CartesiaTTSService(settings)
    async with PipelineHarness([tts]) as harness:
        await speak(harness, reply("Hello from the phone."))
    cid = of(harness.downstream, TTSStartedFrame)[0].context_id
    assert fake.contexts[cid].output_format == {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}
    audio = of(harness.downstream, TTSAudioRawFrame)
    assert all(f.encoding == MULAW and f.sample_rate == 8000 for f in audio)
    mulaw = b"".join(f.audio for f in audio)
    reference = np.frombuffer(ToneSynthesizer().synthesize("Hello from the phone. ", 8000).audio, dtype="<i2")
    decoded = np.frombuffer(ulaw2lin(mulaw), dtype="<i2")
    assert len(decoded) == len(reference)
    assert np.corrcoef(decoded.astype(float), reference.astype(float))[0, 1] > 0.99
    assert sum(f.duration for f in audio) == pytest.approx(len(mulaw) / 8000)


async def test_turns_are_spoken_one_after_the_other(fake: FakeCartesia) -> None:
    fake.faults.chunk_delay = 0.003
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([tts]) as harness:
        await harness.send(TTSSpeakFrame("Hi, this is Sarah from Vantum."))
        await speak(harness, reply("I'm calling about your demo request."), stops=2)
    frames = [f for f in harness.downstream if isinstance(f, TTSStartedFrame | TTSStoppedFrame | TTSAudioRawFrame)]
    first, second = (f.context_id for f in of(frames, TTSStartedFrame))
    ids = [f.context_id for f in frames]
    assert len(set(ids)) == 2
    assert max(i for i, c in enumerate(ids) if c == first) < ids.index(second)  # all of the first, then the second
    assert check_stream(harness.downstream) == []


async def test_end_frame_waits_for_the_last_audio(fake: FakeCartesia) -> None:
    fake.faults.chunk_delay = 0.005
    async with PipelineHarness([CartesiaTTSService(settings_for(fake))]) as harness:
        for frame in reply("The last words of the call."):
            await harness.send(frame)
    kinds = [type(f).__name__ for f in harness.downstream if not isinstance(f, MetricsFrame)]
    assert kinds[-2:] == ["TTSStoppedFrame", "EndFrame"]
    assert fake.open_connections == 0  # the socket was closed at the end


# ------------------------------------------------------------------ settings and codec


def test_settings_from_env_and_validation() -> None:
    settings = CartesiaSettings.from_env({"CARTESIA_API_KEY": "sk-secret", "CARTESIA_VOICE_ID": "v9"})
    assert settings.voice_id == "v9" and settings.model == "sonic-2" and settings.encoding == "pcm_s16le"
    assert settings.sample_rate == 16000 and settings.price_per_1k_chars == 0.10 and settings.max_retries == 1
    assert "sk-secret" not in repr(settings)
    assert settings.for_twilio().output_format() == {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000}
    with pytest.raises(ConfigurationError, match="CARTESIA_API_KEY"):
        CartesiaSettings.from_env({})
    with pytest.raises(ConfigurationError):
        replace(settings, encoding="pcm_mulaw")  # mu-law is 8 kHz
    with pytest.raises(ConfigurationError):
        replace(settings, encoding="pcm_f32le")
    assert replace(settings, speed=1.0).speed_fields() == {}
    assert replace(settings, speed=1.3).speed_fields() == {"speed": "fast"}
    assert replace(settings, speed=0.7, model="sonic-3").speed_fields() == {"generation_config": {"speed": 0.7}}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1, 2]",
        b'{"no": "type"}',
        b'{"type": "chunk", "context_id": "c"}',
        b'{"type": "chunk", "context_id": "c", "data": "***"}',
        b'{"type": "chunk", "context_id": 5, "data": ""}',
        b'{"type": "timestamps", "context_id": "c", "word_timestamps": {"words": ["a"], "start": [], "end": [1]}}',
        b'{"type": "timestamps", "context_id": "c", "word_timestamps": {"words": ["a"], "start": ["x"], "end": [1]}}',
    ],
)
def test_malformed_server_messages_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_server_message(raw)


def test_server_messages_parse() -> None:
    chunk = parse_server_message(b'{"type": "chunk", "context_id": "c", "data": "AAE=", "done": false}')
    assert chunk.audio == b"\x00\x01" and chunk.context_id == "c"
    stamps = parse_server_message(
        b'{"type": "timestamps", "context_id": "c", "word_timestamps": {"words": ["Hi"], "start": [0], "end": [0.2]}}'
    )
    assert stamps.words == (("Hi", 0.0, 0.2),)
    error = parse_server_message(
        b'{"type": "error", "context_id": "c", "status_code": 500, "title": "T", "done": true}'
    )
    assert error.status_code == 500 and error.error == "T"
    assert parse_server_message(b'{"type": "phoneme_timestamps", "context_id": "c"}').type == "phoneme_timestamps"


# ------------------------------------------------------------------ cache and fallback assets


def test_tts_cache_is_bounded_lru_with_counts() -> None:
    from vantum_pipeline.services.tts_cache import CachedAudio, TTSCache, TTSCacheKey

    def key(text: str) -> TTSCacheKey:
        return TTSCacheKey(text, "v", "sonic-2", "pcm_s16le", 16000, 1.0)

    cache = TTSCache(max_entries=2, max_bytes=4000)
    assert cache.put(key("a"), CachedAudio(b"a" * 100, 16000, PCM16))
    assert cache.put(key("b"), CachedAudio(b"b" * 100, 16000, PCM16))
    assert cache.get(key("a")) is not None  # a is now the most recent
    cache.put(key("c"), CachedAudio(b"c" * 100, 16000, PCM16))
    assert key("b") not in cache and key("a") in cache and key("c") in cache
    assert cache.get(key("b")) is None
    assert not cache.put(key("big"), CachedAudio(b"x" * 1001, 16000, PCM16))  # over a quarter of the bytes
    assert cache.stats() == {"hits": 1, "misses": 1, "entries": 2, "bytes": 200}
    other_voice = TTSCacheKey("a", "other", "sonic-2", "pcm_s16le", 16000, 1.0)
    assert cache.get(other_voice) is None  # the voice is part of the key


@pytest.mark.parametrize("category", ["greeting", "error", "goodbye"])
def test_fallback_phrases_are_real_recordings_in_every_output_format(category: str) -> None:
    pcm = fallback_audio(category, 16000, PCM16)
    samples = np.frombuffer(pcm.audio, dtype="<i2").astype(float)
    assert 1.5 < len(samples) / 16000 < 8.0
    assert np.sqrt(np.mean(samples**2)) > 500  # speech, not silence
    phone = fallback_audio(category, 8000, MULAW)
    assert abs(len(phone.audio) - len(samples) / 2) <= 2  # one byte per sample at half the rate
    assert [w for w, _, _ in phone.words] == fallback_text(category).split()
    assert phone.words[-1][2] <= len(phone.audio) / 8000
    assert fallback_text("no-such-situation") == fallback_text("error")


async def test_assistant_aggregator_records_what_the_tts_was_given(fake: FakeCartesia) -> None:
    from vantum_pipeline.processors.aggregators import AssistantAggregator
    from vantum_pipeline.processors.context import LLMContext

    context = LLMContext()
    tts = CartesiaTTSService(settings_for(fake))
    async with PipelineHarness([SentenceAggregator(), tts, AssistantAggregator(context)]) as harness:
        await speak(harness, [TTSSpeakFrame("Hi, this is Sarah from Vantum.", category="greeting")])
        frames: list[Frame] = [LLMFullResponseStartFrame()]
        pieces = ["Great", " to", " hear", ".", " Do", " you", " have", " a", " minute", "?"]
        frames += [LLMTextFrame(t) for t in pieces]
        await speak(harness, [*frames, LLMFullResponseEndFrame()], stops=2)
    assert [(m.role, m.content) for m in context.messages] == [
        ("assistant", "Hi, this is Sarah from Vantum."),
        ("assistant", "Great to hear. Do you have a minute?"),
    ]
