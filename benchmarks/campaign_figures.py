"""What the console's campaign figures cost per tick on a big campaign store.

    PYTHONPATH=. python benchmarks/campaign_figures.py              # 100,000 prospects and attempts, ~1 min
    PYTHONPATH=. python benchmarks/campaign_figures.py --quick      # 10,000

A store with N prospects settled by N ended attempts and N / 2 prospects still
pending (a campaign two thirds of the way through; written in bulk with SQL,
in the shape ``CampaignStore`` writes them), then, per round:

- ``StoreCampaignStats``: a tick when nothing was committed (a version check),
  and a tick after one more call was claimed and finished through the store's
  own ``claim``/``finish`` (the incremental read);
- the straightforward provider, for comparison: the store's own
  ``state_counts``, ``outcome_counts`` and ``spend`` plus the spend series
  (every ended attempt's time and cost), queried again on every tick.

Printed: the first read (the history, once), and the median of each tick in
milliseconds with the ratio of the straightforward provider to the incremental one.
pipecat-ai has no campaign store: nothing to compare against there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from vantum_pipeline.campaign.figures import StoreCampaignStats
from vantum_pipeline.campaign.prospects import Prospect
from vantum_pipeline.campaign.rules import Decision, ProspectState
from vantum_pipeline.campaign.store import AttemptRecord, CampaignStore

OUTCOMES = ("meeting_booked", "not_interested", "busy", "no_answer", "failed", "voicemail_left")


def populate(store: CampaignStore, count: int) -> None:
    store.ensure_campaign("big", "Big campaign")
    numbers = [f"+1{2000000000 + n}" for n in range(count + count // 2)]
    store.import_prospects("big", [Prospect(n, n, "", "", "America/New_York") for n in numbers])
    start = time.time() - count
    with store.transaction() as db:
        db.executemany(
            "INSERT INTO attempts (campaign_id, prospect_id, attempt, state, number, call_sid, claimed_at, "
            "ended_at, duration, outcome, twilio_status, cost, cost_by_service) "
            "VALUES ('big', ?, 1, 'ended', ?, ?, ?, ?, 60, ?, 'completed', 0.05, ?)",
            [
                (number, number, f"CA{n:032d}", start + n, start + n + 60, OUTCOMES[n % len(OUTCOMES)], json.dumps({}))
                for n, number in enumerate(numbers[:count])
            ],
        )
        db.executemany(
            "UPDATE prospects SET state = 'done', attempts = 1, next_at = NULL WHERE campaign_id = 'big' AND id = ?",
            [(number,) for number in numbers[:count]],
        )


def straightforward(store: CampaignStore) -> None:
    store.state_counts("big")
    store.outcome_counts("big")
    store.spend("big")
    store._db.execute(
        "SELECT ended_at, cost FROM attempts WHERE campaign_id = 'big' AND state = 'ended' ORDER BY ended_at"
    ).fetchall()


async def main(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "campaign.sqlite"
        store = CampaignStore(path)
        populate(store, count)
        stats = StoreCampaignStats(path, min_interval=0.0, max_rows_per_read=count + 1000, query_timeout=30.0)
        began = time.perf_counter()
        await stats.campaign_stats()
        first = time.perf_counter() - began

        idle, incremental, plain = [], [], []
        pending = [row.id for row in store.due("big", time.time(), rounds)]
        for prospect in pending:
            began = time.perf_counter()
            await stats.campaign_stats()
            idle.append(time.perf_counter() - began)

            attempt = store.claim("big", prospect, time.time())
            assert attempt is not None
            store.finish(attempt, AttemptRecord("meeting_booked", cost=0.07), Decision(ProspectState.DONE))
            began = time.perf_counter()
            figures = await stats.campaign_stats()
            incremental.append(time.perf_counter() - began)

            began = time.perf_counter()
            straightforward(store)
            plain.append(time.perf_counter() - began)
        (big,) = figures
        assert (
            big.done == count + len(pending)
            and big.prospects == count + count // 2
            and sum(big.outcomes.values()) == count + len(pending)
        )
        await stats.aclose()
        store.close()

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    print(f"campaign store: {count + count // 2:,} prospects ({count // 2:,} pending), {count:,} ended attempts")
    print(f"{rounds} rounds, medians")
    print(f"  first read (the history, once)          {first * 1000:9.1f} ms")
    print(f"  tick, nothing committed                  {ms(idle):9.3f} ms")
    print(f"  tick after one call (incremental)        {ms(incremental):9.3f} ms")
    print(f"  tick, straightforward full queries       {ms(plain):9.3f} ms")
    print(f"  straightforward / incremental            {ms(plain) / ms(incremental):9.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 prospects instead of 100,000")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(10_000 if args.quick else 100_000, args.rounds))
