"""What an interruption costs per processor, and a pipeline's memory at rest.

    python benchmarks/interruption_cost.py                          # this checkout
    python benchmarks/interruption_cost.py --baseline /tmp/old      # and an older one, same run

- interruption: ``push_interruption()`` at the head of N pass-through
  processors (N = 2 and 32), median of many; the cost per processor is the
  slope between the two, so the fixed cost of an interruption cancels out;
- memory: growth per idle running pipeline of 6 processors (K = 500 of them
  started, fresh interpreter), as Python heap (tracemalloc: repeatable) and
  as RSS (what the machine sees, noisier; measured without tracemalloc).

Each figure comes from a fresh interpreter per checkout, rounds alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CODE = r"""
import asyncio, gc, json, os, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {root!r})
from loguru import logger
logger.remove()
from vantum_pipeline import FrameProcessor, Pipeline, PipelineTask
from vantum_pipeline import frames as F

class Pass(FrameProcessor):
    pass

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

async def per_interruption(n, rounds):
    head = Pass()
    task = PipelineTask(Pipeline([head] + [Pass() for _ in range(n - 1)]), idle_timeout=None)
    runner = asyncio.ensure_future(task.run())
    await asyncio.sleep(0.05)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        await head.push_interruption()
        times.append(time.perf_counter() - t)
    await task.cancel()
    await runner
    return statistics.median(times)

async def memory(k):
    async def one():
        task = PipelineTask(Pipeline([Pass() for _ in range(6)]), idle_timeout=None)
        return task, asyncio.ensure_future(task.run())
    import tracemalloc
    warm = [await one() for _ in range(5)]
    await asyncio.sleep(0.1)
    gc.collect(); before = rss()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    started = [await one() for _ in range(k)]
    await asyncio.sleep(0.5)
    gc.collect(); after = rss()
    traced = (tracemalloc.get_traced_memory()[0] - traced0) / k
    tracemalloc.stop()
    for task, runner in warm + started:
        await task.cancel()
    await asyncio.gather(*(r for _, r in warm + started), return_exceptions=True)
    return (after - before) / k, traced

async def main():
    rss_, heap = await memory(500)
    small = await per_interruption(2, 3000)
    big = await per_interruption(32, 3000)
    print(json.dumps({{"small": small, "big": big, "per_processor": (big - small) / 30, "rss": rss_, "heap": heap}}))

asyncio.run(main())
"""


def measure(root: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CODE.format(root=root)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="an older checkout to measure beside this one")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    roots = {"this": str(Path(__file__).resolve().parent.parent)}
    if args.baseline:
        roots["base"] = str(Path(args.baseline).resolve())
    results: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
    for _ in range(args.rounds):
        for name, root in roots.items():
            results[name].append(measure(root))
    for name, runs in results.items():
        per = statistics.median(r["per_processor"] for r in runs) * 1e6
        fixed = statistics.median(r["small"] for r in runs) * 1e6
        rss = statistics.median(r["rss"] for r in runs) / 1024
        heap = statistics.median(r["heap"] for r in runs) / 1024
        spread = [round(r["per_processor"] * 1e6, 2) for r in runs]
        print(
            f"{name}: interruption {per:.2f} us per processor (rounds {spread}), {fixed:.1f} us for 2 processors; "
            f"memory at rest per pipeline of 6: {heap:.1f} KiB of Python heap, {rss:.1f} KiB RSS"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
