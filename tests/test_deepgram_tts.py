"""DeepgramTTSService (Aura) with the real deepgram-sdk against FakeDeepgramSpeak."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    MULAW,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
from vantum_pipeline.services.circuit import BreakerSettings
from vantum_pipeline.services.deepgram_tts import DeepgramTTSService, DeepgramTTSSettings
from vantum_pipeline.services.failover import FailoverSettings
from vantum_pipeline.services.failover_tts import FailoverTTSService, FailoverTTSSettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
from vantum_pipeline.testing.deepgram_speak import FakeDeepgramSpeak, _alaw
from vantum_pipeline.testing.grammar import check_stream

pytestmark = pytest.mark.timeout(40)

SENTENCES = ["Hi, this is Alex from Vantum.", "We help sales teams call more people.", "Do you have a minute?"]


@pytest.fixture
async def aura() -> AsyncIterator[FakeDeepgramSpeak]:
    async with FakeDeepgramSpeak(api_key="dg-key") as fake:
        yield fake


def aura_tts(fake: FakeDeepgramSpeak, **overrides: Any) -> DeepgramTTSService:
    settings = DeepgramTTSSettings(api_key=Secret("dg-key"), url=fake.ws_url, first_audio_timeout=1.5, **overrides)
    return DeepgramTTSService(settings, name="deepgram-aura")


def reply(*sentences: str) -> list[Frame]:
    return [LLMFullResponseStartFrame(), *(TextFrame(s) for s in sentences), LLMFullResponseEndFrame()]


async def speak(harness: PipelineHarness, frames: list[Frame], stops: int = 1) -> None:
    for frame in frames:
        await harness.send(frame)
    await harness.wait_for(TTSStoppedFrame, count=stops, timeout=15)


def audio_seconds(frames: list[Frame]) -> float:
    return sum(f.duration for f in frames if isinstance(f, TTSAudioRawFrame))


async def test_a_reply_is_spoken_sentence_by_sentence_in_mulaw_8k(aura: FakeDeepgramSpeak) -> None:
    tts = aura_tts(aura, encoding="mulaw", sample_rate=8000)
    async with PipelineHarness([tts], end_timeout=10) as harness:
        assert not aura.connections  # connected by the first turn, not at start
        await speak(harness, reply(*SENTENCES))
    (connection,) = aura.connections
    assert connection.query == {"model": "aura-2-thalia-en", "encoding": "mulaw", "sample_rate": "8000"}
    assert connection.texts == [s + " " for s in SENTENCES] and connection.flushes == 3
    frames = harness.downstream
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.encoding == MULAW and f.sample_rate == 8000 for f in audio)
    assert sum(len(f.audio) for f in audio) == connection.audio_bytes  # every byte, once
    assert len({f.context_id for f in audio}) == 1 and check_stream(frames) == []
    assert tts.cost_usd == pytest.approx(sum(len(s) + 1 for s in SENTENCES) * 0.030 / 1000)


async def test_interruption_clears_and_the_next_turn_gets_only_its_own_audio(aura: FakeDeepgramSpeak) -> None:
    aura.faults.chunk_delay = 0.02
    tts = aura_tts(aura)
    long = "This sentence is long enough to be cut off by the callee talking over it."
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(TextFrame(long))
        first = await harness.wait_for(TTSAudioRawFrame, timeout=10)
        await harness.send(InterruptionFrame())
        await asyncio.sleep(0.2)
        cut = len(harness.downstream)
        await speak(harness, [TextFrame("Short one.")])
    after = [f for f in harness.downstream[cut:] if isinstance(f, TTSAudioRawFrame)]
    assert after and all(f.context_id != first.context_id for f in after)
    synthesized = ToneSynthesizer().synthesize("Short one. ", 16000).audio
    assert sum(len(f.audio) for f in after) == len(synthesized)  # nothing of the cut sentence leaked in
    assert aura.connections[0].clears == 1 and tts.stale_chunks_dropped >= 0


async def test_a_drop_mid_reply_reconnects_and_resumes_at_the_unfinished_sentence(aura: FakeDeepgramSpeak) -> None:
    first_sentence = ToneSynthesizer().synthesize(SENTENCES[0] + " ", 16000).audio
    aura.faults.drop_after_chunks = math.ceil(len(first_sentence) / (16000 * 40 // 1000 * 2)) + 2
    tts = aura_tts(aura, retry_delay=0.05)
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await speak(harness, reply(*SENTENCES))
    assert len(aura.connections) == 2 and tts.retries == 1
    assert aura.connections[1].texts == [s + " " for s in SENTENCES[1:]]  # the first was finished: not repeated
    assert not tts.unspoken and check_stream(harness.downstream) == []


async def test_a_refused_key_plays_the_fallback(aura: FakeDeepgramSpeak) -> None:
    tts = DeepgramTTSService(DeepgramTTSSettings(api_key=Secret("wrong"), url=aura.ws_url))
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await speak(harness, [TTSSpeakFrame("Hello!", category="greeting")], stops=2)
    assert [u.fallback for u in tts.unspoken] == ["greeting"] and not aura.connections


async def test_as_cartesias_backup_it_speaks_the_rest_of_the_turn(aura: FakeDeepgramSpeak) -> None:
    async with FakeCartesia(chunk_ms=20) as cartesia_fake:
        first = ToneSynthesizer().synthesize(SENTENCES[0] + " ", 8000).audio
        cartesia_fake.faults.drop_after_chunks = math.ceil(len(first) / 2 / (8000 * 20 // 1000))
        cartesia_fake.faults.drop_close_code = None
        cartesia = CartesiaTTSService(
            CartesiaSettings(
                api_key=Secret("k"), base_url=cartesia_fake.http_url, websocket_base_url=cartesia_fake.ws_url
            ).for_twilio(),
            name="cartesia",
        )
        backup = aura_tts(aura, encoding="mulaw", sample_rate=8000)
        breaker = BreakerSettings(failure_threshold=1)
        tts = FailoverTTSService(
            [cartesia, backup], FailoverTTSSettings(failover=FailoverSettings(breaker=breaker)).for_twilio()
        )
        async with PipelineHarness([tts], end_timeout=15) as harness:
            await speak(harness, reply(*SENTENCES))
        cid = next(f.context_id for f in harness.downstream if isinstance(f, TTSStartedFrame))
        assert cartesia_fake.contexts[cid].transcript.startswith(SENTENCES[0])
    assert aura.texts == [s + " " for s in SENTENCES[1:]]  # resumed at sentence 2, nothing repeated
    audio = [f for f in harness.downstream if isinstance(f, TTSAudioRawFrame)]
    assert all(f.context_id == cid and f.encoding == MULAW for f in audio)
    assert tts.switches == 1 and not tts.unspoken and check_stream(harness.downstream) == []


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        DeepgramTTSSettings(api_key=Secret("k"), encoding="mulaw", sample_rate=24000)
    with pytest.raises(ConfigurationError):
        DeepgramTTSSettings(api_key=Secret("k"), encoding="opus")
    assert DeepgramTTSSettings.from_env({"DEEPGRAM_API_KEY": "x"}).for_twilio().sample_rate == 8000


def test_the_fakes_a_law_is_g711() -> None:
    assert _alaw(b"\x00\x00") == b"\xd5" and _alaw(b"\x00\x80") == b"\x2a"
