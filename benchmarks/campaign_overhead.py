"""Campaign overhead per attempt: runner + dispatcher + SQLite store, calls stubbed.

10,000 prospects are scheduled and dialled through the real runner, the
in-process dispatcher (pacing and concurrency on) and the store (WAL, one
transaction per state change: claim, placed, finish); the dialer answers at
once with a mix of outcomes (70 % done, 20 % busy → retried, 10 % no answer →
retried), so every attempt pays for the rules and the retries' bookkeeping.
The figure is CPU time per attempt (process_time), next to the 1 ms target
and to a call's own CPU cost (an answered call of the demo: about 0.5 s).

    python benchmarks/campaign_overhead.py [--prospects 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vantum_pipeline.campaign.config import parse_campaign
from vantum_pipeline.campaign.dispatch import CallJob, CallStatus, PlacedCallback
from vantum_pipeline.campaign.runner import CampaignRunner, prepare_campaign
from vantum_pipeline.campaign.store import AttemptRecord, CampaignStore

TARGET_MS = 1.0
CALL_CPU_MS = 500.0  # one answered simulated call, whole pipeline (`vantum campaign demo`: ~9 s CPU, 13 calls)


class StubDialer:
    """Answers at once; the outcome depends on the number and attempt (deterministic)."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        self.calls += 1
        await placed(f"CA{self.calls:032x}")
        roll = int(hashlib.blake2s(f"{job.number}:{job.attempt.attempt}".encode(), digest_size=2).hexdigest(), 16) % 10
        outcome = "busy" if roll < 2 else "no_answer" if roll < 3 else "meeting_booked"
        return AttemptRecord(
            outcome, twilio_status="completed", call_sid=f"CA{self.calls:032x}", duration=30, cost=0.01
        )

    async def call_status(self, sid: str) -> CallStatus | None:
        return None

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        return []

    async def hang_up(self, sid: str) -> None:
        return None


CAMPAIGN = """
[campaign]
name = "Benchmark"
caller_id = "+15005550006"
prospects = "prospects.csv"
folder = "run"

[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "Vantum"

[rules]
max_concurrent_calls = 50
calls_per_second = 1000000

[rules.calling_hours]
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
start = "00:00"
end = "23:59"

[rules.outcomes]
busy = {{ action = "retry", delay_seconds = 0, max_attempts = 3 }}
no_answer = {{ action = "retry", delay_seconds = 0, max_attempts = 2 }}
"""


async def run(prospects: int, *, durability: str, records: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = "".join(f"+1{2000000000 + i},Prospect {i},Co {i}\n" for i in range(prospects))
        (folder / "prospects.csv").write_text("number,name,company\n" + rows)
        config = parse_campaign(CAMPAIGN.format(), folder / "campaign.toml")
        store = CampaignStore(folder / "run" / "campaign.sqlite", durability=durability)
        started_import = time.process_time()
        prepare_campaign(config, store)
        import_cpu = time.process_time() - started_import
        dialer = StubDialer()
        runner = CampaignRunner(config, store, dialer, idle_exit=0.0, poll_interval=0.01, write_records=records)
        wall, cpu = time.perf_counter(), time.process_time()
        summary = await runner.run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert summary.reason == "finished", summary
        attempts = len(store.attempts(config.id))
        size = (folder / "run" / "campaign.sqlite").stat().st_size
        store.close()
    return {
        "attempts": attempts,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_attempt": 1000 * cpu / attempts,
        "attempts_per_s": attempts / wall,
        "import_ms_per_prospect": 1000 * import_cpu / prospects,
        "store_mb": size / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prospects", type=int, default=10_000)
    args = parser.parse_args()
    logger.remove()
    print(f"campaign overhead, {args.prospects} prospects, calls stubbed (dialer answers at once)")
    print(
        f"{'configuration':<34}{'attempts':>9}{'CPU ms/attempt':>16}{'attempts/s':>12}{'vs 1 ms':>9}{'of a call':>11}"
    )
    for durability, records in (("normal", False), ("normal", True), ("full", False)):
        result = asyncio.run(run(args.prospects, durability=durability, records=records))
        label = f"store {durability}" + (", JSON record per call" if records else "")
        per = result["cpu_ms_per_attempt"]
        print(
            f"{label:<34}{result['attempts']:>9}{per:>16.3f}{result['attempts_per_s']:>12.0f}"
            f"{TARGET_MS / per:>8.1f}x{100 * per / CALL_CPU_MS:>10.2f}%"
        )
    print(f"(import: {result['import_ms_per_prospect']:.3f} ms CPU per prospect; store {result['store_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
