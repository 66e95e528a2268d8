"""Run processors in a real PipelineTask and look at what comes out.

Two ways, both bounded by timeouts:

``run_pipeline(processors, frames)``
    queues the frames (and an EndFrame), runs to the end, returns what left
    the pipeline at each end.

``PipelineHarness(processors)``
    an async context manager for conversations: send frames while the
    pipeline runs, ``await harness.wait_for(FrameType)``, inspect
    ``harness.downstream`` / ``harness.upstream``; leaving the block ends the
    pipeline gracefully (or cancels it after ``end_timeout``).

    async with PipelineHarness([stt, aggregator]) as h:
        await h.send(InputAudioRawFrame(pcm, 16000))
        final = await h.wait_for(TranscriptionFrame, timeout=2)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vantum_pipeline.frames import EndFrame, Frame
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.task import PipelineTask

__all__ = ["Collected", "FrameRecorder", "PipelineHarness", "run_pipeline"]

F = TypeVar("F", bound=Frame)


@dataclass
class Collected:
    """Frames that left the pipeline, in arrival order, per end."""

    downstream: list[Frame] = field(default_factory=list)
    upstream: list[Frame] = field(default_factory=list)
    finish_reason: str | None = None

    def of_type(self, cls: type[F], direction: FrameDirection = FrameDirection.DOWNSTREAM) -> list[F]:
        frames = self.downstream if direction is FrameDirection.DOWNSTREAM else self.upstream
        return [f for f in frames if isinstance(f, cls)]

    def types(self, direction: FrameDirection = FrameDirection.DOWNSTREAM) -> list[str]:
        frames = self.downstream if direction is FrameDirection.DOWNSTREAM else self.upstream
        return [type(f).__name__ for f in frames]


class FrameRecorder(FrameProcessor):
    """A pass-through processor that records every frame it sees, both ways."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.frames: list[tuple[Frame, FrameDirection]] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        self.frames.append((frame, direction))
        await self.push_frame(frame, direction)

    def of_type(self, cls: type[F], direction: FrameDirection | None = None) -> list[F]:
        return [f for f, d in self.frames if isinstance(f, cls) and (direction is None or d is direction)]


async def run_pipeline(
    processors: Sequence[FrameProcessor] | FrameProcessor,
    frames: Iterable[Frame | float],
    *,
    timeout: float = 5.0,
    send_end: bool = True,
    **task_options: Any,
) -> Collected:
    """Queue ``frames`` (a float entry pauses that many seconds before the
    next frame), then an EndFrame unless one is there or ``send_end`` is
    False, and run. Raises TimeoutError (after cancelling) if the run does
    not finish within ``timeout``."""
    async with PipelineHarness(processors, end_timeout=timeout, **task_options) as harness:
        ended = False
        for item in frames:
            if isinstance(item, int | float):
                await asyncio.sleep(item)
                continue
            await harness.send(item)
            ended = ended or isinstance(item, EndFrame)
        if send_end and not ended:
            await harness.send(EndFrame())
        await harness.wait_finished(timeout)
    return harness.collected


class PipelineHarness:
    """Runs a pipeline in the background for a test; see the module docstring."""

    def __init__(
        self,
        processors: Sequence[FrameProcessor] | FrameProcessor,
        *,
        end_timeout: float = 5.0,
        **task_options: Any,
    ) -> None:
        pipeline = processors if isinstance(processors, FrameProcessor) else Pipeline(list(processors))
        self.task = PipelineTask(pipeline, **task_options)
        self.collected = Collected()
        self._end_timeout = end_timeout
        self._waiters: list[asyncio.Future[None]] = []
        self._runner: asyncio.Task[None] | None = None
        self.task.add_observer(self._observe)

    @property
    def downstream(self) -> list[Frame]:
        return self.collected.downstream

    @property
    def upstream(self) -> list[Frame]:
        return self.collected.upstream

    async def _observe(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            self.collected.downstream.append(frame)
        else:
            self.collected.upstream.append(frame)
        self._wake()

    def _wake(self, *_: object) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def __aenter__(self) -> PipelineHarness:
        self._runner = asyncio.get_running_loop().create_task(self.task.run(), name="harness:run")
        # A finished run wakes every waiter, so none sits out its timeout.
        self._runner.add_done_callback(self._wake)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        try:
            if not self._runner.done() and exc_info[0] is None:
                if not self.task.has_finished():
                    await self.task.queue_frame(EndFrame())
                await self.wait_finished(self._end_timeout)
        finally:
            if not self._runner.done():
                await self.task.cancel("test harness exit")
            await asyncio.wait({self._runner}, timeout=2.0)
            self.collected.finish_reason = self.task.finish_reason
            if self._runner.done() and not self._runner.cancelled() and exc_info[0] is None:
                self._runner.result()  # surface an exception raised by run()

    async def send(self, frame: Frame) -> None:
        """Queue ``frame`` at the head."""
        await self.task.queue_frame(frame)

    async def wait_finished(self, timeout: float) -> None:
        """Wait for the run to finish; cancel it and raise TimeoutError if it does not."""
        assert self._runner is not None
        done, _ = await asyncio.wait({self._runner}, timeout=timeout)
        if not done:
            await self.task.cancel("test timeout")
            raise TimeoutError(
                f"pipeline did not finish within {timeout:.1f}s; downstream so far: {self.collected.types()}"
            )
        self.collected.finish_reason = self.task.finish_reason

    async def wait_for(
        self,
        cls: type[F],
        *,
        direction: FrameDirection = FrameDirection.DOWNSTREAM,
        timeout: float = 5.0,
        count: int = 1,
        where: Callable[[F], bool] | None = None,
    ) -> F:
        """Wait until ``count`` frames of ``cls`` (matching ``where``) have left
        the pipeline in ``direction``; return the last of them."""
        assert self._runner is not None

        def matches() -> list[F]:
            found = self.collected.of_type(cls, direction)
            return [f for f in found if where is None or where(f)]

        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while len(matches()) < count and not self._runner.done():
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise TimeoutError(
                f"no {count} {cls.__name__} within {timeout:.1f}s; {direction.name.lower()}: "
                f"{self.collected.types(direction)}"
            ) from None
        found = matches()
        if len(found) < count:
            raise AssertionError(
                f"pipeline finished ({self.task.finish_reason}) with {len(found)} {cls.__name__} "
                f"(wanted {count}); {direction.name.lower()}: {self.collected.types(direction)}"
            )
        return found[count - 1]
