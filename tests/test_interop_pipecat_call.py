"""A whole faked phone call through pipecat's own services, hosted in a vantum pipeline.

examples/twilio_outbound.py's call (FakeTwilio's callee answers, then talks
over the pitch; the model ends the call with ``end_call``), with pipecat's
DeepgramSTTService, OpenAILLMService and CartesiaTTSService in place of ours,
pointed at FakeDeepgram, FakeOpenAI and FakeCartesia. The same assertions as
the native whole-call tests: the callee hears no bot audio after the cut, and
the conversation holds exactly what was heard.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pipecat")

from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.openai.llm import OpenAILLMService

from tests.twilio_scripted import load_example
from vantum_pipeline import Pipeline, PipelineTask
from vantum_pipeline.audio.vad import VADParams
from vantum_pipeline.frames import HeardTextFrame, TTSAudioRawFrame, TTSWordTimestampsFrame
from vantum_pipeline.interop.pipecat import PipecatProcessor
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.processors.tools import end_call_tool
from vantum_pipeline.processors.vad import VADProcessor
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.testing.grammar import GrammarChecker

pytestmark = pytest.mark.timeout(90)

CHUNK = 0.02  # the transport's audio chunk
RATE = 16000


class EnergyDetector:
    """The local VAD's detector for the fakes' noise bursts: loud is speech."""

    sample_rate = RATE
    frame_samples = 320

    def speech_probability(self, frame: Any) -> float:
        return 1.0 if float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) > 1000 else 0.0

    def reset(self) -> None:
        pass


class Hosted:
    """The hosted pipecat services of the call, for assertions."""

    def __init__(self) -> None:
        self.adapters: list[PipecatProcessor] = []
        #: Stream-grammar checkers: after the STT, after the LLM, after the TTS, after the output.
        self.checkers: list[GrammarChecker] = []

    @property
    def violations(self) -> list[str]:
        return [v for checker in self.checkers for v in checker.violations]


def pipecat_pipeline(example: Any, hosted: Hosted):
    """examples/twilio_outbound.py's build_pipeline, with pipecat's services."""

    def build(
        call: Any, services: Any, transcript: Any, features: Any = None, dnc: Any = None
    ) -> tuple[PipelineTask, LLMContext]:
        # No answering-machine detection, keypad or transfers here (the example's
        # ``features`` and ``dnc`` are None for these calls): the four services only.
        context = LLMContext(example.SYSTEM_PROMPT)
        stt = PipecatProcessor(
            DeepgramSTTService(
                api_key=services.deepgram.api_key.reveal(),
                base_url=services.deepgram.url,
                sample_rate=RATE,
            )
        )
        llm = PipecatProcessor(
            OpenAILLMService(
                api_key=services.openai.api_key.reveal(),
                base_url=services.openai.base_url,
                settings=OpenAILLMService.Settings(model="gpt-4o"),
            ),
            tools=[end_call_tool()],
        )
        tts = PipecatProcessor(
            CartesiaTTSService(
                api_key=services.cartesia.api_key.reveal(),
                url=services.cartesia.websocket_base_url + "/tts/websocket",
                settings=CartesiaTTSService.Settings(voice=services.cartesia.voice_id),
                sample_rate=RATE,
            )
        )
        hosted.adapters += [stt, llm, tts]
        checkers = [GrammarChecker() for _ in range(4)]
        hosted.checkers += checkers
        transport = call.transport
        task = PipelineTask(
            Pipeline(
                [
                    transport.input(),
                    VADProcessor(VADParams(start_secs=0.06, stop_secs=0.3), detector_factory=EnergyDetector),
                    stt,
                    checkers[0],
                    UserAggregator(context),
                    llm,
                    checkers[1],
                    SentenceAggregator(),
                    tts,
                    checkers[2],
                    transport.output(),
                    checkers[3],
                    AssistantAggregator(context),
                ]
            ),
            audio_in_sample_rate=RATE,
            audio_out_sample_rate=RATE,
            idle_timeout=60.0,
        )
        task.add_observer(transcript.observe)
        return task, context

    return build


async def test_a_whole_call_through_pipecat_services_with_barge_in(monkeypatch):
    example = load_example()
    hosted = Hosted()
    monkeypatch.setattr(example, "build_pipeline", pipecat_pipeline(example, hosted))
    seen: list = []

    def observe(frame, direction):
        if direction is FrameDirection.DOWNSTREAM and isinstance(
            frame, TTSWordTimestampsFrame | HeardTextFrame | TTSAudioRawFrame
        ):
            seen.append(frame)

    async with example.fakes() as (twilio, services, stand_ins):
        record, contexts = await example.run_call(
            twilio, services, "+14155550123", host="127.0.0.1", port=0, observer=observe
        )
        callee = next(iter(stand_ins["twilio"].calls.values())).callee
        deepgram, openai, cartesia = stand_ins["deepgram"], stand_ins["openai"], stand_ins["cartesia"]
        for connection in deepgram.connections:
            await connection.wait_closed(2.0)
        requests = list(openai.requests)
    assert record.outcome is CallOutcome.COMPLETED
    [context] = contexts

    # The callee answered, barged into the pitch, and the model ended the call.
    user = [m.content for m in context.messages if m.role == "user"]
    assert user == ["Yes, who is this?", "Sorry, I'm really busy right now."]
    assert [c.name for m in context.messages for c in m.tool_calls] == ["end_call"]
    assert len(callee.clears) == 1

    # No bot audio after the cut.
    [clear_at] = callee.clears
    assert callee.heard_seconds(clear_at + CHUNK, callee.spoke[1][1]) == 0.0

    # The interrupted reply holds exactly what the callee heard of the pitch.
    [cut] = [m for m in context.messages if m.interrupted]
    pitch_id = next(f.context_id for f in seen if isinstance(f, HeardTextFrame) and f.text == cut.content)
    words = [w for f in seen if isinstance(f, TTSWordTimestampsFrame) and f.context_id == pitch_id for w in f.words]
    played = callee.heard_seconds(callee.spoke[0][1], clear_at + CHUNK)
    assert 0.5 < played < words[-1][2]

    def heard_by(seconds: float) -> str:
        return " ".join(w for w, _start, end in words if end <= seconds)

    assert cut.content and cut.content in {heard_by(played - 0.06), heard_by(played + 0.06)}
    # Pipecat's word timings became ours: the pitch's words, in order, each ending where the next starts.
    pitch = "Great! Vantum answers every call your team misses, day and night, and books the meetings for you."
    assert [w for w, _s, _e in words] == pitch.split()[: len(words)]
    assert all(end == next_start for (_w, _s, end), (_n, next_start, _e) in pairwise(words))
    assert all(start < end for _w, start, end in words)
    # ... and the model never saw our `interrupted` flag.
    assert all("interrupted" not in m for r in requests for m in r.body["messages"])

    # The stream grammar holds after each hosted service and after the transport.
    assert hosted.violations == []

    # Every hosted service's sockets and tasks are gone.
    assert deepgram.connections and cartesia.open_connections == 0
    assert all(adapter.pipecat_tasks == [] for adapter in hosted.adapters)


async def test_a_hang_up_mid_sentence_closes_every_pipecat_service_and_task(monkeypatch):
    from vantum_pipeline.testing.callee import BargeIn, HangUp, Listen, Say
    from vantum_pipeline.testing.signals import speech
    from vantum_pipeline.testing.twilio import CalleeBehaviour

    example = load_example()
    hosted = Hosted()
    monkeypatch.setattr(example, "build_pipeline", pipecat_pipeline(example, hosted))
    async with example.fakes() as (twilio, services, stand_ins):
        stand_ins["twilio"].default = CalleeBehaviour(
            script=[Listen(quiet=0.4), Say(speech(0.6), sample_rate=16000), BargeIn(b"", after=0.5), HangUp()]
        )
        record, _contexts = await example.run_call(twilio, services, "+14155550123", host="127.0.0.1", port=0)
        deepgram, cartesia = stand_ins["deepgram"], stand_ins["cartesia"]
        for connection in deepgram.connections:
            await connection.wait_closed(2.0)
        assert deepgram.connections and cartesia.open_connections == 0
        callee = next(iter(stand_ins["twilio"].calls.values())).callee
    assert callee.end_reason == "callee hung up" and callee.clears == []
    assert record.outcome is CallOutcome.COMPLETED
    assert len(hosted.adapters) == 3
    assert all(adapter.pipecat_tasks == [] for adapter in hosted.adapters)
