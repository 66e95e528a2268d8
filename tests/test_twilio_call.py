"""Whole calls over the real wire protocol: FakeTwilio ⇄ our server and pipelines."""

from __future__ import annotations

import asyncio

import pytest

from tests.twilio_scripted import ScriptedAgent, load_example, phone_stack, tone, words_heard
from vantum_pipeline.frames import HeardTextFrame
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.testing.callee import BargeIn, HangUp, Listen, Say, SendRaw
from vantum_pipeline.transports.twilio.transport import TwilioTransportParams

pytestmark = pytest.mark.timeout(90)

GREETING = "Hi this is Vantum"
PITCH = "Great to hear from you let me tell you about our offer today"
ANSWER = "Sure go ahead"
CHUNK = 0.02  # the transport's audio chunk


def heard_texts(pipeline, context_id: str) -> list[str]:
    return [f.text for f in pipeline.sink.of_type(HeardTextFrame) if f.context_id == context_id]


async def test_a_whole_call_with_barge_in():
    bot = ScriptedAgent(GREETING, {"first": (PITCH, False), "second": (ANSWER, False)}, ["first", "second"])
    script = [
        Listen(quiet=0.5),
        Say(tone(0.5)),
        BargeIn(tone(0.8), after=1.3),
        Listen(quiet=0.6),
        HangUp(),
    ]
    async with phone_stack(bot) as (fake, server):
        fake.behave("+14155550123", script=script)
        call = await server.place_call("+14155550123", campaign_id="c1", prospect_id="p1")
        async with asyncio.timeout(40):
            record = await call.wait()
            await server.wait_idle()
        callee = fake.calls[call.sid].callee
        pipeline = bot.calls[call.sid]
    assert callee is not None
    assert callee.parameters == {"call_token": call.token, "campaign_id": "c1", "prospect_id": "p1"}

    # Greeting, the callee speaks, the pitch starts, the callee barges in.
    assert pipeline.brain.turns == ["first", "second"]
    assert heard_texts(pipeline, "ctx-1")[-1] == GREETING
    assert pipeline.stt.interruptions == 1
    assert len(callee.clears) == 1
    clear_at = callee.clears[0]
    assert callee.barge_in_at is not None and callee.barge_in_at < clear_at

    # The callee's recording: the bot stopped within one audio chunk of the clear,
    # and said nothing until the callee had finished talking.
    pitch_start = callee.spoke[0][1]
    barge_end = callee.spoke[1][1]
    assert callee.heard_seconds(clear_at + CHUNK, barge_end) == 0.0
    played = callee.heard_seconds(pitch_start, clear_at + CHUNK)
    assert 1.0 < played < len(PITCH.split()) * 0.5  # cut in the middle

    # The heard text of the pitch is exactly what was played (to the precision
    # of the playback clock: a word ending within 60 ms of the cut is ambiguous).
    final = heard_texts(pipeline, "ctx-2")[-1]
    assert final in {words_heard(PITCH, played - 0.06), words_heard(PITCH, played + 0.06)}
    assert final and final != PITCH

    # The answer after the barge-in was heard whole, then the callee hung up.
    assert heard_texts(pipeline, "ctx-3")[-1] == ANSWER
    assert callee.heard_seconds(barge_end) == pytest.approx(len(ANSWER.split()) * 0.5, abs=0.05)
    assert pipeline.task.finish_reason == "cancel"
    assert record.outcome is CallOutcome.COMPLETED
    assert (record.campaign_id, record.prospect_id) == ("c1", "p1")
    assert callee.protocol_errors == []
    assert pipeline.violations == []  # the stream grammar holds around both transports


async def test_fifty_concurrent_calls_one_fed_garbage():
    # μ-law end to end (an STT that takes mulaw, a TTS that speaks it, like
    # Deepgram and Cartesia can): no resampling, so 50 calls and Twilio's side
    # of them fit in one event loop on a small machine.
    bot = ScriptedAgent("Hi there", {"first": ("Okay", False)}, ["first"], mulaw=True)
    numbers = [f"+1415555{n:04d}" for n in range(50)]
    garbage = numbers[17]
    params = TwilioTransportParams(passthrough_input=True)
    async with phone_stack(bot, max_calls=60, transport_params=params) as (fake, server):
        fake.default.script = [Listen(quiet=0.4), Say(tone(0.4)), Listen(quiet=0.4), HangUp()]
        fake.behave(
            garbage, script=[SendRaw('{"event": "media", "media": 7}', times=3), SendRaw(b"\x00\xff" * 50, times=5)]
        )
        calls = await asyncio.gather(*(server.place_call(n) for n in numbers))
        async with asyncio.timeout(60):
            records = await asyncio.gather(*(c.wait() for c in calls))
            await server.wait_idle()  # every call's pipeline and socket are gone
        pipelines = {c.sid: bot.calls.get(c.sid) for c in calls}
        heard = {c.sid: fake.calls[c.sid].callee for c in calls}
    by_number = dict(zip(numbers, zip(calls, records, strict=True), strict=True))
    bad_call, bad_record = by_number.pop(garbage)
    assert bad_record.outcome is CallOutcome.ERROR
    assert pipelines[bad_call.sid].task.finish_reason == "error"
    for call, record in by_number.values():
        pipeline = pipelines[call.sid]
        assert record.outcome is CallOutcome.COMPLETED, call
        assert pipeline.brain.turns == ["first"]
        assert heard_texts(pipeline, "ctx-1")[-1] == "Hi there"
        assert heard_texts(pipeline, "ctx-2")[-1] == "Okay"
        assert heard[call.sid].protocol_errors == []
        assert pipeline.violations == []


async def test_a_hang_up_mid_sentence_closes_every_service_socket_of_the_call():
    from vantum_pipeline.testing.callee import BargeIn, HangUp, Listen, Say
    from vantum_pipeline.testing.signals import speech
    from vantum_pipeline.testing.twilio import CalleeBehaviour

    example = load_example()
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
