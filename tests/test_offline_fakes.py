"""The offline engines behind the fakes: the cloud services on their SDKs hear, think and speak for real."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fresh_speech import FreshSpeech
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.frames import (
    EndFrame,
    EndOfTurnFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.services.offline.agent import SalesScript
from vantum_pipeline.services.offline.espeak import CALLEE_VOICE, EspeakSynthesizer, espeak_available
from vantum_pipeline.services.offline.word_accuracy import word_errors
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing.offline import EspeakFakeSynthesizer, PocketsphinxFakeRecognizer, ScriptedResponder
from vantum_pipeline.testing.pipeline import PipelineHarness

pytest.importorskip("pocketsphinx")
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (offline extra)"),
]

SCRIPT = SalesScript()


def callee_audio(text: str) -> bytes:
    """16 kHz pcm16: quiet, the callee saying ``text``, a second of quiet."""
    spoken = FreshSpeech().synthesize(text, CALLEE_VOICE)  # the same samples on every run
    resampler = StreamResampler(spoken.sample_rate, 16000)
    speech = np.frombuffer(resampler.resample(spoken.audio) + resampler.flush(), np.int16)
    noise = np.random.default_rng(2).normal(0, 20, len(speech) + 24000)
    audio = np.concatenate([np.zeros(8000), speech, np.zeros(16000)]) + noise
    return np.clip(audio, -32768, 32767).astype(np.int16).tobytes()


def test_fake_recognizer_decodes_growing_utterances_incrementally() -> None:
    recognizer = PocketsphinxFakeRecognizer()
    audio = callee_audio("Yes, let's book a meeting.")
    partials = []
    for end in range(6400, len(audio), 6400):
        partials.append(recognizer.transcribe(audio[:end], 16000, final=False).text)
    final = recognizer.transcribe(audio, 16000, final=True)
    assert any(partials) and final.text == "yes let's book a meeting"
    assert final.words[0].word == "yes" and 0.3 < final.words[0].start < 0.8
    assert 0.5 <= final.confidence <= 1.0
    # A new utterance (different audio) starts afresh; 8 kHz works too.
    resampler = StreamResampler(16000, 8000)
    narrow = resampler.resample(callee_audio("What is the price?")) + resampler.flush()
    assert recognizer.transcribe(narrow, 8000, final=True).text == "what is the price"
    assert [f.text for f in recognizer.finals] == ["yes let's book a meeting", "what is the price"]


def test_fake_synthesizer_speaks_at_the_requested_rate() -> None:
    synthesis = EspeakFakeSynthesizer().synthesize("Hello there. How are you?", 16000)
    seconds = len(synthesis.audio) / 32000
    assert 1.0 < seconds < 3.0
    assert [w for w, _, _ in synthesis.words] == ["Hello", "there", "How", "are", "you"]
    assert synthesis.words[-1][2] <= seconds + 0.01


def test_responder_ends_the_call_with_tool_calls() -> None:
    responder = ScriptedResponder()
    tools = [{"type": "function", "function": {"name": name}} for name in ("end_call", "record_outcome")]
    greeting = responder({"messages": [{"role": "system", "content": "x"}], "tools": tools})
    assert greeting.text == SCRIPT.greeting and not greeting.tool_calls
    messages = [
        {"role": "system", "content": "x"},
        {"role": "assistant", "content": SCRIPT.greeting},
        {"role": "user", "content": "i'm not interested"},
    ]
    close = responder({"messages": messages, "tools": tools})
    assert close.text == SCRIPT.close
    assert [(c.name, dict(c.arguments)) for c in close.tool_calls] == [  # type: ignore[call-overload]
        ("record_outcome", {"outcome": "not_interested", "notes": "not_interested"}),
        ("end_call", {"reason": "not_interested"}),
    ]
    # Without tools offered, no calls; after a tool result, nothing more to say.
    assert not responder({"messages": messages}).tool_calls
    assert responder({"messages": [*messages, {"role": "tool", "content": "{}"}]}).text == ""


async def test_deepgram_service_transcribes_through_the_fake_with_pocketsphinx() -> None:
    from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
    from vantum_pipeline.testing.deepgram import FakeDeepgram

    line = "Thursday at ten works for me."
    async with FakeDeepgram(recognizer=PocketsphinxFakeRecognizer()) as fake:
        settings = DeepgramSettings(api_key=Secret("dg-test"), url=fake.ws_url, retry=RetryPolicy(base_delay=0.1))
        stt = DeepgramSTTService(settings)
        async with PipelineHarness([stt], end_timeout=10) as harness:
            audio = callee_audio(line)
            for i in range(0, len(audio), 640):
                await harness.send(InputAudioRawFrame(audio[i : i + 640], 16000))
            end = await harness.wait_for(EndOfTurnFrame, timeout=20)
            await harness.send(EndFrame())
    assert word_errors(line, end.text).accuracy >= 0.8, end.text
    assert harness.collected.of_type(InterimTranscriptionFrame)


async def test_cartesia_service_speaks_through_the_fake_with_espeak() -> None:
    from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
    from vantum_pipeline.testing.cartesia import FakeCartesia

    async with FakeCartesia(synthesizer=EspeakFakeSynthesizer()) as fake:
        settings = CartesiaSettings(api_key=Secret("test"), base_url=fake.http_url, websocket_base_url=fake.ws_url)
        tts = CartesiaTTSService(settings)
        async with PipelineHarness([tts], end_timeout=10) as harness:
            await harness.send(LLMFullResponseStartFrame())
            await harness.send(TextFrame(SCRIPT.greeting))
            await harness.send(LLMFullResponseEndFrame())
            stopped = await harness.wait_for(TTSStoppedFrame, timeout=10)
    audio = [f for f in harness.collected.of_type(TTSAudioRawFrame) if f.context_id == stopped.context_id]
    seconds = sum(f.duration for f in audio)
    direct = EspeakSynthesizer.load().synthesize(SCRIPT.greeting).duration
    assert seconds == pytest.approx(direct, abs=0.1)
    words = [w for f in harness.collected.of_type(TTSWordTimestampsFrame) for w, _, _ in f.words]
    assert words[:3] == ["Hi", "this", "is"]


async def test_openai_service_converses_through_the_fake_with_the_scripted_agent() -> None:
    from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
    from vantum_pipeline.testing.openai import FakeOpenAI

    responder = ScriptedResponder()
    async with FakeOpenAI(responder=responder) as fake:
        settings = OpenAISettings(api_key=Secret("sk-test"), base_url=fake.base_url, thinking_after=None)
        llm = OpenAILLMService(settings)
        context = LLMContext("You are Alex from Vantum.")
        async with PipelineHarness([llm], end_timeout=10) as harness:
            await harness.send(LLMContextFrame(context))
            await harness.wait_for(LLMFullResponseEndFrame, timeout=10)
            context.add_assistant(SCRIPT.greeting)
            context.add_user("sorry i'm busy right now")
            await harness.send(LLMContextFrame(context))
            await harness.wait_for(LLMFullResponseEndFrame, count=2, timeout=10)
            context.add_assistant(SCRIPT.ask_when)
            context.add_user("tomorrow morning")
            await harness.send(LLMContextFrame(context))
            await harness.wait_finished(10)
    said = "".join(f.text for f in harness.collected.of_type(LLMTextFrame))
    assert said.startswith(SCRIPT.greeting)
    assert SCRIPT.ask_when in said and "call you back tomorrow morning" in said
    assert harness.collected.of_type(EndFrame)[0].reason == "end_call"
    assert [o.outcome for o in llm.outcomes] == ["callback_requested"]
