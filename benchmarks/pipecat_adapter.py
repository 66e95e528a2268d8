"""What hosting a pipecat processor in a vantum pipeline costs, next to a pipecat hop.

    pip install -e ".[bench,pipecat]"
    python benchmarks/pipecat_adapter.py            # ~1 minute
    python benchmarks/pipecat_adapter.py --quick

Per frame, in the same run, rounds interleaved:

- vantum, 10 native pass-through processors (the baseline);
- vantum, the same chain with one of them replaced by
  ``PipecatProcessor(<a pipecat pass-through processor>)``: the difference
  is what hosting costs per frame (the adapter's translation and shims, plus
  the hosted processor's own hop through pipecat's two queues and tasks);
- the same with the pass-through built with pipecat's
  ``enable_direct_mode=True`` (no queues: it runs in the caller's task): the
  difference is the adapter's own cost, nearly;
- pipecat, 10 and 20 pass-through processors: the difference divided by 10 is
  pipecat's own cost per hop;
- the adapter alone: a direct-mode pipecat pass-through called by pipecat's
  ``queue_frame`` and through the adapter, no event loop round trips: the
  difference is what the adapter itself adds per frame.

Latency: one frame at a time, queued at the task, timed when it reaches the
sink (text frames, which pipecat queues; input audio, which pipecat handles as
a system frame). Throughput: 20,000 text frames queued at once; per-frame cost
is the inverse. The ratio is pipecat's per-hop cost over the hosting cost:
above 1, hosting a pipecat processor costs less than a hop of it in pipecat.
The last ratio compares whole chains of 10: pipecat's, and ours hosting one
pipecat processor.

Timings are noisy on a shared machine: compare the ratios, which come from
rounds interleaved in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core_vs_pipecat import Pipecat, _quiet_logs  # noqa: E402


class Hosted:
    """A vantum chain of ``n`` processors, one of them a hosted pipecat pass-through (or none)."""

    def __init__(self, n: int, on_tail: Callable[[Any], None], *, hosted: bool, direct: bool = False) -> None:
        from pipecat.processors.frame_processor import FrameProcessor as PipecatFrameProcessor

        from vantum_pipeline import FrameProcessor, Pipeline, PipelineTask
        from vantum_pipeline import frames as F
        from vantum_pipeline.interop.pipecat import PipecatProcessor

        self.F = F

        class Pass(FrameProcessor):
            pass

        class PipecatPass(PipecatFrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                await self.push_frame(frame, direction)

        class Sink(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                on_tail(frame)
                await self.push_frame(frame, direction)

        chain: list[Any] = [Pass() for _ in range(n - 1)]
        if hosted:
            chain[n // 2] = PipecatProcessor(PipecatPass(enable_direct_mode=direct), enable_metrics=False)
        self.task = PipelineTask(Pipeline([*chain, Sink()]), end_timeout=5)
        self._runner: asyncio.Task[None] | None = None

    def text(self, text: str) -> Any:
        return self.F.TextFrame(text)

    def audio(self) -> Any:
        return self.F.InputAudioRawFrame(b"\0" * 640, 16000)

    def is_text(self, frame: Any) -> bool:
        return isinstance(frame, self.F.TextFrame)

    def is_audio(self, frame: Any) -> bool:
        return isinstance(frame, self.F.InputAudioRawFrame)

    async def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self.task.run())
        await asyncio.sleep(0.05)

    async def send(self, frame: Any) -> None:
        await self.task.queue_frame(frame)

    async def stop(self) -> None:
        await self.task.queue_frame(self.F.EndFrame())
        assert self._runner is not None
        await asyncio.wait_for(self._runner, 10)


def native(n: int, on_tail: Callable[[Any], None]) -> Hosted:
    return Hosted(n, on_tail, hosted=False)


def hosting(n: int, on_tail: Callable[[Any], None]) -> Hosted:
    return Hosted(n, on_tail, hosted=True)


def hosting_direct(n: int, on_tail: Callable[[Any], None]) -> Hosted:
    return Hosted(n, on_tail, hosted=True, direct=True)


def pipecat(n: int, on_tail: Callable[[Any], None]) -> Any:
    pipe = Pipecat(n, on_tail)
    pipe.is_audio = lambda frame: isinstance(frame, pipe.F.InputAudioRawFrame)
    return pipe


async def latency(make: Callable[..., Any], n: int, frames: int, kind: str) -> float:
    """Median seconds for one frame from the task to the sink."""
    arrived = asyncio.Event()

    def on_tail(frame: Any) -> None:
        if pipe.is_text(frame) if kind == "text" else pipe.is_audio(frame):
            arrived.set()

    pipe = make(n, on_tail)
    await pipe.start()
    samples: list[float] = []
    for i in range(frames + 50):
        arrived.clear()
        frame = pipe.text("x") if kind == "text" else pipe.audio()
        start = time.perf_counter()
        await pipe.send(frame)
        await arrived.wait()
        if i >= 50:  # warm-up
            samples.append(time.perf_counter() - start)
    await pipe.stop()
    return statistics.median(samples)


async def throughput(make: Callable[..., Any], n: int, frames: int) -> float:
    """Seconds per frame with ``frames`` text frames queued at once."""
    done = asyncio.Event()
    count = 0

    def on_tail(frame: Any) -> None:
        nonlocal count
        if pipe.is_text(frame):
            count += 1
            if count == frames:
                done.set()

    pipe = make(n, on_tail)
    await pipe.start()
    start = time.perf_counter()
    for _ in range(frames):
        await pipe.send(pipe.text("x"))
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    await pipe.stop()
    return elapsed / frames


def translation_cost(frames: int) -> tuple[float, float]:
    """Seconds per frame for the table's conversions alone (ours → pipecat, pipecat → ours)."""
    from pipecat.frames import frames as pc

    from vantum_pipeline import frames as F
    from vantum_pipeline.interop.pipecat_frames import to_ours, to_pipecat

    ours = [F.TTSAudioRawFrame(b"\0" * 640, 16000, context_id="c") for _ in range(frames)]
    start = time.perf_counter()
    for frame in ours:
        to_pipecat(frame)
    inbound = (time.perf_counter() - start) / frames
    theirs = [pc.TTSAudioRawFrame(audio=b"\0" * 640, sample_rate=16000, num_channels=1) for _ in range(frames)]
    start = time.perf_counter()
    for frame in theirs:
        to_ours(frame)
    return inbound, (time.perf_counter() - start) / frames


async def adapter_alone(frames: int) -> tuple[float, float]:
    """Seconds per frame: a direct-mode pipecat pass-through called by pipecat's own
    ``queue_frame``, and the same called through the adapter (both into a sink that
    does nothing; ours is a native processor, so a native hop is included). The
    difference is the adapter's own cost: translation, shims, identity and epoch
    bookkeeping."""
    from pipecat.clocks.system_clock import SystemClock
    from pipecat.frames import frames as pc
    from pipecat.processors.frame_processor import FrameProcessor as PipecatFrameProcessor
    from pipecat.processors.frame_processor import FrameProcessorSetup
    from pipecat.utils.asyncio.task_manager import TaskManager

    from vantum_pipeline import FrameProcessor
    from vantum_pipeline import frames as F
    from vantum_pipeline.interop.pipecat import PipecatProcessor, _Worker
    from vantum_pipeline.processor import FrameDirection

    class PipecatPass(PipecatFrameProcessor):
        async def process_frame(self, frame: Any, direction: Any) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    class Drop(PipecatFrameProcessor):
        async def queue_frame(self, frame: Any, direction: Any = None, callback: Any = None) -> None:
            pass

    alone = PipecatPass(enable_direct_mode=True)
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

    hosted = PipecatProcessor(PipecatPass(enable_direct_mode=True), enable_metrics=False)
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


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


async def main(quick: bool) -> None:
    _quiet_logs()
    rounds = 3 if quick else 7
    frames = 200 if quick else 500
    bulk = 5000 if quick else 20000
    print(f"python {sys.version.split()[0]}; {rounds} interleaved rounds per workload\n")

    text_hop = 0.0
    for kind in ("text", "audio"):
        figures: dict[str, list[float]] = {"native10": [], "hosted10": [], "direct10": [], "pc10": [], "pc20": []}
        for _ in range(rounds):
            figures["native10"].append(await latency(native, 10, frames, kind))
            figures["hosted10"].append(await latency(hosting, 10, frames, kind))
            figures["direct10"].append(await latency(hosting_direct, 10, frames, kind))
            figures["pc10"].append(await latency(pipecat, 10, frames, kind))
            figures["pc20"].append(await latency(pipecat, 20, frames, kind))
        m = {key: statistics.median(values) for key, values in figures.items()}
        hosting_cost = m["hosted10"] - m["native10"]
        direct_cost = m["direct10"] - m["native10"]
        pipecat_hop = (m["pc20"] - m["pc10"]) / 10
        if kind == "text":
            text_hop = pipecat_hop
        print(f"latency, one {kind} frame at a time (median of medians)")
        print(f"  vantum, 10 native processors               {us(m['native10'])}")
        print(f"  vantum, 9 native + 1 hosted pipecat pass   {us(m['hosted10'])}")
        print(f"  ... the pass in pipecat's direct mode      {us(m['direct10'])}")
        print(f"  pipecat, 10 / 20 processors                {us(m['pc10'])} / {us(m['pc20']).strip()}")
        print(f"  hosting cost per frame (queued / direct)   {us(hosting_cost)} / {us(direct_cost).strip()}")
        print(f"  pipecat's own cost per hop                 {us(pipecat_hop)}")
        print(f"  ratio, pipecat hop / hosting (queued)      {pipecat_hop / hosting_cost:8.2f}x")
        print(f"  ratio, pipecat hop / hosting (direct)      {pipecat_hop / direct_cost:8.2f}x")
        print(f"  whole chain, pipecat 10 / vantum 9 + 1     {m['pc10'] / m['hosted10']:8.2f}x\n")

    figures = {"native10": [], "hosted10": [], "pc10": [], "pc20": []}
    for _ in range(rounds):
        figures["native10"].append(await throughput(native, 10, bulk))
        figures["hosted10"].append(await throughput(hosting, 10, bulk))
        figures["pc10"].append(await throughput(pipecat, 10, bulk))
        figures["pc20"].append(await throughput(pipecat, 20, bulk))
    m = {key: statistics.median(values) for key, values in figures.items()}
    hosting_cost = m["hosted10"] - m["native10"]
    pipecat_hop = (m["pc20"] - m["pc10"]) / 10
    print(f"throughput, {bulk} text frames queued at once (time per frame)")
    print(f"  vantum native / hosted                     {us(m['native10'])} / {us(m['hosted10']).strip()}")
    print(f"  pipecat 10 / 20                            {us(m['pc10'])} / {us(m['pc20']).strip()}")
    print(f"  hosting cost per frame                     {us(hosting_cost)}")
    print(f"  pipecat's own cost per hop                 {us(pipecat_hop)}")
    print(f"  ratio (pipecat hop / hosting)              {pipecat_hop / hosting_cost:8.2f}x\n")

    samples = [await adapter_alone(20_000) for _ in range(rounds)]
    pipecat_only = statistics.median(p for p, _ in samples)
    through = statistics.median(a for _, a in samples)
    own = through - pipecat_only
    print("the adapter alone: a direct-mode pipecat pass-through, called directly and through the adapter")
    print(f"  pipecat's call / through the adapter       {us(pipecat_only)} / {us(through).strip()}")
    print(f"  the adapter's own cost per frame           {us(own)}")
    print(f"  ratio, pipecat hop (text latency) / own    {text_hop / own:8.2f}x\n")

    inbound, outbound = translation_cost(100_000)
    print("the translation table alone (TTS audio frame)")
    print(f"  ours -> pipecat / pipecat -> ours          {us(inbound)} / {us(outbound).strip()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and frames")
    asyncio.run(main(parser.parse_args().quick))
