"""FakeTwilio conformance: the official twilio SDK against it, and its side of
the webhooks and the media stream as Twilio does them (checked by a bare
aiohttp app, not by our server)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import pytest
from aiohttp import WSMsgType, web
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from vantum_pipeline.testing.callee import Callee, Drop, HangUp, Listen, Pause
from vantum_pipeline.testing.twilio import CalleeBehaviour, FakeTwilio

pytestmark = pytest.mark.timeout(60)

TO = "+14155550123"
FROM = "+15005550006"


def sdk(fake: FakeTwilio, token: str | None = None) -> Client:
    client = Client(fake.account_sid, token or fake.auth_token, environment={"TWILIO_EDGE": ""})
    client.api.base_url = fake.base_url
    return client


class App:
    """A bare webhook + media-stream server that checks Twilio's signatures."""

    def __init__(self, auth_token: str, stream_script=None, *, reads: bool = True) -> None:
        self.validator = RequestValidator(auth_token)
        #: False: the stream script reads the socket itself.
        self.reads = reads
        self.requests: list[tuple[str, dict[str, str], bool]] = []
        self.messages: list[dict] = []
        self.stream_script = stream_script
        self.upgrade_valid: bool | None = None
        self.arrived = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/answer", self.answer)
        self.app.router.add_post("/status", self.status)
        self.app.router.add_get("/media", self.media)

    async def __aenter__(self) -> App:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def valid(self, request: web.Request, params) -> bool:
        url = (
            self.url.replace("http", "ws") + request.path_qs if request.path == "/media" else self.url + request.path_qs
        )
        return self.validator.validate(url, params, request.headers.get("X-Twilio-Signature", ""))

    async def answer(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append(("answer", dict(form), self.valid(request, form)))
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="{self.url.replace("http", "ws")}/media"><Parameter name="call_token" value="t-1"/>'
            '<Parameter name="campaign_id" value="spring"/></Stream></Connect></Response>'
        )
        return web.Response(text=twiml, content_type="text/xml")

    async def status(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append(("status", dict(form), self.valid(request, form)))
        return web.Response(status=204)

    async def media(self, request: web.Request) -> web.StreamResponse:
        self.upgrade_valid = self.valid(request, {})
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        reader = asyncio.ensure_future(self._read(socket) if self.reads else asyncio.sleep(0))
        try:
            if self.stream_script is not None:
                await self.stream_script(socket, self)
            await reader
        finally:
            reader.cancel()
        return socket

    async def _read(self, socket: web.WebSocketResponse) -> None:
        async for message in socket:
            if message.type is WSMsgType.TEXT:
                self.messages.append(json.loads(message.data) | {"_at": time.monotonic()})
                self.arrived.set()

    def events(self, name: str) -> list[dict]:
        return [m for m in self.messages if m["event"] == name]

    async def wait_event(self, name: str, count: int = 1, within: float = 5.0) -> dict:
        async with asyncio.timeout(within):
            while len(self.events(name)) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events(name)[count - 1]


# ------------------------------------------------------------------- REST


async def test_the_sdk_creates_fetches_and_hangs_up_a_call():
    async with FakeTwilio() as fake, App(fake.auth_token) as app:
        fake.default = CalleeBehaviour(script=[Pause(30)])
        client = sdk(fake)
        call = await asyncio.to_thread(
            client.calls.create,
            to=TO,
            from_=FROM,
            url=app.url + "/answer",
            status_callback=app.url + "/status",
            status_callback_event=["initiated", "ringing", "answered", "completed"],
        )
        assert call.sid.startswith("CA") and len(call.sid) == 34 and call.status == "queued"
        assert call.direction == "outbound-api" and call.to == TO
        await app.wait_event("media", count=5)
        fetched = await asyncio.to_thread(client.calls(call.sid).fetch)
        assert fetched.status == "in-progress"
        await asyncio.sleep(1.1)
        hung_up = await asyncio.to_thread(client.calls(call.sid).update, status="completed")
        assert hung_up.sid == call.sid
        await fake.wait_ended(call.sid, within=5)
        fetched = await asyncio.to_thread(client.calls(call.sid).fetch)
        await app.wait_event("stop")
    assert fetched.status == "completed" and int(fetched.duration) >= 1
    statuses = [(kind, params.get("CallStatus"), ok) for kind, params, ok in app.requests]
    assert statuses == [
        ("status", "initiated", True),
        ("status", "ringing", True),
        ("answer", "in-progress", True),
        ("status", "in-progress", True),
        ("status", "completed", True),
    ]
    completed = app.requests[-1][1]
    assert int(completed["CallDuration"]) >= 1 and completed["CallSid"] == call.sid
    start = app.events("start")[0]
    assert start["start"]["customParameters"] == {"call_token": "t-1", "campaign_id": "spring"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert app.upgrade_valid is True and app.events("connected")[0]["protocol"] == "Call"
    media = app.events("media")
    assert len(base64.b64decode(media[0]["media"]["payload"])) == 160
    assert [m["sequenceNumber"] for m in app.messages[1:4]] == ["1", "2", "3"]
    # Real time: 20 ms per media message.
    span = media[-1]["_at"] - media[0]["_at"]
    assert span >= (len(media) - 1) * 0.02 * 0.8


@pytest.mark.parametrize(
    ("to", "from_", "code"),
    [
        ("+1555", FROM, 21211),
        ("not-a-number", FROM, 21211),
        ("+15005550001", FROM, 21217),
        ("+15005550002", FROM, 21214),
        ("+15005550003", FROM, 21215),
        ("+15005550004", FROM, 21216),
        (TO, "+15005550001", 21212),
    ],
)
async def test_refused_numbers_raise_twilio_errors(to, from_, code):
    async with FakeTwilio() as fake:
        client = sdk(fake)
        with pytest.raises(TwilioRestException) as info:
            await asyncio.to_thread(client.calls.create, to=to, from_=from_, twiml="<Response/>")
        assert fake.calls == {}
    assert (info.value.status, info.value.code) == (400, code)


async def test_bad_credentials_and_missing_parameters():
    async with FakeTwilio() as fake:
        with pytest.raises(TwilioRestException) as info:
            await asyncio.to_thread(sdk(fake, token="wrong").calls.create, to=TO, from_=FROM, twiml="<Response/>")
        assert (info.value.status, info.value.code) == (401, 20003)
        with pytest.raises(TwilioRestException) as info:
            await asyncio.to_thread(sdk(fake).calls.create, to=TO, from_=FROM)
        assert info.value.code == 21205
        with pytest.raises(TwilioRestException) as info:
            await asyncio.to_thread(sdk(fake).calls("CA" + "0" * 32).fetch)
        assert (info.value.status, info.value.code) == (404, 20404)


@pytest.mark.parametrize(("outcome", "sip"), [("busy", "486"), ("no-answer", "487"), ("failed", "404")])
async def test_unanswered_calls_post_their_final_status_only_when_asked(outcome, sip):
    async with FakeTwilio() as fake, App(fake.auth_token) as app:
        fake.behave(TO, outcome=outcome)
        client = sdk(fake)
        call = await asyncio.to_thread(
            client.calls.create, to=TO, from_=FROM, url=app.url + "/answer", status_callback=app.url + "/status"
        )
        await fake.wait_ended(call.sid, within=5)
    # No StatusCallbackEvent: Twilio posts the final status only.
    [(kind, params, valid)] = app.requests
    assert (kind, params["CallStatus"], params["SipResponseCode"], valid) == ("status", outcome, sip, True)
    assert params["CallDuration"] == "0"


async def test_bad_signatures_on_purpose():
    async with FakeTwilio() as fake, App(fake.auth_token) as app:
        fake.behave(TO, bad_signature=frozenset({"webhook", "stream", "status"}), script=[HangUp()])
        call = await asyncio.to_thread(
            sdk(fake).calls.create, to=TO, from_=FROM, url=app.url + "/answer", status_callback=app.url + "/status"
        )
        await fake.wait_ended(call.sid, within=5)
    assert [valid for _kind, _params, valid in app.requests] == [False, False]
    assert app.upgrade_valid is False


# ------------------------------------------------------------ media stream


def mulaw(seconds: float) -> str:
    return base64.b64encode(b"\x10" * int(8000 * seconds)).decode()


async def test_marks_echo_after_playback_and_a_clear_echoes_the_rest_unplayed():
    async def bot(socket: web.WebSocketResponse, app: App) -> None:
        start = await app.wait_event("start")
        sid = start["streamSid"]
        sent_at = time.monotonic()
        for name in ("m1", "m2"):
            await socket.send_str(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": mulaw(0.4)}}))
            await socket.send_str(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}}))
        first = await app.wait_event("mark")
        app.first_echo_after = first["_at"] - sent_at
        await asyncio.sleep(0.1)
        await socket.send_str(json.dumps({"event": "clear", "streamSid": sid}))
        await app.wait_event("mark", count=2)
        app.second_echo_after_clear = app.events("mark")[1]["_at"] - time.monotonic()

    async with FakeTwilio() as fake, App(fake.auth_token, stream_script=bot) as app:
        fake.default = CalleeBehaviour(script=[Pause(1.5), HangUp()])
        call = await asyncio.to_thread(sdk(fake).calls.create, to=TO, from_=FROM, url=app.url + "/answer")
        await fake.wait_ended(call.sid, within=10)
        callee = fake.calls[call.sid].callee
    assert [m["mark"]["name"] for m in app.events("mark")] == ["m1", "m2"]
    assert 0.35 <= app.first_echo_after < 1.0  # m1 came back once its 0.4 s had played
    assert [(m.name, m.cleared) for m in callee.marks] == [("m1", False), ("m2", True)]
    # The clear cut m2's audio short: about 0.5 s heard of the 0.8 s sent (the clear goes 0.1 s after m1's
    # echo; the rest is two socket hops and a tick, which a loaded machine may stretch).
    assert callee.clears and 0.45 <= callee.heard_seconds() <= 0.75
    assert app.events("stop")[0]["stop"]["callSid"] == call.sid


async def test_a_hang_up_reaches_a_server_that_runs_behind():
    """The callee hangs up while the server, running behind, reads nothing and goes on sending audio:
    its ``stop`` still reaches the server once it catches up, last and once, and no media follows it.

    (This passes on the old hang-up too: here the server's event loop is free, so the ``stop`` leaves
    the kernel at once. The loss it guards against came with a saturated loop, in the call-density
    benchmark at K = 200.)
    """
    events: list[str] = []
    done = asyncio.Event()

    async def bot(socket: web.WebSocketResponse, app: App) -> None:
        try:
            while (message := await socket.receive()).type is WSMsgType.TEXT:
                if (first := json.loads(message.data))["event"] == "start":
                    sid = first["streamSid"]
                    break
            payload = mulaw(0.2)

            async def talk() -> None:
                with contextlib.suppress(Exception):
                    while True:
                        media = {"event": "media", "streamSid": sid, "media": {"payload": payload}}
                        await socket.send_str(json.dumps(media))
                        await asyncio.sleep(0.005)

            talking = asyncio.ensure_future(talk())
            await asyncio.sleep(2.5)  # behind: nothing read for longer than a hang-up used to wait
            talking.cancel()
            async for message in socket:
                if message.type is WSMsgType.TEXT:
                    events.append(json.loads(message.data)["event"])
        finally:
            done.set()

    async with FakeTwilio() as fake, App(fake.auth_token, stream_script=bot, reads=False) as app:
        fake.default = CalleeBehaviour(script=[Pause(0.3), HangUp()])
        call = await asyncio.to_thread(sdk(fake).calls.create, to=TO, from_=FROM, url=app.url + "/answer")
        async with asyncio.timeout(20):
            await done.wait()
        await fake.wait_ended(call.sid, within=10)
        assert fake.calls[call.sid].callee.end_reason == "callee hung up"
    assert "stop" in events, f"the server read {len(events)} messages and no 'stop'"
    assert events[-1] == "stop" and events.count("stop") == 1


async def test_a_dropped_connection_sends_no_stop():
    async with FakeTwilio() as fake, App(fake.auth_token) as app:
        fake.default = CalleeBehaviour(script=[Pause(0.3), Drop()])
        call = await asyncio.to_thread(sdk(fake).calls.create, to=TO, from_=FROM, url=app.url + "/answer")
        await fake.wait_ended(call.sid, within=10)
        assert fake.calls[call.sid].callee.end_reason == "dropped"
    assert app.events("stop") == [] and len(app.events("media")) >= 5


async def test_a_callee_who_listens_waits_for_the_bot_then_hangs_up():
    async def bot(socket: web.WebSocketResponse, app: App) -> None:
        sid = (await app.wait_event("start"))["streamSid"]
        await asyncio.sleep(0.2)
        await socket.send_str(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": mulaw(0.3)}}))

    async with FakeTwilio() as fake, App(fake.auth_token, stream_script=bot) as app:
        fake.default = CalleeBehaviour(script=[Listen(quiet=0.3), HangUp()])
        call = await asyncio.to_thread(sdk(fake).calls.create, to=TO, from_=FROM, url=app.url + "/answer")
        await fake.wait_ended(call.sid, within=10)
        callee = fake.calls[call.sid].callee
    assert callee.end_reason == "callee hung up" and callee.heard_seconds() == pytest.approx(0.3, abs=0.021)
    assert callee.heard[0].at >= 0.2


class _Recorder:
    """Where a Callee writes: the texts it sends."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def send_str(self, text: str) -> None:
        self.texts.append(text)


@settings(max_examples=200, deadline=None)
@given(
    stream_sid=st.text(max_size=40),
    ticks=st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=5),
    payloads=st.lists(st.binary(min_size=1, max_size=400), max_size=5),
)
def test_the_callees_media_messages_are_twilios_json(stream_sid: str, ticks: list[int], payloads: list[bytes]) -> None:
    """The callee writes its media messages out by hand (50 a second each):
    byte for byte what ``json.dumps`` gives for Twilio's message, for any
    stream SID (quotes, backslashes, any Unicode), tick and payload."""

    async def scenario() -> list[str]:
        recorder = _Recorder()
        callee = Callee(recorder, stream_sid=stream_sid, call_sid="CA1", account_sid="AC1", parameters={})
        callee._outgoing.extend(payloads)
        for tick in ticks:
            await callee._send_media(tick)
        return recorder.texts

    texts = asyncio.run(scenario())
    sent = [*payloads, *[b"\xff" * 160] * len(ticks)][: len(ticks)]  # then μ-law silence
    expected = [
        json.dumps(
            {
                "event": "media",
                "sequenceNumber": str(i + 1),
                "streamSid": stream_sid,
                "media": {
                    "track": "inbound",
                    "chunk": str(tick + 1),
                    "timestamp": str(round(tick * 0.02 * 1000)),
                    "payload": base64.b64encode(payload).decode("ascii"),
                },
            }
        )
        for i, (tick, payload) in enumerate(zip(ticks, sent, strict=True))
    ]
    assert texts == expected
