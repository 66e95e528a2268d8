"""The chains the benchmarks run side by side with pipecat-ai, and how they time them.

Shared by ``core_vs_pipecat.py`` and ``pipecat_adapter.py``. Both libraries
get the same shape: ``n`` pass-through processors and a sink that reports each
frame to ``on_tail``, with the same interface (``start``, ``send``,
``interrupt``, ``stop``, frame makers and tests), so a workload runs either.

- ``Vantum(n, on_tail, hosted=k)`` replaces the first ``k`` passes with
  ``PipecatProcessor(<pipecat pass>)``: pipecat's pass-through hosted in ours
  (``direct=True``: built with pipecat's ``enable_direct_mode``);
- ``Pipecat(n, on_tail)`` runs pipecat "lean": metrics, observers, RTVI, turn
  tracking, idle timeout and dangling-task checks off; ``direct=True`` builds
  its passes in direct mode;
- ``gate=True`` makes the last pass a gate that holds frames behind a "block"
  text frame (the interruption workload).

Workloads: ``latency_samples`` (one frame at a time, queued at the task, timed
at the sink) and ``seconds_per_frame`` (frames queued at once).

Pipecat is imported only when a pipecat chain or a hosted pass is built.
"""

from __future__ import annotations

import asyncio
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)

OnTail = Callable[[Any], None]


def quiet_logs() -> None:
    """Only errors on stderr: the chains log at debug level when they start and stop."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")


def pipecat_pass(*, direct: bool = False) -> Any:
    """Pipecat's pass-through processor, as the pipecat chains use it."""
    from pipecat.processors.frame_processor import FrameProcessor

    class Pass(FrameProcessor):
        async def process_frame(self, frame: Any, direction: Any) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    return Pass(enable_direct_mode=direct)


def lean_worker(processors: list[Any]) -> Any:
    """A pipecat ``PipelineWorker`` of ``processors``, run lean: no metrics, observers, RTVI, turn
    tracking, idle timeout or dangling-task checks (what the benchmarks compare against)."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker

    return PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(enable_metrics=False, enable_usage_metrics=False, send_initial_empty_metrics=False),
        idle_timeout_secs=None,
        enable_rtvi=False,
        enable_turn_tracking=False,
        check_dangling_tasks=False,
        observers=[],
    )


class _Chain:
    """What both chains share once built: ``F`` (the library's frames module), ``task`` (queues frames
    at the head) and ``_runner`` (the running task); the frame makers and tests read ``F``."""

    F: Any
    task: Any
    _runner: asyncio.Task[None] | None = None

    def text(self, text: str) -> Any:
        return self.F.TextFrame(text)

    def audio(self) -> Any:
        return self.F.InputAudioRawFrame(audio=b"\0" * 640, sample_rate=16000, num_channels=1)

    def is_interruption(self, frame: Any) -> bool:
        return isinstance(frame, self.F.InterruptionFrame)

    def is_text(self, frame: Any) -> bool:
        return isinstance(frame, self.F.TextFrame)

    def is_audio(self, frame: Any) -> bool:
        return isinstance(frame, self.F.InputAudioRawFrame)

    async def send(self, frame: Any) -> None:
        await self.task.queue_frame(frame)

    async def stop(self) -> None:
        await self.task.queue_frame(self.F.EndFrame())
        assert self._runner is not None
        await asyncio.wait_for(self._runner, 10)


class Vantum(_Chain):
    """A vantum chain: ``n`` passes (the first ``hosted`` of them pipecat's, hosted) and a sink."""

    name = "vantum"

    def __init__(self, n: int, on_tail: OnTail, *, gate: bool = False, hosted: int = 0, direct: bool = False) -> None:
        from vantum_pipeline import FrameProcessor, Pipeline, PipelineTask
        from vantum_pipeline import frames as F

        self.F = F

        class Pass(FrameProcessor):
            pass  # the base class passes every frame on

        class Sink(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                on_tail(frame)
                await self.push_frame(frame, direction)

        class Gate(FrameProcessor):
            def __init__(self) -> None:
                super().__init__(max_queue=1024)
                self.release = asyncio.Event()
                self.blocked = asyncio.Event()

            async def process_frame(self, frame: Any, direction: Any) -> None:
                if isinstance(frame, F.TextFrame) and frame.text == "block":
                    self.blocked.set()
                    await self.release.wait()
                await self.push_frame(frame, direction)

        passes: list[Any] = [Pass() for _ in range(n - (1 if gate else 0))]
        if hosted:
            from vantum_pipeline.interop.pipecat import PipecatProcessor

            for i in range(hosted):
                passes[i] = PipecatProcessor(pipecat_pass(direct=direct), enable_metrics=False)
        self.gate = Gate() if gate else None
        self.head = passes[0] if passes else self.gate
        chain = [*passes, *([self.gate] if gate else []), Sink()]
        self.task = PipelineTask(Pipeline(chain), end_timeout=5)

    async def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self.task.run())
        await asyncio.sleep(0.05)

    async def interrupt(self) -> None:
        await self.head.push_interruption()


class Pipecat(_Chain):
    """A pipecat chain of ``n`` passes and a sink, run by a lean ``PipelineWorker``."""

    name = "pipecat"

    def __init__(self, n: int, on_tail: OnTail, *, gate: bool = False, direct: bool = False) -> None:
        from pipecat.frames import frames as F
        from pipecat.processors.frame_processor import FrameProcessor

        self.F = F

        class Sink(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                on_tail(frame)
                await self.push_frame(frame, direction)

        class Gate(FrameProcessor):
            def __init__(self) -> None:
                super().__init__()
                self.release = asyncio.Event()
                self.blocked = asyncio.Event()

            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, F.TextFrame) and frame.text == "block":
                    self.blocked.set()
                    await self.release.wait()
                await self.push_frame(frame, direction)

        passes: list[Any] = [pipecat_pass(direct=direct) for _ in range(n - (1 if gate else 0))]
        self.gate = Gate() if gate else None
        self.head = passes[0] if passes else self.gate
        chain = [*passes, *([self.gate] if gate else []), Sink()]
        self.task = lean_worker(chain)

    async def start(self) -> None:
        from pipecat.workers.runner import WorkerRunner

        self.runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        await self.runner.add_workers(self.task)
        self._runner = asyncio.get_running_loop().create_task(self.runner.run())
        await asyncio.sleep(0.05)

    async def interrupt(self) -> None:
        await self.head.broadcast_interruption()


Chain = Vantum | Pipecat
MakeChain = Callable[[int, OnTail], Chain]


async def latency_samples(
    make: MakeChain,
    n: int,
    frames: int,
    *,
    kind: str = "text",
    warmup: int = 50,
    mark: Callable[[str], None] | None = None,
) -> list[float]:
    """Seconds for each of ``frames`` frames, sent one at a time, from the task to the sink.

    ``kind``: "text" or "audio" (input audio, a system frame in pipecat).
    ``mark``, if given, is called with "start" after the warm-up frames and
    "end" after the last one (before the chain stops).
    """
    arrived = asyncio.Event()

    def on_tail(frame: Any) -> None:
        if chain.is_text(frame) if kind == "text" else chain.is_audio(frame):
            arrived.set()

    chain = make(n, on_tail)
    await chain.start()
    samples: list[float] = []
    for i in range(frames + warmup):
        if mark is not None and i == warmup:
            mark("start")
        arrived.clear()
        frame = chain.text("x") if kind == "text" else chain.audio()
        start = time.perf_counter()
        await chain.send(frame)
        await arrived.wait()
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    if mark is not None:
        mark("end")
    await chain.stop()
    return samples


async def seconds_per_frame(
    make: MakeChain, n: int, frames: int, *, mark: Callable[[str], None] | None = None
) -> float:
    """Seconds per frame with ``frames`` text frames queued at once, until the last reaches the sink.

    ``mark``, if given, is called with "start" before the first frame and "end" after the last."""
    done = asyncio.Event()
    count = 0

    def on_tail(frame: Any) -> None:
        nonlocal count
        if chain.is_text(frame):
            count += 1
            if count == frames:
                done.set()

    chain = make(n, on_tail)
    await chain.start()
    if mark is not None:
        mark("start")
    start = time.perf_counter()
    for _ in range(frames):
        await chain.send(chain.text("x"))
    await asyncio.wait_for(done.wait(), 600)
    elapsed = time.perf_counter() - start
    if mark is not None:
        mark("end")
    await chain.stop()
    return elapsed / frames
