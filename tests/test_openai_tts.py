"""OpenAITTSService with the real openai SDK against FakeOpenAI's speech endpoint."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import openai
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
    TTSStoppedFrame,
)
from vantum_pipeline.services.circuit import BreakerSettings
from vantum_pipeline.services.failover import FailoverSettings
from vantum_pipeline.services.failover_tts import FailoverTTSService, FailoverTTSSettings
from vantum_pipeline.services.offline.tts import EspeakTTSService
from vantum_pipeline.services.openai_tts import SPEECH_RATE, OpenAITTSService, OpenAITTSSettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.cartesia import ToneSynthesizer
from vantum_pipeline.testing.grammar import check_stream
from vantum_pipeline.testing.openai import FakeOpenAI, Fault

pytestmark = pytest.mark.timeout(40)

SENTENCES = ["Hi, this is Alex from Vantum.", "Do you have a minute?"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-tts") as server:
        yield server


def tts_on(fake: FakeOpenAI, **overrides: Any) -> OpenAITTSService:
    options: dict[str, Any] = {"api_key": Secret("sk-tts"), "base_url": fake.base_url, "retry_delay": 0.05}
    options.update(overrides)
    return OpenAITTSService(OpenAITTSSettings(**options), name="openai-tts")


def reply(*sentences: str) -> list[Frame]:
    return [LLMFullResponseStartFrame(), *(TextFrame(s) for s in sentences), LLMFullResponseEndFrame()]


async def speak(harness: PipelineHarness, frames: list[Frame], stops: int = 1) -> None:
    for frame in frames:
        await harness.send(frame)
    await harness.wait_for(TTSStoppedFrame, count=stops, timeout=15)


def speech_requests(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path == "/v1/audio/speech"]


async def test_each_sentence_is_one_streamed_pcm_request(fake: FakeOpenAI) -> None:
    tts = tts_on(fake)
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await speak(harness, reply(*SENTENCES))
    bodies = [r.body for r in speech_requests(fake)]
    assert [b["input"] for b in bodies] == SENTENCES
    assert all(b["response_format"] == "pcm" and b["model"] == "gpt-4o-mini-tts" for b in bodies)
    audio = [f for f in harness.downstream if isinstance(f, TTSAudioRawFrame)]
    expected = sum(len(ToneSynthesizer().synthesize(s, SPEECH_RATE).audio) for s in SENTENCES)
    assert sum(len(f.audio) for f in audio) == expected and all(f.sample_rate == SPEECH_RATE for f in audio)
    assert check_stream(harness.downstream) == []


async def test_phone_output_through_a_failover_is_resampled_and_mulaw(fake: FakeOpenAI) -> None:
    tts = FailoverTTSService([tts_on(fake)], FailoverTTSSettings().for_twilio())
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await speak(harness, reply(*SENTENCES))
    audio = [f for f in harness.downstream if isinstance(f, TTSAudioRawFrame)]
    seconds = sum(len(ToneSynthesizer().synthesize(s, SPEECH_RATE).audio) for s in SENTENCES) / 2 / SPEECH_RATE
    assert all(f.encoding == MULAW and f.sample_rate == 8000 for f in audio)
    assert sum(f.duration for f in audio) == pytest.approx(seconds, abs=0.01)


async def test_a_drop_mid_sentence_retries_that_sentence_only(fake: FakeOpenAI) -> None:
    tts = tts_on(fake)
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(TextFrame(SENTENCES[0]))
        await harness.wait_for(TTSAudioRawFrame, timeout=10)
        fake.fail_next(Fault.drop_connection(after_tokens=2))
        await speak(harness, [TextFrame(SENTENCES[1]), LLMFullResponseEndFrame()])
    inputs = [r.body["input"] for r in speech_requests(fake)]
    assert inputs == [SENTENCES[0], SENTENCES[1], SENTENCES[1]] and tts.retries == 1
    assert not tts.unspoken


async def test_interruption_closes_the_request_in_flight(fake: FakeOpenAI) -> None:
    fake.speech.chunk_delay = 0.05
    tts = tts_on(fake)
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(TextFrame("A long sentence that the callee will interrupt before it is over."))
        await harness.wait_for(TTSAudioRawFrame, timeout=10)
        await harness.send(InterruptionFrame())
        (request,) = speech_requests(fake)
        await request.done.wait()
    assert request.disconnected and not request.completed


async def test_a_rate_limited_backup_gives_way_to_espeak(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.rate_limited(retry_after=30))
    breaker = BreakerSettings(failure_threshold=1)
    tts = FailoverTTSService(
        [tts_on(fake), EspeakTTSService(name="espeak")],
        FailoverTTSSettings(failover=FailoverSettings(breaker=breaker)),
    )
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await speak(harness, [TextFrame("Rate limited, then espeak.")])
    assert tts.switches == 1 and not tts.unspoken


async def test_the_fake_checks_requests_as_the_api_does(fake: FakeOpenAI) -> None:
    client = openai.AsyncOpenAI(api_key="sk-tts", base_url=fake.base_url, max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError, match="speed"):
            await client.audio.speech.create(model="tts-1", voice="alloy", input="hi", speed=9.0)
        with pytest.raises(openai.BadRequestError, match="no mp3 encoder"):
            await client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
        wav = await client.audio.speech.create(model="tts-1", voice="nova", input="hi", response_format="wav")
        assert wav.content[:4] == b"RIFF"
    finally:
        await client.close()
    assert json.loads(speech_requests(fake)[0].raw)["speed"] == 9.0


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        OpenAITTSSettings(api_key=Secret("k"), speed=5)
    with pytest.raises(ConfigurationError):
        OpenAITTSSettings(api_key=Secret("k"), model="tts-1", instructions="cheerful")
    assert math.isclose(OpenAITTSSettings.from_env({"OPENAI_API_KEY": "x"}).speed, 1.0)
