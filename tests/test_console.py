"""The web console's server side: access (token, cookie, refusals), the hub's
views of live and finished calls, the event stream, recordings, campaign
figures through the provider protocol, and a hostile world (slow viewers,
too many viewers, a provider that hangs or fails)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import waiting
from vantum_pipeline.audio.wav import WavWriter
from vantum_pipeline.console import (
    CampaignStats,
    CampaignStatsProvider,
    ConsoleHub,
    ConsoleSettings,
    InMemoryCampaignStats,
    mount_console,
)
from vantum_pipeline.console.app import COOKIE
from vantum_pipeline.console.hub import Subscription
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    EndOfTurnFrame,
    HeardTextFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.processor import FrameProcessor
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.numbers import mask_number, mask_numbers_in
from vantum_pipeline.telephony.outcome import CallOutcome, CallRecord
from vantum_pipeline.testing import PipelineHarness

pytestmark = pytest.mark.timeout(30)

TOKEN = "console-token-0123456789abcdef"
NUMBER = "+14155550123"


class Server:
    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def console(tmp_path: Path):
    hub = ConsoleHub(flush_interval=0.01, recordings_dir=tmp_path)
    stats = InMemoryCampaignStats()
    app = web.Application()
    assert mount_console(app, hub, ConsoleSettings(token=Secret(TOKEN), campaign_refresh=0.2), campaigns=stats)
    async for url in serve(app):
        yield hub, stats, url


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def test_no_token_configured_means_no_routes_at_all():
    app = web.Application()
    assert mount_console(app, ConsoleHub(), ConsoleSettings(token=None)) is False
    assert mount_console(app, ConsoleHub(), ConsoleSettings.from_env({})) is False
    async for url in serve(app):
        async with aiohttp.ClientSession() as http:
            for path in ("/console", "/console/api/state", "/console/api/events"):
                async with http.get(url + path, headers=auth()) as response:
                    assert response.status == 404


def test_settings_refuse_a_weak_token_or_a_bad_path():
    with pytest.raises(ConfigurationError, match="at least 16"):
        ConsoleSettings(token=Secret("short"))
    with pytest.raises(ConfigurationError, match="path"):
        ConsoleSettings(token=Secret(TOKEN), path="console/")
    settings = ConsoleSettings.from_env({"VANTUM_CONSOLE_TOKEN": TOKEN, "VANTUM_CONSOLE_PATH": "/ops"})
    assert settings.path == "/ops" and TOKEN not in repr(settings)


async def test_requests_without_the_token_are_refused(console):
    _hub, _stats, url = console
    async with aiohttp.ClientSession() as http:
        for path in ("/console", "/console/api/state", "/console/api/events", "/console/static/console.js"):
            async with http.get(url + path) as response:
                assert response.status == 401, path
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(url + "/console/api/state", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}) as r:
            assert r.status == 403
        async with http.get(url + "/console?token=wrong-token-xxxxxxxx", allow_redirects=False) as r:
            assert r.status == 403 and COOKIE not in r.cookies
        async with http.get(url + "/console/api/state", cookies={COOKIE: "0" * 64}) as r:
            assert r.status == 403
        async with http.get(url + "/console/api/state", headers=auth()) as r:
            assert r.status == 200
            assert r.headers["Cache-Control"] == "no-store"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]


async def test_the_token_in_the_url_becomes_an_httponly_cookie_and_leaves_the_url(console):
    _hub, _stats, url = console
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: an IP host
        async with http.get(url + f"/console?token={TOKEN}", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/console"
            set_cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/console" in set_cookie
            assert TOKEN not in set_cookie and TOKEN not in str(response.headers)
        # The session cookie now opens the page, whose HTML holds no secret.
        async with http.get(url + "/console") as response:
            assert response.status == 200
            page = await response.text()
            assert 'src="/console/static/console.js"' in page and TOKEN not in page
        async with http.get(url + "/console/static/console.js") as response:
            assert response.status == 200 and "EventSource" in await response.text()
        async with http.get(url + "/console/static/../app.py") as response:
            assert response.status == 404


async def test_the_sign_in_form_takes_the_token_in_a_post_body(console):
    _hub, _stats, url = console
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url + "/console") as response:
            assert response.status == 401
            form = await response.text()
            assert 'action="/console/login"' in form and 'type="password"' in form
            assert "script" not in form and "form-action 'self'" in response.headers["Content-Security-Policy"]
        async with http.post(url + "/console/login", data={"token": "not-the-token-xxxxxx"}) as response:
            assert response.status == 403 and "console token refused" in await response.text()
        async with http.post(url + "/console/login", data={}) as response:
            assert response.status == 403
        async with http.post(url + "/console/login", data={"token": TOKEN}, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/console"
            assert TOKEN not in str(response.headers)
        async with http.get(url + "/console/api/state") as response:
            assert response.status == 200


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, object]]:
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])


async def next_call(events: AsyncIterator[tuple[str, object]]) -> dict:
    """The next ``call`` event's view (campaign figures come in between)."""
    async with asyncio.timeout(5):
        async for kind, data in events:
            if kind == "call":
                assert isinstance(data, dict)
                return data
    raise AssertionError("the event stream ended")


async def test_a_call_is_live_then_finished_with_its_outcome_cost_and_recording(console, tmp_path):
    hub, _stats, url = console
    recorder = CallRecorder(sink=MemorySink(), call_id="CA0001")
    harness = PipelineHarness([recorder.user_tap(), FrameProcessor()])
    hub.watch(harness.task, recorder, call_id="CA0001", to=NUMBER, campaign_id="spring")
    with WavWriter(tmp_path / "CA0001.wav", 8000, 1) as wav:
        wav.write(b"\x00\x01" * 8000)

    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/console/api/events", headers=auth()) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            events = _events(stream)
            kind, snapshot = await anext(events)
            assert kind == "snapshot" and [c["to"] for c in snapshot["live"]] == ["+141******23"]

            async with harness:
                await harness.send(EndOfTurnFrame("Call me back on +1 415 555 0199 please", confidence=0.9))
                view = await next_call(events)
                while not view["turns"]:
                    view = await next_call(events)
                assert view["state"] == "live"
                assert view["turns"][0] == {
                    "role": "user",
                    "text": "Call me back on +141******99 please",  # masked in the transcript too
                    "at": view["turns"][0]["at"],
                    "latencies": {},
                }
                await harness.send(TTSStartedFrame(context_id="c1"))
                await harness.send(HeardTextFrame("Sure", context_id="c1"))
                await harness.send(TTSStoppedFrame(context_id="c1"))
            # The pipeline ended; the telephony record brings the outcome and the line's cost.
            hub.call_ended(
                CallRecord("CA0001", "+141******23", CallOutcome.COMPLETED, "completed", 61.0, 0.028, campaign_id="c")
            )
            while view["state"] != "finished":
                view = await next_call(events)
    assert view["outcome"] == "completed"
    assert view["cost"]["by_service"]["twilio"] == 0.028
    assert view["recording"] is True
    assert NUMBER not in json.dumps(view)

    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/console/api/calls/CA0001/recording", headers=auth()) as response:
            assert response.status == 200 and response.content_type == "audio/wav"
            body = await response.read()
            assert body[:4] == b"RIFF" and len(body) == 44 + 16000
        headers = {**auth(), "Range": "bytes=0-99"}
        async with http.get(url + "/console/api/calls/CA0001/recording", headers=headers) as response:
            assert response.status == 206 and len(await response.read()) == 100
        async with http.get(url + "/console/api/calls/CA0002/recording", headers=auth()) as response:
            assert response.status == 404
        async with http.get(url + "/console/api/calls/CA0001", headers=auth()) as response:
            assert (await response.json())["outcome"] == "completed"


async def test_interim_words_show_live_and_give_way_to_the_final_text(console):
    hub, _stats, url = console
    recorder = CallRecorder(sink=MemorySink(), call_id="CA0003")
    harness = PipelineHarness([recorder.user_tap(), FrameProcessor()])
    hub.watch(harness.task, recorder, call_id="CA0003", to=NUMBER)

    async def until(events: AsyncIterator[tuple[str, object]], check) -> dict:  # type: ignore[no-untyped-def]
        view = await next_call(events)
        while not check(view):
            view = await next_call(events)
        return view

    async with aiohttp.ClientSession() as http, harness:
        async with http.get(url + "/console/api/events", headers=auth()) as stream:
            events = _events(stream)
            assert (await anext(events))[0] == "snapshot"
            await harness.send(InterimTranscriptionFrame("call me"))
            view = await until(events, lambda v: v["interim"])
            assert view["interim"] == "call me" and view["turns"] == []
            await harness.send(InterimTranscriptionFrame("call me back on +1 415 555 0199"))
            view = await until(events, lambda v: v["interim"] != "call me")
            assert view["interim"] == "call me back on +141******99"  # scrubbed like the transcript
            # The final text replaces the words heard so far.
            await harness.send(TranscriptionFrame("Call me back on Monday."))
            view = await until(events, lambda v: v["turns"])
            assert view["interim"] == "" and view["turns"][0]["text"] == "Call me back on Monday."
            # The next utterance's words come after the turn.
            await harness.send(InterimTranscriptionFrame("and"))
            view = await until(events, lambda v: v["interim"])
            assert view["interim"] == "and" and len(view["turns"]) == 1
    assert recorder.build(final=True)["turns"][0]["text"] == "Call me back on Monday."  # interims never recorded
    assert hub.call("CA0003")["interim"] == ""  # an ended call has no words in flight


async def test_a_live_call_has_no_recording_yet_and_a_lost_outcome_is_not_waited_for_forever(tmp_path):
    hub = ConsoleHub(recordings_dir=tmp_path, outcome_timeout=0.05)
    (tmp_path / "CA9.wav").write_bytes(b"RIFF")
    recorder = CallRecorder(sink=MemorySink(), call_id="CA9")
    harness = PipelineHarness([FrameProcessor()])
    hub.watch(harness.task, recorder, call_id="CA9", to=NUMBER)
    async with harness:
        assert hub.recording_path("CA9") is None
    assert hub.call("CA9")["state"] == "ended"
    await asyncio.sleep(0.2)
    view = hub.call("CA9")
    assert view["state"] == "finished" and view["outcome"] == "completed"  # the pipeline's own outcome
    assert hub.recording_path("CA9") == tmp_path / "CA9.wav"


async def test_a_call_whose_pipeline_never_ends_is_finished_after_its_outcome_anyway():
    hub = ConsoleHub(outcome_timeout=0.05)
    recorder = CallRecorder(sink=MemorySink(), call_id="CA7")
    harness = PipelineHarness([FrameProcessor()])
    hub.watch(harness.task, recorder, call_id="CA7", to=NUMBER)  # never run: no End will ever come
    hub.call_ended(CallRecord("CA7", "+141******23", CallOutcome.COMPLETED, "completed", 30.0, 0.014))
    assert hub.call("CA7")["state"] == "live"
    await asyncio.sleep(0.2)
    view = hub.call("CA7")
    assert view["state"] == "finished" and view["outcome"] == "completed" and view["cost"]["total"] == 0.014


def test_calls_that_never_streamed_are_shown_finished_and_finished_calls_are_bounded():
    hub = ConsoleHub(max_finished=3)
    for n in range(5):
        hub.call_ended(CallRecord(f"CA{n}", "+141******23", CallOutcome.RETRY_LATER, "busy", 0.0, 0.0))
    hub.call_ended(CallRecord(None, "+14155550100", CallOutcome.REMOVE, "failed", 0.0, 0.0))
    finished = hub.snapshot()["finished"]
    assert [c["call_id"] for c in finished] == ["unplaced-6", "CA4", "CA3"]
    assert finished[0]["to"] == "+141******00" and finished[1]["outcome"] == "retry_later"


def test_a_slow_viewer_gets_a_fresh_snapshot_instead_of_an_unbounded_queue():
    subscription = Subscription(size=4)
    for n in range(10):
        subscription.offer("call", {"n": n})
    assert subscription.queue.qsize() <= 4 and subscription.resyncs >= 1
    kinds = [subscription.queue.get_nowait()[0] for _ in range(subscription.queue.qsize())]
    assert "snapshot" in kinds
    # The server's stopping is never lost behind a full queue.
    for n in range(4):
        subscription.offer("call", {"n": n})
    subscription.offer("close", None)
    assert [subscription.queue.get_nowait()[0] for _ in range(subscription.queue.qsize())][-1] == "close"


async def test_viewers_are_bounded(tmp_path):
    hub = ConsoleHub()
    app = web.Application()
    mount_console(app, hub, ConsoleSettings(token=Secret(TOKEN), max_viewers=1, heartbeat=0.05))
    async for url in serve(app):
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/console/api/events", headers=auth()) as first:
                await first.content.readline()
                async with http.get(url + "/console/api/events", headers=auth()) as second:
                    assert second.status == 503
            # The first viewer left: a new one is let in (once the server has noticed, at its next heartbeat).
            await waiting.until(lambda: hub.subscribers == 0, 10, interval=0.02)
            async with http.get(url + "/console/api/events", headers=auth()) as third:
                assert third.status == 200


async def test_campaign_figures_come_through_the_provider_protocol(console):
    _hub, stats, url = console
    clock = iter(range(1000, 2000, 10))
    stats._clock = lambda: float(next(clock))
    stats.add_campaign("spring", name="Spring promotion", prospects=4, budget=1.0)
    assert isinstance(stats, CampaignStatsProvider)
    stats.call_ended(CallRecord("CA1", "x", CallOutcome.COMPLETED, "completed", 60, 0.014, campaign_id="spring"))
    stats.call_ended(
        CallRecord("CA2", "x", CallOutcome.RETRY_LATER, "busy", 0, 0.0, campaign_id="spring", prospect_id="p2")
    )
    stats.call_ended(
        CallRecord("CA3", "x", CallOutcome.UNREACHABLE, "no-answer", 0, 0.0, campaign_id="spring", prospect_id="p2")
    )
    stats.call_ended(CallRecord("CA4", "x", CallOutcome.COMPLETED, "completed", 90, 0.028, campaign_id="other"))
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/console/api/state", headers=auth()) as response:
            (campaign,) = (await response.json())["campaigns"]
    assert campaign["outcomes"] == {"completed": 1, "retry_later": 1, "unreachable": 1}
    assert (campaign["done"], campaign["prospects"], campaign["progress"]) == (2, 4, 0.5)
    assert campaign["spend"] == [[1000.0, 0.014], [1010.0, 0.014], [1020.0, 0.014]]
    assert campaign["spent"] == 0.014 and campaign["budget"] == 1.0
    with pytest.raises(ConfigurationError, match="unknown campaign 'nope'"):
        stats.record("nope", "completed", 0.0)


async def test_the_servers_load_comes_with_the_state_and_on_the_event_stream():
    loads = iter([{"calls": 3, "loop_lag_ms": 0.4, "overloaded": False}] * 2 + [{"calls": 9, "overloaded": True}] * 99)
    hub = ConsoleHub()
    app = web.Application()
    assert mount_console(app, hub, ConsoleSettings(token=Secret(TOKEN), campaign_refresh=0.1), load=lambda: next(loads))
    async for url in serve(app):
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/console/api/state", headers=auth()) as response:
                assert (await response.json())["load"] == {"calls": 3, "loop_lag_ms": 0.4, "overloaded": False}
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(10), http.get(url + "/console/api/events", headers=auth()) as response:
                async for line in response.content:
                    if line.startswith(b"event: load"):
                        data = await response.content.readline()
                        seen.append(json.loads(data.decode()[len("data: ") :]))
                        if seen[-1].get("overloaded"):
                            break
    assert seen[0]["calls"] == 3 and seen[-1] == {"calls": 9, "overloaded": True}  # refreshed as it changes


async def test_a_failing_load_provider_leaves_the_console_working():
    def broken() -> dict[str, Any]:
        raise RuntimeError("no server")

    app = web.Application()
    mount_console(app, ConsoleHub(), ConsoleSettings(token=Secret(TOKEN)), load=broken)
    async for url in serve(app):
        async with aiohttp.ClientSession() as http, http.get(url + "/console/api/state", headers=auth()) as response:
            assert response.status == 200 and (await response.json())["load"] is None


class HangingProvider:
    async def campaign_stats(self) -> Sequence[CampaignStats]:
        await asyncio.Event().wait()
        return []


class FailingProvider:
    async def campaign_stats(self) -> Sequence[CampaignStats]:
        raise RuntimeError("the campaign store is down")


@pytest.mark.parametrize("provider", [HangingProvider(), FailingProvider()], ids=["hangs", "fails"])
async def test_a_broken_campaign_provider_does_not_break_the_console(provider):
    hub = ConsoleHub()
    app = web.Application()
    settings = ConsoleSettings(token=Secret(TOKEN), campaign_timeout=0.1)
    mount_console(app, hub, settings, campaigns=provider)
    async for url in serve(app):
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(5), http.get(url + "/console/api/state", headers=auth()) as response:
                assert response.status == 200
                assert (await response.json())["campaigns"] == []


@settings(max_examples=300, deadline=None)
@given(
    number=st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True),
    before=st.text(max_size=12),
    after=st.text(max_size=12),
)
def test_no_full_number_survives_masking_whatever_surrounds_it(number, before, after):
    masked = mask_numbers_in(before + number + after)
    assert number not in masked and number[1:] not in masked
    assert mask_numbers_in(f"call {number}") == f"call {mask_number(number)}"


def test_numbers_in_free_text_are_masked():
    assert mask_numbers_in("ring +14155550123 or (415) 555-0123, ext 12") == (
        "ring +141******23 or (4155****23, ext 12"
    )


def test_the_twilio_server_keeps_the_registry_it_is_given_even_empty():
    from vantum_pipeline.telephony.calls import CallRegistry
    from vantum_pipeline.telephony.settings import TwilioSettings
    from vantum_pipeline.transports.twilio.server import TwilioServer

    hub = ConsoleHub()
    registry = CallRegistry(on_record=hub.call_ended)
    settings = TwilioSettings(
        account_sid="AC" + "0" * 32,
        auth_token=Secret("f" * 32),
        from_number="+15005550006",
        public_base_url="https://calls.example.com",
    )
    server = TwilioServer(settings, lambda call: None, registry=registry)  # type: ignore[arg-type,return-value]
    assert server.registry is registry  # an empty registry is falsy: it must not be replaced
