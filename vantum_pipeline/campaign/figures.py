"""The web console's campaign figures, read from the campaign store.

``StoreCampaignStats(path)`` is a ``CampaignStatsProvider`` (see
``vantum_pipeline.console.campaigns``) over a campaign store that a runner
is writing: per campaign, its progress (prospects in a final state out of
all of them, calls in progress), the count of each call outcome, and the
spend over time::

    stats = StoreCampaignStats(folder / "campaign.sqlite", budgets={config.id: config.budget_usd})
    mount_console(server.app, hub, ConsoleSettings.from_env(), campaigns=stats)

It never writes and never slows the writer: its own read-only connection
(``mode=ro``, ``query_only``), reads that WAL lets run beside the runner's
transactions, each read one snapshot (one read transaction), each query
aborted past ``query_timeout`` seconds, on a worker thread so the event loop
never waits on SQLite.

Cheap per console tick, whatever the campaign's size:

- at most one read every ``min_interval`` seconds, shared by every viewer
  (one read in flight at a time; callers wait on it, a cancelled caller
  leaves it running for the next);
- nothing but ``PRAGMA data_version`` when the store has not changed since
  the last read;
- attempts are tallied incrementally: ended attempts never change, so a read
  looks only at the attempts inserted since the last one (a rowid range)
  and at those that were still open (bounded by the calls in progress);
- the prospects not settled yet (pending, dialing) are counted on the
  ``prospects_due`` index alone, a range that shrinks as the campaign goes
  on; all of them only when rows were added (prospects are never deleted).

On many machines (``vantum campaign run --redis`` and ``vantum worker``) the
store is the coordinator's: ``publish_figures`` copies its figures to Redis
every few seconds (with a time to live, so a stopped coordinator's figures
lapse) and ``PublishedCampaignStats`` is the workers' consoles' provider,
one small ``GET`` per read.

The first read tallies the attempts already in the store, up to
``max_rows_per_read`` per read (a big store's history arrives over a few
reads). The spend series keeps at most ``max_points`` points: past that,
every other point is dropped (the curve keeps its span and its totals).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from vantum_pipeline.campaign.jobs import Keys
from vantum_pipeline.campaign.rules import ProspectState
from vantum_pipeline.campaign.store import SCHEMA_VERSION
from vantum_pipeline.console.campaigns import CampaignStats
from vantum_pipeline.errors import ConfigurationError, ProtocolError

__all__ = ["PublishedCampaignStats", "StoreCampaignStats", "publish_figures"]

_COLUMNS = "rowid, campaign_id, prospect_id, attempt, state, outcome, cost, ended_at"
#: Open attempts re-read per query (SQLite's bound on host parameters is far above it).
_CHUNK = 500

_Key = tuple[str, str, int]


@dataclass(slots=True)
class _Tally:
    """One campaign's figures, kept between reads."""

    name: str
    created_at: float
    outcomes: dict[str, int] = field(default_factory=dict)
    spent: float = 0.0
    spend: list[tuple[float, float]] = field(default_factory=list)
    #: Prospects in all, and the unsettled ones by state (pending, dialing).
    prospects: int = 0
    states: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Ended:
    campaign_id: str
    outcome: str
    cost: float
    ended_at: float


class StoreCampaignStats:
    """See the module docstring. ``budgets`` maps a campaign id to its budget
    in dollars (shown against the spend); ``campaign_ids`` limits what is shown
    (default: every campaign in the store, newest first, at most ``max_campaigns``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        budgets: Mapping[str, float | None] | None = None,
        campaign_ids: Sequence[str] | None = None,
        min_interval: float = 1.0,
        query_timeout: float = 1.0,
        max_points: int = 400,
        max_campaigns: int = 20,
        max_rows_per_read: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_points < 2:
            raise ConfigurationError(f"max_points must be >= 2, got {max_points}")
        if query_timeout <= 0 or min_interval < 0:
            raise ConfigurationError(
                f"query_timeout must be > 0 and min_interval >= 0, got {query_timeout} and {min_interval}"
            )
        self.path = Path(path)
        self.budgets = dict(budgets or {})
        self.campaign_ids = list(campaign_ids) if campaign_ids is not None else None
        self.min_interval = min_interval
        self.query_timeout = query_timeout
        self.max_points = max_points
        self.max_campaigns = max_campaigns
        self.max_rows_per_read = max_rows_per_read
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._tallies: dict[str, _Tally] = {}
        self._shown: list[str] = []
        self._seen_rowid = 0
        self._open: dict[int, _Key] = {}
        self._prospects_top = -1
        self._totals: dict[str, int] = {}
        self._catching_up = False
        self._cached: list[CampaignStats] = []
        self._read_at: float | None = None
        self._inflight: asyncio.Future[list[CampaignStats]] | None = None
        self._deadline = 0.0
        #: Reads that touched SQLite beyond ``data_version`` (for tests and benchmarks).
        self.reads = 0
        #: Attempt rows fetched, all reads together.
        self.rows_read = 0

    # ------------------------------------------------------------ provider

    async def campaign_stats(self) -> Sequence[CampaignStats]:
        """The figures, at most ``min_interval`` seconds old. Cancel-safe: a
        cancelled caller leaves the read in flight for the next one."""
        if self._read_at is not None and self._clock() - self._read_at < self.min_interval:
            return self._cached
        if self._inflight is None:
            loop = asyncio.get_running_loop()
            self._inflight = loop.run_in_executor(None, self._read)
            self._inflight.add_done_callback(self._read_done)
        return await asyncio.shield(self._inflight)

    def _read_done(self, future: asyncio.Future[list[CampaignStats]]) -> None:
        self._inflight = None
        if not future.cancelled() and future.exception() is None:
            self._cached = future.result()
            self._read_at = self._clock()

    async def aclose(self) -> None:
        """Wait (bounded) for a read in flight, then close the connection."""
        if self._inflight is not None:
            await asyncio.wait([self._inflight], timeout=self.query_timeout * 4)
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------- reading

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if not self.path.is_file():
            return None  # the runner has not created it yet
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=self.query_timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA query_only=ON")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION or version < 1:
            db.close()
            raise ConfigurationError(f"{self.path}: store schema version {version}, expected 1 to {SCHEMA_VERSION}")
        # A query running past its deadline is aborted (sqlite3.OperationalError: interrupted).
        db.set_progress_handler(lambda: 1 if time.monotonic() > self._deadline else 0, 10_000)
        self._db = db
        return db

    def _read(self) -> list[CampaignStats]:
        """One snapshot of the store, on a worker thread. Everything is queried
        first and applied after: a query that fails leaves the tallies as they were."""
        db = self._connect()
        if db is None:
            return []
        self._deadline = time.monotonic() + self.query_timeout
        data_version = int(db.execute("PRAGMA data_version").fetchone()[0])
        if data_version == self._data_version and not self._catching_up:
            return self._cached  # no commit since the last read
        self.reads += 1
        db.execute("BEGIN")
        try:
            campaigns = db.execute("SELECT id, name, created_at FROM campaigns ORDER BY created_at DESC, id").fetchall()
            wanted = [row[0] for row in campaigns]
            if self.campaign_ids is not None:
                wanted = [campaign_id for campaign_id in self.campaign_ids if campaign_id in wanted]
            shown = wanted[: self.max_campaigns]
            top = int(db.execute("SELECT MAX(rowid) FROM attempts").fetchone()[0] or 0)
            # Rowids come from the top of the table: after the top rows were deleted (an
            # attempt never placed is forgotten), the next insert reuses their rowids.
            since = min(self._seen_rowid, top)
            open_rowids = list(self._open)
            found: dict[int, Any] = {}
            for start in range(0, len(open_rowids), _CHUNK):
                chunk = open_rowids[start : start + _CHUNK]
                query = f"SELECT {_COLUMNS} FROM attempts WHERE rowid IN ({','.join('?' * len(chunk))})"
                found.update((row[0], row) for row in db.execute(query, chunk))
            new_rows = db.execute(
                f"SELECT {_COLUMNS} FROM attempts WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (since, self.max_rows_per_read),
            ).fetchall()
            # Prospects are never deleted: the total changes only when rows are added (the top rowid moves).
            prospects_top = int(db.execute("SELECT MAX(rowid) FROM prospects").fetchone()[0] or 0)
            totals = self._totals
            if prospects_top != self._prospects_top or any(campaign_id not in totals for campaign_id in shown):
                totals = {
                    campaign_id: int(
                        db.execute("SELECT COUNT(*) FROM prospects WHERE campaign_id = ?", (campaign_id,)).fetchone()[0]
                    )
                    for campaign_id in shown
                }
            # The prospects not settled yet: an index range that shrinks as the campaign goes on.
            states = {
                campaign_id: {
                    row[0]: int(row[1])
                    for row in db.execute(
                        "SELECT state, COUNT(*) FROM prospects "
                        "WHERE campaign_id = ? AND state IN (?, ?) GROUP BY state",
                        (campaign_id, ProspectState.PENDING.value, ProspectState.DIALING.value),
                    )
                }
                for campaign_id in shown
            }
        finally:
            db.execute("COMMIT")
        self.rows_read += len(found) + len(new_rows)
        for campaign_id, name, created_at in campaigns:
            tally = self._tallies.setdefault(campaign_id, _Tally(name, float(created_at)))
            tally.name = name
        self._shown = shown
        ended: list[_Ended] = []
        for rowid in open_rowids:
            self._open.pop(rowid)
            row = found.get(rowid)
            if row is None:
                continue  # forgotten (never placed)
            # Still open, ended since, or a new attempt on a reused rowid (at or below ``since``).
            self._take(row, ended)
        for row in new_rows:
            self._take(row, ended)
        self._seen_rowid = new_rows[-1][0] if new_rows else since
        self._catching_up = len(new_rows) >= self.max_rows_per_read
        self._add_ended(ended)
        self._prospects_top, self._totals = prospects_top, totals
        for campaign_id, counts in states.items():
            self._tallies[campaign_id].states = counts
            self._tallies[campaign_id].prospects = totals[campaign_id]
        self._data_version = data_version
        return [self._stats(campaign_id) for campaign_id in self._shown]

    def _take(self, row: Any, ended: list[_Ended]) -> None:
        if row[4] == "ended":
            ended.append(_Ended(row[1], row[5] or "", float(row[6] or 0.0), float(row[7] or 0.0)))
        else:
            self._open[row[0]] = (row[1], row[2], row[3])

    def _add_ended(self, ended: list[_Ended]) -> None:
        ended.sort(key=lambda item: item.ended_at)
        for item in ended:
            tally = self._tallies.get(item.campaign_id)
            if tally is None:
                continue  # an attempt of no campaign row
            tally.outcomes[item.outcome] = tally.outcomes.get(item.outcome, 0) + 1
            tally.spent += max(0.0, item.cost)
            at = item.ended_at if not tally.spend else max(item.ended_at, tally.spend[-1][0])
            tally.spend.append((at, tally.spent))
            if len(tally.spend) > self.max_points:
                last = tally.spend[-1]
                tally.spend = tally.spend[::2]
                if tally.spend[-1] != last:
                    tally.spend.append(last)

    def _stats(self, campaign_id: str) -> CampaignStats:
        tally = self._tallies[campaign_id]
        total = tally.prospects
        dialing = tally.states.get(ProspectState.DIALING.value, 0)
        pending = tally.states.get(ProspectState.PENDING.value, 0)
        done = max(0, total - pending - dialing)
        budget = self.budgets.get(campaign_id)
        if pending + dialing == 0:
            state = "finished" if total else "empty"
        elif dialing:
            state = "calling"
        elif budget is not None and tally.spent >= budget:
            state = "budget reached"
        else:
            state = "waiting"
        return CampaignStats(
            campaign_id=campaign_id,
            name=tally.name,
            prospects=total,
            done=done,
            outcomes=dict(tally.outcomes),
            spend=list(tally.spend),
            state=state,
            budget=budget,
            in_progress=dialing,
        )


async def publish_figures(
    stats: StoreCampaignStats,
    publish: Callable[[str, float], Awaitable[None]],
    *,
    interval: float = 2.0,
    ttl: float = 30.0,
    timeout: float = 5.0,
) -> None:
    """Every ``interval`` seconds, ``await publish(json, ttl)`` the figures (a
    ``RedisDispatcher.publish_figures``), until cancelled. A failed round is
    logged and the next one tried; each round is bounded by ``timeout``."""
    failing = False
    while True:
        try:
            async with asyncio.timeout(timeout):
                figures = await stats.campaign_stats()
                await publish(json.dumps([item.as_dict() for item in figures], separators=(",", ":")), ttl)
            failing = False
        except Exception as exc:  # the figures are a view: never a reason to stop the campaign
            if not failing:
                logger.warning("campaign figures: not published ({}: {}); retrying", type(exc).__name__, exc)
            failing = True
        await asyncio.sleep(interval)


class PublishedCampaignStats:
    """A ``CampaignStatsProvider`` on a worker: the figures the campaign's coordinator
    publishes to Redis (none while it publishes nothing). Reads at most every
    ``min_interval`` seconds, each within ``timeout``; one connection, opened on first use."""

    def __init__(self, redis_url: str, campaign_id: str, *, timeout: float = 1.0, min_interval: float = 1.0) -> None:
        self.redis_url = redis_url
        self.key = Keys(campaign_id).figures
        self.timeout = timeout
        self.min_interval = min_interval
        self._redis: Any = None
        self._cached: list[CampaignStats] = []
        self._read_at: float | None = None

    async def campaign_stats(self) -> Sequence[CampaignStats]:
        """Cancel-safe."""
        now = time.monotonic()
        if self._read_at is not None and now - self._read_at < self.min_interval:
            return self._cached
        if self._redis is None:
            from redis.asyncio import Redis

            self._redis = Redis.from_url(
                self.redis_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        async with asyncio.timeout(self.timeout):
            raw = await self._redis.get(self.key)
        self._read_at = now
        if raw is None:
            self._cached = []
            return self._cached
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, list):
            raise ProtocolError(f"{self.key}: not a JSON list of campaign figures: {bytes(raw)[:80]!r}")
        self._cached = [CampaignStats.from_dict(item) for item in data]
        return self._cached

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await redis.aclose()
