"""FakeTwilio conformance for the sales-call features: asynchronous AMD with
machines that greet and beep, redirecting a live call, ``<Dial>`` and its
action callback, ``<Say>``, and DTMF on the media stream. Checked by a bare
aiohttp app and the official SDK, not by our server."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException

from tests.test_fake_twilio import FROM, TO, App, sdk
from tests.twilio_scripted import tone
from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.testing.callee import Dtmf, HangUp, Listen, Pause
from vantum_pipeline.testing.twilio import AnsweringMachine, CalleeBehaviour, FakeTwilio

pytestmark = pytest.mark.timeout(60)

REP = "+14155550199"


class FeatureApp(App):
    """The bare app, with an AMD callback and a Dial action that answers ``dial_twiml``."""

    def __init__(self, auth_token: str, stream_script=None, dial_twiml: str = "<Response><Hangup/></Response>"):
        super().__init__(auth_token, stream_script)
        self.dial_twiml = dial_twiml
        self.app.router.add_post("/amd", self.amd)
        self.app.router.add_post("/dial", self.dial)

    async def amd(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append(("amd", dict(form), self.valid(request, form)))
        return web.Response(status=204)

    async def dial(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append(("dial", dict(form), self.valid(request, form)))
        return web.Response(text=self.dial_twiml, content_type="text/xml")

    def of_kind(self, kind: str) -> list[dict[str, str]]:
        return [params for k, params, _valid in self.requests if k == kind]


def dominant_frequency(pcm: bytes, rate: int = 8000) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


async def test_async_amd_reports_a_machine_once_its_greeting_and_beep_are_over():
    async with FakeTwilio() as fake, FeatureApp(fake.auth_token) as app:
        fake.behave(
            TO,
            answered_by="machine_end_beep",
            machine=AnsweringMachine(greeting=tone(1.0, freq=440.0), max_record_seconds=1.0),
        )
        call = await asyncio.to_thread(
            sdk(fake).calls.create,
            to=TO,
            from_=FROM,
            url=app.url + "/answer",
            machine_detection="DetectMessageEnd",
            async_amd="true",
            async_amd_status_callback=app.url + "/amd",
        )
        await fake.wait_ended(call.sid, within=15)
        fake_call = fake.calls[call.sid]
    answer, *_ = app.of_kind("answer")
    assert "AnsweredBy" not in answer  # asynchronous: the call connected before the verdict
    (amd,) = app.of_kind("amd")
    assert set(amd) == {"AccountSid", "CallSid", "AnsweredBy", "MachineDetectionDuration"}
    assert (amd["CallSid"], amd["AnsweredBy"]) == (call.sid, "machine_end_beep")
    assert int(amd["MachineDetectionDuration"]) >= 1400  # the greeting (1 s) and the beep (0.5 s)
    assert all(valid for kind, _p, valid in app.requests if kind == "amd")
    # What the machine sent on the stream: 440 Hz greeting, then the 1 kHz beep.
    media = b"".join(base64.b64decode(m["media"]["payload"]) for m in app.events("media")[: int(1.5 / 0.02)])
    pcm = ulaw2lin(media)
    assert dominant_frequency(pcm[: 2 * 8000]) == pytest.approx(440, abs=10)
    assert dominant_frequency(pcm[2 * 8100 : 2 * 8000 + 2 * 3600]) == pytest.approx(1000, abs=10)
    assert fake_call.callee is not None and fake_call.callee.greeting_ended_at == pytest.approx(1.5, abs=0.15)


@pytest.mark.parametrize(
    ("detection", "behaviour", "reported"),
    [
        ("Enable", "machine_end_beep", "machine_start"),
        ("DetectMessageEnd", "human", "human"),
        ("Enable", "fax", "fax"),
        ("DetectMessageEnd", "unknown", "unknown"),
    ],
)
async def test_async_amd_verdicts_by_mode(detection, behaviour, reported):
    async with FakeTwilio() as fake, FeatureApp(fake.auth_token) as app:
        fake.behave(TO, answered_by=behaviour, amd_seconds=0.2, max_seconds=1.0)
        call = await asyncio.to_thread(
            sdk(fake).calls.create,
            to=TO,
            from_=FROM,
            url=app.url + "/answer",
            machine_detection=detection,
            async_amd="true",
            async_amd_status_callback=app.url + "/amd",
        )
        await fake.wait_ended(call.sid, within=15)
    (amd,) = app.of_kind("amd")
    assert amd["AnsweredBy"] == reported
    assert 150 <= int(amd["MachineDetectionDuration"]) < 1500


async def test_amd_callback_signature_can_be_broken_on_purpose():
    async with FakeTwilio() as fake, FeatureApp(fake.auth_token) as app:
        fake.behave(TO, answered_by="human", amd_seconds=0.1, bad_signature=frozenset({"amd"}), max_seconds=0.6)
        call = await asyncio.to_thread(
            sdk(fake).calls.create,
            to=TO,
            from_=FROM,
            url=app.url + "/answer",
            machine_detection="Enable",
            async_amd="true",
            async_amd_status_callback=app.url + "/amd",
        )
        await fake.wait_ended(call.sid, within=10)
    assert [valid for kind, _p, valid in app.requests if kind == "amd"] == [False]


async def test_redirecting_a_live_call_to_dial_stops_the_stream_then_posts_the_dial_action():
    async with FakeTwilio() as fake, FeatureApp(fake.auth_token) as app:
        fake.default = CalleeBehaviour(script=[Pause(30)])
        fake.behave(REP, ring_seconds=0.2, max_seconds=1.0)
        client = sdk(fake)
        call = await asyncio.to_thread(client.calls.create, to=TO, from_=FROM, url=app.url + "/answer")
        await app.wait_event("media", count=3)
        twiml = (
            f'<Response><Dial callerId="{FROM}" timeout="10" action="{app.url}/dial" method="POST">'
            f"<Number>{REP}</Number></Dial></Response>"
        )
        updated = await asyncio.to_thread(client.calls(call.sid).update, twiml=twiml)
        await app.wait_event("stop")
        await fake.wait_ended(call.sid, within=10)
        fake_call = fake.calls[call.sid]
        with pytest.raises(TwilioRestException) as info:
            await asyncio.to_thread(client.calls(call.sid).update, twiml="<Response><Hangup/></Response>")
    assert updated.sid == call.sid and info.value.code == 21220  # not in progress any more
    assert fake_call.callee is not None and fake_call.callee.end_reason == "redirected"
    (dial,) = fake_call.dials
    assert (dial.to, dial.caller_id, dial.timeout, dial.status) == (REP, FROM, 10, "completed")
    (action,) = app.of_kind("dial")
    assert action["DialCallStatus"] == "completed" and action["DialCallSid"] == dial.sid
    assert action["DialBridged"] == "true" and int(action["DialCallDuration"]) >= 1
    assert action["CallSid"] == call.sid and action["CallStatus"] == "in-progress"
    assert all(valid for kind, _p, valid in app.requests if kind == "dial")
    assert fake_call.status == "completed"


@pytest.mark.parametrize(
    ("rep", "timeout", "expected"),
    [
        ({"outcome": "busy"}, 10, "busy"),
        ({"ring_seconds": 30.0}, 5, "no-answer"),  # rings past the <Dial timeout>
        (None, 10, "failed"),  # nobody at that number
    ],
)
async def test_a_dial_that_is_not_answered_reports_why_and_the_action_twiml_runs(rep, timeout, expected):
    after = (
        "<Response><Say>Sorry, nobody is free.</Say><Connect>"
        '<Stream url="{ws}/media"><Parameter name="call_token" value="t-2"/></Stream></Connect></Response>'
    )
    async with FakeTwilio() as fake, FeatureApp(fake.auth_token) as app:
        app.dial_twiml = after.format(ws=app.url.replace("http", "ws"))
        fake.default = CalleeBehaviour(script=[Pause(30)], later_scripts=([Pause(0.3), HangUp()],))
        if rep is not None:
            fake.behave(REP, **rep)
        client = sdk(fake)
        call = await asyncio.to_thread(client.calls.create, to=TO, from_=FROM, url=app.url + "/answer")
        await app.wait_event("start")
        twiml = f'<Response><Dial timeout="{timeout}" action="{app.url}/dial"><Number>{REP}</Number></Dial></Response>'
        await asyncio.to_thread(client.calls(call.sid).update, twiml=twiml)
        await fake.wait_ended(call.sid, within=20)
        fake_call = fake.calls[call.sid]
    (action,) = app.of_kind("dial")
    assert action["DialCallStatus"] == expected and action["DialBridged"] == "false"
    assert "DialCallDuration" not in action
    assert fake_call.said == ["Sorry, nobody is free."]
    assert len(fake_call.callees) == 2 and fake_call.callees[1].parameters == {"call_token": "t-2"}
    assert fake_call.callees[1].end_reason == "callee hung up"


async def test_dtmf_goes_out_on_the_stream_as_twilio_sends_it():
    async with FakeTwilio() as fake, App(fake.auth_token) as app:
        fake.default = CalleeBehaviour(script=[Dtmf("5"), Pause(0.1), Dtmf("#"), Listen(quiet=0.1, timeout=0.3)])
        call = await asyncio.to_thread(sdk(fake).calls.create, to=TO, from_=FROM, url=app.url + "/answer")
        await app.wait_event("dtmf", count=2)
        await asyncio.to_thread(sdk(fake).calls(call.sid).update, status="completed")
        await fake.wait_ended(call.sid, within=10)
    first, second = app.events("dtmf")
    assert set(first) == {"event", "sequenceNumber", "streamSid", "dtmf", "_at"}
    assert first["dtmf"] == {"track": "inbound_track", "digit": "5"} and second["dtmf"]["digit"] == "#"
    assert first["streamSid"] == app.events("start")[0]["streamSid"]
    assert isinstance(first["sequenceNumber"], str) and json.dumps(first)
