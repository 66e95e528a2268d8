"""The console's campaign figures read from a real campaign store, written by the runner against
FakeTwilio: they match the store's own counts during and after a run, reads are incremental and
shared between viewers, a restart's forgotten attempts are not counted, and the writer is never
blocked or written to."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.test_campaign_runner import TUESDAY_MORNING_NY, numbers, world
from vantum_pipeline.campaign.clock import FrozenClock, SystemClock
from vantum_pipeline.campaign.figures import StoreCampaignStats
from vantum_pipeline.campaign.rules import ProspectState
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.console import CampaignStats, CampaignStatsProvider, ConsoleHub, ConsoleSettings, mount_console
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.calls import place_call

pytestmark = pytest.mark.timeout(120)

FINAL = {state.value for state in ProspectState if state.final}
TOKEN = "figures-console-token-0123456789"


def expected(store: CampaignStore, campaign_id: str) -> tuple[int, int, dict[str, int], float]:
    """What the store's own queries say: prospects, done, outcomes of ended attempts, spend."""
    states = store.state_counts(campaign_id)
    done = sum(count for state, count in states.items() if state in FINAL)
    return sum(states.values()), done, store.outcome_counts(campaign_id), store.spend(campaign_id)


def only(stats: list[CampaignStats] | tuple[CampaignStats, ...] | object) -> CampaignStats:
    assert isinstance(stats, list) and len(stats) == 1, stats
    return stats[0]


async def test_figures_follow_the_runner_and_match_the_store(tmp_path: Path) -> None:
    prospects = numbers(8)
    busy, failed, booked, declined = (n for n, _ in prospects[:4])
    async with world(
        tmp_path,
        prospects,
        phones={busy: "busy", failed: "failed"},
        results={booked: "meeting_booked", declined: "not_interested"},
        rules="max_concurrent_calls = 3\ncalls_per_second = 20\nbudget_usd = 50.0",
        cost_per_call=0.25,
        line_seconds=0.4,
        dnc=[prospects[7][0]],  # settled without a call: never dialled
    ) as w:
        stats = StoreCampaignStats(w.store.path, budgets={"test": 50.0}, min_interval=0.0)
        assert isinstance(stats, CampaignStatsProvider)
        before = only(await stats.campaign_stats())
        assert (before.prospects, before.done, before.in_progress, dict(before.outcomes)) == (8, 0, 0, {})
        assert before.state == "waiting" and before.name == "Test campaign" and before.budget == 50.0

        seen: list[CampaignStats] = []

        async def watch() -> None:
            while True:
                seen.append(only(await stats.campaign_stats()))
                await asyncio.sleep(0.05)

        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(watch())
            summary = await w.runner(FrozenClock(TUESDAY_MORNING_NY)).run()
            watcher.cancel()
        assert summary.reason == "waiting"  # the busy prospect's retry is not due yet

        after = only(await stats.campaign_stats())
        prospects_total, done, outcomes, spend = expected(w.store, "test")
        assert (after.prospects, after.done, dict(after.outcomes)) == (prospects_total, done, outcomes)
        assert after.done == 7 and outcomes["busy"] == 1 and outcomes["meeting_booked"] == 1
        assert w.state(prospects[7][0]) == ("dnc", "do_not_call_list", 0) and sum(outcomes.values()) == 7
        assert after.as_dict()["spent"] == pytest.approx(spend) and spend > 0
        assert after.in_progress == 0 and after.state == "waiting"
        # While it ran: calls in progress, and progress that never went backwards.
        assert any(s.in_progress > 0 for s in seen) and max(s.in_progress for s in seen) <= 3
        dones = [s.done for s in seen]
        assert dones == sorted(dones)
        # The spend curve: one point per ended call, in time order, ending at the total.
        times = [at for at, _ in after.spend]
        totals = [total for _, total in after.spend]
        assert len(after.spend) == sum(outcomes.values()) and times == sorted(times) and totals == sorted(totals)
        assert totals[-1] == pytest.approx(spend)
        await stats.aclose()


async def test_reads_are_incremental_and_shared(tmp_path: Path) -> None:
    async with world(tmp_path, numbers(6), rules="calls_per_second = 20", line_seconds=0.1) as w:
        await w.runner(FrozenClock(TUESDAY_MORNING_NY)).run()
        stats = StoreCampaignStats(w.store.path, min_interval=60.0)
        # Ten viewers at once: one read.
        results = await asyncio.gather(*(stats.campaign_stats() for _ in range(10)))
        assert stats.reads == 1 and all(r is results[0] for r in results)
        assert stats.rows_read == 6  # the history, once

        stats.min_interval = 0.0
        await stats.campaign_stats()
        assert stats.reads == 1  # nothing was committed since: no query beyond data_version

        # One more prospect, one more call: the next read fetches that attempt only.
        w.store.import_prospects("test", [_prospect(w, "+14155559999")])
        await w.runner(FrozenClock(TUESDAY_MORNING_NY)).run()
        figures = only(await stats.campaign_stats())
        assert stats.reads == 2 and stats.rows_read == 7
        assert (figures.prospects, figures.done, figures.outcomes["completed"]) == (7, 7, 7)
        await stats.aclose()


def _prospect(w, number: str):  # type: ignore[no-untyped-def]
    from vantum_pipeline.campaign.prospects import read_prospects

    path = w.config.prospects.parent / "more.csv"
    path.write_text(f"number,name,company\n{number},Late Prospect,Co\n", encoding="utf-8")
    return read_prospects(path, default_timezone=w.config.default_timezone).prospects[0]


async def test_a_restart_forgets_attempts_never_placed_and_the_figures_follow(tmp_path: Path) -> None:
    prospects = numbers(3)
    placed_unrecorded, never_placed = prospects[0][0], prospects[1][0]
    async with world(tmp_path, prospects, line_seconds=0.2) as w:
        stats = StoreCampaignStats(w.store.path, min_interval=0.0)
        now = TUESDAY_MORNING_NY.timestamp()
        # A dead runner's leftovers: two claimed attempts, one of them placed on Twilio.
        first = w.store.claim("test", placed_unrecorded, now)
        second = w.store.claim("test", never_placed, now)
        assert first and second
        twiml = '<Response><Pause length="0.2"/></Response>'
        await place_call(w.client, placed_unrecorded, "+15005550006", twiml=twiml)
        dialing = only(await stats.campaign_stats())
        assert dialing.in_progress == 2 and dialing.state == "calling" and not dialing.outcomes

        # The restart forgets the never-placed attempt (its row is deleted: the next insert
        # may reuse its rowid), reconciles the other, and dials.
        summary = await w.runner(SystemClock()).run()
        assert summary.reconciled == 2 and summary.reason == "finished"
        after = only(await stats.campaign_stats())
        total, done, outcomes, spend = expected(w.store, "test")
        assert (after.prospects, after.done, dict(after.outcomes)) == (total, done, outcomes) == (3, 3, outcomes)
        assert outcomes == {"interrupted": 1, "completed": 3}
        assert after.in_progress == 0 and after.state == "finished"
        assert after.as_dict()["spent"] == pytest.approx(spend)
        await stats.aclose()


async def test_the_spend_curve_is_bounded(tmp_path: Path) -> None:
    async with world(tmp_path, numbers(12), rules="calls_per_second = 20", cost_per_call=0.5, line_seconds=0.05) as w:
        await w.runner(FrozenClock(TUESDAY_MORNING_NY)).run()
        stats = StoreCampaignStats(w.store.path, max_points=4)
        figures = only(await stats.campaign_stats())
        assert 2 <= len(figures.spend) <= 5
        assert figures.spend[-1][1] == pytest.approx(w.store.spend("test")) and w.store.spend("test") >= 12 * 0.5
        assert [t for t, _ in figures.spend] == sorted(t for t, _ in figures.spend)
        await stats.aclose()


async def test_the_writer_is_never_blocked_nor_written_to(tmp_path: Path) -> None:
    async with world(tmp_path, numbers(2)) as w:
        stats = StoreCampaignStats(w.store.path, min_interval=0.0, query_timeout=1.0)
        # The runner in the middle of a transaction: the read still answers at once (WAL).
        with w.store.transaction() as db:
            db.execute("UPDATE prospects SET state = 'dialing' WHERE id = ?", (numbers(1)[0][0],))
            async with asyncio.timeout(2.0):
                figures = only(await stats.campaign_stats())
            assert figures.in_progress == 0  # the uncommitted change is not seen
        assert only(await stats.campaign_stats()).in_progress == 1
        # Read-only: its connection refuses writes.
        assert stats._db is not None
        with pytest.raises(sqlite3.OperationalError):
            stats._db.execute("DELETE FROM prospects")
        assert len(w.store.prospects("test")) == 2
        await stats.aclose()


async def test_a_cancelled_viewer_leaves_the_read_for_the_next(tmp_path: Path) -> None:
    async with world(tmp_path, numbers(2)) as w:
        stats = StoreCampaignStats(w.store.path, min_interval=0.0)
        first = asyncio.ensure_future(stats.campaign_stats())
        await asyncio.sleep(0)
        first.cancel()
        figures = only(await stats.campaign_stats())
        assert figures.prospects == 2 and stats.reads == 1
        await stats.aclose()


async def test_no_store_yet_and_a_store_from_the_future(tmp_path: Path) -> None:
    missing = StoreCampaignStats(tmp_path / "nowhere" / "campaign.sqlite")
    assert await missing.campaign_stats() == []
    path = tmp_path / "future.sqlite"
    CampaignStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ConfigurationError, match="schema version 99"):
        await StoreCampaignStats(path).campaign_stats()
    with pytest.raises(ConfigurationError, match="max_points"):
        StoreCampaignStats(path, max_points=1)


async def test_the_console_shows_the_store_figures(tmp_path: Path) -> None:
    async with world(tmp_path, numbers(3), rules="calls_per_second = 20", cost_per_call=0.1, line_seconds=0.05) as w:
        await w.runner(FrozenClock(TUESDAY_MORNING_NY)).run()
        stats = StoreCampaignStats(w.store.path, budgets={"test": 1.0})
        server = TestServer(_app(stats))
        async with TestClient(server) as client:
            response = await client.get("/console/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status == 200
            campaigns = (await response.json())["campaigns"]
        await stats.aclose()
        spend = w.store.spend("test")
    assert len(campaigns) == 1
    shown = campaigns[0]
    assert (shown["campaign_id"], shown["prospects"], shown["done"], shown["progress"]) == ("test", 3, 3, 1.0)
    assert shown["outcomes"] == {"completed": 3} and shown["in_progress"] == 0 and shown["state"] == "finished"
    assert shown["budget"] == 1.0 and shown["spent"] == pytest.approx(spend) and spend >= 0.3


def _app(stats: StoreCampaignStats):  # type: ignore[no-untyped-def]
    from aiohttp import web

    app = web.Application()
    assert mount_console(app, ConsoleHub(), ConsoleSettings(token=Secret(TOKEN)), campaigns=stats)
    return app


async def test_workers_consoles_show_the_figures_the_coordinator_publishes(redis_server, tmp_path: Path) -> None:
    """The cluster path: the coordinator publishes its store's figures to Redis; a
    ``vantum worker --fake`` dialer's Twilio server serves the console with them."""
    pytest.importorskip("arq", reason="the redis extra is not installed")
    from vantum_pipeline.campaign.figures import PublishedCampaignStats, publish_figures
    from vantum_pipeline.campaign.redis_dispatch import RedisDispatcher
    from vantum_pipeline.campaign.worker import CampaignWorker, RedisDoNotCall
    from vantum_pipeline.demo.campaign_demo import fake_worker_dialers
    from vantum_pipeline.errors import ProtocolError

    async with world(tmp_path, numbers(3), rules="calls_per_second = 20", cost_per_call=0.1, line_seconds=0.05) as w:
        await w.runner(FrozenClock(TUESDAY_MORNING_NY)).run()
        published = PublishedCampaignStats(redis_server.url, "test", min_interval=0.0)
        assert await published.campaign_stats() == []  # no coordinator publishes yet

        stats = StoreCampaignStats(w.store.path, budgets={"test": 1.0})
        text = w.config.path.read_text()
        async with RedisDispatcher(
            redis_server.url, campaign_id="test", config_text=text, max_outstanding=2
        ) as coordinator:

            async def publish(payload: str, ttl: float) -> None:
                await coordinator.publish_figures(payload, ttl=ttl)

            async with asyncio.TaskGroup() as group:
                publisher = group.create_task(publish_figures(stats, publish, interval=0.1))
                async with asyncio.timeout(10):
                    while not (figures := await published.campaign_stats()):  # noqa: ASYNC110 - another process's key
                        await asyncio.sleep(0.05)
                publisher.cancel()
            assert [f.as_dict() for f in figures] == [f.as_dict() for f in await stats.campaign_stats()]

            # A worker's dialer for the campaign: its console shows them.
            env = {
                "TWILIO_API_BASE_URL": w.twilio.base_url,
                "TWILIO_ACCOUNT_SID": w.twilio.account_sid,
                "TWILIO_AUTH_TOKEN": w.twilio.auth_token,
                "VANTUM_CONSOLE_TOKEN": TOKEN,
            }
            factory = fake_worker_dialers(env=env)
            worker = CampaignWorker(redis_server.url, factory)
            async with factory(w.config, RedisDoNotCall(worker, "test")) as dialer:
                url = dialer.phone.console_url
                assert url is not None
                async with aiohttp_session() as http:
                    async with http.get(url + "/api/state", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                        assert response.status == 200
                        shown = (await response.json())["campaigns"]
                    async with http.get(url + "/api/state") as response:
                        assert response.status == 401
            # Without the token, no console at all on the worker's server.
            factory = fake_worker_dialers(env={key: value for key, value in env.items() if "CONSOLE" not in key})
            async with factory(w.config, RedisDoNotCall(worker, "test")) as dialer:
                assert dialer.phone.console_url is None
                async with aiohttp_session() as http:
                    async with http.get(dialer.phone.server.local_url + "/console/api/state") as response:
                        assert response.status == 404
        await stats.aclose()

        # What a worker makes of garbage under the key: a clear error (the console logs it and goes on).
        import redis.asyncio as redis_asyncio

        client = redis_asyncio.Redis.from_url(redis_server.url)
        await client.set("vantum:campaign:test:figures", b"{not json")
        with pytest.raises(ProtocolError, match="not a JSON list"):
            await published.campaign_stats()
        await client.set("vantum:campaign:test:figures", b'[{"campaign_id": "test"}]')
        with pytest.raises(ProtocolError, match="KeyError"):
            await published.campaign_stats()
        await client.aclose()
        await published.aclose()
    assert len(shown) == 1 and shown[0]["campaign_id"] == "test" and shown[0]["done"] == 3
    assert shown[0]["outcomes"] == {"completed": 3} and shown[0]["budget"] == 1.0


def aiohttp_session():  # type: ignore[no-untyped-def]
    import aiohttp

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))


async def test_a_read_past_its_deadline_is_aborted_and_changes_nothing(tmp_path: Path) -> None:
    from vantum_pipeline.campaign.prospects import Prospect

    async with world(tmp_path, numbers(1)) as w:
        many = [f"+1{3000000000 + n}" for n in range(20_000)]
        w.store.import_prospects("test", [Prospect(n, n, "", "", "America/New_York") for n in many])
        stats = StoreCampaignStats(w.store.path, min_interval=0.0, query_timeout=1e-9)
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            await stats.campaign_stats()
        assert stats.reads == 1 and stats.rows_read == 0
        stats.query_timeout = 5.0
        figures = only(await stats.campaign_stats())
        assert (figures.prospects, figures.done) == (20_001, 0)
        await stats.aclose()
