"""Cluster-wide limits on a real redis-server: never exceeded across processes,
freed when a holder dies, all-or-nothing, and surviving a Redis restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

redis_asyncio = pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")

from vantum_pipeline.campaign.leases import RATE_LIMIT, ClusterLeases, Lease, LeaseRefused  # noqa: E402
from vantum_pipeline.errors import ConfigurationError  # noqa: E402


def client(server: Any) -> Any:
    return redis_asyncio.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)


async def test_capacity_is_shared_and_all_or_nothing(redis_server: Any) -> None:
    r = client(redis_server)
    try:
        leases = ClusterLeases(r, namespace="t1", limits={"calls": 2, "deepgram": 1}, ttl=5)
        a = await leases.acquire("a")
        assert a == Lease("a", ("calls", "deepgram"))
        b = await leases.acquire("b")  # calls has room, deepgram does not: takes nothing
        assert isinstance(b, LeaseRefused) and b.limit == "deepgram"
        assert await leases.usage() == {"calls": 1, "deepgram": 1}
        c = await leases.acquire("c", needs=["calls"])
        assert isinstance(c, Lease)
        assert isinstance(await leases.acquire("d", needs=["calls"]), LeaseRefused)
        again = await leases.acquire("a")  # a holder asking again keeps its one place
        assert isinstance(again, Lease)
        assert await leases.usage() == {"calls": 2, "deepgram": 1}
        await leases.release(a)
        assert isinstance(await leases.acquire("b"), Lease)
    finally:
        await r.aclose()


async def test_a_dead_holders_places_expire(redis_server: Any) -> None:
    r = client(redis_server)
    try:
        leases = ClusterLeases(r, namespace="t2", limits={"calls": 1}, ttl=0.3)
        assert isinstance(await leases.acquire("crashed-worker"), Lease)
        refused = await leases.acquire("other")
        assert isinstance(refused, LeaseRefused)
        assert 0 < refused.retry_after <= 0.3
        await asyncio.sleep(0.4)  # nobody renewed
        assert isinstance(await leases.acquire("other"), Lease)
        assert not await leases.renew(Lease("crashed-worker", ("calls",)))
    finally:
        await r.aclose()


async def test_keep_renews_past_the_ttl_and_releases(redis_server: Any) -> None:
    r = client(redis_server)
    try:
        leases = ClusterLeases(r, namespace="t3", limits={"calls": 1}, ttl=1.0)
        lease = await leases.acquire("long-call")
        assert isinstance(lease, Lease)
        async with leases.keep(lease):
            await asyncio.sleep(3.0)  # three ttls
            assert isinstance(await leases.acquire("other"), LeaseRefused)
        assert await leases.usage() == {"calls": 0}
    finally:
        await r.aclose()


async def test_a_place_that_lapsed_mid_call_is_taken_again_while_it_is_free(redis_server: Any) -> None:
    """A holder renews too late (its process stalled past the ttl): its place lapsed, and the next
    renewal takes it again while nobody else has (without a calls-per-second slot); once another
    holder took it, nothing is taken (the call goes on over the limit, logged)."""
    r = client(redis_server)
    try:
        leases = ClusterLeases(r, namespace="t5", limits={"calls": 1}, calls_per_second=1, ttl=0.3)
        lease = await leases.acquire("stalled-call")
        assert isinstance(lease, Lease)
        await asyncio.sleep(0.5)  # no renewal within the ttl
        assert await leases.usage() == {"calls": 0}
        assert await leases.keep_up(lease) == lease
        assert await leases.usage() == {"calls": 1}
        assert isinstance(await leases.acquire("other"), LeaseRefused)
        await asyncio.sleep(0.5)  # lapsed again, and this time another holder is quicker
        assert isinstance(await leases.acquire("other", start=False), Lease)
        refused = await leases.keep_up(lease)
        assert isinstance(refused, LeaseRefused) and refused.limit == "calls"
        assert await r.zscore("vantum:t5:lease:calls", "stalled-call") is None
    finally:
        await r.aclose()


async def test_calls_per_second_window(redis_server: Any) -> None:
    r = client(redis_server)
    try:
        leases = ClusterLeases(r, namespace="t4", limits={"calls": 100}, calls_per_second=2, ttl=5)
        asked: list[float] = []  # when each granted request was sent: before redis granted it
        granted: list[float] = []  # when its grant came back: after
        n = 0
        while len(granted) < 6:
            before = time.monotonic()
            grant = await leases.acquire(f"h{n}")
            n += 1
            if isinstance(grant, LeaseRefused):
                assert grant.limit == RATE_LIMIT
                await asyncio.sleep(min(grant.retry_after, 0.05) + 0.001)
                continue
            asked.append(before)
            granted.append(time.monotonic())
        # Any 1 s window holds at most 2 starts: start i+2 came at least 1 s after start i. Seen from
        # here, start i came after its request went out and start i+2 before its grant came back, so
        # the reply times' jitter cannot shrink the gap below what redis enforced.
        for i in range(len(granted) - 2):
            assert granted[i + 2] - asked[i] >= 0.99, (asked, granted)
    finally:
        await r.aclose()


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="'calls'"):
        ClusterLeases(object(), namespace="x", limits={"calls": 0})


WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import redis.asyncio as redis
    from vantum_pipeline.campaign.leases import ClusterLeases, Lease

    async def main(url, name, n):
        r = redis.Redis.from_url(url)
        leases = ClusterLeases(r, namespace="burst", limits={"calls": 5}, ttl=5)
        events = []
        async def one(i):
            while True:
                lease = await leases.acquire(f"{name}-{i}")
                if isinstance(lease, Lease):
                    break
                await asyncio.sleep(0.005)
            events.append(("+", time.time()))
            await asyncio.sleep(0.03)
            events.append(("-", time.time()))
            await leases.release(lease)
        await asyncio.gather(*(one(i) for i in range(n)))
        await r.aclose()
        print(json.dumps(events))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


def test_three_processes_never_exceed_the_cap_together(redis_server: Any) -> None:
    """Three processes, 20 holders each, racing for 5 places: the cap holds cluster-wide."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, redis_server.url, f"w{i}", "20"], stdout=subprocess.PIPE)
        for i in range(3)
    ]
    events: list[tuple[str, float]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        events += [(kind, at) for kind, at in json.loads(out)]
    assert len(events) == 120
    # a release is logged before the place is given back, so counting +1 at take and -1 at release
    # over-counts, never under-counts: the measured peak is an upper bound of the real one
    peak = live = 0
    for kind, _ in sorted(events, key=lambda e: (e[1], e[0] == "+")):
        live += 1 if kind == "+" else -1
        peak = max(peak, live)
    assert peak <= 5
    assert peak >= 2  # they did overlap: the test exercised contention


async def test_leases_survive_a_redis_restart(redis_server: Any) -> None:
    r = client(redis_server)
    try:
        leases = ClusterLeases(r, namespace="t5", limits={"calls": 1}, ttl=30)
        assert isinstance(await leases.acquire("before-restart"), Lease)
        await asyncio.to_thread(redis_server.restart)
        # the client reconnects on its next command; the append-only file kept the lease
        for _ in range(50):
            try:
                refused = await leases.acquire("after-restart")
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("no reconnection to the restarted redis-server")
        assert isinstance(refused, LeaseRefused)
        assert await leases.usage() == {"calls": 1}
    finally:
        await r.aclose()
