"""A whole phone call for barge-in tests: FakeTwilio's scripted callee ⇄ our
server, and the real Deepgram, OpenAI and Cartesia services on their SDKs
against the fakes, with the interruption settings under test.

The callee's speech has known timings: the fake Deepgram's
``ScriptedRecognizer`` reveals the scripted line's words at
``WORDS_PER_SECOND`` of detected speech in interim results every
``INTERIM_INTERVAL`` seconds of audio. The bot's voice is the fake
Cartesia's ``ToneSynthesizer``, one deterministic tone per word, so the
callee's recording can be searched for each word of a reply.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from tests.twilio_scripted import phone_stack
from vantum_pipeline.audio.mulaw import lin2ulaw
from vantum_pipeline.frames import EndOfTurnFrame, HeardTextFrame, LLMContextFrame, MetricsFrame, TTSStartedFrame
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
from vantum_pipeline.services.interruptions import InterruptionPolicy
from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.settings import InterruptionSettings, Secret
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.testing import FrameRecorder
from vantum_pipeline.testing.callee import Callee
from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
from vantum_pipeline.testing.deepgram import FakeDeepgram, ScriptedLine, ScriptedRecognizer, StreamTiming
from vantum_pipeline.testing.grammar import GrammarChecker
from vantum_pipeline.testing.openai import FakeOpenAI
from vantum_pipeline.testing.openai_wire import Reply
from vantum_pipeline.testing.twilio import FakeTwilio
from vantum_pipeline.transports.twilio.server import TwilioCall, TwilioServer
from vantum_pipeline.transports.twilio.transport import TwilioTransportParams

KEY = Secret("barge-in-test-key")
WORDS_PER_SECOND = 3.0
INTERIM_INTERVAL = 0.1
PITCH = (
    "Great to hear from you, let me tell you about our offer today. "
    "Vantum answers every call your team misses and books the meetings for you."
)
SYNTHESIZER = ToneSynthesizer()


def noise(seconds: float, sample_rate: int = 8000, *, level_dbfs: float = -18.0, seed: int = 3) -> bytes:
    """A burst of white noise (a cough, a knock, a line click)."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(round(seconds * sample_rate)) * 32768 * 10 ** (level_dbfs / 20)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def word_end(index: int) -> float:
    """When the scripted recognizer's interim results say word ``index`` (0-based) ends,
    in seconds from the speech onset."""
    return (index + 0.9) / WORDS_PER_SECOND


def words_in_recording(recording: bytes, text: str, sample_rate: int = 8000) -> Counter[str]:
    """How many times each word of ``text`` is in the callee's recording (mu-law bytes),
    whole: a word cut in the middle does not count."""
    counts: Counter[str] = Counter()
    for word in set(text.split()):
        synthesis = SYNTHESIZER.synthesize(word, sample_rate)
        _, start, end = synthesis.words[0]
        pcm = synthesis.audio[round(start * sample_rate) * 2 : round(end * sample_rate) * 2]
        counts[word] = recording.count(lin2ulaw(pcm))
    return counts


@dataclass
class BargeInCall:
    """One call's parts, for assertions."""

    context: LLMContext
    stt: DeepgramSTTService
    user: UserAggregator
    sink: FrameRecorder
    task: PipelineTask
    recorder: CallRecorder
    checkers: tuple[GrammarChecker, GrammarChecker]

    @property
    def violations(self) -> list[str]:
        """Stream-grammar violations seen after the input and after the output."""
        return [v for checker in self.checkers for v in checker.violations]

    def heard(self, context_id: str) -> str:
        texts = [f.text for f in self.sink.of_type(HeardTextFrame) if f.context_id == context_id]
        return texts[-1] if texts else ""

    @property
    def tts_contexts(self) -> list[str]:
        return [f.context_id for f in self.sink.of_type(TTSStartedFrame) if f.context_id is not None]

    @property
    def turns(self) -> list[EndOfTurnFrame]:
        return self.sink.of_type(EndOfTurnFrame)

    def metric(self, name: str) -> list[MetricsFrame]:
        return [f for f in self.sink.of_type(MetricsFrame) if f.metric == name]


@dataclass
class BargeInStack:
    """The fakes and the factory of the call's pipeline."""

    twilio: FakeTwilio
    server: TwilioServer
    deepgram: FakeDeepgram
    openai: FakeOpenAI
    cartesia: FakeCartesia
    interruptions: InterruptionSettings
    #: Replaces the policy the settings name (thresholds and resume still come from them).
    policy: InterruptionPolicy | None = None
    calls: dict[str, BargeInCall] = field(default_factory=dict)

    async def build(self, call: TwilioCall) -> PipelineTask:
        context = LLMContext("You are Sarah, calling from Vantum.")
        stt = DeepgramSTTService(
            DeepgramSettings(api_key=KEY, url=self.deepgram.ws_url, interruptions=self.interruptions).for_phone(),
            interruption_policy=self.policy,
        )
        user = UserAggregator(context)
        sink = FrameRecorder()
        recorder = CallRecorder(sink=MemorySink(), call_id=call.call_sid)
        checkers = (GrammarChecker(), GrammarChecker())
        pipeline = Pipeline(
            [
                call.transport.input(),
                checkers[0],
                stt,
                recorder.user_tap(),
                user,
                OpenAILLMService(
                    OpenAISettings(api_key=KEY, base_url=self.openai.base_url, retry=RetryPolicy(base_delay=0.1))
                ),
                SentenceAggregator(),
                CartesiaTTSService(
                    CartesiaSettings(
                        api_key=KEY, base_url=self.cartesia.http_url, websocket_base_url=self.cartesia.ws_url
                    ).for_twilio()
                ),
                call.transport.output(),
                checkers[1],
                AssistantAggregator(context),
                sink,
            ]
        )
        task = PipelineTask(pipeline, audio_in_sample_rate=8000, audio_out_sample_rate=8000)
        recorder.attach(task)
        self.calls[call.call_sid] = BargeInCall(context, stt, user, sink, task, recorder, checkers)
        await task.queue_frame(LLMContextFrame(context))  # outbound: the bot speaks first
        return task

    async def call(self, number: str, script: Sequence[object], *, within: float = 40.0) -> tuple[BargeInCall, Callee]:
        """Place a call to a callee following ``script``; return once it is over."""
        import asyncio

        self.twilio.behave(number, script=list(script))  # type: ignore[arg-type]
        placed = await self.server.place_call(number)
        async with asyncio.timeout(within):
            await placed.wait()
            await self.server.wait_idle()
        callee = self.twilio.calls[placed.sid].callee
        assert callee is not None
        return self.calls[placed.sid], callee


@contextlib.asynccontextmanager
async def barge_in_stack(
    lines: Sequence[str | ScriptedLine],
    replies: Sequence[str],
    interruptions: InterruptionSettings | None = None,
) -> AsyncIterator[BargeInStack]:
    """The fakes scripted with the callee's ``lines`` (what Deepgram hears, one
    per utterance; "" for noise) and the model's ``replies``, and our server."""
    recognizer = ScriptedRecognizer(lines, words_per_second=WORDS_PER_SECOND)
    async with (
        FakeDeepgram(recognizer=recognizer, timing=StreamTiming(interim_interval=INTERIM_INTERVAL)) as deepgram,
        FakeOpenAI() as openai_fake,
        FakeCartesia(synthesizer=SYNTHESIZER) as cartesia,
    ):
        openai_fake.script(*(Reply(text) for text in replies))
        holder: list[BargeInStack] = []

        async def factory(call: TwilioCall) -> PipelineTask:
            return await holder[0].build(call)

        params = TwilioTransportParams(passthrough_input=True)
        async with phone_stack(factory, transport_params=params) as (twilio, server):
            stack = BargeInStack(
                twilio, server, deepgram, openai_fake, cartesia, interruptions or InterruptionSettings()
            )
            holder.append(stack)
            yield stack
