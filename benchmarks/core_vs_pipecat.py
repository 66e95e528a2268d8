"""The core, side by side with pipecat-ai: same workloads, one run, interleaved.

    pip install -e ".[bench]"
    python benchmarks/core_vs_pipecat.py            # all workloads (~2 minutes)
    python benchmarks/core_vs_pipecat.py --quick    # fewer rounds

The chains are those of ``pipecat_harness.py`` (pipecat runs "lean":
metrics, observers, RTVI, turn tracking, idle timeout and dangling-task checks
off). Workloads:

- latency: one frame at a time through N pass-through processors
  (N = 1, 5, 10, 20), queued at the task, timed when it reaches a sink;
- throughput: 20,000 frames queued at once through N = 10;
- interruption: 200 frames queued behind a blocked processor, an
  interruption triggered at the head, timed until the InterruptionFrame
  reaches the tail; frames sent before it that still reach the tail are stale;
- real-time calls: K pipelines of 6 processors, each fed a 20 ms audio frame
  on an absolute clock (staggered), for a few seconds: CPU share of one core
  and frames that reached the tail more than 20 ms after they were due;
- memory: RSS per idle running pipeline (K = 200, fresh interpreter);
- import time of the core (fresh interpreter, median of 5).

Timings are noisy on a shared machine: compare the ratios, which come from
rounds interleaved in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pipecat_harness import Pipecat, Vantum, latency_samples, quiet_logs, seconds_per_frame  # noqa: E402

LIBS: list[type[Any]] = [Vantum, Pipecat]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ---------------------------------------------------------------- workloads


async def interruption_round(lib: type[Any], cycles: int, queued: int) -> tuple[list[float], int]:
    reached = asyncio.Event()
    stale = 0
    current_cycle = 0
    marker_seen = asyncio.Event()

    def on_tail(frame: Any) -> None:
        nonlocal stale
        if pipe.is_interruption(frame):
            reached.set()
        elif pipe.is_text(frame):
            if frame.text == f"marker{current_cycle}":
                marker_seen.set()
            elif frame.text.startswith(f"old{current_cycle}") or frame.text == "block":
                stale += 1

    pipe = lib(10, on_tail, gate=True)
    await pipe.start()
    samples: list[float] = []
    for cycle in range(cycles):
        current_cycle = cycle
        reached.clear()
        marker_seen.clear()
        pipe.gate.release.clear()
        pipe.gate.blocked.clear()
        await pipe.send(pipe.text("block"))
        await asyncio.wait_for(pipe.gate.blocked.wait(), 5)
        for i in range(queued):
            await pipe.send(pipe.text(f"old{cycle}:{i}"))
        await asyncio.sleep(0.02)  # let them travel to the blocked processor
        start = time.perf_counter()
        await pipe.interrupt()
        if not reached.is_set():
            await asyncio.wait_for(reached.wait(), 5)
        samples.append(time.perf_counter() - start)
        pipe.gate.release.set()
        await pipe.send(pipe.text(f"marker{cycle}"))
        await asyncio.wait_for(marker_seen.wait(), 5)
    await pipe.stop()
    return samples, stale


async def realtime_round(lib: type[Any], k: int, seconds: float) -> tuple[float, float, int]:
    period = 0.02
    late = 0
    total = 0
    due: list[list[float]] = [[] for _ in range(k)]

    def make_on_tail(index: int) -> Callable[[Any], None]:
        def on_tail(frame: Any) -> None:
            nonlocal late, total
            if type(frame).__name__ == "InputAudioRawFrame" and due[index]:
                scheduled = due[index].pop(0)
                total += 1
                if time.perf_counter() - scheduled > period:
                    late += 1

        return on_tail

    pipes = [lib(5, make_on_tail(i)) for i in range(k)]
    for pipe in pipes:
        await pipe.start()
    loop = asyncio.get_running_loop()
    begin = time.perf_counter() + 0.1

    async def feed(index: int, pipe: Any) -> None:
        n = 0
        offset = begin + period * index / k
        while True:
            when = offset + n * period
            if when - begin > seconds:
                return
            delay = when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due[index].append(when)
            await pipe.send(pipe.audio())
            n += 1

    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    await asyncio.gather(*(loop.create_task(feed(i, p)) for i, p in enumerate(pipes)))
    await asyncio.sleep(0.1)
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    for pipe in pipes:
        await pipe.stop()
    return cpu / wall, late / max(1, total), total


# -------------------------------------------------------- fresh interpreters

RSS_CODE = """
import asyncio, gc, os, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {root!r})
sys.argv = ["x"]
import pipecat_harness as b
b.quiet_logs()
lib = {{"vantum": b.Vantum, "pipecat": b.Pipecat}}[{lib!r}]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
async def main():
    warm = lib(5, lambda f: None); await warm.start(); await warm.stop()
    gc.collect(); before = rss()
    pipes = [lib(5, lambda f: None) for _ in range({k})]
    await asyncio.gather(*(p.start() for p in pipes))
    gc.collect(); after = rss()
    print((after - before) / {k})
    for p in pipes:
        await p.stop()
asyncio.run(main())
"""

IMPORT_CODE = {
    "vantum": "import vantum_pipeline, vantum_pipeline.frames, vantum_pipeline.task",
    "pipecat": "import pipecat.pipeline.pipeline, pipecat.pipeline.worker, pipecat.processors.frame_processor",
}


def fresh(code: str, env_path: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return out.stdout.strip().splitlines()[-1]


# -------------------------------------------------------------------- main


def line(label: str, v: float, p: float, unit: str, better: str = "lower") -> None:
    ratio = p / v if better == "lower" else v / p
    print(f"  {label:<34} vantum {v:>12.2f} {unit:<8} pipecat {p:>12.2f} {unit:<8} ratio {ratio:>6.1f}x")


async def main(quick: bool) -> None:
    quiet_logs()
    rounds = 3 if quick else 5
    print(f"python {sys.version.split()[0]}; {rounds} interleaved rounds per workload\n")

    print("latency per frame, queued at the task to the sink (us; ratio = pipecat / vantum)")
    for n in (1, 5, 10, 20):
        samples: dict[str, list[float]] = {lib.name: [] for lib in LIBS}
        for _ in range(rounds):
            for lib in LIBS:
                gc.collect()
                samples[lib.name] += await latency_samples(lib, n, 300 if quick else 600)
        v, p = samples["vantum"], samples["pipecat"]
        line(f"N={n:<2} p50", pct(v, 0.5) * 1e6, pct(p, 0.5) * 1e6, "us")
        line(f"N={n:<2} p99", pct(v, 0.99) * 1e6, pct(p, 0.99) * 1e6, "us")

    print("\nthroughput through N=10 (frames/s; ratio = vantum / pipecat)")
    tput: dict[str, list[float]] = {lib.name: [] for lib in LIBS}
    for _ in range(rounds):
        for lib in LIBS:
            gc.collect()
            tput[lib.name].append(1 / await seconds_per_frame(lib, 10, 10000 if quick else 20000))
    line("N=10", statistics.median(tput["vantum"]), statistics.median(tput["pipecat"]), "fr/s", better="higher")

    print("\ninterruption with 200 frames queued, head trigger to InterruptionFrame at the tail (us)")
    intr: dict[str, list[float]] = {lib.name: [] for lib in LIBS}
    stale: dict[str, int] = {lib.name: 0 for lib in LIBS}
    for _ in range(rounds):
        for lib in LIBS:
            gc.collect()
            got, s = await interruption_round(lib, 10 if quick else 20, 200)
            intr[lib.name] += got
            stale[lib.name] += s
    line("p50", pct(intr["vantum"], 0.5) * 1e6, pct(intr["pipecat"], 0.5) * 1e6, "us")
    line("p99", pct(intr["vantum"], 0.99) * 1e6, pct(intr["pipecat"], 0.99) * 1e6, "us")
    print(f"  stale frames at the tail: vantum {stale['vantum']}, pipecat {stale['pipecat']}")

    print("\nreal-time calls: K pipelines x 6 processors, 20 ms audio frames on an absolute clock")
    seconds = 3.0 if quick else 5.0
    for k in (10, 50, 100, 200):
        result: dict[str, tuple[float, float, int]] = {}
        for lib in LIBS:
            gc.collect()
            result[lib.name] = await realtime_round(lib, k, seconds)
        (vc, vl, vt), (pc, pl, pt) = result["vantum"], result["pipecat"]
        print(
            f"  K={k:<4} CPU vantum {vc * 100:6.1f}%  pipecat {pc * 100:6.1f}%  ratio {pc / vc:5.1f}x   "
            f"late vantum {vl * 100:5.2f}% of {vt}  pipecat {pl * 100:5.2f}% of {pt}"
        )

    root = str(HERE)
    repo = str(HERE.parent)
    env_path = f"{root}:{repo}"
    print("\nmemory: RSS per idle running pipeline of 6 processors (K=200, fresh interpreter)")
    rss = {name: float(fresh(RSS_CODE.format(root=root, lib=name, k=200), env_path)) for name in ("vantum", "pipecat")}
    line("RSS per pipeline", rss["vantum"] / 1024, rss["pipecat"] / 1024, "KiB")

    print("\nimport time of the core (fresh interpreter, median of 5)")
    times: dict[str, list[float]] = {"vantum": [], "pipecat": []}
    for _ in range(5):
        for name, code in IMPORT_CODE.items():
            timed = f"import time; t=time.perf_counter(); {code}; print(time.perf_counter()-t)"
            times[name].append(float(fresh(timed, env_path)))
    line("import", statistics.median(times["vantum"]) * 1e3, statistics.median(times["pipecat"]) * 1e3, "ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and frames")
    args = parser.parse_args()
    asyncio.run(main(args.quick))
