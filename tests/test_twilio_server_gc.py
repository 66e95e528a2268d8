"""The Twilio server sets the process's start-up objects aside from garbage collection while it serves."""

from __future__ import annotations

import gc
import socket

import pytest

from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.transports.twilio.server import TwilioServer

pytestmark = pytest.mark.timeout(30)


def server(**options: object) -> TwilioServer:
    settings = TwilioSettings(
        account_sid="AC" + "0" * 32,
        auth_token=Secret("f" * 32),
        from_number="+15005550006",
        public_base_url="https://calls.example.com",
    )
    return TwilioServer(settings, lambda call: None, host="127.0.0.1", port=0, **options)  # type: ignore[arg-type,return-value]


class Node:
    """A tracked object in a reference cycle (only the collector frees it)."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed():
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


async def test_objects_alive_at_start_are_frozen_until_stop_and_garbage_is_collected_first() -> None:
    kept = Node()
    Node()  # garbage already: collected at start, never frozen with the rest
    async with server() as one:
        assert one._holds_heap
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the modules and the SDKs, at least
        assert not any(o is kept for o in gc.get_objects())  # set aside: no pass walks it
    assert gc.get_freeze_count() == 0
    assert any(o is kept for o in gc.get_objects())  # given back to the collector


async def test_the_heap_stays_frozen_until_the_last_server_stops() -> None:
    first, second = server(), server()
    await first.start()
    await second.start()
    try:
        await first.stop()
        assert gc.get_freeze_count() > 0, "the first stop thawed the heap while the second server serves"
    finally:
        await second.stop()
    assert gc.get_freeze_count() == 0


async def test_freeze_gc_false_leaves_the_collector_alone() -> None:
    async with server(freeze_gc=False) as one:
        assert not one._holds_heap
        assert gc.get_freeze_count() == 0


async def test_a_start_that_fails_holds_nothing() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        one = server()
        one.port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await one.start()
        assert gc.get_freeze_count() == 0
        await one.stop()  # cleans up what start left, and releases nothing it does not hold
        assert gc.get_freeze_count() == 0
    finally:
        taken.close()


async def test_a_second_stop_releases_nothing() -> None:
    first, second = server(), server()
    await first.start()
    await second.start()
    await first.stop()
    await first.stop()
    assert gc.get_freeze_count() > 0
    await second.stop()
    assert gc.get_freeze_count() == 0
