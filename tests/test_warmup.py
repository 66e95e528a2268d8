"""``vantum_pipeline.warmup``: the set-up a server does at start so that its first calls do not."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
from loguru import logger
from twilio_scripted import idle_server

from vantum_pipeline import warmup

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty registry for the test (the library's own steps are left as they were)."""
    monkeypatch.setattr(warmup, "_steps", {})
    monkeypatch.setattr(warmup, "_done", set())


@pytest.fixture(autouse=True)
def thawed():
    yield
    gc.unfreeze()


@pytest.fixture
def loguru_messages():
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    yield messages
    logger.remove(sink)


def test_each_step_runs_once_and_a_failed_one_is_logged_and_skipped(registry: None, loguru_messages) -> None:
    ran: list[str] = []
    warmup.register("one", lambda: ran.append("one"))
    warmup.register("broken", lambda: 1 / 0)
    warmup.register("two", lambda: ran.append("two"))
    assert warmup.pending() == ["one", "broken", "two"]
    timings = warmup.warm_up()
    assert ran == ["one", "two"] and set(timings) == {"one", "two"}
    assert all(seconds >= 0 for seconds in timings.values())
    assert any("'broken' failed (ZeroDivisionError" in m for m in loguru_messages)
    assert warmup.pending() == [] and warmup.warm_up() == {}
    # A step registered again once it ran is not run again; a new one is.
    warmup.register("one", lambda: ran.append("again"))
    warmup.register("three", lambda: ran.append("three"))
    assert warmup.pending() == ["three"]
    warmup.warm_up()
    assert ran == ["one", "two", "three"]


def test_a_step_that_registers_a_step_does_not_deadlock(registry: None) -> None:
    # As when a step imports an application module that imports a service module.
    ran: list[str] = []
    warmup.register("outer", lambda: warmup.register("inner", lambda: ran.append("inner")))
    assert warmup.warm_up().keys() == {"outer"}
    assert warmup.pending() == ["inner"]
    warmup.warm_up()
    assert ran == ["inner"]


def test_a_step_registered_twice_before_the_warm_up_runs_once(registry: None) -> None:
    ran: list[str] = []
    warmup.register("http", lambda: ran.append("first"))
    warmup.register("http", lambda: ran.append("second"))
    warmup.warm_up()
    assert ran == ["second"]


class Made:
    """An object a warm-up step leaves behind (as an import leaves its module's objects)."""


async def test_the_server_warms_up_before_it_freezes_the_heap(registry: None) -> None:
    made: list[Made] = []
    warmup.register("test", lambda: made.append(Made()))
    async with idle_server():
        assert len(made) == 1 and warmup.pending() == []
        # Made before the heap was frozen: no collection walks it.
        assert not any(o is made[0] for o in gc.get_objects())
    async with idle_server():  # a second start has nothing left to do
        assert len(made) == 1


async def test_warm_up_false_leaves_the_steps_to_the_first_call(registry: None) -> None:
    warmup.register("test", lambda: None)
    async with idle_server(warm_up=False):
        assert warmup.pending() == ["test"]


_FIRST_USE = """
import asyncio, json, sys
from aiohttp import web
import vantum_pipeline.transports.twilio.server  # registers the Twilio REST step
from vantum_pipeline.services.cartesia import CartesiaTTSService  # registers its steps
from vantum_pipeline.services.openai import OpenAILLMService
from vantum_pipeline import warmup
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.settings import TwilioSettings

if sys.argv[1] == "warm":
    warmup.warm_up()

async def first_call_uses() -> None:
    # What a call does first, through the library's own code where it has it: the Twilio REST
    # client, the Cartesia client and a request's transform, an HTTP request on loopback.
    settings = TwilioSettings(account_sid="AC" + "0" * 32, auth_token=Secret("f" * 32),
                              from_number="+15005550006", public_base_url="https://calls.example.com")
    client = TwilioRestClient(settings)
    client._sdk().calls("CA" + "0" * 32)
    await client.aclose()
    from cartesia import AsyncCartesia
    from cartesia._utils import async_maybe_transform
    from cartesia.types import WebsocketClientEventParam
    cartesia = AsyncCartesia(api_key="k", max_retries=0)
    cartesia.tts
    await async_maybe_transform({"context_id": "c", "model_id": "m", "transcript": "Hi.", "voice": {"id": "v"},
                                 "output_format": {"container": "raw", "encoding": "pcm_mulaw",
                                                   "sample_rate": 8000}}, WebsocketClientEventParam)
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="ok"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with cartesia._client as http:  # the SDK's own httpx client
        assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
    await runner.cleanup()

before = set(sys.modules)
asyncio.run(first_call_uses())
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def first_use_imports(mode: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _FIRST_USE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return imported


def test_after_the_warm_up_a_first_call_imports_next_to_nothing() -> None:
    # In fresh processes: without the warm-up, the first use of the SDKs imports hundreds of modules
    # (on the event loop, in the middle of a call); after it, next to none.
    cold = first_use_imports("cold")
    warm = first_use_imports("warm")
    assert len(cold) >= 300, len(cold)
    assert len(warm) <= 10, warm
