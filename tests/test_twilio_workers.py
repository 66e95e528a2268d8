"""The Twilio server as worker processes behind one port: real processes, FakeTwilio, loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from functools import partial

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from tests import waiting
from tests.twilio_scripted import ScriptedAgent, hold_loop, tone
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.metrics import process_registry
from vantum_pipeline.settings import Secret
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.testing.callee import HangUp, Listen, Say
from vantum_pipeline.testing.twilio import FakeTwilio
from vantum_pipeline.transports.twilio.server import TwilioCall
from vantum_pipeline.transports.twilio.transport import TwilioTransportParams
from vantum_pipeline.transports.twilio.workers import TwilioWorkerPool, route, worker_paths

pytestmark = pytest.mark.timeout(180)

SCRIPT = [Listen(quiet=0.4), Say(tone(0.4)), Listen(quiet=0.4), HangUp()]


def settings_for(fake: FakeTwilio) -> TwilioSettings:
    return TwilioSettings(
        account_sid=fake.account_sid,
        auth_token=Secret(fake.auth_token),
        from_number="+15005550006",
        public_base_url="http://127.0.0.1:1",
        api_base_url=fake.base_url,
    )


@contextlib.asynccontextmanager
async def pool_stack(
    workers: int = 2, max_calls: int = 20, factory: ScriptedAgent | None = None
) -> AsyncIterator[tuple[FakeTwilio, TwilioWorkerPool]]:
    bot = factory or ScriptedAgent("Hi there", {"first": ("Okay", False)}, ["first"], mulaw=True)
    async with FakeTwilio() as fake:
        port = free_port()
        pool = TwilioWorkerPool(
            settings_for(fake),
            bot,
            workers=workers,
            port=port,
            public_base_url=f"http://127.0.0.1:{port}",
            max_calls=max_calls,
            server_options={
                "outcome_timeout": 5.0,
                "start_timeout": 30.0,
                "transport_params": TwilioTransportParams(passthrough_input=True),
            },
        )
        async with pool:
            yield fake, pool


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


@given(head=st.binary(max_size=300), workers=st.integers(min_value=1, max_value=64))
def test_any_bytes_route_to_a_running_worker_or_to_any(head: bytes, workers: int) -> None:
    index = route(head, workers)
    assert index is None or 0 <= index < workers


@given(index=st.integers(min_value=0, max_value=9999), method=st.sampled_from(["GET", "POST"]), tail=st.text())
def test_every_worker_path_routes_to_its_worker(index: int, method: str, tail: str) -> None:
    paths = worker_paths(index)
    for path in (paths.answer, paths.status, paths.amd, paths.dial, paths.media):
        head = f"{method} {path}?call={tail} HTTP/1.1\r\n".encode()
        assert route(head, index + 1) == index
        assert route(head, index) is None  # no such worker: any worker answers


def test_routing_reads_the_worker_prefix_only():
    assert route(b"POST /w1/twilio/answer?call=x HTTP/1.1\r\n", 2) == 1
    assert route(b"GET /w0/twilio/media HTTP/1.1\r\n", 2) == 0
    assert route(b"GET /w2/twilio/media HTTP/1.1\r\n", 2) is None  # no such worker
    assert route(b"GET /twilio/media HTTP/1.1\r\n", 2) is None
    assert route(b"\x16\x03\x01garbage", 2) is None
    assert route(b"GET /w99999/x HTTP/1.1\r\n", 2) is None
    assert worker_paths(3).media == "/w3/twilio/media"


async def test_calls_placed_by_different_workers_are_served_by_their_own_worker():
    async with pool_stack(workers=2) as (fake, pool):
        fake.default.script = SCRIPT
        numbers = [f"+1415555{n:04d}" for n in range(6)]
        calls = await asyncio.gather(*(pool.place_call(n, worker=i % 2) for i, n in enumerate(numbers)))
        async with asyncio.timeout(60):
            records = await asyncio.gather(*(c.wait() for c in calls))
        # The workers write their counters every 0.1 s: wait for a row written after every stream ended.
        await until(lambda: all(row["streams"] == 0 for row in pool.stats().per_worker), 10)
        stats = pool.stats()
        heard = {c.sid: fake.calls[c.sid].callee for c in calls}
    assert {c.worker for c in calls} == {0, 1}
    for call, record in zip(calls, records, strict=True):
        # Answer webhook, status callbacks and media stream all reached the worker that knows the call's
        # token: another worker would have answered 404 and the call could not have completed.
        assert record.outcome is CallOutcome.COMPLETED, (call, record)
        callee = heard[call.sid]
        assert callee is not None and callee.protocol_errors == []
        assert callee.heard_seconds(0) > 0.5  # the bot's greeting and answer played
    for index in (0, 1):
        row = stats.per_worker[index]
        assert row["calls_placed"] == 3
        assert row["streams_accepted"] == 3  # each worker served the streams of its own calls, no more
        assert row["streams"] == 0
    assert stats.unrouted == 0 and stats.routed >= 6 * 3  # answer, status callbacks, media


class MeasuredAgent(ScriptedAgent):
    """The scripted agent, its pipelines reporting to their worker's process registry."""

    def __call__(self, call: TwilioCall) -> PipelineTask:
        task = super().__call__(call)
        process_registry().counter("calls.built", "test").inc()
        MetricsCollector(process_registry()).attach(task)
        return task


async def test_the_pipelines_metrics_of_every_worker_are_summed():
    bot = MeasuredAgent("Hi there", {"first": ("Okay", False)}, ["first"], mulaw=True)
    async with pool_stack(workers=2, factory=bot) as (fake, pool):
        fake.default.script = SCRIPT
        numbers = [f"+1415555{n:04d}" for n in range(4)]
        calls = await asyncio.gather(*(pool.place_call(n, worker=i % 2) for i, n in enumerate(numbers)))
        async with asyncio.timeout(60):
            records = await asyncio.gather(*(c.wait() for c in calls))
        async with asyncio.timeout(30):
            while (await pool.metrics()).value("usage.call_seconds", "twilio") == 0:  # noqa: ASYNC110 (polled: no event)
                await asyncio.sleep(0.1)
        total = await pool.metrics()
    assert [r.outcome for r in records] == [CallOutcome.COMPLETED] * 4
    assert {c.worker for c in calls} == {0, 1}
    assert total.value("calls.built", "test") == 4  # two in each worker's registry
    assert total.value("usage.call_seconds", "twilio") > 4 * 0.8  # each call lasted over a second


class HoggingAgent(ScriptedAgent):
    """The scripted agent, whose first call in a worker holds that worker's event loop 0.15 s at a
    time for ``seconds``: a worker with more calls than its core can carry."""

    seconds = 10.0

    def __call__(self, call: TwilioCall) -> PipelineTask:
        global _HOG
        if _HOG is None:
            _HOG = asyncio.get_running_loop().create_task(hold_loop(0.15, self.seconds))
        return super().__call__(call)


_HOG: asyncio.Task[None] | None = None


async def test_the_pool_places_calls_on_the_workers_whose_loop_is_on_time():
    bot = HoggingAgent("Hi there", {"first": ("Okay", False)}, ["first"], mulaw=True)
    async with pool_stack(workers=2, factory=bot) as (fake, pool):
        fake.default.script = SCRIPT
        first = await pool.place_call("+14155550100", worker=1)  # its pipeline holds worker 1's loop
        await until(lambda: pool.stats().per_worker[1]["overloaded"] == 1, 60)
        stats = pool.stats()
        assert stats["overloaded"] == 1 and stats.per_worker[0]["overloaded"] == 0
        assert stats["loop_lag_ms"] == stats.per_worker[1]["loop_lag_ms"] >= 100  # a level: the largest
        calls = [await pool.place_call(f"+1415555{n:04d}") for n in range(1, 4)]
        assert [c.worker for c in calls] == [0, 0, 0]  # not the overloaded one, though it has fewer calls
        async with asyncio.timeout(60):
            records = await asyncio.gather(*(c.wait() for c in calls))
            await first.wait()
    assert [r.outcome for r in records] == [CallOutcome.COMPLETED] * 3


#: Wait for what another process writes into the pool's shared counters (every 0.1 s).
until = partial(waiting.until, interval=0.05)


def media_signature(token: str, url: str) -> str:
    return RequestValidator(token).compute_signature(url, {})


async def test_a_burst_of_upgrades_across_workers_never_exceeds_the_global_max_calls():
    async with pool_stack(workers=3, max_calls=5) as (fake, pool):
        base = pool.public_base_url
        assert base is not None
        urls = [f"{base.replace('http', 'ws', 1)}/w{i % 3}/twilio/media" for i in range(12)]
        async with aiohttp.ClientSession() as session:

            async def upgrade(url: str) -> aiohttp.ClientWebSocketResponse | int:
                headers = {"X-Twilio-Signature": media_signature(fake.auth_token, url)}
                try:
                    return await session.ws_connect(url, headers=headers)
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

            results = await asyncio.gather(*(upgrade(u) for u in urls))
            open_sockets = [r for r in results if isinstance(r, aiohttp.ClientWebSocketResponse)]
            refused = [r for r in results if not isinstance(r, aiohttp.ClientWebSocketResponse)]
            assert len(open_sockets) == 5
            assert refused == [503] * 7
            await until(lambda: pool.stats()["streams"] == 5, 10)
            for ws in open_sockets:
                await ws.close()
            # Every slot was given back (a worker frees it as its stream ends, before the counters say
            # so): a second burst gets five again.
            await until(lambda: pool.stats()["streams"] == 0, 10)
            again = await asyncio.gather(*(upgrade(u) for u in urls))
            reopened = [r for r in again if isinstance(r, aiohttp.ClientWebSocketResponse)]
            assert len(reopened) == 5
            for ws in reopened:
                await ws.close()


async def test_forged_and_unknown_requests_get_the_refusals_of_a_single_server():
    async with pool_stack(workers=2) as (fake, pool), aiohttp.ClientSession() as session:
        base = pool.public_base_url
        form = {"CallSid": "CA" + "0" * 32, "CallStatus": "ringing"}
        bad = {"X-Twilio-Signature": "forged"}
        async with session.post(f"{base}/w1/twilio/answer?call=nope", data=form, headers=bad) as response:
            assert response.status == 403
        async with session.post(f"{base}/w7/twilio/answer?call=nope", data=form, headers=bad) as response:
            assert response.status == 404  # no worker 7: any worker answers, and knows no such path
        async with session.post(f"{base}/twilio/answer?call=nope", data=form, headers=bad) as response:
            assert response.status == 404
        # A valid signature for a token no worker issued: hang up, as one server does.
        url = f"{base}/w0/twilio/answer?call=nope"
        signature = RequestValidator(fake.auth_token).compute_signature(url, form)
        async with session.post(url, data=form, headers={"X-Twilio-Signature": signature}) as response:
            assert response.status == 200
            assert "<Hangup" in await response.text()
        # A request line that arrives in pieces is still routed by its prefix: 403 from worker 1, not 404.
        reader, writer = await asyncio.open_connection("127.0.0.1", pool.port)
        writer.write(b"POST /w1/twi")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"lio/answer?call=nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 403"), answer[:80]
        writer.close()
        # Garbage and a silent connection do not wedge the pool.
        reader, writer = await asyncio.open_connection("127.0.0.1", pool.port)
        writer.write(b"\x00\x01 not http at all\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.0 400 Bad Request")
        writer.close()
        _silent = await asyncio.open_connection("127.0.0.1", pool.port)
        async with session.get(f"{base}/w0/twilio/media") as response:
            assert response.status == 403  # the upgrade has no signature
        _silent[1].close()
        await until(lambda: pool.stats()["rejected_signatures"] >= 3, 10)
        assert pool.stats()["rejected_signatures"] == 3


async def test_a_killed_worker_ends_its_calls_and_comes_back():
    async with pool_stack(workers=2) as (fake, pool):
        fake.default.script = [Listen(quiet=30.0), HangUp()]  # a long call
        doomed = await pool.place_call("+14155550100", worker=1)
        await until(lambda: pool.stats().per_worker[1]["streams"] == 1, 30)
        pid = pool.worker_pids()[1]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(30):
            record = await doomed.wait()
        assert record.outcome is CallOutcome.ERROR and record.status == "worker exited"
        await until(lambda: pool.worker_pids()[1] not in (None, pid), 60)
        assert pool.restarts == 1
        assert pool.stats()["streams"] == 0  # the dead worker's stream was given back
        fake.default.script = SCRIPT
        again = await pool.place_call("+14155550101", worker=1)
        async with asyncio.timeout(60):
            assert (await again.wait()).outcome is CallOutcome.COMPLETED


async def test_shutdown_leaves_no_process_behind():
    async with pool_stack(workers=2) as (fake, pool):
        fake.default.script = [Listen(quiet=30.0), HangUp()]
        await pool.place_call("+14155550102")
        await until(lambda: pool.stats()["streams"] == 1, 30)
        pids = pool.worker_pids()
        loop = asyncio.get_running_loop()
        stopping = loop.time()
    # The pool stopped with a call in progress, within its bound.
    assert loop.time() - stopping < pool.stop_timeout + 5
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    import multiprocessing

    assert multiprocessing.active_children() == []
