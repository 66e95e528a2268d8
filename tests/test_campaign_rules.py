"""Calling hours across time zones and DST changes, outcome rules, callbacks, the store's transactions."""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from vantum_pipeline.campaign.callbacks import parse_callback_time
from vantum_pipeline.campaign.prospects import Prospect
from vantum_pipeline.campaign.rules import (
    DEFAULT_OUTCOME_RULES,
    CallingHours,
    Decision,
    ProspectState,
    decide,
    timezone_for_number,
)
from vantum_pipeline.campaign.store import MIGRATIONS, SCHEMA_VERSION, AttemptRecord, CampaignStore
from vantum_pipeline.errors import ConfigurationError

NY, LA, TOKYO, LONDON = (
    ZoneInfo(z) for z in ("America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Europe/London")
)
HOURS = CallingHours()


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def test_one_instant_is_inside_the_hours_in_one_zone_and_outside_in_others() -> None:
    at = utc(2026, 3, 17, 14, 30)  # Tuesday 10:30 New York, 07:30 Los Angeles, 23:30 Tokyo, 14:30 London
    assert HOURS.allows(at, NY) and HOURS.allows(at, LONDON)
    assert not HOURS.allows(at, LA) and not HOURS.allows(at, TOKYO)
    assert HOURS.next_opening(at, NY) == at
    assert HOURS.next_opening(at, LA) == utc(2026, 3, 17, 16, 0)  # 09:00 PDT
    assert HOURS.next_opening(at, TOKYO) == utc(2026, 3, 18, 0, 0)  # Wednesday 09:00 JST


def test_weekend_and_evening_wait_for_monday_morning() -> None:
    friday_evening = dt.datetime(2026, 6, 12, 20, 0, tzinfo=NY)  # end is exclusive
    assert not HOURS.allows(friday_evening, NY)
    assert HOURS.next_opening(friday_evening, NY) == dt.datetime(2026, 6, 15, 9, 0, tzinfo=NY)
    assert HOURS.allows(dt.datetime(2026, 6, 12, 19, 59, tzinfo=NY), NY)


def test_opening_after_spring_forward_uses_the_new_offset() -> None:
    # US clocks go forward on Sunday 2026-03-08: Friday is EST (-5), Monday EDT (-4).
    friday_night = dt.datetime(2026, 3, 6, 21, 0, tzinfo=NY)
    opening = HOURS.next_opening(friday_night, NY)
    assert opening == utc(2026, 3, 9, 13, 0)  # 09:00 EDT, not 14:00 UTC
    assert opening.astimezone(NY).hour == 9
    # An hour-based rule would be wrong: 08:30 EDT Monday is 12:30 UTC, which was 07:30 EST a week earlier.
    assert not HOURS.allows(utc(2026, 3, 9, 12, 30), NY)
    assert HOURS.allows(utc(2026, 3, 9, 13, 0), NY)


def test_opening_after_fall_back_and_on_a_window_spanning_the_change() -> None:
    # US clocks go back on Sunday 2026-11-01; calls allowed every day 01:00-05:00 cross the change.
    night = CallingHours(dt.time(1, 0), dt.time(5, 0), frozenset(range(7)))
    before = dt.datetime(2026, 10, 31, 23, 0, tzinfo=NY)
    assert night.next_opening(before, NY) == utc(2026, 11, 1, 5, 0)  # 01:00 EDT (first 01:00)
    assert night.allows(utc(2026, 11, 1, 6, 30), NY)  # 01:30 EST, the repeated hour
    assert HOURS.next_opening(dt.datetime(2026, 10, 30, 21, 0, tzinfo=NY), NY) == utc(2026, 11, 2, 14, 0)  # EST
    # London changes a week earlier (2026-10-25): on Monday 26th, 09:00 is 09:00 UTC.
    assert HOURS.next_opening(utc(2026, 10, 25, 20, 0), LONDON) == utc(2026, 10, 26, 9, 0)


def test_a_start_time_skipped_by_the_change_moves_past_the_gap() -> None:
    early = CallingHours(dt.time(2, 30), dt.time(4, 0), frozenset(range(7)))  # 02:30 does not exist on 03-08
    opening = early.next_opening(dt.datetime(2026, 3, 8, 0, 0, tzinfo=NY), NY)
    assert opening == utc(2026, 3, 8, 7, 0)  # 03:00 EDT: the end of the gap, the window's first moment
    assert early.allows(opening, NY)


def test_country_codes_give_single_zone_countries_only() -> None:
    assert timezone_for_number("+442079460104") == "Europe/London"
    assert timezone_for_number("+353112345678") == "Europe/Dublin"  # three-digit code before +35 prefix
    assert timezone_for_number("+14155550101") is None  # +1 spans many zones
    assert timezone_for_number("+61212345678") is None


@pytest.mark.parametrize(
    ("outcome", "count", "state", "delay"),
    [
        ("busy", 1, ProspectState.PENDING, 15 * 60),
        ("busy", 3, ProspectState.UNREACHABLE, None),
        ("no_answer", 2, ProspectState.PENDING, 4 * 3600),
        ("no_answer", 3, ProspectState.UNREACHABLE, None),
        ("failed", 1, ProspectState.REMOVED, None),
        ("invalid_number", 1, ProspectState.REMOVED, None),
        ("meeting_booked", 1, ProspectState.DONE, None),
        ("not_interested", 1, ProspectState.DONE, None),
        ("callback_requested", 1, ProspectState.PENDING, 86400),
        ("opted_out", 1, ProspectState.DNC, None),
        ("error", 3, ProspectState.FAILED, None),
        ("interrupted", 1, ProspectState.PENDING, 0),
        ("voicemail_left", 1, ProspectState.DONE, None),
        ("machine", 1, ProspectState.PENDING, 4 * 3600),
        ("fax", 1, ProspectState.REMOVED, None),
        ("transferred", 1, ProspectState.DONE, None),
        ("an_outcome_nobody_knows", 1, ProspectState.PENDING, 600),  # falls back to the error rule
    ],
)
def test_each_outcome_leads_where_its_rule_says(
    outcome: str, count: int, state: ProspectState, delay: float | None
) -> None:
    now = utc(2026, 3, 17, 15, 0)
    decision = decide(outcome, rules=DEFAULT_OUTCOME_RULES, ended_this_way=count, now=now)
    assert decision.state is state
    if delay is None:
        assert decision.next_at is None
    else:
        assert decision.next_at == now + dt.timedelta(seconds=delay)
    assert decision.add_to_dnc is (state is ProspectState.DNC)


def test_callback_at_the_asked_time_else_after_the_default_delay() -> None:
    now = utc(2026, 3, 17, 15, 0)
    asked = utc(2026, 3, 18, 19, 0)
    decision = decide("callback_requested", rules=DEFAULT_OUTCOME_RULES, ended_this_way=1, now=now, callback_at=asked)
    assert decision == Decision(ProspectState.PENDING, asked, reason="callback_requested: call back")


def test_callback_times_checked_against_the_prospects_hours() -> None:
    now = dt.datetime(2026, 3, 17, 10, 30, tzinfo=NY)  # a Tuesday
    at = parse_callback_time("2026-03-18 15:00", timezone="America/New_York", hours=HOURS, now=now)
    assert at == utc(2026, 3, 18, 19, 0)
    with pytest.raises(ValueError, match=r"outside the calling hours.*Monday 2026-03-23 09:00"):
        parse_callback_time("2026-03-21 15:00", timezone="America/New_York", hours=HOURS, now=now)  # Saturday
    with pytest.raises(ValueError, match="outside the calling hours"):
        parse_callback_time("2026-03-18 21:00", timezone="America/New_York", hours=HOURS, now=now)
    with pytest.raises(ValueError, match="in the past"):
        parse_callback_time("2026-03-17 09:00", timezone="America/New_York", hours=HOURS, now=now)
    with pytest.raises(ValueError, match="not a local date and time"):
        parse_callback_time("tomorrow after three", timezone="America/New_York", hours=HOURS, now=now)
    # Tokyo's afternoon is the same instant as New York's night: checked in the prospect's zone.
    assert parse_callback_time("2026-03-18 15:00", timezone="Asia/Tokyo", hours=HOURS, now=now) == utc(2026, 3, 18, 6)


# ------------------------------------------------------------------ store


def _prospects(n: int) -> list[Prospect]:
    return [Prospect(f"p{i}", f"+1415555{i:04d}", f"Name {i}", "Co", "America/New_York", line=i + 2) for i in range(n)]


def test_store_migrates_an_old_schema_and_refuses_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version=1;")
    db.execute("INSERT INTO campaigns VALUES ('c', 'C', 0, '{}')")
    db.commit()
    db.close()
    with CampaignStore(path) as store:
        assert store.version == SCHEMA_VERSION
        assert store.campaigns()[0]["id"] == "c"
        columns = {row[1] for row in store._db.execute("PRAGMA table_info(attempts)")}
        assert "answered_by" in columns
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ConfigurationError, match="newer"):
        CampaignStore(path)


def test_claim_is_once_per_attempt_and_dnc_numbers_are_never_claimed(tmp_path: Path) -> None:
    with CampaignStore(tmp_path / "s.sqlite") as store:
        store.ensure_campaign("c", "C")
        assert store.import_prospects("c", _prospects(3)) == 3
        assert store.import_prospects("c", _prospects(3)) == 0  # a restart imports nothing twice
        first = store.claim("c", "p0", 100.0)
        assert first is not None and first.attempt == 1 and first.job_id == "c:p0:1"
        assert store.claim("c", "p0", 101.0) is None  # already dialing
        store.add_dnc("+1 415 555 0001")
        assert store.claim("c", "p1", 100.0) is None
        assert store.in_dnc("+14155550001") and not store.in_dnc("+14155550002")
        store.placed(first, "CA1")
        assert [a.call_sid for a in store.open_attempts("c")] == ["CA1"]
        store.finish(
            first,
            AttemptRecord("busy", cost=0.5),
            decide("busy", rules=DEFAULT_OUTCOME_RULES, ended_this_way=1, now=utc(2026, 1, 1)),
            now=5.0,
        )
        assert store.open_attempts("c") == []
        row = store.prospect("c", "p0")
        assert row is not None and row.state == "pending" and row.attempts == 1
        second = store.claim("c", "p0", 200.0)
        assert second is not None and second.attempt == 2
        store.unclaim(second, "never placed")
        row = store.prospect("c", "p0")
        assert row is not None and row.state == "pending" and row.attempts == 1
        assert store.spend("c") == 0.5


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    with CampaignStore(tmp_path / "s.sqlite") as store:
        store.ensure_campaign("c", "C")
        store.import_prospects("c", _prospects(1))
        with pytest.raises(RuntimeError), store.transaction() as db:
            db.execute("UPDATE prospects SET state = 'done'")
            raise RuntimeError("crash in the middle")
        assert store.state_counts("c") == {"pending": 1}


async def test_pacer_never_releases_two_starts_closer_than_its_interval() -> None:
    import asyncio
    import time

    from vantum_pipeline.campaign.dispatch import Pacer

    pacer = Pacer(50.0)  # 20 ms apart
    starts: list[float] = []

    async def start() -> None:
        starts.append(await pacer.wait())

    async with asyncio.TaskGroup() as group:
        for _ in range(25):
            group.create_task(start())
    await asyncio.sleep(0.05)  # a caller after a pause starts at once
    before = time.monotonic()
    late = await pacer.wait()
    assert late - before < 0.01
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.02 and len(starts) == 25


def test_a_window_opening_in_the_spring_forward_gap():
    """Found by the property test: on 2025-03-09 New York skips 02:00-03:00."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from vantum_pipeline.campaign.rules import CallingHours

    tz = ZoneInfo("America/New_York")
    before = dt.datetime(2025, 3, 5, tzinfo=dt.UTC)
    skipped = CallingHours(start=dt.time(2, 0), end=dt.time(2, 30), days=frozenset({0, 1, 6}))
    opening = skipped.next_opening(before, tz)
    assert opening.astimezone(tz).isoformat() == "2025-03-10T02:00:00-04:00"  # the Sunday window never existed
    assert skipped.allows(opening, tz)
    straddling = CallingHours(start=dt.time(2, 30), end=dt.time(3, 30), days=frozenset({6}))
    opening = straddling.next_opening(before, tz)
    assert opening.astimezone(tz).isoformat() == "2025-03-09T03:00:00-04:00"  # opens when the clocks jump
    assert straddling.allows(opening, tz)
