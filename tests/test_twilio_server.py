"""The Twilio server against FakeTwilio: signatures, tokens, outcomes, hang-ups."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from loguru import logger
from twilio.request_validator import RequestValidator

from tests.twilio_scripted import ScriptedAgent, phone_stack, tone
from tests.waiting import until
from vantum_pipeline import Pipeline, PipelineTask
from vantum_pipeline.frames import Frame, HeardTextFrame, MetricsFrame, StartFrame
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.telephony.state import CallState
from vantum_pipeline.testing.callee import BargeIn, CloseSocket, Drop, HangUp, Listen, Say, SendRaw

pytestmark = pytest.mark.timeout(60)

CALLEE = "+14155550100"


def agent(**replies: tuple[str, bool]) -> ScriptedAgent:
    return ScriptedAgent("Hello there", dict(replies), ["first", "second", "third"])


async def record_of(call, server=None, within: float = 20.0):
    """The call's record, once its pipeline (if any) has finished too."""
    async with asyncio.timeout(within):
        record = await call.wait()
        if server is not None:
            await server.wait_idle()
        return record


# ---------------------------------------------------------------- signatures


async def test_bad_signature_on_the_answer_webhook_is_refused():
    bot = agent()
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, bad_signature=frozenset({"webhook"}))
        call = await server.place_call(CALLEE)
        record = await record_of(call)
        fake_call = fake.calls[call.sid]
    assert fake_call.webhook_status == 403
    assert fake_call.stream_url is None and bot.calls == {}
    assert server.rejected_signatures == 1
    assert record.outcome is CallOutcome.ERROR  # answered, but nothing was streamed


async def test_bad_signature_on_the_media_upgrade_is_refused():
    bot = agent()
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, bad_signature=frozenset({"stream"}))
        call = await server.place_call(CALLEE)
        record = await record_of(call)
        fake_call = fake.calls[call.sid]
    assert fake_call.webhook_status == 200
    assert fake_call.stream_status == 403  # refused at the upgrade: no websocket at all
    assert bot.calls == {} and record.outcome is CallOutcome.ERROR


async def test_unsigned_and_forged_requests_get_403_and_change_nothing():
    async with phone_stack(agent()) as (fake, server):
        fake.behave(CALLEE, script=[Listen(quiet=0.3), HangUp()])
        call = await server.place_call(CALLEE)
        status_url = server.status_url(call)
        async with aiohttp.ClientSession() as http:
            forged = {"CallSid": call.sid, "CallStatus": "busy"}
            async with http.post(status_url, data=forged) as response:
                assert response.status == 403
            headers = {"X-Twilio-Signature": RequestValidator("wrong").compute_signature(status_url, forged)}
            async with http.post(status_url, data=forged, headers=headers) as response:
                assert response.status == 403
            async with http.post(server.answer_url(call), data={"CallSid": call.sid}) as response:
                assert response.status == 403
            async with http.get(server.local_url + "/twilio/media") as response:
                assert response.status == 403
        record = await record_of(call)
    assert record.outcome is CallOutcome.COMPLETED  # the forged "busy" was ignored
    assert server.rejected_signatures == 4


async def _signed_stream(server, auth_token: str, token: str, call_sid: str) -> tuple[int | None, str]:
    """Open the media socket like Twilio (signed), send connected + start, return the close."""
    url = server.media_url
    signature = RequestValidator(auth_token).compute_signature(url, {})
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers={"X-Twilio-Signature": signature}) as socket:
            await socket.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            start = {
                "accountSid": "ACx",
                "streamSid": "MZ1",
                "callSid": call_sid,
                "customParameters": {"call_token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }
            await socket.send_str(json.dumps({"event": "start", "streamSid": "MZ1", "start": start}))
            message = await socket.receive(timeout=5)
            assert message.type is aiohttp.WSMsgType.CLOSE
            return socket.close_code, str(message.extra)


async def test_unknown_or_reused_call_token_closes_the_socket_with_a_reason():
    async with phone_stack(agent()) as (fake, server):
        code, reason = await _signed_stream(server, fake.auth_token, "no-such-token", "CA1")
        assert (code, reason) == (1008, "unknown call token")
        fake.behave(CALLEE, script=[Listen(quiet=0.3), HangUp()])
        call = await server.place_call(CALLEE)
        await record_of(call)
        # The token opened its one stream already: a replay is refused.
        code, reason = await _signed_stream(server, fake.auth_token, call.token, call.sid)
        assert (code, reason) == (1008, "unknown call token")


async def test_validation_can_be_switched_off_explicitly_and_says_so():
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        async with phone_stack(agent(), validate_signatures=False) as (fake, server):
            fake.behave(
                CALLEE, bad_signature=frozenset({"webhook", "stream", "status"}), script=[Listen(0.3), HangUp()]
            )
            call = await server.place_call(CALLEE)
            record = await record_of(call)
    finally:
        logger.remove(sink)
    assert record.outcome is CallOutcome.COMPLETED
    assert any("SIGNATURE VALIDATION IS OFF" in m for m in messages)


# ------------------------------------------------------------------ outcomes


@pytest.mark.parametrize(
    ("behaviour", "outcome"),
    [("busy", CallOutcome.RETRY_LATER), ("no-answer", CallOutcome.UNREACHABLE), ("failed", CallOutcome.REMOVE)],
)
async def test_unanswered_outcomes(behaviour, outcome):
    bot = agent()
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, outcome=behaviour)
        call = await server.place_call(CALLEE, campaign_id="spring")
        record = await record_of(call)
    assert record.outcome is outcome and record.status == behaviour
    assert (record.duration, record.cost, record.campaign_id) == (0.0, 0.0, "spring")
    assert record.to == "+141******00" and bot.calls == {}
    assert call.state is CallState.ENDED


@pytest.mark.parametrize(
    ("number", "outcome", "code"),
    [
        ("+1555", CallOutcome.REMOVE, 21211),  # E.164-shaped, but Twilio cannot dial it
        ("+15005550001", CallOutcome.REMOVE, 21217),
        ("+15005550002", CallOutcome.UNREACHABLE, 21214),
        ("+15005550004", CallOutcome.REMOVE, 21216),
    ],
)
async def test_numbers_twilio_refuses(number, outcome, code):
    async with phone_stack(agent()) as (fake, server):
        call = await server.place_call(number)
        assert call.ended  # refused at creation: the record exists at once
        record = await record_of(call)
        assert len(fake.requests) == 1
    assert (record.outcome, record.error_code, record.call_sid) == (outcome, code, None)


async def test_a_malformed_number_is_never_sent():
    async with phone_stack(agent()) as (fake, server):
        call = await server.place_call("415-555-0100")
        record = await record_of(call)
        assert fake.requests == []
    assert record.outcome is CallOutcome.REMOVE


async def test_completed_call_with_machine_detection_records_who_answered():
    async with phone_stack(agent()) as (fake, server):
        fake.behave(CALLEE, answered_by="machine_end_beep", script=[Listen(quiet=0.3), HangUp()])
        call = await server.place_call(CALLEE, machine_detection="DetectMessageEnd")
        record = await record_of(call)
        created = fake.requests[0].params
    assert created["MachineDetection"] == ["DetectMessageEnd"]
    assert created["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert record.outcome is CallOutcome.COMPLETED and record.answered_by == "machine_end_beep"
    assert record.duration >= 1 and record.cost == pytest.approx(0.014)


# ------------------------------------------------------------------ hang-ups


async def test_callee_hangs_up_mid_sentence_and_everything_of_the_call_closes():
    bot = agent()
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, script=[BargeIn(b"", after=0.4), HangUp()])
        call = await server.place_call(CALLEE)
        record = await record_of(call)
        async with asyncio.timeout(5):
            await server.wait_idle()
        pipeline = bot.calls[call.sid]
    assert pipeline.task.finish_reason == "cancel"
    assert pipeline.stt.closed and pipeline.tts.closed  # every processor of the call was cleaned up
    assert [r.method for r in fake.requests] == ["POST"]  # no REST hang-up: the callee was gone
    usage = [f for f in pipeline.sink.of_type(MetricsFrame) if f.metric == "usage.call_seconds"]
    assert len(usage) == 1 and 0.3 < usage[0].value < 5
    assert record.outcome is CallOutcome.COMPLETED
    cut = pipeline.sink.of_type(HeardTextFrame)[-1]
    assert cut.context_id == "ctx-1" and cut.text in ("", "Hello")


async def test_socket_dropped_without_stop_cancels_the_call():
    bot = agent()
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, script=[Listen(quiet=0.3), Drop()])
        call = await server.place_call(CALLEE)
        await record_of(call)
        async with asyncio.timeout(5):
            await server.wait_idle()
        pipeline = bot.calls[call.sid]
    assert pipeline.task.finish_reason == "cancel" and pipeline.tts.closed
    assert fake.calls[call.sid].callee.end_reason == "dropped"


async def test_hang_up_after_the_goodbye_has_played():
    bot = agent(first=("Thanks for your time goodbye", True))
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, script=[Listen(quiet=0.4), Say(tone(0.4)), Listen(quiet=5)])
        call = await server.place_call(CALLEE)
        record = await record_of(call, server)
        fake_call = fake.calls[call.sid]
        callee = fake_call.callee
        pipeline = bot.calls[call.sid]
    assert pipeline.task.finish_reason == "end"
    hangups = [r for r in fake.requests if r.method == "POST" and r.params.get("Status") == ["completed"]]
    assert len(hangups) == 1
    # Every mark came back before the hang-up request: the goodbye was heard to its end.
    last_echo = max(m.at for m in callee.marks)
    assert all(not m.cleared for m in callee.marks)
    assert fake_call.hangup_requested_at is not None
    assert hangups[0].at >= callee.started_at + last_echo - 0.01
    goodbye_seconds = 5 * 0.5
    heard_after_reply = callee.heard_seconds(start=callee.spoke[0][1])
    assert heard_after_reply == pytest.approx(goodbye_seconds, abs=0.05)
    heard = [f.text for f in pipeline.sink.of_type(HeardTextFrame) if f.context_id == "ctx-2"]
    assert heard[-1] == "Thanks for your time goodbye"
    assert record.outcome is CallOutcome.COMPLETED and callee.end_reason == "api hang-up"


async def test_a_stream_of_garbage_ends_that_call_with_an_error():
    bot = agent()
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, script=[SendRaw("{not json", times=10), Listen(quiet=5)])
        call = await server.place_call(CALLEE)
        record = await record_of(call, server)
        pipeline = bot.calls[call.sid]
    assert pipeline.task.finish_reason == "error"
    malformed = [f for f in pipeline.sink.of_type(MetricsFrame) if f.metric == "protocol.malformed"]
    assert len(malformed) == 6  # the limit (5) plus the one that ended the call
    assert record.outcome is CallOutcome.ERROR
    assert fake.calls[call.sid].callee.end_reason == "api hang-up"


# ------------------------------------------------------------ hostile webhooks


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"CallSid": "CA1", "CallStatus": "busy"}'),
        ("text/plain", b"CallSid=CA1&CallStatus=busy"),
        ("application/octet-stream", b"\xff\xfe\x00 not text"),
        (None, b"CallSid=CA1"),
    ],
)
async def test_a_webhook_body_that_is_not_a_form_is_refused_like_any_bad_signature(content_type, body):
    messages: list[tuple[str, str]] = []
    sink = logger.add(lambda m: messages.append((m.record["level"].name, str(m))), level="WARNING")
    try:
        async with phone_stack(agent()) as (_fake, server):
            call = server.registry.new_call(CALLEE, "+15005550006", price_per_minute=0.014)
            headers = {"X-Twilio-Signature": "c2lnbmF0dXJl"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http:
                for url in (server.status_url(call), server.answer_url(call)):
                    async with http.post(url, data=body, headers=headers) as response:
                        assert response.status == 403
            assert server.rejected_signatures == 2
    finally:
        logger.remove(sink)
    refusals = [text for level, text in messages if "refused POST" in text]
    assert len(refusals) == 2 and all("not a form" in text for text in refusals)
    assert not [text for level, text in messages if level in ("ERROR", "CRITICAL")]
    assert not any("Traceback" in text for _, text in messages)
    assert call.state is CallState.QUEUED and not call.ended  # nothing was processed


# ------------------------------------------------------------- max_calls


def _signed_headers(server, auth_token: str) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(auth_token).compute_signature(server.media_url, {})}


def _start_message(token: str, call_sid: str, **parameters: str) -> str:
    start = {
        "accountSid": "ACx",
        "streamSid": "MZ" + call_sid,
        "callSid": call_sid,
        "customParameters": {"call_token": token, **parameters},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    return json.dumps({"event": "start", "streamSid": "MZ" + call_sid, "start": start})


async def _upgrade(http, server, auth_token: str):
    """The media socket, or the HTTP status the upgrade was refused with."""
    try:
        return await http.ws_connect(server.media_url, headers=_signed_headers(server, auth_token))
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def _until_media(socket) -> None:
    """Wait for the bot's first audio: the call's pipeline is running."""
    async with asyncio.timeout(10):
        while True:
            message = await socket.receive()
            assert message.type is aiohttp.WSMsgType.TEXT, message
            if json.loads(message.data)["event"] == "media":
                return


class CountingAgent:
    """A pipeline factory that records how many of its pipelines are alive at each new one."""

    def __init__(self) -> None:
        self.bot = agent()
        self.tasks = []
        self.alive_at_build: list[int] = []
        self.tokens: list[str] = []

    def __call__(self, call):
        if call.parameters.get("fail"):
            raise RuntimeError("the factory refuses this call")
        task = self.bot(call)
        self.tasks.append(task)
        self.tokens.append(call.parameters["call_token"])
        self.alive_at_build.append(sum(not t.has_finished for t in self.tasks))
        return task


async def test_a_burst_of_upgrades_never_runs_more_than_max_calls_pipelines():
    factory = CountingAgent()
    async with phone_stack(factory, max_calls=2) as (fake, server):
        calls = [server.registry.new_call(CALLEE, "+15005550006", price_per_minute=0.014) for _ in range(5)]
        async with aiohttp.ClientSession() as http:
            # Five simultaneous upgrades, none has sent 'start' yet.
            results = await asyncio.gather(*(_upgrade(http, server, fake.auth_token) for _ in calls))
            sockets = [r for r in results if not isinstance(r, int)]
            assert len(sockets) == 2 and sorted(r for r in results if isinstance(r, int)) == [503, 503, 503]
            assert server.streams == 2
            for i, socket in enumerate(sockets):
                await socket.send_str(_start_message(calls[i].token, f"CA{i}"))
            for socket in sockets:
                await _until_media(socket)
            assert await _upgrade(http, server, fake.auth_token) == 503  # still full
            for socket in sockets:
                await socket.close()  # the callees hang up
            async with asyncio.timeout(10):
                await server.wait_idle()
            # The refused upgrades never read 'start': their calls' tokens still open a stream.
            for i in (2, 3, 4):
                socket = await _upgrade(http, server, fake.auth_token)
                assert not isinstance(socket, int), socket
                await socket.send_str(_start_message(calls[i].token, f"CA{i}"))
                await _until_media(socket)
                await socket.close()
                async with asyncio.timeout(10):
                    await server.wait_idle()
    assert sorted(factory.tokens) == sorted(call.token for call in calls)
    assert max(factory.alive_at_build) <= 2


async def test_calls_beyond_max_calls_are_refused_at_the_upgrade_and_end_as_errors():
    factory = CountingAgent()
    release = asyncio.Event()
    on_the_line: dict[str, asyncio.Event] = {}

    async def hold_the_line(callee) -> None:
        on_the_line.setdefault(callee.call_sid, asyncio.Event()).set()
        async with asyncio.timeout(30):
            await release.wait()
        await callee.hang_up()

    async def settled(call) -> None:
        """The call's stream is running, or the call is over."""
        line = on_the_line.setdefault(call.sid, asyncio.Event())
        waiters = {asyncio.ensure_future(line.wait()), asyncio.ensure_future(call.wait())}
        _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    numbers = [f"+1415555020{i}" for i in range(4)]
    async with phone_stack(factory, max_calls=2) as (fake, server):
        for number in numbers:
            fake.behave(number, script=hold_the_line)
        calls = await asyncio.gather(*(server.place_call(n) for n in numbers))
        async with asyncio.timeout(20):
            await asyncio.gather(*(settled(c) for c in calls))
        statuses = sorted(fake.calls[c.sid].stream_status for c in calls)
        release.set()
        records = await asyncio.gather(*(record_of(c, server) for c in calls))
    assert statuses == [101, 101, 503, 503]  # the two lines still held the slots
    assert max(factory.alive_at_build) <= 2 and len(factory.tokens) == 2
    outcomes = sorted(r.outcome.value for r in records)
    assert outcomes == sorted([CallOutcome.COMPLETED.value] * 2 + [CallOutcome.ERROR.value] * 2)


async def test_every_way_a_stream_ends_gives_its_slot_back():
    factory = CountingAgent()
    async with phone_stack(factory, max_calls=1) as (fake, server):
        calls = [server.registry.new_call(CALLEE, "+15005550006", price_per_minute=0.014) for _ in range(2)]
        async with aiohttp.ClientSession() as http:

            async def next_socket():
                async with asyncio.timeout(10):
                    await server.wait_idle()
                socket = await _upgrade(http, server, fake.auth_token)
                assert not isinstance(socket, int), f"the upgrade was refused with {socket}: a slot leaked"
                return socket

            # Closed before 'start'.
            socket = await next_socket()
            assert await _upgrade(http, server, fake.auth_token) == 503  # waiting for 'start' counts
            await socket.close()
            # An unknown call token.
            socket = await next_socket()
            await socket.send_str(_start_message("no-such-token", "CA9"))
            assert (await socket.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
            await socket.close()
            # The pipeline factory fails.
            socket = await next_socket()
            await socket.send_str(_start_message(calls[0].token, "CA0", fail="1"))
            assert (await socket.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
            await socket.close()
            # A whole call.
            socket = await next_socket()
            await socket.send_str(_start_message(calls[1].token, "CA1"))
            await _until_media(socket)
            await socket.close()
            await (await next_socket()).close()
    assert factory.tokens == [calls[1].token]


# ------------------------------------------------------- hostile media streams

OTHERS = ("+14155550101", "+14155550102")
_MEDIA = {"event": "media", "streamSid": "MZ", "media": {"track": "inbound", "payload": "////"}}


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        (SendRaw(json.dumps({**_MEDIA, "media": {"payload": "A" * 70_000}})), "closed with 1009"),
        (SendRaw("{not json", times=6), "6 malformed messages"),
        (CloseSocket(4000, "going rogue"), "code 4000 (going rogue)"),
        (CloseSocket(1011, ""), "code 1011"),
    ],
    ids=["oversized", "malformed", "abnormal-close-4000", "abnormal-close-1011"],
)
async def test_a_hostile_media_stream_ends_that_call_with_an_error_while_others_go_on(hostile, reason):
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    bot = agent()
    try:
        async with phone_stack(bot) as (fake, server):
            fake.behave(CALLEE, script=[Listen(quiet=0.3), hostile, Listen(quiet=5)])
            for number in OTHERS:
                # Still talking when the hostile call ends: they speak, and hear the bot's reply.
                fake.behave(number, script=[Listen(quiet=0.3), Say(tone(0.4)), Listen(quiet=0.6), HangUp()])
            calls = await asyncio.gather(*(server.place_call(n) for n in (CALLEE, *OTHERS)))
            records = await asyncio.gather(*(record_of(c, server) for c in calls))
            hostile_call, *other_calls = calls
            fake_calls = {c.sid: fake.calls[c.sid] for c in calls}
    finally:
        logger.remove(sink)
    assert records[0].outcome is CallOutcome.ERROR
    assert bot.calls[hostile_call.sid].task.finish_reason == "error"
    assert hostile_call.failure is not None and "protocol violation" in hostile_call.failure
    warnings = [m for m in messages if "protocol violation, ending the call" in m and hostile_call.sid in m]
    assert len(warnings) == 1 and reason in warnings[0], warnings
    assert any(r.method == "POST" and r.params.get("Status") == ["completed"] for r in fake.requests)  # hung up
    for call, record in zip(other_calls, records[1:], strict=True):
        callee = fake_calls[call.sid].callee
        assert record.outcome is CallOutcome.COMPLETED and callee.end_reason == "callee hung up"
        assert bot.calls[call.sid].task.finish_reason == "cancel"
        assert callee.heard_seconds(start=callee.spoke[0][1]) > 0.3  # the bot answered
        assert not [m for m in messages if call.sid in m]


@pytest.mark.parametrize("code", [1000, 1001])
async def test_a_normal_close_without_stop_is_the_callee_going_away(code):
    bot = agent()
    async with phone_stack(bot) as (fake, server):
        fake.behave(CALLEE, script=[Listen(quiet=0.3), CloseSocket(code)])
        call = await server.place_call(CALLEE)
        record = await record_of(call, server)
    assert bot.calls[call.sid].task.finish_reason == "cancel"
    assert record.outcome is CallOutcome.COMPLETED and call.failure is None


# ------------------------------------------------------------- stopping


class StopsTogether(FrameProcessor):
    """A processor whose cleanup can only finish once every call's cleanup has begun."""

    def __init__(self, barrier: asyncio.Barrier) -> None:
        super().__init__()
        self.barrier = barrier
        self.started = asyncio.Event()
        self.cleaned_up = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            self.started.set()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await self.barrier.wait()
        self.cleaned_up = True


async def test_stopping_the_server_stops_its_live_calls_side_by_side():
    calls = 3
    barrier = asyncio.Barrier(calls)
    built: list[StopsTogether] = []

    def factory(call):
        built.append(StopsTogether(barrier))
        return PipelineTask(Pipeline([call.transport.input(), built[-1], call.transport.output()]))

    async with phone_stack(factory) as (fake, server):
        fake.default.script = [Listen(quiet=30.0), HangUp()]
        placed = [await server.place_call(f"+1415555010{n}") for n in range(calls)]
        async with asyncio.timeout(20):  # every call's pipeline running (an open stream may still be setting up)
            await until(lambda: len(built) == calls)
            await asyncio.gather(*(p.started.wait() for p in built))
        await server.stop()
        records = [call.record for call in placed]  # no callback reaches a stopped server: stop() settled them
    # One at a time, the first call's cleanup would wait for the others' until its deadline.
    assert [p.cleaned_up for p in built] == [True] * calls
    assert all(record is not None for record in records), records


async def test_a_call_still_setting_up_when_the_server_stops_runs_no_pipeline():
    """The stop cancels the pipelines it finds; one built after it began must not start on a stopping server."""
    building = asyncio.Event()
    release = asyncio.Event()
    built: list[StopsTogether] = []

    async def factory(call):
        building.set()
        await release.wait()  # the pipeline is still being built when the stop begins
        built.append(StopsTogether(asyncio.Barrier(1)))
        return PipelineTask(Pipeline([call.transport.input(), built[-1], call.transport.output()]))

    async with phone_stack(factory) as (fake, server):
        fake.default.script = [Listen(quiet=30.0), HangUp()]
        placed = await server.place_call("+14155550110")
        async with asyncio.timeout(20):
            await building.wait()
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0)  # the stop has begun
        release.set()
        async with asyncio.timeout(10):  # bounded: the call ends with the others, not at a deadline
            await stopping
        assert len(built) == 1 and not built[0].started.is_set(), "a pipeline started on a stopping server"
        assert placed.record is not None
        assert server.streams == 0
