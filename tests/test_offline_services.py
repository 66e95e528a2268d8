"""The offline processors: pocketsphinx STT, espeak TTS and the scripted LLM, alone and in a pipeline."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.fresh_speech import FreshSpeech
from vantum_pipeline.audio.mulaw import lin2ulaw
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.frames import (
    MULAW,
    BotStartedSpeakingFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.offline.agent import SalesScript
from vantum_pipeline.services.offline.espeak import CALLEE_VOICE, espeak_available
from vantum_pipeline.services.offline.llm import ScriptedLLMService, tokens_of
from vantum_pipeline.services.offline.stt import PocketsphinxSTTService
from vantum_pipeline.services.offline.tts import EspeakSettings, EspeakTTSService
from vantum_pipeline.testing.pipeline import PipelineHarness

pytest.importorskip("pocketsphinx")
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (offline extra)"),
]

SCRIPT = SalesScript()
FRAME_BYTES = 640  # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def callee_speech() -> dict[str, bytes]:
    """16 kHz pcm16 of callee lines, with half a second of quiet line noise on each side."""
    synthesizer = FreshSpeech()  # each line made in a fresh process: the same samples on every run
    rng = np.random.default_rng(5)
    lines = {}
    for line in ("What is the price?", "Yes, let's book a meeting.", "Thursday at ten works for me."):
        spoken = synthesizer.synthesize(line, CALLEE_VOICE)
        resampler = StreamResampler(spoken.sample_rate, 16000)
        speech = np.frombuffer(resampler.resample(spoken.audio) + resampler.flush(), np.int16)
        quiet = np.zeros(8000, np.int16)
        audio = np.concatenate([quiet, speech, quiet]).astype(np.float64) + rng.normal(0, 20, len(speech) + 16000)
        lines[line] = np.clip(audio, -32768, 32767).astype(np.int16).tobytes()
    return lines


def audio_frames(pcm: bytes, rate: int = 16000, *, mulaw: bool = False) -> list[InputAudioRawFrame]:
    size = 2 * rate // 50
    frames = []
    for i in range(0, len(pcm), size):
        chunk = pcm[i : i + size]
        if mulaw:
            frames.append(InputAudioRawFrame(lin2ulaw(chunk), rate, encoding=MULAW))
        else:
            frames.append(InputAudioRawFrame(chunk, rate))
    return frames


def of_context(frames: list[Frame], context_id: str | None) -> list[Frame]:
    return [f for f in frames if getattr(f, "context_id", None) == context_id]


# ------------------------------------------------------------------- STT


async def test_stt_emits_deepgram_like_frames(callee_speech: dict[str, bytes]) -> None:
    stt = PocketsphinxSTTService()
    async with PipelineHarness([stt], end_timeout=10) as harness:
        for frame in audio_frames(callee_speech["What is the price?"]):
            await harness.send(frame)
        end = await harness.wait_for(EndOfTurnFrame, timeout=20)
    assert end.text == "what is the price"
    assert not end.low_confidence and end.confidence is not None and end.confidence >= 0.5
    kinds = [type(f) for f in harness.downstream if not isinstance(f, MetricsFrame)]
    assert kinds.index(UserStartedSpeakingFrame) < kinds.index(InterimTranscriptionFrame)
    assert kinds.index(InterimTranscriptionFrame) < kinds.index(TranscriptionFrame)
    assert kinds.index(TranscriptionFrame) < kinds.index(UserStoppedSpeakingFrame) < kinds.index(EndOfTurnFrame)
    final = harness.collected.of_type(TranscriptionFrame)[0]
    assert 0.3 <= final.timestamp <= 0.6  # speech starts 0.5 s into the audio
    assert [w for w, _, _ in final.words] == ["what", "is", "the", "price"]
    metrics = {f.metric: f for f in harness.collected.of_type(MetricsFrame)}
    assert metrics["latency.stt_final"].labels == {"service": "pocketsphinx"}
    assert metrics["usage.stt_seconds"].value == pytest.approx(
        len(callee_speech["What is the price?"]) / 32000, abs=0.05
    )


async def test_stt_takes_phone_audio_and_interrupts_the_bot(callee_speech: dict[str, bytes]) -> None:
    stt = PocketsphinxSTTService()
    pcm = callee_speech["Yes, let's book a meeting."]
    resampler = StreamResampler(16000, 8000)
    phone = resampler.resample(pcm) + resampler.flush()
    async with PipelineHarness([stt], end_timeout=10) as harness:
        await harness.send(BotStartedSpeakingFrame())
        for frame in audio_frames(phone, 8000, mulaw=True):
            await harness.send(frame)
        end = await harness.wait_for(EndOfTurnFrame, timeout=20)
    assert "book" in end.text.split() and "meeting" in end.text.split()
    assert harness.task.state.interruptions == 1


async def test_stt_leaves_speaking_frames_to_a_local_vad_and_finalizes_on_its_stop(
    callee_speech: dict[str, bytes],
) -> None:
    stt = PocketsphinxSTTService()
    pcm = callee_speech["Thursday at ten works for me."]
    speech_end = len(pcm) - 16000  # before the trailing half second of quiet: no endpoint can fire
    async with PipelineHarness([stt], end_timeout=10) as harness:
        await harness.send(UserStartedSpeakingFrame(source="vad"))
        for frame in audio_frames(pcm[:speech_end]):
            await harness.send(frame)
        await harness.send(UserStoppedSpeakingFrame(source="vad"))
        # Finalized on the VAD's word: the audio ends mid-speech, so no endpoint fires.
        end = await harness.wait_for(EndOfTurnFrame, timeout=20)
        assert "thursday" in end.text
    speaking = [f for f in harness.downstream if isinstance(f, UserStartedSpeakingFrame | UserStoppedSpeakingFrame)]
    assert all(f.source == "vad" for f in speaking)


async def test_stt_flushes_the_utterance_in_progress_at_the_end(callee_speech: dict[str, bytes]) -> None:
    stt = PocketsphinxSTTService()
    pcm = callee_speech["What is the price?"]
    async with PipelineHarness([stt], end_timeout=10) as harness:
        for frame in audio_frames(pcm[: len(pcm) - 16000]):  # no pause after the speech
            await harness.send(frame)
        await harness.send(EndFrame())
        await harness.wait_finished(15)
    types = harness.collected.types()
    assert "EndOfTurnFrame" in types and types.index("EndOfTurnFrame") < types.index("EndFrame")
    assert harness.collected.of_type(EndOfTurnFrame)[0].text == "what is the price"


# ------------------------------------------------------------------- TTS


async def test_tts_speaks_a_response_as_one_context() -> None:
    tts = EspeakTTSService()
    sentences = ["Hi, this is Alex from Vantum.", "Do you have a minute?"]
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await harness.send(LLMFullResponseStartFrame())
        for sentence in sentences:
            await harness.send(TextFrame(sentence))
        await harness.send(LLMFullResponseEndFrame())
        stopped = await harness.wait_for(TTSStoppedFrame, timeout=10)
    frames = of_context(harness.downstream, stopped.context_id)
    assert isinstance(frames[0], TTSStartedFrame) and frames[-1] is stopped
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 16000 and f.num_channels == 1 for f in audio)
    duration = sum(f.duration for f in audio)
    words = [w for f in frames if isinstance(f, TTSWordTimestampsFrame) for w in f.words]
    assert [w for w, _, _ in words] == "Hi this is Alex from Vantum Do you have a minute".split()
    starts = [s for _, s, _ in words]
    assert starts == sorted(starts) and words[-1][2] <= duration + 0.01
    # The second sentence's words are timed from the start of the context, after the first's audio.
    assert words[6][1] > words[5][2]
    assert [f.text for f in harness.collected.of_type(TextFrame)] == sentences
    assert {f.metric for f in harness.collected.of_type(MetricsFrame)} >= {
        "latency.tts_ttfb",
        "usage.tts_characters",
        "service.request",
    }


async def test_tts_speak_frames_are_contexts_of_their_own_at_the_requested_rate() -> None:
    tts = EspeakTTSService(EspeakSettings(sample_rate=8000))
    async with PipelineHarness([tts], end_timeout=10) as harness:
        await harness.send(TTSSpeakFrame("Sorry, could you say that again?", category="repeat"))
        await harness.send(TextFrame("Outside of a response."))
        await harness.wait_for(TTSStoppedFrame, count=2, timeout=10)
    started = harness.collected.of_type(TTSStartedFrame)
    assert len(started) == 2 and started[0].context_id != started[1].context_id
    assert all(f.sample_rate == 8000 for f in harness.collected.of_type(TTSAudioRawFrame))
    assert [f.text for f in harness.collected.of_type(TextFrame)] == [
        "Sorry, could you say that again?",
        "Outside of a response.",
    ]
    # Strictly one context after the other.
    order = [getattr(f, "context_id", None) for f in harness.downstream if isinstance(f, TTSAudioRawFrame)]
    assert order == sorted(order, key=[s.context_id for s in started].index)


class SlowPlayer(FrameProcessor):
    """Takes audio at four times real time, a few frames of buffer: the backpressure of a transport."""

    def __init__(self) -> None:
        super().__init__(max_queue=4)
        self.interrupted = asyncio.Event()
        self.frames_before_interruption = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TTSAudioRawFrame):
            await asyncio.sleep(frame.duration / 4)
        elif isinstance(frame, InterruptionFrame):
            self.interrupted.set()
        await self.push_frame(frame, direction)


async def test_tts_interruption_stops_the_context() -> None:
    tts = EspeakTTSService(EspeakSettings(frame_seconds=0.02))
    long_text = " ".join(["This sentence is long enough to be interrupted while it is still being spoken."] * 4)
    player = SlowPlayer()
    async with PipelineHarness([tts, player], end_timeout=10) as harness:
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(TextFrame(long_text))
        first = await harness.wait_for(TTSAudioRawFrame, timeout=10)
        await harness.send(InterruptionFrame())
        await asyncio.wait_for(player.interrupted.wait(), 5)
        interrupted_at = len(harness.downstream)
        await asyncio.sleep(0.5)
        after = len(harness.downstream)
        await harness.send(TextFrame("A new turn."))
        await harness.wait_for(TTSStoppedFrame, timeout=10)
    cut = of_context(harness.downstream, first.context_id)
    assert not any(isinstance(f, TTSStoppedFrame) for f in cut)
    assert not of_context(harness.downstream[interrupted_at:], first.context_id)
    spoken = sum(f.duration for f in cut if isinstance(f, TTSAudioRawFrame))
    assert spoken < 5.0  # far from the whole text (about 20 s)
    new = [f for f in harness.downstream[after:] if isinstance(f, TTSStartedFrame)]
    assert len(new) == 1 and new[0].context_id != first.context_id


# ------------------------------------------------------------------- LLM


def _context(*turns: tuple[str, str]) -> LLMContext:
    context = LLMContext("You are Alex, a friendly sales representative.")
    for role, text in turns:
        context.add_user(text) if role == "user" else context.add_assistant(text)
    return context


async def test_llm_streams_the_greeting_between_response_frames() -> None:
    llm = ScriptedLLMService()
    async with PipelineHarness([llm], end_timeout=5) as harness:
        await harness.send(LLMContextFrame(_context()))
        await harness.wait_for(LLMFullResponseEndFrame, timeout=5)
    body = [f for f in harness.downstream if isinstance(f, LLMFullResponseStartFrame | LLMTextFrame)]
    assert isinstance(body[0], LLMFullResponseStartFrame)
    tokens = [f.text for f in body[1:]]
    assert tokens == tokens_of(SCRIPT.greeting) and "".join(tokens) == SCRIPT.greeting
    assert {f.metric for f in harness.collected.of_type(MetricsFrame)} >= {"latency.llm_ttft", "service.request"}


async def test_llm_interruption_stops_the_stream() -> None:
    llm = ScriptedLLMService(tokens_per_second=20)
    async with PipelineHarness([llm], end_timeout=5) as harness:
        await harness.send(LLMContextFrame(_context(("assistant", SCRIPT.greeting), ("user", "Yes."))))
        await harness.wait_for(LLMTextFrame, count=3, timeout=5)
        await harness.send(InterruptionFrame())
        await asyncio.sleep(0.4)
        tokens = len(harness.collected.of_type(LLMTextFrame))
        await harness.send(LLMContextFrame(_context(("assistant", "Great."), ("user", "What is the price?"))))
        await harness.wait_for(LLMFullResponseEndFrame, timeout=5)
    assert tokens < len(tokens_of(SCRIPT.pitch))
    # The interrupted reply never ends; the next one is complete.
    assert len(harness.collected.of_type(LLMFullResponseEndFrame)) == 1
    starts = [i for i, f in enumerate(harness.downstream) if isinstance(f, LLMFullResponseStartFrame)]
    second = "".join(f.text for f in harness.downstream[starts[1] :] if isinstance(f, LLMTextFrame))
    assert second == SCRIPT.price


async def test_llm_ends_the_call_with_an_outcome() -> None:
    outcomes = []
    llm = ScriptedLLMService(on_outcome=outcomes.append)
    context = _context(("assistant", SCRIPT.greeting), ("user", "I'm not interested."))
    async with PipelineHarness([llm], end_timeout=5) as harness:
        await harness.send(LLMContextFrame(context))
        await harness.wait_finished(5)
    types = harness.collected.types()
    assert types.index("LLMFullResponseEndFrame") < types.index("EndFrame")
    end = harness.collected.of_type(EndFrame)[0]
    assert end.reason == "end_call"
    assert [o.outcome for o in outcomes] == ["not_interested"] == [o.outcome for o in llm.outcomes]


# -------------------------------------------------------------- together


async def test_a_callee_turn_gets_a_spoken_reply_through_the_offline_pipeline(
    callee_speech: dict[str, bytes],
) -> None:
    context = _context(("assistant", SCRIPT.greeting))
    stt = PocketsphinxSTTService()
    pipeline = [
        stt,
        UserAggregator(context),
        ScriptedLLMService(),
        SentenceAggregator(),
        EspeakTTSService(),
        AssistantAggregator(context),
    ]
    async with PipelineHarness(pipeline, end_timeout=10) as harness:
        for frame in audio_frames(callee_speech["What is the price?"]):
            await harness.send(frame)
        stopped = await harness.wait_for(TTSStoppedFrame, timeout=20)
    spoken = " ".join(f.text for f in harness.collected.of_type(TextFrame) if type(f) is TextFrame)
    assert spoken == SCRIPT.price
    assert any(isinstance(f, TTSAudioRawFrame) for f in of_context(harness.downstream, stopped.context_id))
    assert [m.role for m in context.messages] == ["system", "assistant", "user", "assistant"]
    assert context.messages[2].content == "what is the price"
