"""What a campaign produced: ``status`` and ``export`` (CSV or JSON lines).

``campaign_status`` counts prospects by state and by final result, ended
attempts by outcome, the spend so far, the calls in progress (attempts not
ended: a running campaign's live calls, or after a crash the ones the next
run reconciles) and when the next prospect is due.

``export`` writes one row per attempt (``rows="attempts"``: call sid,
times, outcome, Twilio's status, cost by service, notes, callback time,
recording, transcript) or per prospect (``rows="prospects"``: state, final
result, attempts, next due time). Exports are for the campaign's owner and
carry full numbers; logs never do.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from vantum_pipeline.campaign.dispatch import CampaignEvent
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.errors import ConfigurationError

__all__ = ["EXPORT_FORMATS", "RunTally", "campaign_status", "export", "format_status"]

EXPORT_FORMATS = ("csv", "jsonl")
_ATTEMPT_COLUMNS = (
    "campaign_id",
    "prospect_id",
    "prospect_name",
    "prospect_company",
    "number",
    "attempt",
    "state",
    "call_sid",
    "claimed_at",
    "ended_at",
    "duration",
    "outcome",
    "twilio_status",
    "answered_by",
    "cost",
    "cost_by_service",
    "notes",
    "callback_at",
    "recording",
    "heard",
    "transcript",
)
_PROSPECT_COLUMNS = (
    "campaign_id",
    "id",
    "number",
    "name",
    "company",
    "timezone",
    "line",
    "state",
    "result",
    "attempts",
    "next_at",
    "note",
    "variables",
)
_TIMES = ("claimed_at", "ended_at", "callback_at", "next_at")


def _iso(value: Any) -> Any:
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
    return value


def campaign_status(store: CampaignStore, campaign_id: str) -> dict[str, Any]:
    states = store.state_counts(campaign_id)
    open_attempts = store.open_attempts(campaign_id)
    next_due = store.next_due_at(campaign_id)
    return {
        "campaign": campaign_id,
        "prospects": sum(states.values()),
        "by_state": states,
        "results": store.result_counts(campaign_id),
        "attempt_outcomes": store.outcome_counts(campaign_id),
        "spend_usd": round(store.spend(campaign_id), 4),
        "in_progress": [{"job": a.job_id, "call_sid": a.call_sid, "state": a.state} for a in open_attempts],
        "next_due": _iso(next_due) if next_due is not None else None,
        "do_not_call": len(store.dnc_numbers()),
    }


def format_status(status: dict[str, Any]) -> str:
    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{name} {count}" for name, count in sorted(values.items(), key=lambda kv: -kv[1])) or "-"

    lines = [
        f"campaign      {status['campaign']}: {status['prospects']} prospects",
        f"by state      {counts(status['by_state'])}",
        f"results       {counts(status['results'])}",
        f"attempts      {counts(status['attempt_outcomes'])}",
        f"spend         ${status['spend_usd']:.4f}",
        f"in progress   {len(status['in_progress'])}"
        + "".join(f"\n                {c['job']} ({c['call_sid'] or 'not placed yet'})" for c in status["in_progress"]),
        f"next due      {status['next_due'] or '-'}",
        f"do-not-call   {status['do_not_call']} numbers",
    ]
    return "\n".join(lines)


def export(store: CampaignStore, campaign_id: str, stream: TextIO, *, fmt: str = "csv", rows: str = "attempts") -> int:
    """Write the campaign's attempts (or prospects) to ``stream``; returns the row count."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigurationError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    columns: tuple[str, ...]
    if rows == "attempts":
        records: Iterable[dict[str, Any]] = store.attempts(campaign_id)
        columns = _ATTEMPT_COLUMNS
    elif rows == "prospects":
        records = store.prospects(campaign_id)
        columns = _PROSPECT_COLUMNS
    else:
        raise ConfigurationError(f"rows must be 'attempts' or 'prospects', got {rows!r}")
    count = 0
    writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore") if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    for record in records:
        row: dict[str, Any] = {name: _iso(record.get(name)) if name in _TIMES else record.get(name) for name in columns}
        for name in ("cost_by_service", "transcript", "variables"):
            value = row.get(name)
            if isinstance(value, str):
                row[name] = json.loads(value)
        if writer is not None:
            transcript = row.get("transcript")
            if isinstance(transcript, list):
                row["transcript"] = " | ".join(f"{t.get('role')}: {t.get('text')}" for t in transcript)
            for name in ("cost_by_service", "variables"):
                if name in row:
                    row[name] = json.dumps(row[name], sort_keys=True)
            writer.writerow(row)
        else:
            stream.write(json.dumps(row, default=str) + "\n")
        count += 1
    return count


class RunTally:
    """Which rules fired during a run, from its events and the dispatcher's measurements."""

    def __init__(self) -> None:
        self.deferred: list[str] = []
        self.never_dialled: list[str] = []
        self.dnc_added = 0
        self.retries: Counter[str] = Counter()
        self.callbacks: list[str] = []
        self.budget_notes: list[str] = []

    def __call__(self, event: CampaignEvent) -> None:
        if event.kind == "deferred":
            self.deferred.append(f"{event.prospect_id} ({event.text})")
        elif event.kind == "skipped":
            self.never_dialled.append(event.prospect_id)
        elif event.kind == "note" and "added to the do-not-call list" in event.text:
            self.dnc_added += 1
        elif event.kind == "note" and event.text.startswith("budget"):
            self.budget_notes.append(event.text)
        elif event.kind == "ended":
            if event.text.endswith(": retry"):
                self.retries[event.outcome] += 1
            if event.outcome == "callback_requested":
                self.callbacks.append(event.prospect_id)

    def lines(
        self,
        *,
        max_concurrent: int,
        max_active_seen: int | None,
        starts: Sequence[float],
        calls_per_second: float,
        spend: float,
        budget: float | None,
    ) -> list[str]:
        def listing(items: list[str], limit: int = 3) -> str:
            return ", ".join(items[:limit]) + (f", and {len(items) - limit} more" if len(items) > limit else "")

        lines = ["rules this run"]
        lines.append(
            f"  calling hours  {len(self.deferred)} deferred" + (f": {listing(self.deferred)}" if self.deferred else "")
        )
        lines.append(
            f"  do-not-call    {len(self.never_dialled)} never dialled (on the list), "
            f"{self.dnc_added} added by a call's opt-out"
        )
        retries = ", ".join(f"{name} {count}" for name, count in sorted(self.retries.items()))
        lines.append(f"  retries        {retries or 'none'}")
        lines.append(
            f"  callbacks      {len(self.callbacks)} scheduled"
            + (f": {listing(self.callbacks)}" if self.callbacks else "")
        )
        if max_active_seen is not None:
            lines.append(f"  concurrency    at most {max_active_seen} calls at once (limit {max_concurrent})")
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        if gaps:
            lines.append(
                f"  pacing         call starts at least {min(gaps):.2f} s apart (limit {calls_per_second:g} per second)"
            )
        if budget is not None:
            stop = " - stopped new calls" if self.budget_notes else ""
            lines.append(f"  budget         ${spend:.4f} of ${budget:.2f}{stop}")
        return lines
