"""A whole faked call with the real SDKs on loopback (Deepgram, OpenAI,
Cartesia against their fakes; the call placed through Twilio's REST API
against FakeTwilio), every log captured at the most verbose level, the
SDKs' own stdlib DEBUG logs included (websockets prints request headers
there): the keys appear nowhere in the logs or the call record. The call also
goes through the collector and the recorder, and the record's figures are
checked against what the services and their fakes counted."""

import io
import logging

import pytest
from obs_fakes import ScriptedOutput

from vantum_pipeline.frames import BotStoppedSpeakingFrame, InputAudioRawFrame
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.metrics import MetricsRegistry
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.observability.redact import install_log_redaction, uninstall_log_redaction
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.calls import place_call
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.cartesia import FakeCartesia
from vantum_pipeline.testing.deepgram import FakeDeepgram, ScriptedRecognizer
from vantum_pipeline.testing.openai import FakeOpenAI, Fault
from vantum_pipeline.testing.signals import frames, silence, speech
from vantum_pipeline.testing.twilio import FakeTwilio

pytestmark = pytest.mark.timeout(60)

DEEPGRAM_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"
OPENAI_KEY = "sk-proj-WholeCall0123456789abcdefXYZ"
CARTESIA_KEY = "sk_car_WholeCallKey0123456789"
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "fedcba9876543210" * 2
KEYS = (DEEPGRAM_KEY, OPENAI_KEY, CARTESIA_KEY, TWILIO_SID, TWILIO_TOKEN)
SDK_LOGGERS = ("openai", "httpx", "httpcore", "twilio", "aiohttp", "websockets", "deepgram", "cartesia", "asyncio")


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
    recognizer = ScriptedRecognizer(["yes I have a minute", "tell me more", "Tuesday works"])
    async with (
        FakeDeepgram(api_key=DEEPGRAM_KEY, recognizer=recognizer) as deepgram_fake,
        FakeOpenAI(api_key=OPENAI_KEY) as openai_fake,
        FakeCartesia(api_key=CARTESIA_KEY) as cartesia_fake,
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

        # The conversation: a 429 (retried), then a reply; a 401 (the fallback phrase); a reply.
        openai_fake.script("Great to hear. We help teams answer every call.", "Would Tuesday work?")
        openai_fake.fail_next(Fault.rate_limited(retry_after=0.01))
        stt = DeepgramSTTService(
            DeepgramSettings(
                api_key=Secret(DEEPGRAM_KEY),
                url=deepgram_fake.ws_url,
                retry=RetryPolicy(base_delay=0.1),
                close_timeout=2.0,
            )
        )
        llm = OpenAILLMService(
            OpenAISettings(
                api_key=Secret(OPENAI_KEY),
                base_url=openai_fake.base_url,
                retry=RetryPolicy(max_retries=2, base_delay=0.01, total_timeout=10.0),
                thinking_after=None,
                first_token_timeout=5.0,
                read_timeout=5.0,
            )
        )
        tts = CartesiaTTSService(
            CartesiaSettings(
                api_key=Secret(CARTESIA_KEY),
                voice_id="voice-1",
                base_url=cartesia_fake.http_url,
                websocket_base_url=cartesia_fake.ws_url,
                retry_delay=0.05,
                first_audio_timeout=2.0,
                stall_timeout=2.0,
                connect_timeout=2.0,
            )
        )
        context = LLMContext("You are Sarah from Vantum. Be brief.")
        tracker, sink = CostTracker(), MemorySink()
        recorder = CallRecorder(sink=sink, tracker=tracker, call_id=placed.sid)
        processors = [
            stt,
            recorder.user_tap(),
            UserAggregator(context),
            llm,
            SentenceAggregator(),
            tts,
            ScriptedOutput(call_seconds=42.0),
            AssistantAggregator(context),
        ]
        harness = PipelineHarness(processors)
        MetricsCollector(MetricsRegistry(), tracker).attach(harness.task)
        recorder.attach(harness.task)
        async with harness:
            for turn in range(3):
                if turn == 1:
                    openai_fake.fail_next(Fault.unauthorized())
                for chunk in frames(speech(1.0, seed=turn) + silence(1.5)):
                    await harness.send(InputAudioRawFrame(chunk, 16000))
                # One bot turn played each time: a reply, or the fallback phrase after the 401.
                await harness.wait_for(BotStoppedSpeakingFrame, count=turn + 1, timeout=15)
        record = await recorder.finish()
        audio_seconds = sum(c.audio_seconds for c in deepgram_fake.connections)

    text = all_logs.getvalue()
    # The logs really are the verbose ones, with the SDKs' own lines...
    for source in ("openai._base_client:", "twilio.async_http_client:", "websockets."):
        assert source in text
    assert "429" in text and "401" in text and "Authorization" in text
    # ...and hold no key, nor does the record.
    for key in KEYS:
        for piece in (key, key[-12:]):
            assert piece not in text, f"{key[:6]}… leaked into the logs"
            assert piece not in str(record), f"{key[:6]}… leaked into the record"
    # The record's figures agree with what the services and the fakes counted.
    cost, usage = record["cost"]["by_service"], record["cost"]["usage"]
    assert cost["openai"] == pytest.approx(llm.cost, abs=1e-6)
    assert usage["deepgram"]["usage.stt_seconds"] == pytest.approx(audio_seconds, abs=0.05)
    assert usage["cartesia"]["usage.tts_characters"] == tts.characters_sent
    assert cost["cartesia"] == pytest.approx(tts.characters_sent * 0.10 / 1000, abs=1e-6)
    assert record["counts"]["service.error"]["openai"] >= 1
    roles = [t["role"] for t in record["turns"]]
    assert roles.count("user") == 3 and roles.count("assistant") >= 3
