"""Keys never reach the logs: every secret form, the loguru patcher and sink,
and a whole faked call whose processors log their keys in every way."""

import base64
import io
import json

import pytest
from loguru import logger
from obs_fakes import Reply, ScriptedLLM, ScriptedOutput, ScriptedSTT, ScriptedTTS, SentenceSplitter, speech

from vantum_pipeline import FrameDirection, FrameProcessor
from vantum_pipeline.errors import ServiceError
from vantum_pipeline.frames import Frame, HeardTextFrame, StartFrame, TextFrame
from vantum_pipeline.observability.redact import (
    MASK,
    install_log_redaction,
    redact,
    redact_patcher,
    register_secret,
    registered_secret_count,
    uninstall_log_redaction,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness

# Shaped like the real keys (made up).
DEEPGRAM_KEY = "4f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c"
OPENAI_KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345Pqr678"
CARTESIA_KEY = "sk_car_9ZyXwVuTsRqPoNmLkJiHgF"
TWILIO_SID = "AC0f1e2d3c4b5a69788796a5b4c3d2e1f0"
TWILIO_TOKEN = "9a8b7c6d5e4f30211203f4e5d6c7b8a9"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ0ZW1wLWtleSJ9.c2lnbmF0dXJlLXZhbHVl"
PLAIN = "correct-horse-battery-staple-42"  # no key shape at all: only the registry knows it
BASIC = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()

ALL_SECRETS = [DEEPGRAM_KEY, OPENAI_KEY, CARTESIA_KEY, TWILIO_SID, TWILIO_TOKEN, JWT, PLAIN, BASIC]


@pytest.fixture
def captured():
    """Everything the process logs at DEBUG and above, through the app's redaction."""
    buffer = io.StringIO()
    install_log_redaction(buffer, level="DEBUG", replace_default_handler=False)
    yield buffer
    uninstall_log_redaction()


# ------------------------------------------------------------ forms, by pattern

UNREGISTERED = {
    "deepgram": "0123456789abcdef0123456789abcdef01234567",
    "openai": "sk-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0",
    "openai_project": "sk-proj-Qq1Ww2Ee3Rr4Tt5Yy6Uu7Ii8Oo9Pp0",
    "cartesia": "sk_car_AaBbCcDdEeFfGgHh12",
    "twilio_sid": "AC00112233445566778899aabbccddeeff",
    "twilio_token": "ffeeddccbbaa99887766554433221100",
    "jwt": "eyJ0eXAiOiJKV1QifQ.eyJpc3MiOiJkZWVwZ3JhbSJ9.QUJDREVGR0hJSktMTU5PUA",
    "opaque": "Op4queT0kenValue",
}


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer Op4queT0kenValue", UNREGISTERED["opaque"]),
        ("authorization: token Op4queT0kenValue", UNREGISTERED["opaque"]),
        ("Authorization: Basic Op4queT0kenValue==", "Op4queT0kenValue=="),
        ("{'Authorization': 'Token Op4queT0kenValue', 'User-Agent': 'x'}", UNREGISTERED["opaque"]),
        ('{"authorization": "Bearer Op4queT0kenValue"}', UNREGISTERED["opaque"]),
        ("Proxy-Authorization: Op4queT0kenValue", UNREGISTERED["opaque"]),
        ("sent Bearer Op4queT0kenValue to the server", UNREGISTERED["opaque"]),
        ("wss://api.cartesia.ai/tts/websocket?api_key=Op4queT0kenValue&cartesia_version=2024", UNREGISTERED["opaque"]),
        ("GET /media?token=Op4queT0kenValue HTTP/1.1", UNREGISTERED["opaque"]),
        ("https://example.com/cb?access_token=Op4queT0kenValue#frag", UNREGISTERED["opaque"]),
        ("client(api_key='Op4queT0kenValue')", UNREGISTERED["opaque"]),
        ('{"apiKey": "Op4queT0kenValue"}', UNREGISTERED["opaque"]),
        ("password=Op4queT0kenValue", UNREGISTERED["opaque"]),
        ('"call_token": "Op4queT0kenValue"', UNREGISTERED["opaque"]),
        ("X-API-Key: Op4queT0kenValue", UNREGISTERED["opaque"]),
        ("https://user:Op4queT0kenValue@api.twilio.com/2010-04-01", UNREGISTERED["opaque"]),
        ("deepgram key 0123456789abcdef0123456789abcdef01234567 rejected", UNREGISTERED["deepgram"]),
        ("openai key sk-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0 rejected", UNREGISTERED["openai"]),
        ("openai key sk-proj-Qq1Ww2Ee3Rr4Tt5Yy6Uu7Ii8Oo9Pp0", UNREGISTERED["openai_project"]),
        ("cartesia key sk_car_AaBbCcDdEeFfGgHh12", UNREGISTERED["cartesia"]),
        ("/Accounts/AC00112233445566778899aabbccddeeff/Calls.json", UNREGISTERED["twilio_sid"]),
        ("auth token ffeeddccbbaa99887766554433221100", UNREGISTERED["twilio_token"]),
        ("temporary token eyJ0eXAiOiJKV1QifQ.eyJpc3MiOiJkZWVwZ3JhbSJ9.QUJDREVGR0hJSktMTU5PUA", UNREGISTERED["jwt"]),
    ],
)
def test_every_key_shape_is_masked_without_being_registered(text, secret):
    assert secret in text
    clean = redact(text)
    assert secret not in clean
    assert MASK in clean


@pytest.mark.parametrize(
    "text",
    [
        "call CA0123456789abcdef0123456789abcdef answered",  # Twilio call SIDs stay readable
        "request 3f2504e0-4f89-11d3-9a0c-0305e82c3301 done",  # dashed UUIDs too
        "max_tokens=150 prompt_tokens: 412 completion_tokens=37",
        "the token bucket refills at 2.5 tokens per second",
        "Deepgram nova-2 at 16000 Hz, endpointing 300 ms",
        "Authorization header missing",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_the_name_of_a_key_value_pair_is_kept():
    assert redact("GET /listen?model=nova-2&api_key=Op4queT0kenValue&encoding=mulaw") == (
        f"GET /listen?model=nova-2&api_key={MASK}&encoding=mulaw"
    )
    assert redact("Authorization: Token Op4queT0kenValue") == f"Authorization: Token {MASK}"
    assert redact(f"sid={TWILIO_SID}").startswith("sid=AC")


# ------------------------------------------------------------- the registry


def test_secrets_register_when_created_and_are_masked_anywhere():
    before = registered_secret_count()
    secret = Secret(PLAIN)
    assert registered_secret_count() >= before + 1
    assert redact(f"connecting with {PLAIN}!") == f"connecting with {MASK}!"
    assert redact(f"x{secret.reveal()}y") == f"x{MASK}y"  # even glued to other text
    assert PLAIN not in repr(secret) and PLAIN not in str(secret) and PLAIN not in f"{secret}"


def test_the_url_encoded_form_is_registered_too():
    register_secret("pa ss/word+with&chars")
    assert redact("token%3D pa%20ss%2Fword%2Bwith%26chars end") == f"token%3D {MASK} end"


def test_short_values_are_not_registered():
    register_secret("abc")
    assert redact("abc abcdef") == "abc abcdef"


def test_the_longer_of_two_overlapping_secrets_is_masked_whole():
    register_secret("prefix-secret-1234")
    register_secret("prefix-secret-1234-and-more")
    assert redact("v=prefix-secret-1234-and-more;") == f"v={MASK};"


# ------------------------------------------------------- loguru integration


def test_the_patcher_redacts_message_extras_and_exception_chain():
    lines: list[str] = []
    handler = logger.add(lines.append, format="{message} | {extra} | {exception}", diagnose=False, backtrace=False)
    try:
        patched = logger.patch(redact_patcher)
        try:
            try:
                raise ValueError(f"bad key {OPENAI_KEY}")
            except ValueError as inner:
                raise ServiceError(f"401 for {DEEPGRAM_KEY}", service="deepgram", retryable=False) from inner
        except ServiceError:
            patched.bind(headers={"Authorization": f"Token {DEEPGRAM_KEY}"}).exception(
                "connect failed with {}", f"api_key={CARTESIA_KEY}"
            )
    finally:
        logger.remove(handler)
    text = "".join(lines)
    for secret in (OPENAI_KEY, DEEPGRAM_KEY, CARTESIA_KEY):
        assert secret not in text
    # The exception keeps its class name and its chain.
    assert "ServiceError: [deepgram] 401 for ***" in text
    assert "ValueError: bad key sk-***" in text
    assert "direct cause" in text


def test_install_log_redaction_covers_tracebacks_with_variables_and_is_idempotent(captured):
    def connect(api_key: str) -> None:
        url = f"wss://api.deepgram.com/v1/listen?token={api_key}"  # noqa: F841 (shown by diagnose)
        raise ConnectionError("refused")

    try:
        connect(DEEPGRAM_KEY)
    except ConnectionError:
        logger.opt(exception=True).error("deepgram connect failed")
    # A second install replaces the first handler instead of adding one.
    install_log_redaction(captured, level="DEBUG", replace_default_handler=False)
    logger.info("once {}", OPENAI_KEY)
    text = captured.getvalue()
    assert DEEPGRAM_KEY not in text and OPENAI_KEY not in text
    assert "deepgram connect failed" in text and "ConnectionError: refused" in text
    assert text.count("once sk-***") == 1


def test_a_plain_sink_added_by_the_app_gets_redacted_messages(captured):
    lines: list[str] = []
    handler = logger.add(lines.append, format="{message}", diagnose=False)
    try:
        logger.warning("twilio auth {}:{}", TWILIO_SID, TWILIO_TOKEN)
    finally:
        logger.remove(handler)
    assert lines == ["twilio auth AC***:***\n"]


# ------------------------------------------------------- a whole faked call


class CarelessService(FrameProcessor):
    """Logs its credentials in every careless way a service could, then fails."""

    def __init__(self) -> None:
        super().__init__(name="careless")
        self.deepgram = Secret(DEEPGRAM_KEY)
        self.openai = Secret(OPENAI_KEY)
        self.cartesia = Secret(CARTESIA_KEY)
        self.sid = Secret(TWILIO_SID)
        self.token = Secret(TWILIO_TOKEN)
        self.jwt = Secret(JWT)
        self.plain = Secret(PLAIN)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            dg, oa, ca = self.deepgram.reveal(), self.openai.reveal(), self.cartesia.reveal()
            sid, token = self.sid.reveal(), self.token.reveal()
            logger.debug("settings: {!r} {} {}", self.deepgram, self.openai, self.plain)  # masked by the type
            headers = {"Authorization": f"Token {dg}"}
            logger.debug("GET wss://api.deepgram.com/v1/listen?model=nova-2 headers={}", headers)
            logger.debug("temporary token {}", self.jwt.reveal())
            logger.info("POST https://api.openai.com/v1/chat/completions Authorization: Bearer {}", oa)
            logger.info("connecting wss://api.cartesia.ai/tts/websocket?api_key={}&cartesia_version=2026-08-14", ca)
            logger.info("POST https://{}:{}@api.twilio.com/2010-04-01/Accounts/{}/Calls.json", sid, token, sid)
            logger.info("twilio basic auth header Authorization: Basic {}", BASIC)
            logger.info("config dump {}", json.dumps({"apiKey": ca, "token": self.plain.reveal()}))
            logger.warning("raw key in a message: {} / {} / {}", dg, oa, self.plain.reveal())
        elif isinstance(frame, TextFrame) and "call." in frame.text:
            # A failure whose message carries the key: logged with its traceback
            # by the framework, and sent upstream as an ErrorFrame.
            policy = RetryPolicy(max_retries=1, base_delay=0.001)
            attempts = 0

            async def attempt() -> None:
                nonlocal attempts
                attempts += 1
                raise ServiceError(
                    f"401 Unauthorized for key {self.openai.reveal()}", service="openai", retryable=attempts == 1
                )

            await policy.run(attempt, service="openai")
        await self.push_frame(frame, direction)


async def test_the_logs_of_a_whole_faked_call_hold_no_key(captured):
    careless = CarelessService()
    processors = [
        ScriptedSTT(["Yes, I have a minute.", "Tell me more."]),
        ScriptedLLM([Reply("Great to hear. We help teams answer every call.", 10, 5), Reply("Sure.", 10, 2)]),
        SentenceSplitter(),
        careless,
        ScriptedTTS(),
        ScriptedOutput(call_seconds=30.0),
    ]
    async with PipelineHarness(processors) as harness:
        await harness.send(speech(2.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text.endswith("hear."))
        await harness.send(speech(1.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text == "Sure.")
    text = captured.getvalue()
    # The log really holds all of it, masked...
    assert "api.deepgram.com" in text and "api.openai.com" in text and "Calls.json" in text
    assert "Authorization: Bearer ***" in text and "api_key=***" in text and "Accounts/***/Calls.json" in text
    assert "Traceback" in text and "401 Unauthorized for key ***" in text
    assert "careless failed" in text
    # ...and none of the keys, in any form.
    for secret in ALL_SECRETS:
        assert secret not in text, f"{secret[:6]}… leaked"
    assert text.count(MASK) >= 15
