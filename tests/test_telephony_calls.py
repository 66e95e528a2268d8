"""Whole calls with the sales-call features: AMD and voicemail, transfer, opt-out, keypad.

FakeTwilio plays Twilio (async AMD callbacks, machines that beep, redirects
to ``<Dial>``, the Dial action callback, DTMF), FakeOpenAI the model; our
server and the real OpenAI service run as in production.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.telephony_scripted import GREETING, sales_stack
from tests.twilio_scripted import tone
from vantum_pipeline.frames import MetricsFrame
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.telephony.settings import AmdSettings, CallFeatureSettings, KeypadSettings, TransferSettings
from vantum_pipeline.testing.callee import Dtmf, HangUp, Listen, Pause, Say
from vantum_pipeline.testing.openai_wire import Reply, ToolCall
from vantum_pipeline.testing.twilio import AnsweringMachine

pytestmark = pytest.mark.timeout(90)

PROSPECT_NUMBER = "+14155550123"
REP_NUMBER = "+14155550199"
WORD = 0.5  # ToneTTS: every word is 0.35 s of tone and 0.15 s of silence
VOICEMAIL = "Hi {name} this is Sarah from Vantum please call us back"
VOICEMAIL_TEXT = VOICEMAIL.replace("{name}", "Dana")


def seconds_of(text: str) -> float:
    return len(text.split()) * WORD


def rest_creates(fake) -> list:
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/Calls.json")]


def amd_features(**changes) -> CallFeatureSettings:
    amd = AmdSettings(voicemail_message=VOICEMAIL, decision_timeout=20.0)
    return CallFeatureSettings(amd=dataclasses.replace(amd, **changes))


async def run_call(server, fake, number=PROSPECT_NUMBER, within=45.0):
    call = await server.place_call(number, campaign_id="c1", prospect_id="p1")
    async with asyncio.timeout(within):
        record = await call.wait()
        await server.wait_idle()
    return call, record


# ------------------------------------------------------ AMD and voicemail


async def test_a_machine_gets_the_whole_voicemail_after_its_beep_then_the_call_is_hung_up():
    async with sales_stack(amd_features()) as (fake, openai, server, bot):
        machine = AnsweringMachine(greeting=tone(1.5, freq=440.0), beep_seconds=0.5, hang_up_after_silence=3.0)
        fake.behave(PROSPECT_NUMBER, answered_by="machine_end_beep", machine=machine)
        call, record = await run_call(server, fake)
        fake_call = fake.calls[call.sid]
        callee = fake_call.callee
        pipeline = bot.calls[call.sid][0]
    created = rest_creates(fake)[0].params
    assert created["MachineDetection"] == ["DetectMessageEnd"]
    assert created["AsyncAmd"] == ["true"]
    assert created["AsyncAmdStatusCallback"][0].startswith(server.public_base_url + "/twilio/amd?call=")
    (amd_params, amd_status), *_ = fake_call.amd_callbacks
    assert amd_status == 204 and amd_params["AnsweredBy"] == "machine_end_beep"
    assert int(amd_params["MachineDetectionDuration"]) >= 1500

    assert callee is not None and callee.greeting_ended_at is not None
    # Nothing was said into the greeting (the bot's own greeting was held, then dropped)...
    assert callee.heard_seconds(0, callee.greeting_ended_at) == 0.0
    assert list(pipeline.tts.contexts.values()) == [VOICEMAIL_TEXT]
    # ...and the machine recorded the whole message after the beep, then we hung up.
    assert callee.heard_seconds(callee.greeting_ended_at) == pytest.approx(seconds_of(VOICEMAIL_TEXT), abs=0.05)
    assert callee.end_reason == "api hang-up"
    assert record.outcome is CallOutcome.VOICEMAIL_LEFT
    assert record.answered_by == "machine_end_beep"
    assert pipeline.task.finish_reason == "end"
    assert openai.chat_requests == []  # the machine's greeting never reached the model


async def test_no_voicemail_configured_a_machine_is_hung_up_on():
    async with sales_stack(amd_features(voicemail_message=None)) as (fake, _openai, server, _bot):
        fake.behave(PROSPECT_NUMBER, answered_by="machine_end_silence", machine=AnsweringMachine(beep_seconds=0))
        call, record = await run_call(server, fake)
        callee = fake.calls[call.sid].callee
    assert callee is not None and callee.heard_seconds() == 0.0
    assert callee.end_reason == "api hang-up"
    assert record.outcome is CallOutcome.MACHINE


async def test_amd_says_human_the_conversation_goes_on_normally():
    async with sales_stack(amd_features(), ["Yes who is this"]) as (fake, openai, server, bot):
        openai.script(Reply("We help teams answer every call. Goodbye!", tool_calls=[ToolCall("end_call")]))
        fake.behave(
            PROSPECT_NUMBER,
            answered_by="human",
            amd_seconds=0.6,
            script=[Listen(quiet=0.5), Say(tone(0.6)), Listen(quiet=1.0), HangUp()],
        )
        call, record = await run_call(server, fake)
        callee = fake.calls[call.sid].callee
        pipeline = bot.calls[call.sid][0]
    assert callee is not None
    first_heard = callee.heard[0].at
    assert first_heard >= 0.5  # the greeting waited for the verdict (0.6 s after the answer)
    assert callee.heard_seconds(0, callee.spoke[0][0]) == pytest.approx(seconds_of(GREETING), abs=0.05)
    assert pipeline.stt.transcripts == []  # the prospect's turn was heard and answered
    assert record.outcome is CallOutcome.COMPLETED and record.answered_by == "human"
    assert pipeline.gate.state == "human"


async def test_start_and_yield_the_bot_stops_for_a_machine_then_leaves_the_voicemail():
    features = amd_features(mode="Enable", while_detecting="start_and_yield", greeting_end_silence=0.8)
    async with sales_stack(features) as (fake, _openai, server, _bot):
        machine = AnsweringMachine(greeting=tone(2.5, freq=440.0), beep_seconds=0.5, hang_up_after_silence=3.0)
        fake.behave(PROSPECT_NUMBER, answered_by="machine_end_beep", amd_seconds=0.8, machine=machine)
        call, record = await run_call(server, fake)
        fake_call = fake.calls[call.sid]
        callee = fake_call.callee
    assert fake_call.amd_callbacks[0][0]["AnsweredBy"] == "machine_start"  # Enable says so at once
    assert callee is not None and callee.greeting_ended_at is not None
    assert len(callee.clears) == 1  # the greeting the bot had started was cleared
    assert callee.clears[0] < callee.greeting_ended_at
    after_beep = callee.heard_seconds(callee.greeting_ended_at)
    assert after_beep == pytest.approx(seconds_of(VOICEMAIL_TEXT), abs=0.05)
    assert record.outcome is CallOutcome.VOICEMAIL_LEFT


async def test_a_fax_is_hung_up_on():
    async with sales_stack(amd_features()) as (fake, _openai, server, _bot):
        fake.behave(PROSPECT_NUMBER, answered_by="fax", amd_seconds=0.3)
        call, record = await run_call(server, fake)
        callee = fake.calls[call.sid].callee
    assert callee is not None and callee.heard_seconds() == 0.0
    assert callee.end_reason == "api hang-up"
    assert record.outcome is CallOutcome.FAX


async def test_a_voicemail_cut_off_by_the_machine_is_not_counted_as_left():
    long_message = "Hi {name} " + "this message goes on and on " * 4
    async with sales_stack(amd_features(voicemail_message=long_message)) as (fake, _openai, server, _bot):
        machine = AnsweringMachine(greeting=tone(1.0), beep_seconds=0.3, max_record_seconds=2.0)
        fake.behave(PROSPECT_NUMBER, answered_by="machine_end_beep", machine=machine)
        call, record = await run_call(server, fake)
        callee = fake.calls[call.sid].callee
    assert callee is not None and callee.end_reason == "callee hung up"
    assert record.outcome is CallOutcome.MACHINE


# ------------------------------------------------------------- transfer

TRANSFER = TransferSettings(number=REP_NUMBER, caller_id="+15005550006", timeout=5)


async def test_a_prospect_who_asks_for_a_human_is_transferred_to_the_rep():
    features = CallFeatureSettings(amd=AmdSettings(mode=None), transfer=TRANSFER)
    async with sales_stack(features, ["Can I talk to a real person please"]) as (fake, openai, server, bot):
        openai.script(Reply(tool_calls=[ToolCall("transfer_call", {"reason": "asked for a person"})]))
        fake.behave(PROSPECT_NUMBER, script=[Listen(quiet=0.5), Say(tone(0.6)), Listen(quiet=4.0)])
        fake.behave(REP_NUMBER, ring_seconds=0.3, max_seconds=1.5)
        call = await server.place_call(PROSPECT_NUMBER)
        fake_call = fake.calls[call.sid]
        async with asyncio.timeout(45):
            await fake_call.bridged.wait()
            # The prospect talks with the rep: the AI leg is gone.
            assert server.active == {}
            record = await call.wait()
        pipeline = bot.calls[call.sid][0]
        offered = {t["function"]["name"] for t in openai.chat_requests[0].body["tools"]}
    assert {"transfer_call", "do_not_call", "end_call"} <= offered
    handover = features.transfer.handover_line
    first = fake_call.callees[0]
    assert first.end_reason == "redirected"
    assert first.heard_seconds(first.spoke[0][1]) == pytest.approx(seconds_of(handover), abs=0.05)
    (twiml,) = fake_call.redirects
    assert "<Dial" in twiml and f"<Number>{REP_NUMBER}</Number>" in twiml
    assert 'callerId="+15005550006"' in twiml and 'timeout="5"' in twiml
    (dial,) = fake_call.dials
    assert dial.status == "completed" and dial.caller_id == "+15005550006"
    assert dial.action_response is not None and "<Hangup" in dial.action_response[1]
    assert len(fake_call.callees) == 1
    # The AI leg ended cleanly: End, services closed, usage counted.
    assert pipeline.task.finish_reason == "end"
    assert pipeline.stt.closed and pipeline.tts.closed
    usage = [f for f in pipeline.sink.of_type(MetricsFrame) if f.metric == "usage.call_seconds"]
    assert len(usage) == 1 and usage[0].value > 1.0
    assert pipeline.llm.prompt_tokens > 0 and pipeline.llm.completion_tokens > 0
    assert pipeline.actions.performed == ["transfer"]
    assert record.outcome is CallOutcome.TRANSFERRED


async def test_the_rep_does_not_answer_the_call_comes_back_to_the_bot():
    features = CallFeatureSettings(amd=AmdSettings(mode=None), transfer=TRANSFER)
    async with sales_stack(features, ["Put me through to your manager"]) as (fake, openai, server, bot):
        openai.script(Reply(tool_calls=[ToolCall("transfer_call", {})]))
        fake.behave(
            PROSPECT_NUMBER,
            script=[Listen(quiet=0.5), Say(tone(0.6)), Listen(quiet=8.0)],
            later_scripts=([Listen(quiet=0.6), HangUp()],),
        )
        fake.behave(REP_NUMBER, outcome="no-answer")
        call, record = await run_call(server, fake, within=60)
        fake_call = fake.calls[call.sid]
        pipelines = bot.calls[call.sid]
    (dial,) = fake_call.dials
    assert dial.status == "no-answer" and dial.answered_at is None
    assert len(fake_call.callees) == 2 and len(pipelines) == 2
    back = fake_call.callees[1]
    fallback = features.transfer.fallback_line
    assert back.heard_seconds() == pytest.approx(seconds_of(fallback), abs=0.05)
    assert list(pipelines[1].tts.contexts.values()) == [fallback]
    assert call.resumed_after == "transfer_failed"
    assert record.outcome is CallOutcome.COMPLETED


async def test_the_rep_is_busy_and_the_campaign_ends_the_call_politely():
    transfer = dataclasses.replace(TRANSFER, on_no_answer="end")
    features = CallFeatureSettings(amd=AmdSettings(mode=None), transfer=transfer)
    async with sales_stack(features, ["I want a human"]) as (fake, openai, server, _bot):
        openai.script(Reply(tool_calls=[ToolCall("transfer_call", {})]))
        fake.behave(PROSPECT_NUMBER, script=[Listen(quiet=0.5), Say(tone(0.6)), Listen(quiet=8.0)])
        fake.behave(REP_NUMBER, outcome="busy", ring_seconds=0.3)
        call, record = await run_call(server, fake)
        fake_call = fake.calls[call.sid]
    assert fake_call.dials[0].status == "busy"
    assert fake_call.said == [transfer.end_line]
    assert len(fake_call.callees) == 1
    assert record.outcome is CallOutcome.COMPLETED


async def test_the_error_phrase_transfers_when_a_rep_number_is_configured():
    from vantum_pipeline.testing.openai import Fault

    features = CallFeatureSettings(amd=AmdSettings(mode=None), transfer=TRANSFER)
    async with sales_stack(features, ["Tell me more"]) as (fake, openai, server, bot):
        openai.fail_next(Fault.server_error(500), times=5)
        fake.behave(PROSPECT_NUMBER, script=[Listen(quiet=0.5), Say(tone(0.6)), Listen(quiet=4.0)])
        fake.behave(REP_NUMBER, ring_seconds=0.2, max_seconds=0.5)
        call, record = await run_call(server, fake)
        fake_call = fake.calls[call.sid]
        pipeline = bot.calls[call.sid][0]
    error_phrase = pipeline.llm.settings.fallback_phrases.error
    assert "transfer" in error_phrase.lower()
    assert list(pipeline.tts.contexts.values()) == [GREETING, error_phrase]
    assert fake_call.dials and fake_call.dials[0].to == REP_NUMBER
    assert record.outcome is CallOutcome.TRANSFERRED


# -------------------------------------------------------------- opt-out


async def test_remove_me_from_your_list_puts_the_number_on_the_dnc_list_and_ends_the_call():
    features = CallFeatureSettings(amd=AmdSettings(mode=None))
    async with sales_stack(features, ["please remove me from your list"]) as (fake, openai, server, bot):
        openai.script(Reply(tool_calls=[ToolCall("do_not_call")]))
        fake.behave(PROSPECT_NUMBER, script=[Listen(quiet=0.5), Say(tone(0.6)), Listen(quiet=4.0)])
        call, record = await run_call(server, fake)
        callee = fake.calls[call.sid].callee
        pipeline = bot.calls[call.sid][0]
        system_prompt = openai.chat_requests[0].messages[0]["content"]

        again = await server.place_call(PROSPECT_NUMBER)
        creates = rest_creates(fake)
    assert "do_not_call" in system_prompt
    assert PROSPECT_NUMBER in bot.dnc
    (entry,) = bot.dnc.entries.values()
    assert entry.source == "model" and entry.call_sid == call.sid and entry.campaign_id == "c1"
    confirmation = features.opt_out.confirmation_line
    assert callee is not None
    assert callee.heard_seconds(callee.spoke[0][1]) == pytest.approx(seconds_of(confirmation), abs=0.05)
    assert callee.end_reason == "api hang-up"
    assert record.outcome is CallOutcome.OPTED_OUT
    assert pipeline.actions.performed == ["opt_out"]
    # The second attempt never reaches Twilio.
    assert again.record is not None and again.record.outcome is CallOutcome.DO_NOT_CALL
    assert len(creates) == 1


# --------------------------------------------------------------- keypad


async def test_a_keypad_sequence_typed_with_a_gap_runs_its_action():
    keypad = KeypadSettings(bindings={"*": "repeat", "*9": "opt_out"}, inter_digit_timeout=1.5)
    features = CallFeatureSettings(amd=AmdSettings(mode=None), keypad=keypad)
    async with sales_stack(features) as (fake, _openai, server, bot):
        fake.behave(PROSPECT_NUMBER, script=[Listen(quiet=0.5), Dtmf("*"), Pause(0.8), Dtmf("9"), Listen(quiet=4.0)])
        call, record = await run_call(server, fake)
        pipeline = bot.calls[call.sid][0]
        callee = fake.calls[call.sid].callee
    assert pipeline.keypad.fired == ["*9"]  # one sequence despite the gap, not "*" then "9"
    (entry,) = bot.dnc.entries.values()
    assert entry.source == "keypad"
    assert callee is not None and callee.end_reason == "api hang-up"
    assert list(pipeline.tts.contexts.values())[-1] == features.opt_out.confirmation_line
    assert record.outcome is CallOutcome.OPTED_OUT


async def test_a_keypad_digit_after_the_timeout_starts_a_new_sequence():
    keypad = KeypadSettings(bindings={"*": "repeat", "*9": "opt_out"}, inter_digit_timeout=0.5)
    features = CallFeatureSettings(amd=AmdSettings(mode=None), keypad=keypad)
    async with sales_stack(features) as (fake, _openai, server, bot):
        script = [Listen(quiet=0.5), Dtmf("*"), Pause(1.0), Dtmf("9"), Listen(quiet=1.0), HangUp()]
        fake.behave(PROSPECT_NUMBER, script=script)
        call, record = await run_call(server, fake)
        pipeline = bot.calls[call.sid][0]
        callee = fake.calls[call.sid].callee
    assert pipeline.keypad.fired == ["*"] and pipeline.keypad.unmatched == ["9"]
    assert len(bot.dnc) == 0
    assert list(pipeline.tts.contexts.values()) == [GREETING, GREETING]  # "*" repeated the greeting
    assert callee is not None
    assert callee.heard_seconds() == pytest.approx(2 * seconds_of(GREETING), abs=0.05)
    assert record.outcome is CallOutcome.COMPLETED


async def test_press_nine_to_be_removed_when_the_campaign_enables_it():
    features = CallFeatureSettings(amd=AmdSettings(mode=None))
    features = dataclasses.replace(features, opt_out=dataclasses.replace(features.opt_out, keypad_digit="9"))
    async with sales_stack(features) as (fake, _openai, server, bot):
        fake.behave(PROSPECT_NUMBER, script=[Listen(quiet=0.5), Dtmf("9"), Listen(quiet=4.0)])
        _call, record = await run_call(server, fake)
    assert PROSPECT_NUMBER in bot.dnc
    assert record.outcome is CallOutcome.OPTED_OUT


async def test_a_transfer_with_the_real_services_closes_every_socket_of_the_ai_leg_and_counts_its_usage():
    from tests.twilio_scripted import load_example
    from vantum_pipeline.services.cartesia import CartesiaSettings
    from vantum_pipeline.services.deepgram import DeepgramSettings
    from vantum_pipeline.services.openai import OpenAISettings
    from vantum_pipeline.settings import Secret
    from vantum_pipeline.telephony.dnc import InMemoryDncList
    from vantum_pipeline.telephony.settings import TwilioSettings
    from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
    from vantum_pipeline.testing.deepgram import FakeDeepgram, ScriptedRecognizer
    from vantum_pipeline.testing.openai import FakeOpenAI
    from vantum_pipeline.testing.signals import speech
    from vantum_pipeline.testing.twilio import FakeTwilio

    example = load_example()
    features = CallFeatureSettings(amd=AmdSettings(mode=None), transfer=TRANSFER)
    metrics: list[MetricsFrame] = []

    def observe(frame, _direction) -> None:
        if isinstance(frame, MetricsFrame) and frame.metric.startswith("usage."):
            metrics.append(frame)

    recognizer = ScriptedRecognizer(["Can I speak to a real person?"])
    async with (
        FakeTwilio() as twilio_fake,
        FakeDeepgram(api_key="dg-fake-key", recognizer=recognizer) as deepgram,
        FakeOpenAI(api_key="sk-fake-key") as openai,
        FakeCartesia(api_key="sk_car_fake", synthesizer=ToneSynthesizer(seconds_per_char=0.02)) as cartesia,
    ):
        openai.script(Reply(tool_calls=[ToolCall("transfer_call", {"reason": "wants a person"})]))
        twilio_fake.behave(
            PROSPECT_NUMBER,
            script=[Listen(quiet=0.5), Say(speech(0.8, seed=1), sample_rate=16000), Listen(quiet=6.0)],
        )
        twilio_fake.behave(REP_NUMBER, ring_seconds=0.2, max_seconds=1.0)
        twilio = TwilioSettings(
            account_sid=twilio_fake.account_sid,
            auth_token=Secret(twilio_fake.auth_token),
            from_number="+15005550006",
            public_base_url="http://127.0.0.1",
            api_base_url=twilio_fake.base_url,
        )
        services = example.Services(
            deepgram=DeepgramSettings(api_key=Secret("dg-fake-key"), url=deepgram.ws_url),
            openai=OpenAISettings(api_key=Secret("sk-fake-key"), base_url=openai.base_url),
            cartesia=CartesiaSettings(
                api_key=Secret("sk_car_fake"), base_url=cartesia.http_url, websocket_base_url=cartesia.ws_url
            ),
        )
        record, _contexts = await example.run_call(
            twilio, services, PROSPECT_NUMBER, host="127.0.0.1", port=0, observer=observe,
            features=features, dnc=InMemoryDncList(),
        )  # fmt: skip
        for connection in deepgram.connections:
            await connection.wait_closed(2.0)
        fake_call = next(iter(twilio_fake.calls.values()))
        open_tts = cartesia.open_connections
    assert record.outcome is CallOutcome.TRANSFERRED
    assert fake_call.dials[0].status == "completed" and fake_call.callees[0].end_reason == "redirected"
    assert deepgram.connections and open_tts == 0  # every service socket of the AI leg is closed
    counted = {m.metric for m in metrics}
    assert {"usage.call_seconds", "usage.stt_seconds", "usage.llm_prompt_tokens", "usage.tts_characters"} <= counted


async def test_concurrent_calls_each_get_their_own_outcome():
    """A machine, a fax, a person who talks, and forged AMD callbacks, all at once."""
    from aiohttp import ClientSession
    from twilio.request_validator import RequestValidator

    numbers = {"machine": "+14155550301", "fax": "+14155550302", "human": "+14155550303"}
    async with sales_stack(amd_features(), ["Sounds good"]) as (fake, openai, server, _bot):
        openai.script(Reply("Great talking to you. Goodbye!", tool_calls=[ToolCall("end_call")]))
        fake.behave(numbers["machine"], answered_by="machine_end_beep", machine=AnsweringMachine(greeting=tone(1.0)))
        fake.behave(numbers["fax"], answered_by="fax", amd_seconds=0.4)
        fake.behave(
            numbers["human"],
            answered_by="human",
            amd_seconds=0.4,
            script=[Listen(quiet=0.5), Say(tone(0.5)), Listen(quiet=1.0), HangUp()],
        )
        calls = dict(zip(numbers, await asyncio.gather(*(server.place_call(n) for n in numbers.values())), strict=True))
        forged = RequestValidator("not-the-token")
        async with ClientSession() as http:
            for call in calls.values():  # a flood of forged verdicts at every call
                url = server.amd_url(call)
                body = {"CallSid": call.sid or "", "AnsweredBy": "fax"}
                for _ in range(20):
                    headers = {"X-Twilio-Signature": forged.compute_signature(url, body)}
                    async with http.post(url, data=body, headers=headers) as response:
                        assert response.status == 403
        async with asyncio.timeout(60):
            records = {name: await call.wait() for name, call in calls.items()}
            await server.wait_idle()
    assert records["machine"].outcome is CallOutcome.VOICEMAIL_LEFT
    assert records["fax"].outcome is CallOutcome.FAX
    assert records["human"].outcome is CallOutcome.COMPLETED and records["human"].answered_by == "human"
