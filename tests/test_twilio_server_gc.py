"""The Twilio server sets the garbage collector up for calls while it serves, and puts it back after."""

from __future__ import annotations

import gc
import socket

import pytest
from twilio_scripted import idle_server

pytestmark = pytest.mark.timeout(30)


class Node:
    """A tracked object in a reference cycle (only the collector frees it)."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed():
    gc.unfreeze()
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


async def test_objects_alive_at_start_are_frozen_until_stop_and_garbage_is_collected_first() -> None:
    kept = Node()
    Node()  # garbage already: collected at start, never frozen with the rest
    async with idle_server() as one:
        assert one._holds_gc
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # the modules and the SDKs, at least
        assert not any(o is kept for o in gc.get_objects())  # set aside: no pass walks it
    assert gc.get_freeze_count() == 0
    assert any(o is kept for o in gc.get_objects())  # given back to the collector


async def test_the_young_threshold_is_raised_while_serving_and_put_back_after() -> None:
    gc.set_threshold(700, 10, 10)
    async with idle_server():
        assert gc.get_threshold() == (10_000, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


async def test_a_threshold_the_application_raised_further_is_left_alone() -> None:
    gc.set_threshold(50_000, 20, 5)
    async with idle_server():
        assert gc.get_threshold() == (50_000, 20, 5)
    assert gc.get_threshold() == (50_000, 20, 5)


async def test_the_set_up_holds_until_the_last_server_stops() -> None:
    gc.set_threshold(700, 10, 10)
    first, second = idle_server(), idle_server()
    await first.start()
    await second.start()
    try:
        await first.stop()
        assert gc.get_freeze_count() > 0, "the first stop thawed the heap while the second server serves"
        assert gc.get_threshold() == (10_000, 10, 10)
    finally:
        await second.stop()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)


async def test_tune_gc_false_leaves_the_collector_alone() -> None:
    gc.set_threshold(700, 10, 10)
    async with idle_server(tune_gc=False) as one:
        assert not one._holds_gc
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == (700, 10, 10)


async def test_a_start_that_fails_holds_nothing() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        one = idle_server()
        one.port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await one.start()
        assert gc.get_freeze_count() == 0
        await one.stop()  # cleans up what start left, and releases nothing it does not hold
        assert gc.get_freeze_count() == 0
    finally:
        taken.close()


async def test_a_second_stop_releases_nothing() -> None:
    first, second = idle_server(), idle_server()
    await first.start()
    await second.start()
    await first.stop()
    await first.stop()
    assert gc.get_freeze_count() > 0
    await second.stop()
    assert gc.get_freeze_count() == 0


async def test_cyclic_garbage_made_while_serving_is_still_collected_without_asking() -> None:
    import weakref

    async with idle_server():
        first = Node()
        watch = weakref.ref(first)
        del first
        for _ in range(30_000):  # three young thresholds' worth of tracked allocations
            Node()
        assert watch() is None, "the collector never ran while the server served"


async def test_a_stop_that_is_cancelled_still_puts_the_collector_back() -> None:
    import asyncio

    gc.set_threshold(700, 10, 10)
    one = idle_server()
    await one.start()
    stopping = asyncio.ensure_future(one.stop())
    await asyncio.sleep(0)  # under way: waiting on the listener's cleanup
    assert not stopping.done()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)
    await one.stop()  # a second stop finishes the rest and releases nothing more
