"""The campaign store: SQLite (stdlib ``sqlite3``), WAL, no server.

Tables: ``campaigns``, ``prospects`` (state, next due time, attempts so far),
``attempts`` (one row per dial: call sid, times, outcome, cost by service,
transcript, what the callee heard, recording path), ``dnc``. The schema
version is SQLite's ``user_version``; ``MIGRATIONS[i]`` moves a store from
version i to i + 1, each in one transaction, at open. A store written by a
newer version is refused.

Every state change is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``), so
a runner killed at any instant leaves the store at a state boundary:

- ``claim`` marks the prospect ``dialing`` and inserts the attempt
  (``dialing``, no sid) *before* the REST request is made;
- ``placed`` records the sid Twilio returned (``in_progress``);
- ``finish`` ends the attempt and moves the prospect on (pending with a due
  time, or a final state; the DNC entry when the outcome asks for one).

After a crash, ``open_attempts`` lists what has to be reconciled through
Twilio before anyone is dialled again. ``durability="normal"`` (the
default) survives a killed process; ``"full"`` also survives a power cut,
at an fsync per transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vantum_pipeline.campaign.prospects import Prospect, normalize_number, prospect_prompt_variables
from vantum_pipeline.campaign.rules import Decision, ProspectState
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.telephony.client import mask_numbers
from vantum_pipeline.telephony.numbers import InvalidNumberError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "AttemptRecord", "AttemptRow", "CampaignStore", "ProspectRow"]

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first schema.
    """
    CREATE TABLE campaigns (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE prospects (
        campaign_id TEXT NOT NULL REFERENCES campaigns(id),
        id TEXT NOT NULL,
        number TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        company TEXT NOT NULL DEFAULT '',
        timezone TEXT NOT NULL,
        variables TEXT NOT NULL DEFAULT '{}',
        line INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending',
        result TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL,
        note TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (campaign_id, id)
    );
    CREATE INDEX prospects_due ON prospects (campaign_id, state, next_at);
    CREATE TABLE attempts (
        campaign_id TEXT NOT NULL,
        prospect_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        number TEXT NOT NULL,
        call_sid TEXT,
        claimed_at REAL NOT NULL,
        ended_at REAL,
        duration REAL,
        outcome TEXT,
        twilio_status TEXT,
        cost REAL NOT NULL DEFAULT 0,
        cost_by_service TEXT NOT NULL DEFAULT '{}',
        transcript TEXT NOT NULL DEFAULT '[]',
        heard TEXT NOT NULL DEFAULT '',
        recording TEXT,
        notes TEXT NOT NULL DEFAULT '',
        callback_at REAL,
        PRIMARY KEY (campaign_id, prospect_id, attempt)
    );
    CREATE INDEX attempts_open ON attempts (campaign_id, state);
    CREATE UNIQUE INDEX attempts_sid ON attempts (call_sid) WHERE call_sid IS NOT NULL;
    CREATE TABLE dnc (
        number TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        added_at REAL NOT NULL
    );
    """,
    # 1 -> 2: AMD's verdict per attempt.
    """
    ALTER TABLE attempts ADD COLUMN answered_by TEXT;
    """,
    # 2 -> 3: a pending prospect always has a due time (0: at once), so "who is due" is an index range.
    """
    UPDATE prospects SET next_at = 0 WHERE state = 'pending' AND next_at IS NULL;
    """,
    # 3 -> 4: the open-attempts index covers open attempts only (it misled the planner for ended ones);
    # counting a prospect's attempts by outcome (the retry rules) becomes an index lookup.
    """
    DROP INDEX attempts_open;
    CREATE INDEX attempts_open ON attempts (campaign_id, claimed_at) WHERE state != 'ended';
    CREATE INDEX attempts_outcome ON attempts (campaign_id, prospect_id, outcome);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_FINAL = tuple(state.value for state in ProspectState if state.final)


@dataclass(frozen=True, slots=True)
class ProspectRow:
    id: str
    number: str
    name: str
    company: str
    timezone: str
    variables: dict[str, str]
    state: str
    attempts: int
    next_at: float | None

    def prompt_variables(self) -> dict[str, str]:
        return prospect_prompt_variables(self.name, self.company, self.variables)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One dial: its key and, once placed, its call sid."""

    campaign_id: str
    prospect_id: str
    attempt: int
    number: str
    state: str
    call_sid: str | None
    claimed_at: float

    @property
    def job_id(self) -> str:
        """Deterministic id of this dial (campaign, prospect, attempt number)."""
        return f"{self.campaign_id}:{self.prospect_id}:{self.attempt}"

    @property
    def log_id(self) -> str:
        """``job_id`` for logs: a prospect id that is a phone number is masked."""
        return mask_numbers(self.job_id)


@dataclass(slots=True)
class AttemptRecord:
    """What ``finish`` stores about an ended attempt."""

    outcome: str
    twilio_status: str | None = None
    call_sid: str | None = None
    duration: float = 0.0
    cost: float = 0.0
    cost_by_service: dict[str, float] | None = None
    transcript: Sequence[dict[str, Any]] = ()
    heard: str = ""
    recording: str | None = None
    notes: str = ""
    callback_at: float | None = None
    answered_by: str | None = None


class CampaignStore:
    """One SQLite file; use from one thread (the runner's event loop)."""

    def __init__(self, path: str | Path, *, durability: str = "normal") -> None:
        if durability not in ("normal", "full"):
            raise ConfigurationError(f"durability must be 'normal' or 'full', got {durability!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> CampaignStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic state change."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.version
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{self.path}: store schema version {version} is newer than this library's {SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction() as db:
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")

    # ------------------------------------------------------------ import

    def ensure_campaign(self, campaign_id: str, name: str, settings: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO campaigns (id, name, created_at, settings) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, settings = excluded.settings",
                (campaign_id, name, time.time(), json.dumps(settings or {}, default=str)),
            )

    def import_prospects(self, campaign_id: str, prospects: Sequence[Prospect]) -> int:
        """Add prospects not in the store yet (a restart re-imports nothing); returns how many were new."""
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO prospects "
                "(campaign_id, id, number, name, company, timezone, variables, line, next_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                [
                    (campaign_id, p.id, p.number, p.name, p.company, p.timezone, json.dumps(p.variables), p.line)
                    for p in prospects
                ],
            )
            return db.total_changes - before

    # --------------------------------------------------------------- DNC

    def add_dnc(self, number: str, *, source: str = "call") -> None:
        """Put ``number`` on the do-not-call list (committed on return)."""
        normalized = normalize_number(number)
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO dnc (number, source, added_at) VALUES (?, ?, ?)",
                (normalized, source, time.time()),
            )

    def import_dnc(self, numbers: Sequence[str], *, source: str) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO dnc (number, source, added_at) VALUES (?, ?, ?)",
                [(number, source, time.time()) for number in numbers],
            )

    def in_dnc(self, number: str) -> bool:
        try:
            normalized = normalize_number(number)
        except InvalidNumberError:
            return False
        return self._db.execute("SELECT 1 FROM dnc WHERE number = ?", (normalized,)).fetchone() is not None

    def dnc_numbers(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT number FROM dnc ORDER BY number")]

    # -------------------------------------------------------- scheduling

    def due(self, campaign_id: str, now: float, limit: int) -> list[ProspectRow]:
        """Pending prospects due at ``now``, earliest first."""
        rows = self._db.execute(
            "SELECT * FROM prospects WHERE campaign_id = ? AND state = 'pending' AND next_at <= ? "
            "ORDER BY next_at LIMIT ?",
            (campaign_id, now, limit),
        ).fetchall()
        return [_prospect(row) for row in rows]

    def next_due_at(self, campaign_id: str) -> float | None:
        """When the next pending prospect is due (None: no pending prospect)."""
        row = self._db.execute(
            "SELECT MIN(next_at) FROM prospects WHERE campaign_id = ? AND state = 'pending'", (campaign_id,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def defer(self, campaign_id: str, prospect_id: str, next_at: float, note: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE prospects SET next_at = ?, note = ? WHERE campaign_id = ? AND id = ? AND state = 'pending'",
                (next_at, note, campaign_id, prospect_id),
            )

    def skip_dnc(self, campaign_id: str, prospect_id: str) -> None:
        """The prospect's number is on the DNC list: final, never dialled."""
        with self.transaction() as db:
            db.execute(
                "UPDATE prospects SET state = 'dnc', result = 'do_not_call_list', next_at = NULL, "
                "note = 'on the do-not-call list' WHERE campaign_id = ? AND id = ? AND state = 'pending'",
                (campaign_id, prospect_id),
            )

    def claim(self, campaign_id: str, prospect_id: str, now: float) -> AttemptRow | None:
        """Start the prospect's next attempt, before the REST request: None
        if the prospect is no longer pending (or its number is on the DNC list)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT number, attempts FROM prospects WHERE campaign_id = ? AND id = ? AND state = 'pending'",
                (campaign_id, prospect_id),
            ).fetchone()
            if row is None:
                return None
            if db.execute("SELECT 1 FROM dnc WHERE number = ?", (row["number"],)).fetchone() is not None:
                return None
            attempt = int(row["attempts"]) + 1
            db.execute(
                "UPDATE prospects SET state = 'dialing', attempts = ?, note = '' WHERE campaign_id = ? AND id = ?",
                (attempt, campaign_id, prospect_id),
            )
            db.execute(
                "INSERT INTO attempts (campaign_id, prospect_id, attempt, state, number, claimed_at) "
                "VALUES (?, ?, ?, 'dialing', ?, ?)",
                (campaign_id, prospect_id, attempt, row["number"], now),
            )
        return AttemptRow(campaign_id, prospect_id, attempt, row["number"], "dialing", None, now)

    def placed(self, attempt: AttemptRow, call_sid: str) -> None:
        """Twilio accepted the call: its sid, so a restart can ask Twilio about it."""
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state = 'in_progress', call_sid = ? "
                "WHERE campaign_id = ? AND prospect_id = ? AND attempt = ? AND state != 'ended'",
                (call_sid, attempt.campaign_id, attempt.prospect_id, attempt.attempt),
            )

    def unclaim(self, attempt: AttemptRow, note: str) -> None:
        """The attempt was never placed (reconciliation found no call): forget it, the prospect is due again."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM attempts WHERE campaign_id = ? AND prospect_id = ? AND attempt = ? AND state != 'ended'",
                (attempt.campaign_id, attempt.prospect_id, attempt.attempt),
            )
            db.execute(
                "UPDATE prospects SET state = 'pending', attempts = attempts - 1, next_at = COALESCE(next_at, 0), "
                "note = ? "
                "WHERE campaign_id = ? AND id = ? AND state = 'dialing' AND attempts = ?",
                (note, attempt.campaign_id, attempt.prospect_id, attempt.attempt),
            )

    def finish(
        self, attempt: AttemptRow, record: AttemptRecord, decision: Decision, *, now: float | None = None
    ) -> None:
        """End the attempt and move its prospect on, in one transaction (``now``: the campaign clock's time)."""
        next_at = decision.next_at.timestamp() if decision.next_at is not None else None
        if next_at is None and decision.state is ProspectState.PENDING:
            next_at = 0.0
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET state = 'ended', ended_at = ?, duration = ?, outcome = ?, twilio_status = ?, "
                "call_sid = COALESCE(?, call_sid), cost = ?, cost_by_service = ?, transcript = ?, heard = ?, "
                "recording = ?, notes = ?, callback_at = ?, answered_by = ? "
                "WHERE campaign_id = ? AND prospect_id = ? AND attempt = ?",
                (
                    time.time() if now is None else now,
                    record.duration,
                    record.outcome,
                    record.twilio_status,
                    record.call_sid,
                    record.cost,
                    json.dumps(record.cost_by_service or {}),
                    json.dumps(list(record.transcript)),
                    record.heard,
                    record.recording,
                    record.notes,
                    record.callback_at,
                    record.answered_by,
                    attempt.campaign_id,
                    attempt.prospect_id,
                    attempt.attempt,
                ),
            )
            final_result = (decision.result or record.outcome) if decision.state.final else None
            key = (attempt.campaign_id, attempt.prospect_id)
            db.execute(
                "UPDATE prospects SET state = ?, next_at = ?, result = COALESCE(?, result), note = ? "
                "WHERE campaign_id = ? AND id = ?",
                (decision.state.value, next_at, final_result, decision.reason, *key),
            )
            if decision.add_to_dnc:
                db.execute(
                    "INSERT OR IGNORE INTO dnc (number, source, added_at) VALUES (?, ?, ?)",
                    (attempt.number, f"call {record.call_sid or attempt.job_id}", time.time()),
                )

    # ------------------------------------------------------------ queries

    def open_attempts(self, campaign_id: str) -> list[AttemptRow]:
        """Attempts claimed but not ended (after a crash: to reconcile)."""
        rows = self._db.execute(
            "SELECT * FROM attempts WHERE campaign_id = ? AND state != 'ended' ORDER BY claimed_at", (campaign_id,)
        ).fetchall()
        fields = ("campaign_id", "prospect_id", "attempt", "number", "state", "call_sid", "claimed_at")
        return [AttemptRow(*(r[name] for name in fields)) for r in rows]

    def call_sids(self, campaign_id: str, prospect_id: str) -> set[str]:
        """The call sids already recorded for a prospect's attempts."""
        rows = self._db.execute(
            "SELECT call_sid FROM attempts WHERE campaign_id = ? AND prospect_id = ? AND call_sid IS NOT NULL",
            (campaign_id, prospect_id),
        )
        return {row[0] for row in rows}

    def ended_with(self, campaign_id: str, prospect_id: str, outcome: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM attempts "
            "WHERE campaign_id = ? AND prospect_id = ? AND outcome = ? AND state = 'ended'",
            (campaign_id, prospect_id, outcome),
        ).fetchone()
        return int(row[0])

    def prospect(self, campaign_id: str, prospect_id: str) -> ProspectRow | None:
        row = self._db.execute(
            "SELECT * FROM prospects WHERE campaign_id = ? AND id = ?", (campaign_id, prospect_id)
        ).fetchone()
        return _prospect(row) if row is not None else None

    def prospects(self, campaign_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM prospects WHERE campaign_id = ? ORDER BY line", (campaign_id,))
        return [dict(row) for row in rows]

    def attempts(self, campaign_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT a.*, p.name AS prospect_name, p.company AS prospect_company FROM attempts a "
            "JOIN prospects p ON p.campaign_id = a.campaign_id AND p.id = a.prospect_id "
            "WHERE a.campaign_id = ? ORDER BY a.claimed_at, a.prospect_id, a.attempt",
            (campaign_id,),
        )
        return [dict(row) for row in rows]

    def state_counts(self, campaign_id: str) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM prospects WHERE campaign_id = ? GROUP BY state", (campaign_id,)
        )
        return {row[0]: int(row[1]) for row in rows}

    def result_counts(self, campaign_id: str) -> dict[str, int]:
        """Final prospects by result (meeting_booked, unreachable's last outcome, ...)."""
        rows = self._db.execute(
            f"SELECT COALESCE(result, state), COUNT(*) FROM prospects WHERE campaign_id = ? "
            f"AND state IN ({','.join('?' * len(_FINAL))}) GROUP BY 1",
            (campaign_id, *_FINAL),
        )
        return {row[0]: int(row[1]) for row in rows}

    def outcome_counts(self, campaign_id: str) -> dict[str, int]:
        """Ended attempts by outcome."""
        rows = self._db.execute(
            "SELECT outcome, COUNT(*) FROM attempts WHERE campaign_id = ? AND state = 'ended' GROUP BY outcome",
            (campaign_id,),
        )
        return {row[0]: int(row[1]) for row in rows}

    def spend(self, campaign_id: str) -> float:
        row = self._db.execute("SELECT COALESCE(SUM(cost), 0) FROM attempts WHERE campaign_id = ?", (campaign_id,))
        return float(row.fetchone()[0])

    def campaigns(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self._db.execute("SELECT id, name, created_at FROM campaigns ORDER BY id")]


def _prospect(row: sqlite3.Row) -> ProspectRow:
    return ProspectRow(
        id=row["id"],
        number=row["number"],
        name=row["name"],
        company=row["company"],
        timezone=row["timezone"],
        variables=json.loads(row["variables"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        next_at=row["next_at"],
    )
