"""A whole faked call with the real SDKs on loopback, every log captured at
the most verbose level (the SDKs' own stdlib DEBUG logs included): the keys
appear nowhere in the logs or the call record. The call also goes through
the collector and the recorder, so the record's figures are checked against
what the services themselves say."""

import io
import logging

import pytest
from obs_fakes import ScriptedOutput, ScriptedSTT, ScriptedTTS, speech

from vantum_pipeline.frames import BotStoppedSpeakingFrame
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.metrics import MetricsRegistry
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.observability.redact import install_log_redaction, uninstall_log_redaction
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.calls import place_call
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.openai import FakeOpenAI, Fault
from vantum_pipeline.testing.twilio import FakeTwilio

OPENAI_KEY = "sk-proj-WholeCall0123456789abcdefXYZ"
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "fedcba9876543210" * 2
SDK_LOGGERS = ("openai", "httpx", "httpcore", "twilio", "aiohttp", "websockets", "asyncio")


@pytest.fixture
def all_logs():
    buffer = io.StringIO()
    levels = {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    install_log_redaction(buffer, level="TRACE", replace_default_handler=False)
    yield buffer
    uninstall_log_redaction()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_a_whole_faked_call_logs_no_key(all_logs):
    async with (
        FakeOpenAI(api_key=OPENAI_KEY) as openai_fake,
        FakeTwilio(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN) as twilio_fake,
    ):
        # Placing the call: HTTP Basic auth with the SID and the token.
        twilio = TwilioSettings(
            account_sid=TWILIO_SID,
            auth_token=Secret(TWILIO_TOKEN),
            from_number="+14155550100",
            public_base_url="https://calls.example.com",
            api_base_url=twilio_fake.base_url,
        )
        async with TwilioRestClient(twilio, retry=RetryPolicy(max_retries=0)) as client:
            placed = await place_call(
                client, "+14155550123", twilio.from_number, twiml="<Response><Hangup/></Response>"
            )
        assert placed.sid.startswith("CA")

        # The conversation: a 429 (retried), a 401 (the fallback phrase), then normal turns.
        openai_fake.script("Great to hear. We help teams answer every call.", "Would Tuesday work?", "Perfect!")
        openai_fake.fail_next(Fault.rate_limited(retry_after=0.01))
        settings = OpenAISettings(
            api_key=Secret(OPENAI_KEY),
            base_url=openai_fake.base_url,
            retry=RetryPolicy(max_retries=2, base_delay=0.01, total_timeout=10.0),
            thinking_after=None,
            first_token_timeout=5.0,
            read_timeout=5.0,
        )
        context = LLMContext("You are Sarah from Vantum. Be brief.")
        llm = OpenAILLMService(settings)
        tracker, sink = CostTracker(), MemorySink()
        recorder = CallRecorder(sink=sink, tracker=tracker, call_id=placed.sid)
        processors = [
            ScriptedSTT(["Yes, I have a minute.", "Tell me more.", "Sure.", "Tuesday is fine."]),
            recorder.user_tap(),
            UserAggregator(context),
            llm,
            SentenceAggregator(),
            ScriptedTTS(),
            ScriptedOutput(call_seconds=42.0),
            AssistantAggregator(context),
        ]
        harness = PipelineHarness(processors)
        MetricsCollector(MetricsRegistry(), tracker).attach(harness.task)
        recorder.attach(harness.task)
        async with harness:
            for turn in range(4):
                if turn == 1:
                    openai_fake.fail_next(Fault.unauthorized())
                await harness.send(speech(2.0 if turn == 0 else 1.0))
                # One bot turn played each time: a reply, or the fallback phrase after the 401.
                await harness.wait_for(BotStoppedSpeakingFrame, count=turn + 1, timeout=10)
        record = await recorder.finish()

    text = all_logs.getvalue()
    # The logs really are the verbose ones, with the SDKs' own lines...
    assert "openai._base_client:" in text and "twilio.async_http_client:" in text
    assert "429" in text and "401" in text
    # ...and hold no key, nor the record.
    for secret in (OPENAI_KEY, TWILIO_TOKEN, TWILIO_SID, OPENAI_KEY[-8:], TWILIO_TOKEN[:16]):
        assert secret not in text, f"{secret[:6]}… leaked into the logs"
        assert secret not in str(record)
    # The record's figures agree with the service's own count.
    assert record["cost"]["by_service"]["openai"] == pytest.approx(llm.cost, abs=1e-6)
    assert record["counts"]["service.error"]["openai"] >= 1
    roles = [t["role"] for t in record["turns"]]
    assert roles.count("user") == 4 and roles.count("assistant") >= 3
