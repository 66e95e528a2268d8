"""Property tests: calling hours in any zone on any day (DST changes included), and CSV import of
arbitrary text (every row is either a prospect or a rejected row with its line, never lost)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from vantum_pipeline.campaign.prospects import parse_prospects
from vantum_pipeline.campaign.rules import CallingHours

ZONES = [
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Paris",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "Pacific/Auckland",
    "Asia/Kathmandu",
]

instants = st.datetimes(
    min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2028, 12, 31), timezones=st.just(dt.UTC)
)
hours = st.builds(
    lambda start, length, days: CallingHours(
        dt.time(start // 60, start % 60), dt.time((start + length) // 60, (start + length) % 60), frozenset(days)
    ),
    st.integers(0, 22 * 60),
    st.integers(30, 90),
    st.sets(st.integers(0, 6), min_size=1),
)


@settings(max_examples=400, deadline=None)
@given(at=instants, zone_name=st.sampled_from(ZONES), window=hours)
def test_next_opening_is_the_first_allowed_moment(at: dt.datetime, zone_name: str, window: CallingHours) -> None:
    zone = ZoneInfo(zone_name)
    opening = window.next_opening(at, zone)
    assert opening >= at
    assert window.allows(opening, zone)
    if opening > at:
        # Nothing allowed in between: check every minute before the opening (within a week).
        step = dt.timedelta(minutes=1)
        probe = opening - step
        while probe > at and opening - probe < dt.timedelta(days=8):
            assert not window.allows(probe, zone), (probe, opening)
            probe -= dt.timedelta(minutes=7)
    local = opening.astimezone(zone)
    assert local.weekday() in window.days
    assert window.start <= local.time().replace(tzinfo=None) < window.end


cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(cells, min_size=0, max_size=5), max_size=20))
def test_every_csv_row_is_imported_or_reported(rows: list[list[str]]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "name", "company", "timezone", "note"])
    for row in rows:
        writer.writerow(row)
    result = parse_prospects(buffer.getvalue(), source="p.csv", default_timezone="UTC")
    seen = {p.line for p in result.prospects} | {r.line for r in result.rejected}
    assert len(seen) == len(result.prospects) + len(result.rejected)  # no line counted twice
    non_blank = sum(1 for row in rows if any(cell.strip() for cell in row))
    assert len(seen) == non_blank
    for prospect in result.prospects:
        assert prospect.number.startswith("+") and prospect.number[1:].isdigit()
