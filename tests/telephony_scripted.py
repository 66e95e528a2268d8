"""A sales bot with the telephony features, for whole calls against the fakes.

transport in → keypad → energy STT → user aggregator → OpenAI (FakeOpenAI)
→ sentence aggregator → call actions → AMD gate → tone TTS → transport out
→ assistant aggregator → recorder. The model is the real OpenAI service
against FakeOpenAI, so the tools go over the real wire protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from tests.twilio_scripted import RATE, EnergySTT, ToneTTS
from vantum_pipeline.frames import TTSSpeakFrame
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import SALES_PROMPT, LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.telephony.actions import CallActions
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.dnc import InMemoryDncList
from vantum_pipeline.telephony.keypad import KeypadProcessor, keypad_bindings
from vantum_pipeline.telephony.settings import CallFeatureSettings, TwilioSettings
from vantum_pipeline.telephony.voicemail import MachineDetectionGate
from vantum_pipeline.testing import FrameRecorder
from vantum_pipeline.testing.openai import FakeOpenAI
from vantum_pipeline.testing.twilio import FakeTwilio
from vantum_pipeline.transports.twilio.server import TwilioCall, TwilioServer

GREETING = "Hi this is Sarah from Vantum"
FROM_NUMBER = "+15005550006"
PROSPECT = {
    "agent_name": "Sarah",
    "company_name": "Vantum",
    "product_name": "Vantum Voice",
    "prospect_name": "Dana",
    "prospect_company": "Acme",
    "name": "Dana",
}


@dataclass
class BotCall:
    """The processors of one media stream's pipeline, for assertions."""

    stt: EnergySTT
    llm: OpenAILLMService
    actions: CallActions
    gate: MachineDetectionGate
    keypad: KeypadProcessor
    tts: ToneTTS
    sink: FrameRecorder
    task: PipelineTask
    context: LLMContext


@dataclass
class SalesBot:
    """A pipeline factory; ``calls[sid]`` lists the pipelines of each call's streams."""

    features: CallFeatureSettings
    openai: FakeOpenAI
    dnc: InMemoryDncList
    transcripts: list[str] = field(default_factory=list)
    greeting: str = GREETING
    variables: Mapping[str, object] = field(default_factory=lambda: dict(PROSPECT))
    calls: dict[str, list[BotCall]] = field(default_factory=dict)

    async def __call__(self, call: TwilioCall) -> PipelineTask:
        control = call.call
        context = LLMContext(SALES_PROMPT.render(self.variables))
        actions = CallActions(control, self.features, dnc=self.dnc, from_number=FROM_NUMBER)
        settings = OpenAISettings(
            api_key=Secret("sk-fake-key"),
            base_url=self.openai.base_url,
            retry=RetryPolicy(max_retries=0),
            thinking_after=None,
        )
        llm = OpenAILLMService(settings, tools=actions.tools())
        gate = MachineDetectionGate(control, self.features.amd, variables=self.variables)
        keypad = KeypadProcessor(
            keypad_bindings(self.features.keypad_bindings(), actions),
            inter_digit_timeout=self.features.keypad.inter_digit_timeout,
        )
        stt = EnergySTT(self.transcripts)
        tts = ToneTTS()
        sink = FrameRecorder()
        processors = [
            call.transport.input(),
            keypad,
            stt,
            gate.turn_guard(),
            UserAggregator(context),
            llm,
            SentenceAggregator(),
            actions,
            gate,
            tts,
            call.transport.output(),
            AssistantAggregator(context),
            sink,
        ]
        task = PipelineTask(Pipeline(processors), audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
        self.calls.setdefault(call.call_sid, []).append(
            BotCall(stt, llm, actions, gate, keypad, tts, sink, task, context)
        )
        if control.resumed_after is None:
            await task.queue_frame(TTSSpeakFrame(self.greeting, category="greeting"))
        return task


@contextlib.asynccontextmanager
async def sales_stack(
    features: CallFeatureSettings, transcripts: list[str] | None = None, *, outcome_timeout: float = 5.0
) -> AsyncIterator[tuple[FakeTwilio, FakeOpenAI, TwilioServer, SalesBot]]:
    """FakeTwilio and FakeOpenAI, our server with the features, and the bot."""
    async with FakeTwilio() as fake, FakeOpenAI(api_key="sk-fake-key") as openai:
        dnc = InMemoryDncList()
        bot = SalesBot(features, openai, dnc, list(transcripts or []))
        settings = TwilioSettings(
            account_sid=fake.account_sid,
            auth_token=Secret(fake.auth_token),
            from_number=FROM_NUMBER,
            public_base_url="http://127.0.0.1:1",
            api_base_url=fake.base_url,
        )
        retry = RetryPolicy(max_retries=1, base_delay=0.01, attempt_timeout=5.0)
        async with TwilioRestClient(settings, retry=retry) as client:
            server = TwilioServer(
                settings, bot, port=0, client=client, outcome_timeout=outcome_timeout, features=features, dnc=dnc
            )
            async with server:
                server.public_base_url = server.local_url
                yield fake, openai, server, bot
