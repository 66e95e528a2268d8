"""The runner against FakeTwilio: retries and final states, calling hours with an injected clock,
DNC (file, mid-campaign, between claim and dial), budget stop, measured concurrency and pacing,
and reconciliation of attempts a dead runner left open."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.campaign_support import CALLER_ID, RestDialer, twilio_settings, write_campaign
from vantum_pipeline.campaign.clock import Clock, FrozenClock, SystemClock
from vantum_pipeline.campaign.config import CampaignConfig, load_campaign
from vantum_pipeline.campaign.dispatch import CampaignEvent, InProcessDispatcher
from vantum_pipeline.campaign.runner import CampaignRunner, RunSummary, prepare_campaign
from vantum_pipeline.campaign.store import AttemptRecord, CampaignStore
from vantum_pipeline.telephony.calls import place_call
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.testing.twilio import FakeTwilio

TUESDAY_MORNING_NY = dt.datetime(2026, 3, 17, 14, 30, tzinfo=dt.UTC)  # 10:30 EDT


@dataclass
class World:
    twilio: FakeTwilio
    client: TwilioRestClient
    config: CampaignConfig
    store: CampaignStore
    dialer: RestDialer
    events: list[CampaignEvent] = field(default_factory=list)

    def runner(self, clock: Clock, **options: Any) -> CampaignRunner:
        options.setdefault("idle_exit", 0.0)
        options.setdefault("poll_interval", 0.05)
        return CampaignRunner(self.config, self.store, self.dialer, clock=clock, on_event=self.events.append, **options)

    def calls_to(self, number: str) -> list[Any]:
        return [c for c in self.twilio.calls.values() if c.to == number]

    def state(self, prospect: str) -> tuple[str, str | None, int]:
        row = next(p for p in self.store.prospects(self.config.id) if p["id"] == prospect)
        return row["state"], row["result"], row["attempts"]


@asynccontextmanager
async def world(
    tmp_path: Path,
    prospects: list[tuple[str, str]] | str,
    *,
    phones: Mapping[str, str] | None = None,
    results: Mapping[str, str] | None = None,
    line_seconds: float = 0.3,
    cost_per_call: float = 0.0,
    **campaign: Any,
) -> AsyncIterator[World]:
    async with FakeTwilio() as twilio:
        for number, outcome in (phones or {}).items():
            twilio.behave(number, outcome=outcome)
        config = load_campaign(write_campaign(tmp_path, prospects, **campaign))
        with CampaignStore(config.resolved_folder() / "campaign.sqlite") as store:
            prepare_campaign(config, store)
            settings = twilio_settings(twilio.base_url, twilio.account_sid, twilio.auth_token)
            async with TwilioRestClient(settings) as client:
                dialer = RestDialer(client, results=results, line_seconds=line_seconds, cost_per_call=cost_per_call)
                yield World(twilio, client, config, store, dialer)


def numbers(n: int, start: int = 1) -> list[tuple[str, str]]:
    return [(f"+1415555{i:04d}", f"Prospect {i}") for i in range(start, start + n)]


async def test_every_telephony_outcome_reaches_its_final_state(tmp_path: Path) -> None:
    prospects = [*numbers(6), ("+15005550001", "Magic invalid")]
    busy, no_answer, failed, booked, declined, blank = (n for n, _ in prospects[:6])
    rules = ""
    extra = """
[rules.outcomes]
busy = { action = "retry", delay_seconds = 60, max_attempts = 2 }
no_answer = { action = "retry", delay_seconds = 120, max_attempts = 2 }
"""
    async with world(
        tmp_path,
        prospects,
        phones={busy: "busy", no_answer: "no-answer", failed: "failed"},
        results={booked: "meeting_booked", declined: "not_interested"},
        rules=rules + "calls_per_second = 20",
        extra=extra,
    ) as w:
        clock = FrozenClock(TUESDAY_MORNING_NY)
        summary = await w.runner(clock).run()
        assert summary.reason == "waiting"
        assert w.state(busy)[:2] == ("pending", None)
        assert w.state(no_answer)[:2] == ("pending", None)
        next_at = {p["id"]: p["next_at"] for p in w.store.prospects("test")}
        assert next_at[busy] == TUESDAY_MORNING_NY.timestamp() + 60
        assert next_at[no_answer] == TUESDAY_MORNING_NY.timestamp() + 120
        assert w.state(failed) == ("removed", "failed", 1)
        assert w.state("+15005550001") == ("removed", "invalid_number", 1)
        assert w.state(booked) == ("done", "meeting_booked", 1)
        assert w.state(declined) == ("done", "not_interested", 1)
        assert w.state(blank) == ("done", "completed", 1)

        clock.advance(61)  # the busy retry is due, the no-answer one not yet
        await w.runner(clock).run()
        assert w.state(busy) == ("unreachable", "unreachable", 2)
        assert w.state(no_answer)[0] == "pending"
        clock.advance(60)
        summary = await w.runner(clock).run()
        assert summary.reason == "finished"
        assert w.state(no_answer) == ("unreachable", "unreachable", 2)
        assert len(w.calls_to(busy)) == 2 and len(w.calls_to(no_answer)) == 2 and len(w.calls_to(failed)) == 1
        assert w.calls_to("+15005550001") == []  # Twilio refused it: no call exists
        records = sorted((w.config.resolved_folder() / "calls").glob("*.json"))
        assert len(records) == 9  # one per attempt


async def test_calling_hours_follow_each_prospects_zone(tmp_path: Path) -> None:
    csv_text = (
        "number,name,company,timezone\n"
        "+14155550001,New York,A,America/New_York\n"
        "+14155550002,California,B,America/Los_Angeles\n"
        "+81355550003,Tokyo,C,\n"
        "+442079460004,London,D,\n"
    )
    async with world(tmp_path, csv_text, hours='start = "09:00"\nend = "20:00"') as w:
        clock = FrozenClock(TUESDAY_MORNING_NY)
        await w.runner(clock).run()
        dialled = {c.to for c in w.twilio.calls.values()}
        assert dialled == {"+14155550001", "+442079460004"}  # 10:30 in New York, 14:30 in London
        next_at = {p["id"]: p["next_at"] for p in w.store.prospects("test")}
        assert next_at["+14155550002"] == dt.datetime(2026, 3, 17, 16, 0, tzinfo=dt.UTC).timestamp()  # 09:00 PDT
        assert next_at["+81355550003"] == dt.datetime(2026, 3, 18, 0, 0, tzinfo=dt.UTC).timestamp()  # 09:00 JST
        clock.set(dt.datetime(2026, 3, 17, 15, 59, tzinfo=dt.UTC))
        await w.runner(clock).run()
        assert len(w.twilio.calls) == 2  # still 08:59 in California
        clock.set(dt.datetime(2026, 3, 17, 16, 0, tzinfo=dt.UTC))
        await w.runner(clock).run()
        assert {c.to for c in w.twilio.calls.values()} == dialled | {"+14155550002"}


async def test_dnc_numbers_are_never_dialled_even_when_added_mid_campaign(tmp_path: Path) -> None:
    prospects = numbers(6)
    on_file, added_after_first, added_at_claim = prospects[1][0], prospects[4][0], prospects[3][0]
    async with world(
        tmp_path, prospects, dnc=["+1 415-555-0002"], rules="max_concurrent_calls = 1\ncalls_per_second = 2"
    ) as w:
        runner = w.runner(SystemClock())

        def on_event(event: CampaignEvent) -> None:
            w.events.append(event)
            if event.kind == "ended" and event.prospect_id == prospects[0][0]:
                runner.dnc.add(added_after_first, source="test")
            if event.kind == "dialing" and event.prospect_id == added_at_claim:
                # After the claim, before the REST request: the dialer checks again.
                runner.dnc.add(added_at_claim, source="test")

        runner.on_event = on_event
        summary = await runner.run()
        assert summary.reason == "finished"
        dialled = {c.to for c in w.twilio.calls.values()}
        assert dialled == {prospects[0][0], prospects[2][0], prospects[5][0]}
        assert w.state(on_file) == ("dnc", "do_not_call_list", 0)
        assert w.state(added_after_first) == ("dnc", "do_not_call_list", 0)
        assert w.state(added_at_claim)[:2] == ("dnc", "do_not_call_list")


async def test_opt_out_outcome_puts_the_number_on_the_list_at_once(tmp_path: Path) -> None:
    prospects = numbers(2)
    async with world(tmp_path, prospects, results={prospects[0][0]: "opted_out"}) as w:
        await w.runner(SystemClock()).run()
        assert w.state(prospects[0][0]) == ("dnc", "opted_out", 1)
        assert w.store.in_dnc(prospects[0][0]) and not w.store.in_dnc(prospects[1][0])


async def test_budget_stops_new_calls_and_lets_calls_in_progress_finish(tmp_path: Path) -> None:
    prospects = numbers(12)
    rules = "max_concurrent_calls = 3\ncalls_per_second = 20\nbudget_usd = 3.0\nreserve_per_call_usd = 0.5"
    async with world(tmp_path, prospects, rules=rules, cost_per_call=1.0, line_seconds=0.4) as w:
        runner = w.runner(SystemClock())
        committed: list[float] = []

        def on_event(event: CampaignEvent) -> None:
            w.events.append(event)
            if event.kind == "dialing":  # emitted right before the dispatcher takes the call
                committed.append(runner.spend + runner.dispatcher.in_flight * 0.5)

        runner.on_event = on_event
        summary = await runner.run()
        assert summary.reason == "budget"
        assert committed and all(value < 3.0 for value in committed)
        assert w.store.open_attempts("test") == []  # every call in progress finished and was recorded
        ended = [c for c in w.twilio.calls.values() if c.status == "completed"]
        assert len(ended) == len(w.twilio.calls) == len(committed)
        assert 3.0 <= w.store.spend("test") <= 3.0 + 3 * 1.0 + 0.1
        assert w.store.state_counts("test").get("pending", 0) >= 12 - len(committed) > 0
        assert any("budget" in e.text for e in w.events if e.kind == "note")


async def test_concurrency_and_pacing_measured_at_twilio(tmp_path: Path) -> None:
    prospects = numbers(14)
    rules = "max_concurrent_calls = 3\ncalls_per_second = 5"
    async with world(tmp_path, prospects, rules=rules, line_seconds=0.5) as w:
        runner = w.runner(SystemClock())
        summary = await runner.run()
        assert summary.reason == "finished" and len(w.twilio.calls) == 14
        creates = sorted(r.at for r in w.twilio.requests if r.method == "POST" and r.path.endswith("/Calls.json"))
        assert len(creates) == 14
        # Pacing as Twilio saw it: no second holds more than the rate's 5 calls, give or take one whose
        # request was delayed on a loaded machine (a missing pacer puts 3 in the same instant).
        per_second = [sum(1 for t in creates if at <= t < at + 1.0) for at in creates]
        assert max(per_second) <= 5 + 1, creates
        # As Twilio saw them (the first request also opens the client's connection, so allow 0.3 s); the
        # pacer's own release times below are exact.
        assert creates[-1] - creates[0] >= 13 * 0.2 - 0.3, creates
        dispatcher = runner.dispatcher
        assert isinstance(dispatcher, InProcessDispatcher)
        starts = list(dispatcher.starts)  # as released by the pacer: never closer than 1 / rate
        assert len(starts) == 14 and min(b - a for a, b in itertools.pairwise(starts)) >= 0.2
        # Concurrency as Twilio saw it: calls alive at once, from creation to their end.
        edges = sorted(
            [(c.created_at, 1) for c in w.twilio.calls.values()]
            + [(c.ended_at, -1) for c in w.twilio.calls.values() if c.ended_at is not None]
        )
        alive = peak = 0
        for _, step in edges:
            alive += step
            peak = max(peak, alive)
        assert peak <= 3
        assert peak == 3  # the limit was used, not just respected by a trickle
        assert w.dialer.max_active <= 3


async def test_restart_reconciles_attempts_left_open(tmp_path: Path) -> None:
    prospects = numbers(4)
    placed_unrecorded, never_placed, still_ringing, untouched = (n for n, _ in prospects)
    async with world(tmp_path, prospects, phones={still_ringing: "busy"}, line_seconds=0.3) as w:
        w.twilio.behave(still_ringing, outcome="busy", ring_seconds=1.5)
        now = dt.datetime.now(dt.UTC).timestamp()
        # A dead runner's leftovers: claimed attempts, in the three windows a kill can leave.
        first = w.store.claim("test", placed_unrecorded, now)
        second = w.store.claim("test", never_placed, now)
        third = w.store.claim("test", still_ringing, now)
        assert first and second and third
        twiml = '<Response><Pause length="0.3"/></Response>'
        lost = await place_call(w.client, placed_unrecorded, CALLER_ID, twiml=twiml)  # sid never stored
        ringing = await place_call(w.client, still_ringing, CALLER_ID, twiml=twiml)
        w.store.placed(third, ringing.sid)

        summary: RunSummary = await w.runner(SystemClock()).run()
        assert summary.reconciled == 3
        # The call Twilio placed without us knowing its sid was found, not redialled for attempt 1.
        attempts = {(a["prospect_id"], a["attempt"]): a for a in w.store.attempts("test")}
        assert attempts[(placed_unrecorded, 1)]["call_sid"] == lost.sid
        assert attempts[(placed_unrecorded, 1)]["outcome"] == "interrupted"
        assert attempts[(placed_unrecorded, 2)]["outcome"] == "completed"  # retried as a new attempt
        # The attempt Twilio never saw was forgotten and dialled once, as attempt 1.
        assert attempts[(never_placed, 1)]["outcome"] == "completed" and (never_placed, 2) not in attempts
        # The call still ringing at restart was followed to its end (busy) before anything else.
        assert attempts[(still_ringing, 1)]["call_sid"] == ringing.sid
        assert attempts[(still_ringing, 1)]["outcome"] == "busy"
        assert len(w.calls_to(placed_unrecorded)) == 2 and len(w.calls_to(never_placed)) == 1
        assert len(w.calls_to(still_ringing)) == 1  # its retry waits 15 minutes
        assert len(w.calls_to(untouched)) == 1
        # Every call Twilio placed belongs to exactly one attempt.
        sids = [a["call_sid"] for a in w.store.attempts("test") if a["call_sid"]]
        assert sorted(sids) == sorted(w.twilio.calls)


async def test_reconciliation_never_takes_an_earlier_attempts_call_for_this_one(tmp_path: Path) -> None:
    prospects = numbers(1)
    number = prospects[0][0]
    extra = '\n[rules.outcomes]\nbusy = { action = "retry", delay_seconds = 0, max_attempts = 3 }\n'
    async with world(tmp_path, prospects, phones={number: "busy"}, extra=extra) as w:
        runner = w.runner(SystemClock())
        first = w.store.claim("test", number, dt.datetime.now(dt.UTC).timestamp())
        assert first is not None
        call = await place_call(w.client, number, CALLER_ID, twiml='<Response><Pause length="0.2"/></Response>')
        w.store.placed(first, call.sid)
        await w.twilio.wait_ended(within=10)
        # Attempt 1 ended busy a moment ago; attempt 2 was claimed, then the runner died before dialling.
        runner._record(first, AttemptRecord("busy", twilio_status="busy", call_sid=call.sid))
        second = w.store.claim("test", number, dt.datetime.now(dt.UTC).timestamp())
        assert second is not None and second.attempt == 2
        w.twilio.behave(number, outcome=None)  # answers from now on
        await w.runner(SystemClock()).run()
        attempts = {a["attempt"]: a for a in w.store.attempts("test")}
        assert attempts[1]["call_sid"] == call.sid and attempts[1]["outcome"] == "busy"
        assert attempts[2]["call_sid"] not in (None, call.sid)  # dialled for real, once
        assert attempts[2]["outcome"] == "completed" and len(attempts) == 2
        assert len(w.calls_to(number)) == 2


async def test_an_overloaded_dialer_is_handed_no_call_and_no_attempt_is_spent(tmp_path: Path) -> None:
    prospects = numbers(3)
    async with world(tmp_path, prospects) as w:
        busy = [True]
        w.dialer.overloaded = lambda: busy[0]  # type: ignore[attr-defined]  # as PhoneDialer's, while its loop runs late
        runner = w.runner(SystemClock(), idle_exit=None)
        running = asyncio.get_running_loop().create_task(runner.run())
        await asyncio.sleep(0.5)  # ten polls of the runner while overloaded
        assert runner.dispatcher.free_slots() == 0
        assert not w.twilio.calls and w.store.open_attempts("test") == []
        assert all(w.state(number) == ("pending", None, 0) for number, _ in prospects)
        busy[0] = False
        async with asyncio.timeout(30):
            summary = await running
        assert summary.reason == "finished" and len(w.twilio.calls) == 3
        assert all(w.state(number)[2] == 1 for number, _ in prospects)  # one attempt each: none spent on the wait
