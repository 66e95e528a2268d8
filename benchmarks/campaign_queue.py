"""Jobs per second through the Redis queue, and the coordinator's cost per attempt.

A campaign of N prospects runs through the distributed path: the coordinator
(CampaignRunner + RedisDispatcher + SQLite store, this process) claims and
queues the attempts; W ``CampaignWorker`` processes take them, acquire the
cluster leases, and "call" with an instant line (the call itself is not what
is measured here: the benchmarks of whole calls are elsewhere). Printed: call
starts per second end to end, the coordinator's CPU per attempt, and the
workers' CPU per job.

    python benchmarks/campaign_queue.py --prospects 2000 --workers 2

Needs ``redis-server`` on PATH (Debian package redis-server) and the redis extra.
The product's target: the queue is never the bottleneck below 100 call starts
per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vantum_pipeline.campaign import CampaignRunner, CampaignStore, FrozenClock, load_campaign, prepare_campaign  # noqa: E402
from vantum_pipeline.campaign.dispatch import CallJob, CallStatus, PlacedCallback  # noqa: E402
from vantum_pipeline.campaign.redis_dispatch import RedisDispatcher  # noqa: E402
from vantum_pipeline.campaign.store import AttemptRecord  # noqa: E402
from vantum_pipeline.testing.redis_server import RedisServer  # noqa: E402

TUESDAY = dt.datetime(2026, 12, 8, 15, 0, tzinfo=dt.UTC)


class InstantLine:
    """A phone line whose calls complete at once (the queue is what is measured)."""

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        await placed("CA" + job.job_id.replace(":", "").replace("+", "")[-32:].rjust(32, "0"))
        return AttemptRecord("completed", duration=1.0)

    async def call_status(self, sid: str) -> CallStatus | None:
        return CallStatus(sid, "completed", 1.0)

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        return []

    async def hang_up(self, sid: str) -> None:
        return None


@contextlib.asynccontextmanager
async def instant_line(config: Any, dnc: Any) -> AsyncIterator[InstantLine]:
    yield InstantLine()


def worker_main(url: str, name: str, max_jobs: int) -> None:
    from vantum_pipeline.campaign.worker import CampaignWorker

    worker = CampaignWorker(
        url, instant_line, limits={"calls": 10_000}, calls_per_second=0, max_jobs=max_jobs, worker_id=name,
        poll_delay=0.01,
    )  # fmt: skip

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            await task
        except asyncio.CancelledError:
            pass

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


def write_campaign(folder: Path, n: int) -> Path:
    (folder / "prospects.csv").write_text(
        "number,name,company,timezone\n" + "".join(f"+1415{i:07d},P{i},Co,America/New_York\n" for i in range(n))
    )
    path = folder / "campaign.toml"
    path.write_text(
        """
[campaign]
name = "Queue benchmark"
caller_id = "+15005550006"
prospects = "prospects.csv"
record_calls = false

[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "the phone agent"

[rules]
max_concurrent_calls = 200
calls_per_second = 1000
"""
    )
    return path


async def coordinate(url: str, folder: Path, n: int, outstanding: int) -> tuple[float, float, int]:
    path = write_campaign(folder, n)
    config = load_campaign(path)
    with CampaignStore(folder / "store.db") as store:
        prepare_campaign(config, store)
        async with RedisDispatcher(
            url, campaign_id=config.id, config_text=path.read_text(), config_path=str(path),
            max_outstanding=outstanding,
        ) as dispatcher:  # fmt: skip
            runner = CampaignRunner(
                config, store, InstantLine(), clock=FrozenClock(TUESDAY), dispatcher=dispatcher,
                poll_interval=0.01, idle_exit=0.0, write_records=False,
            )  # fmt: skip
            dispatcher.bind(runner, dnc=runner.dnc)
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            await runner.run()
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        done = sum(store.outcome_counts(config.id).values())
    return wall, cpu, done


async def redis_cpu_seconds(url: str) -> float:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        info = await client.info("cpu")
    finally:
        await client.aclose()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prospects", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-jobs", type=int, default=100, help="jobs at once per worker")
    parser.add_argument("--outstanding", type=int, default=200, help="jobs queued or running at once")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "NAME", "MAX_JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        url, name, max_jobs = args.worker
        worker_main(url, name, int(max_jobs))
        return
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with RedisServer(durable=False) as server, tempfile.TemporaryDirectory() as tmp:
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", server.url, f"w{i}", str(args.max_jobs)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stderr=subprocess.DEVNULL,
            )
            for i in range(args.workers)
        ]
        try:
            time.sleep(1.5)  # let the workers import and connect
            wall, cpu, done = asyncio.run(coordinate(server.url, Path(tmp), args.prospects, args.outstanding))
            redis_cpu = asyncio.run(redis_cpu_seconds(server.url))
        finally:
            for proc in procs:
                proc.terminate()
            children_cpu = 0.0
            for proc in procs:
                proc.wait(10)
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            children_cpu = usage.ru_utime + usage.ru_stime
    print(f"attempts recorded          {done} of {args.prospects} prospects")
    print(f"call starts per second     {done / wall:8.1f}   (end to end, {args.workers} workers, 2 cores shared)")
    print(f"coordinator CPU / attempt  {cpu / max(done, 1) * 1000:8.3f} ms (claim, rules, queue, result, store)")
    print(f"worker CPU / job           {children_cpu / max(done, 1) * 1000:8.3f} ms (lease, markers, events)")
    print(f"redis-server CPU / job     {redis_cpu / max(done, 1) * 1000:8.3f} ms (since it started)")
    verdict = "yes" if done / wall >= 100 else "NO"
    print(f"queue above 100 starts/s   {verdict}")


if __name__ == "__main__":
    main()
