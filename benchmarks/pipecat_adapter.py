"""What hosting a pipecat processor in a vantum pipeline costs, next to the same processor in pipecat.

    pip install -e ".[bench,pipecat]"
    python benchmarks/pipecat_adapter.py               # ~4 minutes
    python benchmarks/pipecat_adapter.py --quick       # ~20 seconds
    python benchmarks/pipecat_adapter.py --callgrind   # and instruction counts (valgrind), ~6 minutes more

Like with like, in one run, rounds interleaved: the same pipecat pass-through
processor (``pipecat_harness.pipecat_pass``)

- as hops of a pipecat pipeline: chains of 10 and 20 of them, so pipecat's
  cost per hop is (t20 - t10) / 10;
- hosted in a vantum pipeline, each in a ``PipecatProcessor``: chains of 10
  and 20, the same formula gives the cost per hosted hop.

The ratio is pipecat's hop over the hosted hop: above 1, hosting the processor
costs less than running it in pipecat. Latency: one frame at a time, queued at
the task, timed when it reaches the sink (median per round, median of the
rounds); text frames (pipecat queues them twice a hop: input queue, process
queue) and input audio (a system frame in pipecat: its input task alone).
Throughput: frames queued at once; per-frame cost is the inverse.

Also measured:

- one and two hosted passes in a vantum chain of 10 native ones: what a
  hosted processor adds to a vantum pipeline. The first also makes the sender
  wait for pipecat's task to bring the frame to the sink (a task wake-up that
  a pipecat chain pays once too); the second shows each further one, and
  replaces a native hop;
- pipecat's direct mode (the pass runs in its caller's task, no queues),
  hosted and in pipecat;
- the adapter alone: a direct-mode pass called by pipecat's ``queue_frame``
  and through the adapter, no event loop round trip: what the adapter adds;
- with ``--callgrind``: instructions per hop from ``valgrind --tool=callgrind``
  (instrumentation on only while the frames flow), which, unlike timings, do
  not depend on the load of a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipecat_harness import (
    MakeChain,
    OnTail,
    Pipecat,
    Vantum,
    latency_samples,
    pipecat_pass,
    quiet_logs,
    seconds_per_frame,
)

#: Chains by name; "native+K" is a vantum chain whose first K passes are hosted pipecat passes.
CHAINS: dict[str, Callable[[int, OnTail], Any]] = {
    "pipecat": lambda n, on_tail: Pipecat(n, on_tail),
    "hosted": lambda n, on_tail: Vantum(n, on_tail, hosted=n),
    "pipecat-direct": lambda n, on_tail: Pipecat(n, on_tail, direct=True),
    "hosted-direct": lambda n, on_tail: Vantum(n, on_tail, hosted=n, direct=True),
}


DIRECT = ("pipecat-direct", "hosted-direct")


def chain(name: str) -> MakeChain:
    if name.startswith("native+"):
        hosted = int(name.removeprefix("native+"))
        return lambda n, on_tail: Vantum(n, on_tail, hosted=hosted)
    return CHAINS[name]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:7.1f} us"


# ------------------------------------------------------------------ timings


async def latency_medians(kind: str, rounds: int, frames: int) -> dict[tuple[str, int], float]:
    configs = [(name, n) for name in CHAINS for n in (10, 20)]
    configs += [("native+0", 10), ("native+1", 10), ("native+2", 10)]
    runs: dict[tuple[str, int], list[float]] = {config: [] for config in configs}
    for _ in range(rounds):
        for name, n in configs:
            samples = await latency_samples(chain(name), n, frames, kind=kind)
            runs[(name, n)].append(statistics.median(samples))
    return {config: statistics.median(values) for config, values in runs.items()}


def per_hop(m: dict[tuple[str, int], float], name: str) -> float:
    return (m[(name, 20)] - m[(name, 10)]) / 10


def report_latency(kind: str, m: dict[tuple[str, int], float]) -> dict[str, float]:
    pipecat, hosted = per_hop(m, "pipecat"), per_hop(m, "hosted")
    pipecat_direct, hosted_direct = per_hop(m, "pipecat-direct"), per_hop(m, "hosted-direct")
    first = m[("native+1", 10)] - m[("native+0", 10)]
    second = m[("native+2", 10)] - m[("native+1", 10)]
    print(f"latency, one {kind} frame at a time (median of round medians)")
    print(f"  pipecat, 10 / 20 passes                      {us(m[('pipecat', 10)])} / {us(m[('pipecat', 20)])}")
    print(f"  vantum, 10 / 20 hosted pipecat passes        {us(m[('hosted', 10)])} / {us(m[('hosted', 20)])}")
    print(f"  per hop: pipecat / hosted                    {us(pipecat)} / {us(hosted)}")
    print(f"  ratio, pipecat hop / hosted hop              {pipecat / hosted:7.2f}x")
    print(
        f"  direct mode, per hop: pipecat / hosted       {us(pipecat_direct)} / {us(hosted_direct)}"
        f"   ratio {pipecat_direct / hosted_direct:5.2f}x"
    )
    print(
        f"  vantum 10 native, with 0 / 1 / 2 hosted     {us(m[('native+0', 10)])} / {us(m[('native+1', 10)])}"
        f" / {us(m[('native+2', 10)])}"
    )
    print(f"  a hosted pass adds: the first / the second   {us(first)} / {us(second)}")
    print(f"  ratio, pipecat hop / the second              {pipecat / second:7.2f}x\n")
    return {"pipecat": pipecat, "hosted": hosted, "first": first, "second": second}


async def throughput(rounds: int, frames: int) -> None:
    configs = [("pipecat", 10), ("pipecat", 20), ("hosted", 10), ("hosted", 20)]
    runs: dict[tuple[str, int], list[float]] = {config: [] for config in configs}
    for _ in range(rounds):
        for name, n in configs:
            runs[(name, n)].append(await seconds_per_frame(chain(name), n, frames))
    m = {config: statistics.median(values) for config, values in runs.items()}
    pipecat, hosted = per_hop(m, "pipecat"), per_hop(m, "hosted")
    print(f"throughput, {frames} text frames queued at once (time per frame)")
    print(f"  pipecat, 10 / 20 passes                      {us(m[('pipecat', 10)])} / {us(m[('pipecat', 20)])}")
    print(f"  vantum, 10 / 20 hosted pipecat passes        {us(m[('hosted', 10)])} / {us(m[('hosted', 20)])}")
    print(f"  per hop: pipecat / hosted                    {us(pipecat)} / {us(hosted)}")
    print(f"  ratio, pipecat hop / hosted hop              {pipecat / hosted:7.2f}x\n")


async def adapter_alone(frames: int) -> tuple[float, float]:
    """Seconds per frame: a direct-mode pipecat pass called by pipecat's own ``queue_frame``,
    and the same called through the adapter (into a native sink: a native hop is included).
    The difference is the adapter's own cost: translation, shims, identity, epochs, the inbox."""
    from pipecat.clocks.system_clock import SystemClock
    from pipecat.frames import frames as pc
    from pipecat.processors.frame_processor import FrameProcessor as PipecatFrameProcessor
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.utils.asyncio.task_manager import TaskManager

    from vantum_pipeline import FrameProcessor
    from vantum_pipeline import frames as F
    from vantum_pipeline.interop.pipecat import PipecatProcessor, _Worker
    from vantum_pipeline.processor import FrameDirection

    class Drop(PipecatFrameProcessor):
        async def queue_frame(self, frame: Any, direction: Any = None, callback: Any = None) -> None:
            pass

    alone = pipecat_pass(direct=True)
    alone.link(Drop())
    clock = SystemClock()
    clock.start()
    await alone.setup(FrameProcessorSetup(clock=clock, task_manager=TaskManager(), pipeline_worker=_Worker()))
    await alone.queue_frame(pc.StartFrame())
    theirs = [pc.TextFrame("x") for _ in range(frames)]
    start = time.perf_counter()
    for frame in theirs:
        await alone.queue_frame(frame)
    pipecat_only = (time.perf_counter() - start) / frames

    class Sink(FrameProcessor):
        async def process_frame(self, frame: Any, direction: Any) -> None:
            pass

    hosted = PipecatProcessor(pipecat_pass(direct=True), enable_metrics=False)
    hosted.link(Sink())
    await hosted.process_frame(F.StartFrame(), FrameDirection.DOWNSTREAM)
    ours = [F.TextFrame("x") for _ in range(frames)]
    for frame in ours:
        frame.epoch = 0
    start = time.perf_counter()
    for frame in ours:
        await hosted.process_frame(frame, FrameDirection.DOWNSTREAM)
    through_adapter = (time.perf_counter() - start) / frames
    await hosted.cleanup()
    return pipecat_only, through_adapter


# ------------------------------------------------------ instruction counts


def _child(name: str, n: int, kind: str, frames: int, flag: str) -> None:
    """Runs under callgrind: warm up, let the parent switch instrumentation on, send
    ``frames`` frames, let it switch instrumentation off, stop."""

    def mark(at: str) -> None:
        print(at, flush=True)
        # Block the loop (nothing else runs in it meanwhile) until the parent has switched.
        while os.path.exists(flag) != (at == "start"):
            time.sleep(0.001)

    quiet_logs()
    if kind == "bulk":
        asyncio.run(seconds_per_frame(chain(name), n, frames, mark=mark))
    else:
        asyncio.run(latency_samples(chain(name), n, frames, kind=kind, mark=mark))


def instructions(name: str, n: int, kind: str, frames: int) -> int:
    """Instructions (callgrind's Ir) executed while ``frames`` frames went through the chain
    (``kind``: "text" or "audio" one at a time, "bulk": text frames queued at once)."""
    with tempfile.TemporaryDirectory() as tmp:
        flag = os.path.join(tmp, "on")
        out = os.path.join(tmp, "callgrind.out")
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", name, str(n), kind, str(frames), flag,
        ]  # fmt: skip
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert child.stdout is not None
        try:
            for at, switch in (("start", "on"), ("end", "off")):
                line = child.stdout.readline().strip()
                if line != at:
                    raise RuntimeError(f"callgrind child {name}/{n}/{kind} said {line!r}, not {at!r}")
                subprocess.run(["callgrind_control", "-i", switch, str(child.pid)], check=True, capture_output=True)
                if at == "start":
                    Path(flag).touch()
                else:
                    os.remove(flag)
            child.wait(timeout=600)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        totals = re.search(r"^totals:\s+(\d+)", Path(out).read_text(), flags=re.M)
        if totals is None:
            raise RuntimeError(f"no totals in callgrind's output for {name}/{n}/{kind}")
        return int(totals.group(1))


def report_instructions(frames: int) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instruction counts: valgrind is not installed (apt-get install valgrind)")
        return
    print(f"instructions per frame (callgrind, {frames} frames, instrumented while they flow)")
    labels = {"text": "text, one at a time", "audio": "audio, one at a time", "bulk": "text, queued at once"}
    for kind, label in labels.items():
        configs = [(name, n) for name in ("pipecat", "hosted") for n in (10, 20)]
        if kind != "bulk":
            configs += [("native+1", 10), ("native+2", 10)]
        counts = {(name, n): instructions(name, n, kind, frames) / frames for name, n in configs}
        pipecat = (counts[("pipecat", 20)] - counts[("pipecat", 10)]) / 10
        hosted = (counts[("hosted", 20)] - counts[("hosted", 10)]) / 10
        ratio = pipecat / hosted
        print(f"  {label:<22} pipecat hop / hosted hop   {pipecat:9,.0f} / {hosted:,.0f}   ratio {ratio:5.2f}x")
        if kind != "bulk":
            second = counts[("native+2", 10)] - counts[("native+1", 10)]
            print(f"  {'':<22} a second hosted pass adds  {second:9,.0f}   ratio {pipecat / second:5.2f}x")
        if kind == "text":
            direct = {(name, n): instructions(name, n, kind, frames) / frames for name in DIRECT for n in (10, 20)}
            theirs, ours = ((direct[(name, 20)] - direct[(name, 10)]) / 10 for name in DIRECT)
            print(f"  {'':<22} direct mode, pipecat/hosted {theirs:8,.0f} / {ours:,.0f}   ratio {theirs / ours:5.2f}x")
    print()


# --------------------------------------------------------------------- main


async def main(quick: bool) -> None:
    quiet_logs()
    rounds = 3 if quick else 7
    frames = 200 if quick else 500
    bulk = 3000 if quick else 10000
    print(f"python {sys.version.split()[0]}; {rounds} interleaved rounds per workload\n")
    text = report_latency("text", await latency_medians("text", rounds, frames))
    report_latency("audio", await latency_medians("audio", rounds, frames))
    await throughput(max(3, rounds - 2), bulk)

    samples = [await adapter_alone(20_000) for _ in range(rounds)]
    pipecat_only = statistics.median(p for p, _ in samples)
    through = statistics.median(a for _, a in samples)
    own = through - pipecat_only
    print("the adapter alone: a direct-mode pipecat pass, called directly and through the adapter")
    print(f"  pipecat's call / through the adapter         {us(pipecat_only)} / {us(through)}")
    print(f"  the adapter's own cost per frame             {us(own)}")
    print(f"  ratio, pipecat hop (text latency) / own      {text['pipecat'] / own:7.2f}x\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, n, kind, frames, flag = sys.argv[2:7]
        _child(name, int(n), kind, int(frames), flag)
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and frames")
    parser.add_argument("--callgrind", action="store_true", help="also count instructions per hop with valgrind")
    args = parser.parse_args()
    asyncio.run(main(args.quick))
    if args.callgrind:
        report_instructions(100 if args.quick else 300)
