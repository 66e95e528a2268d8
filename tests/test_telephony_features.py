"""The sales-call features piece by piece, and the hostile world around them.

AMD callbacks parsed and refused, the verdict holder, the do-not-call list
and the refusal to dial, the settings from the environment, the keypad's
sequences (with a property test), the call actions without a transfer
number, and forged or malformed AMD / Dial callbacks against a live call.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiohttp import ClientSession
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.telephony_scripted import sales_stack
from tests.twilio_scripted import tone
from vantum_pipeline.errors import ConfigurationError, ProtocolError
from vantum_pipeline.frames import InputDTMFFrame, LLMFullResponseEndFrame, LLMFullResponseStartFrame, TTSSpeakFrame
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.actions import CallActions
from vantum_pipeline.telephony.amd import AmdVerdict, AnsweredBy, MachineDetection, parse_amd_callback
from vantum_pipeline.telephony.calls import OutboundCall, place_call
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.control import TransferRequest
from vantum_pipeline.telephony.dnc import DncEntry, DncListFull, DoNotCallError, InMemoryDncList
from vantum_pipeline.telephony.keypad import KeypadProcessor
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.telephony.settings import (
    AmdSettings,
    CallFeatureSettings,
    KeypadSettings,
    OptOutSettings,
    TransferSettings,
    TwilioSettings,
)
from vantum_pipeline.telephony.voicemail import MachineDetectionGate, VoicemailMessage
from vantum_pipeline.testing.callee import HangUp, Listen, Say
from vantum_pipeline.testing.pipeline import run_pipeline
from vantum_pipeline.testing.twilio import FakeTwilio

pytestmark = pytest.mark.timeout(60)

NUMBER = "+14155550123"


# ------------------------------------------------------------------- AMD


@pytest.mark.parametrize("value", [a.value for a in AnsweredBy])
def test_every_documented_answered_by_value_is_read(value):
    verdict = parse_amd_callback({"AnsweredBy": value, "MachineDetectionDuration": "2750", "CallSid": "CA1"})
    assert verdict == AmdVerdict(AnsweredBy(value), 2750, "CA1")
    assert verdict.answered_by.is_machine is value.startswith("machine_")
    assert verdict.answered_by.greeting_over is value.startswith("machine_end_")


def test_an_unknown_answered_by_is_read_as_unknown_and_a_missing_one_is_refused():
    assert parse_amd_callback({"AnsweredBy": "robot_overlord"}).answered_by is AnsweredBy.UNKNOWN
    assert parse_amd_callback({"AnsweredBy": "human", "MachineDetectionDuration": "soon"}).duration_ms is None
    assert parse_amd_callback({"AnsweredBy": "human", "MachineDetectionDuration": "-5"}).duration_ms is None
    with pytest.raises(ProtocolError, match="AnsweredBy"):
        parse_amd_callback({"CallSid": "CA1"})


async def test_the_first_verdict_counts_and_a_missing_one_times_out():
    detection = MachineDetection()
    assert await detection.wait(0.05) is None
    assert detection.decide(AmdVerdict(AnsweredBy.HUMAN))
    assert not detection.decide(AmdVerdict(AnsweredBy.FAX))
    assert (await detection.wait(0.05)) == AmdVerdict(AnsweredBy.HUMAN)


def test_a_second_amd_callback_does_not_change_the_verdict():
    call = OutboundCall("token", NUMBER, "+15005550006", price_per_minute=0.014)
    assert call.on_amd({"AnsweredBy": "human"}) is not None
    assert call.on_amd({"AnsweredBy": "fax"}) is None
    assert call.machine_detection is not None and call.machine_detection.verdict is not None
    assert call.machine_detection.verdict.answered_by is AnsweredBy.HUMAN


def test_the_voicemail_is_filled_from_the_call_and_names_what_is_missing():
    message = VoicemailMessage("Hi {name}, this is {agent_name}.", defaults={"agent_name": "Sarah"})
    assert message.render({"name": "Dana"}) == "Hi Dana, this is Sarah."
    with pytest.raises(ConfigurationError, match="name"):
        message.render({})
    with pytest.raises(ConfigurationError):
        VoicemailMessage("Hi {name.__class__}")


def test_conclusions_shape_the_record_and_a_provisional_one_needs_a_clean_end():
    def completed(call: OutboundCall) -> CallOutcome:
        return call.on_status({"CallSid": "CA1", "CallStatus": "completed", "CallDuration": "12"}).outcome

    cut = OutboundCall("t1", NUMBER, "+15005550006", price_per_minute=0.014)
    cut.on_stream_started()
    cut.conclude(CallOutcome.MACHINE)
    cut.conclude(CallOutcome.VOICEMAIL_LEFT, needs_clean_end=True)
    cut.pipeline_finished("cancel")
    assert completed(cut) is CallOutcome.MACHINE

    early = OutboundCall("t2", NUMBER, "+15005550006", price_per_minute=0.014)
    early.on_stream_started()
    early.conclude(CallOutcome.MACHINE)
    early.conclude(CallOutcome.VOICEMAIL_LEFT, needs_clean_end=True)
    assert completed(early) is CallOutcome.MACHINE  # hung up before the pipeline ended
    early.pipeline_finished("end")
    assert early.record is not None and early.record.outcome is CallOutcome.MACHINE

    clean = OutboundCall("t3", NUMBER, "+15005550006", price_per_minute=0.014)
    clean.on_stream_started()
    clean.conclude(CallOutcome.VOICEMAIL_LEFT, needs_clean_end=True)
    clean.pipeline_finished("end")
    assert completed(clean) is CallOutcome.VOICEMAIL_LEFT


# ------------------------------------------------------------------- DNC


async def test_the_dnc_list_is_bounded_and_checks_its_numbers():
    dnc = InMemoryDncList(("+14155550100",), max_entries=2)
    assert await dnc.contains("+14155550100") and not await dnc.contains(NUMBER)
    await dnc.add(DncEntry(NUMBER, "model"))
    await dnc.add(DncEntry(NUMBER, "keypad"))  # already there: kept once
    assert len(dnc) == 2 and dnc.entries[NUMBER].source == "model"
    with pytest.raises(DncListFull):
        await dnc.add(DncEntry("+14155550111", "model"))
    with pytest.raises(ConfigurationError):
        await dnc.add(DncEntry("0800 not a number", "model"))
    assert "+141******23" in repr(dnc.entries[NUMBER]) and NUMBER not in repr(dnc.entries[NUMBER])


async def test_a_listed_number_is_refused_before_any_request():
    async with FakeTwilio() as fake:
        twilio = TwilioSettings(
            account_sid=fake.account_sid,
            auth_token=Secret(fake.auth_token),
            from_number="+15005550006",
            public_base_url="https://calls.example.com",
            api_base_url=fake.base_url,
        )
        async with TwilioRestClient(twilio, retry=RetryPolicy(max_retries=0)) as client:
            dnc = InMemoryDncList((NUMBER,))
            with pytest.raises(DoNotCallError, match=r"\+141\*+23"):
                await place_call(client, NUMBER, "+15005550006", url="https://calls.example.com/a", dnc=dnc)
            placed = await place_call(
                client,
                "+14155550100",
                "+15005550006",
                url="https://calls.example.com/a",
                machine_detection="DetectMessageEnd",
                amd_callback="https://calls.example.com/amd",
                machine_detection_timeout=20,
                dnc=dnc,
            )
            with pytest.raises(ConfigurationError, match="machine_detection"):
                await place_call(
                    client, "+14155550100", "+15005550006", url="https://x.example/a", amd_callback="https://x/amd"
                )
        params = fake.requests[0].params
    assert len(fake.requests) == 1 and placed.sid.startswith("CA")
    assert params["AsyncAmd"] == ["true"] and params["AsyncAmdStatusCallbackMethod"] == ["POST"]
    assert params["AsyncAmdStatusCallback"] == ["https://calls.example.com/amd"]
    assert params["MachineDetectionTimeout"] == ["20"]


async def test_a_dnc_list_that_cannot_answer_stops_the_call_and_says_why():
    class DownList:
        async def contains(self, number: str) -> bool:
            raise OSError("connection refused")

    async with sales_stack(CallFeatureSettings(amd=AmdSettings(mode=None))) as (fake, _openai, server, _bot):
        server.dnc = DownList()
        call = await server.place_call(NUMBER)
    assert call.record is not None and call.record.outcome is CallOutcome.ERROR
    assert fake.requests == []  # nobody was dialled unchecked


# -------------------------------------------------------------- settings


def test_feature_settings_from_the_environment():
    env = {
        "AMD_MODE": "Enable",
        "AMD_WHILE_DETECTING": "start_and_yield",
        "AMD_TIMEOUT": "10",
        "VOICEMAIL_MESSAGE": "Hi {name}, call us back.",
        "TRANSFER_NUMBER": "+14155550199",
        "TRANSFER_TIMEOUT": "25",
        "TRANSFER_ON_NO_ANSWER": "end",
        "OPT_OUT_KEYPAD_DIGIT": "9",
        "KEYPAD_ACTIONS": "0=transfer, *=repeat",
        "KEYPAD_INTER_DIGIT_TIMEOUT": "1.5",
    }
    features = CallFeatureSettings.from_env(env)
    assert features.amd == AmdSettings(
        mode="Enable", while_detecting="start_and_yield", machine_detection_timeout=10,
        voicemail_message="Hi {name}, call us back.",
    )  # fmt: skip
    assert features.transfer.number == "+14155550199" and features.transfer.timeout == 25
    assert features.transfer.on_no_answer == "end" and features.transfer.enabled
    assert features.keypad_bindings() == {"0": "transfer", "*": "repeat", "9": "opt_out"}
    assert features.keypad.inter_digit_timeout == 1.5
    assert CallFeatureSettings.from_env({"AMD_MODE": "off"}).amd.mode is None
    assert not CallFeatureSettings.from_env({}).transfer.enabled


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AMD_MODE": "Maybe"}, "AMD mode"),
        ({"AMD_WHILE_DETECTING": "pray"}, "AMD_WHILE_DETECTING"),
        ({"AMD_TIMEOUT": "90"}, "AMD_TIMEOUT"),
        ({"TRANSFER_NUMBER": "555-0199"}, "TRANSFER_NUMBER"),
        ({"TRANSFER_TIMEOUT": "2"}, "TRANSFER_TIMEOUT"),
        ({"TRANSFER_ON_NO_ANSWER": "cry"}, "TRANSFER_ON_NO_ANSWER"),
        ({"OPT_OUT_KEYPAD_DIGIT": "99"}, "OPT_OUT_KEYPAD_DIGIT"),
        ({"KEYPAD_ACTIONS": "9"}, "KEYPAD_ACTIONS"),
        ({"KEYPAD_ACTIONS": "9=explode"}, "explode"),
        ({"KEYPAD_ACTIONS": "x=repeat"}, "'x'"),
    ],
)
def test_bad_feature_settings_are_refused_naming_the_value(env, named):
    with pytest.raises(ConfigurationError, match=named):
        CallFeatureSettings.from_env(env)


def test_a_transfer_request_checks_its_numbers_and_timeout():
    assert "+141******99" in repr(TransferRequest("+14155550199"))
    with pytest.raises(ConfigurationError):
        TransferRequest("+14155550199", timeout=700)
    with pytest.raises(ConfigurationError):
        TransferRequest("4155550199")


# ---------------------------------------------------------------- keypad


class Recorded:
    def __init__(self) -> None:
        self.ran: list[str] = []

    def action(self, name: str):
        async def run() -> None:
            self.ran.append(name)

        return run


async def test_the_keypad_fires_at_once_when_nothing_longer_can_match_and_waits_otherwise():
    recorded = Recorded()
    keypad = KeypadProcessor(
        {"9": recorded.action("nine"), "1": recorded.action("one"), "12": recorded.action("twelve")},
        inter_digit_timeout=1.0,  # the gap of 0.1 s below must stay inside it on a loaded machine too
    )
    frames = [
        InputDTMFFrame("9"),  # fires at once
        0.05,
        InputDTMFFrame("1"),
        1.5,  # "1" times out, then fires
        InputDTMFFrame("1"),
        0.1,
        InputDTMFFrame("2"),  # "12": nothing longer, fires at once
        0.05,
        InputDTMFFrame("7"),  # no binding starts with 7: dropped at once
        0.1,
    ]
    collected = await run_pipeline([keypad], frames)
    assert recorded.ran == ["nine", "one", "twelve"]
    assert keypad.fired == ["9", "1", "12"] and keypad.unmatched == ["7"]
    assert [f.digit for f in collected.of_type(InputDTMFFrame)] == list("91127")  # passed on


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789*#")), max_size=12))
def test_any_key_sequence_fires_only_bound_sequences(keys):
    async def scenario() -> KeypadProcessor:
        recorded = Recorded()
        bindings = {"9": "opt", "*1": "rep", "*12": "tr", "00": "x"}
        keypad = KeypadProcessor({k: recorded.action(v) for k, v in bindings.items()}, inter_digit_timeout=0.02)
        frames: list = []
        for key in keys:
            frames += [InputDTMFFrame(key), 0.001]
        await run_pipeline([keypad], [*frames, 0.05])
        assert len(recorded.ran) == len(keypad.fired)
        assert set(keypad.fired) <= set(bindings)
        return keypad

    keypad = asyncio.run(scenario())
    assert len("".join(keypad.fired)) + len("".join(keypad.unmatched)) <= len(keys)


# ------------------------------------------------------ actions, no transfer


class StubControl:
    """A CallControl that records what the processors ask of it."""

    to = NUMBER
    call_sid = "CA1"
    campaign_id = "c1"
    prospect_id = "p1"
    resumed_after = None

    def __init__(self, detection: MachineDetection | None = None) -> None:
        self.machine_detection = detection
        self.concluded: list[tuple[CallOutcome, bool]] = []
        self.transfers: list[TransferRequest] = []

    def conclude(self, outcome: CallOutcome, *, needs_clean_end: bool = False) -> None:
        self.concluded.append((outcome, needs_clean_end))

    def request_transfer(self, request: TransferRequest) -> None:
        self.transfers.append(request)


async def test_without_a_rep_number_no_transfer_is_offered_and_the_error_phrase_promises_none():
    control = StubControl()
    actions = CallActions(control, CallFeatureSettings(transfer=TransferSettings()))
    assert [tool.name for tool in actions.tools()] == ["do_not_call"]
    assert not await actions.transfer("asked")
    error = TTSSpeakFrame("I'm experiencing technical difficulties. Let me transfer you to a human.", category="error")
    collected = await run_pipeline([actions], [error])
    (said,) = collected.of_type(TTSSpeakFrame)
    assert said.text == TransferSettings().no_transfer_error_line
    assert control.transfers == []


async def test_an_opt_out_is_stored_before_the_confirmation_and_a_failing_sink_promises_nothing():
    class BrokenList:
        async def add(self, entry: DncEntry) -> None:
            raise OSError("database is down")

    control = StubControl()
    opt_out = OptOutSettings()
    actions = CallActions(control, CallFeatureSettings(opt_out=opt_out), dnc=BrokenList())

    frames = [LLMFullResponseStartFrame(), 0.3, LLMFullResponseEndFrame(), 0.1]
    runner = asyncio.ensure_future(run_pipeline([actions], frames, timeout=3, send_end=False))
    await asyncio.sleep(0.1)
    stored = await actions.opt_out("model")  # while the model's reply is still going
    collected = await runner
    order = [type(f).__name__ for f in collected.downstream if isinstance(f, LLMFullResponseEndFrame | TTSSpeakFrame)]
    assert order == ["LLMFullResponseEndFrame", "TTSSpeakFrame"]  # the confirmation follows the reply
    assert not stored
    assert control.concluded == [(CallOutcome.OPTED_OUT, False)]
    said = [f.text for f in collected.of_type(TTSSpeakFrame)]
    assert said == [opt_out.failure_line]
    assert actions.ending and actions.performed == ["opt_out"]


async def test_with_amd_off_the_gate_passes_everything():
    gate = MachineDetectionGate(StubControl(None), AmdSettings(voicemail_message="Hi {name}"), variables={"name": "D"})
    collected = await run_pipeline([gate], [TTSSpeakFrame("Hello")])
    assert [f.text for f in collected.of_type(TTSSpeakFrame)] == ["Hello"] and gate.state == "human"


async def test_no_verdict_in_time_the_held_greeting_goes_out():
    control = StubControl(MachineDetection())
    gate = MachineDetectionGate(control, AmdSettings(decision_timeout=0.2))
    collected = await run_pipeline([gate], [TTSSpeakFrame("Hello"), 0.4])
    assert [f.text for f in collected.of_type(TTSSpeakFrame)] == ["Hello"] and gate.state == "human"


# ------------------------------------------------------- hostile callbacks


def signed(fake, url: str, params: dict[str, str], key: str | None = None) -> dict[str, str]:
    from twilio.request_validator import RequestValidator

    return {"X-Twilio-Signature": RequestValidator(key or fake.auth_token).compute_signature(url, params)}


async def test_forged_and_malformed_amd_callbacks_are_refused_and_the_call_goes_on():
    amd = AmdSettings(voicemail_message="Hi {name}", decision_timeout=1.5)
    features = CallFeatureSettings(amd=amd)
    async with sales_stack(features, ["Hello"]) as (fake, openai, server, bot):
        openai.script("Great. Goodbye!")
        fake.behave(
            NUMBER,
            answered_by="machine_end_beep",  # the forged verdict a hostile sender wants us to act on...
            bad_signature=frozenset({"amd"}),  # ...but it is not signed by Twilio
            script=[Listen(quiet=0.5), Say(tone(0.6)), Listen(quiet=0.8), HangUp()],
        )
        call = await server.place_call(NUMBER)
        url = server.amd_url(call)
        sid = call.sid or ""
        other = f"{server.public_base_url}/twilio/amd?call=nope"
        status = server.status_url(call)
        attempts = [
            (url, {"CallSid": sid, "AnsweredBy": "fax"}, url, "not-the-token"),  # forged
            (url, {"CallSid": sid, "AnsweredBy": "fax"}, url + "x", None),  # signed for another URL
            (url, {"CallSid": sid}, url, None),  # no AnsweredBy
            (url, {"CallSid": "CA" + "0" * 32, "AnsweredBy": "fax"}, url, None),  # another call's sid
            (other, {"CallSid": "CA1", "AnsweredBy": "fax"}, other, None),  # a call we do not know
            (status, {"CallSid": sid, "CallStatus": "exploded"}, status, None),  # a status nobody knows
        ]
        answers = []
        async with ClientSession() as http:
            for target, params, signed_url, key in attempts:
                async with http.post(target, data=params, headers=signed(fake, signed_url, params, key)) as response:
                    answers.append(response.status)
        async with asyncio.timeout(40):
            record = await call.wait()
            await server.wait_idle()
        fake_call = fake.calls[call.sid]
        pipeline = bot.calls[call.sid][0]
    assert answers == [403, 403, 400, 400, 204, 204]
    assert [status for _params, status in fake_call.amd_callbacks] == [403]
    assert server.rejected_signatures >= 3
    # No verdict was taken: after the decision timeout the bot talked, as with a human.
    assert pipeline.gate.state == "human" and pipeline.gate.verdict is None
    assert fake_call.callee is not None and fake_call.callee.heard_seconds() > 1.0
    assert record.outcome is CallOutcome.COMPLETED


async def test_an_unknown_answered_by_from_twilio_is_logged_and_the_bot_talks():
    features = CallFeatureSettings(amd=AmdSettings(decision_timeout=20))
    async with sales_stack(features) as (fake, _openai, server, bot):
        fake.behave(NUMBER, answered_by="robot_overlord", amd_seconds=0.3, script=[Listen(quiet=0.5), HangUp()])
        call = await server.place_call(NUMBER)
        async with asyncio.timeout(30):
            record = await call.wait()
            await server.wait_idle()
        pipeline = bot.calls[call.sid][0]
    assert pipeline.gate.verdict is not None and pipeline.gate.verdict.answered_by is AnsweredBy.UNKNOWN
    assert pipeline.gate.state == "human"
    assert record.outcome is CallOutcome.COMPLETED


async def test_forged_or_odd_dial_callbacks_never_break_the_server():
    features = CallFeatureSettings(amd=AmdSettings(mode=None), transfer=TransferSettings(number="+14155550199"))
    async with sales_stack(features) as (fake, _openai, server, _bot):
        fake.behave(NUMBER, script=[Listen(quiet=0.5), Say(tone(0.3)), Listen(quiet=0.5), HangUp()])
        call = await server.place_call(NUMBER)
        url = server.dial_url(call)
        async with ClientSession() as http:
            body = {"CallSid": call.sid or "", "DialCallStatus": "completed", "CallStatus": "in-progress"}
            async with http.post(url, data=body, headers=signed(fake, url, body, "forged")) as response:
                forged = response.status
            # Signed, but no transfer was asked for on this call: hang-up TwiML, no outcome change.
            async with http.post(url, data=body, headers=signed(fake, url, body)) as response:
                unasked = (response.status, await response.text())
        async with asyncio.timeout(30):
            record = await call.wait()
            await server.wait_idle()
    assert forged == 403
    assert unasked[0] == 200 and "<Hangup" in unasked[1]
    assert record.outcome is CallOutcome.COMPLETED


async def test_an_unknown_dial_status_counts_as_not_reached():
    features = CallFeatureSettings(amd=AmdSettings(mode=None), transfer=TransferSettings(number="+14155550199"))
    async with sales_stack(features) as (fake, _openai, server, _bot):
        fake.behave(NUMBER, script=[Listen(quiet=0.5), HangUp()])
        call = await server.place_call(NUMBER)
        async with asyncio.timeout(10):
            await fake.calls[call.sid].answered.wait()
        call.request_transfer(TransferRequest("+14155550199"))
        call.transfer_status = "dialing"
        url = server.dial_url(call)
        body = {"CallSid": call.sid or "", "DialCallStatus": "exploded", "CallStatus": "in-progress"}
        async with ClientSession() as http:
            async with http.post(url, data=body, headers=signed(fake, url, body)) as response:
                status, text = response.status, await response.text()
        async with asyncio.timeout(30):
            await call.wait()
            await server.wait_idle()
    assert status == 200 and "<Stream" in text  # back to the bot (on_no_answer="resume")
    assert call.transfer_status == "not_answered" and call.resumed_after == "transfer_failed"


def test_settings_dataclasses_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AmdSettings().mode = "Enable"  # type: ignore[misc]
    with pytest.raises(ConfigurationError):
        KeypadSettings(bindings={"9": "nope"})


async def test_a_voicemail_is_synthesized_once_for_every_call_sharing_the_cache():
    from tests.test_cartesia_service import settings_for, speak
    from vantum_pipeline.services.cartesia import CartesiaTTSService
    from vantum_pipeline.services.tts_cache import TTSCache
    from vantum_pipeline.testing import PipelineHarness
    from vantum_pipeline.testing.cartesia import FakeCartesia

    message = VoicemailMessage("Hi {name}, this is Sarah from Vantum. Please call us back.")
    shared = TTSCache()
    async with FakeCartesia() as fake:
        for _call in range(3):  # three calls that reach the same prospect's voicemail
            tts = CartesiaTTSService(settings_for(fake), cache=shared)
            async with PipelineHarness([tts]) as harness:
                await speak(harness, [TTSSpeakFrame(message.render({"name": "Dana"}), category="voicemail")])
        contexts = len(fake.contexts)
    assert contexts == 1 and (shared.hits, shared.misses) == (2, 1)


@pytest.mark.parametrize(("verdict", "passed"), [(AnsweredBy.HUMAN, True), (AnsweredBy.MACHINE_END_BEEP, False)])
async def test_the_callee_words_wait_with_the_bot_and_never_reach_the_model_of_a_machine(verdict, passed):
    from vantum_pipeline.frames import EndOfTurnFrame

    detection = MachineDetection()
    control = StubControl(detection)
    gate = MachineDetectionGate(control, AmdSettings(voicemail_message="Please call back"))

    async def decide_later() -> None:
        await asyncio.sleep(0.2)
        detection.decide(AmdVerdict(verdict))

    decider = asyncio.ensure_future(decide_later())
    frames = [TTSSpeakFrame("Hi there"), EndOfTurnFrame("Hello?"), 0.4]
    collected = await run_pipeline([gate.turn_guard(), gate], frames, send_end=passed, timeout=3)
    await decider
    turns = [f.text for f in collected.of_type(EndOfTurnFrame)]
    said = [f.text for f in collected.of_type(TTSSpeakFrame)]
    if passed:
        assert turns == ["Hello?"] and said == ["Hi there"]
    else:
        assert turns == [] and said == ["Please call back"]
        assert (CallOutcome.VOICEMAIL_LEFT, True) in control.concluded
