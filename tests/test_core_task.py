"""PipelineTask and PipelineRunner: end, cancel, timeouts, no leftovers."""

import asyncio
import os
import signal
import time

import pytest

from vantum_pipeline import FrameDirection, FrameProcessor, Pipeline, PipelineRunner, PipelineTask
from vantum_pipeline.errors import PipelineError
from vantum_pipeline.frames import CancelFrame, EndFrame, Frame, StartFrame, TextFrame
from vantum_pipeline.testing import FrameRecorder


class Stuck(FrameProcessor):
    """Blocks forever on the first text frame, inside process_frame."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TextFrame):
            self.entered.set()
            await asyncio.Event().wait()
        await self.push_frame(frame, direction)


class WithLoop(FrameProcessor):
    """Owns a long-lived task and a turn task, like a service."""

    def __init__(self) -> None:
        super().__init__()
        self.cleaned = False

    async def process_frame(self, frame, direction):
        if isinstance(frame, StartFrame):
            self.create_task(asyncio.Event().wait(), "receive")
        if isinstance(frame, TextFrame):
            self.create_turn_task(asyncio.Event().wait())
        await self.push_frame(frame, direction)

    async def cleanup(self):
        self.cleaned = True


def _other_tasks() -> set[asyncio.Task]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_cancel_returns_within_a_second_with_a_stuck_processor():
    stuck, loop_owner = Stuck(), WithLoop()
    task = PipelineTask(Pipeline([loop_owner, stuck]))
    await task.queue_frames([TextFrame("x"), TextFrame("y")])
    runner = asyncio.ensure_future(task.run())
    await asyncio.wait_for(stuck.entered.wait(), 2)
    before = time.monotonic()
    await task.cancel()
    await asyncio.wait_for(runner, 2)
    assert time.monotonic() - before < 1.0
    assert task.finish_reason == "cancel"
    assert loop_owner.cleaned
    assert _other_tasks() == set()


async def test_cancel_frame_reaches_processors_and_stuck_cleanup_is_bounded():
    class StuckCleanup(FrameRecorder):
        async def cleanup(self):
            await asyncio.Event().wait()

    recorder = StuckCleanup()
    task = PipelineTask(recorder, stop_timeout=0.2)
    runner = asyncio.ensure_future(task.run())
    await asyncio.sleep(0.01)
    before = time.monotonic()
    await task.queue_frame(CancelFrame("test"))
    await asyncio.wait_for(runner, 5)  # the stuck cleanup never returns: only the bound ends the run
    assert time.monotonic() - before < 0.2 + 1.3
    assert recorder.of_type(CancelFrame)
    assert _other_tasks() == set()


@pytest.mark.parametrize("expected", [True, False])
async def test_an_expected_cancel_is_logged_at_info_and_says_so_to_the_processors(expected: bool):
    from loguru import logger

    recorder = FrameRecorder()
    task = PipelineTask(recorder, stop_timeout=0.5)
    lines: list[str] = []
    sink = logger.add(
        lambda m: lines.append(m.record["level"].name), level="INFO", filter=lambda r: "finishing" in r["message"]
    )
    try:
        runner = asyncio.ensure_future(task.run())
        await asyncio.sleep(0.01)
        await task.queue_frame(CancelFrame("call ended: stop", expected=expected))
        await asyncio.wait_for(runner, 2)
    finally:
        logger.remove(sink)
    assert lines == ["INFO" if expected else "WARNING"]
    assert [frame.expected for frame in recorder.of_type(CancelFrame)] == [expected]


async def test_a_thousand_pipelines_leave_no_task_behind():
    for i in range(1000):
        procs = [WithLoop(), FrameRecorder(), WithLoop()]
        task = PipelineTask(Pipeline(procs))
        if i % 2:
            await task.queue_frames([TextFrame("a"), EndFrame()])
            await asyncio.wait_for(task.run(), 5)
            assert task.finish_reason == "end"
        else:
            runner = asyncio.ensure_future(task.run())
            await task.queue_frame(TextFrame("a"))
            await asyncio.sleep(0)
            await task.cancel()
            await asyncio.wait_for(runner, 5)
        assert all(p.cleaned for p in procs if isinstance(p, WithLoop))
    assert _other_tasks() == set()


async def test_end_frame_upstream_ends_gracefully():
    class Hangup(FrameProcessor):
        async def process_frame(self, frame, direction):
            await self.push_frame(frame, direction)
            if isinstance(frame, TextFrame) and frame.text == "goodbye":
                await self.push_frame(EndFrame(reason="call over"), FrameDirection.UPSTREAM)

    recorder = FrameRecorder()
    task = PipelineTask(Pipeline([recorder, Hangup()]))
    await task.queue_frames([TextFrame("hello"), TextFrame("goodbye")])
    await asyncio.wait_for(task.run(), 5)
    assert task.finish_reason == "end"
    assert recorder.of_type(EndFrame, FrameDirection.DOWNSTREAM)


async def test_idle_timeout():
    task = PipelineTask(FrameRecorder(), idle_timeout=0.1)
    await asyncio.wait_for(task.run(), 3)
    assert task.finish_reason == "idle"


async def test_end_that_never_reaches_the_tail_is_cancelled():
    class Swallow(FrameProcessor):
        async def process_frame(self, frame, direction):
            if not isinstance(frame, EndFrame):
                await self.push_frame(frame, direction)

    task = PipelineTask(Swallow(), end_timeout=0.2)
    await task.queue_frame(EndFrame())
    await asyncio.wait_for(task.run(), 3)
    assert task.finish_reason == "cancel"


async def test_lifecycle_errors():
    task = PipelineTask(FrameRecorder())
    await task.queue_frame(EndFrame())
    await asyncio.wait_for(task.run(), 3)
    with pytest.raises(PipelineError):
        await task.run()
    with pytest.raises(PipelineError):
        await task.queue_frame(TextFrame("late"))


async def test_cancelling_the_awaiting_task_cancels_the_pipeline():
    loop_owner = WithLoop()
    task = PipelineTask(loop_owner)
    runner = asyncio.ensure_future(task.run())
    await asyncio.sleep(0.01)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert task.has_finished() and loop_owner.cleaned
    assert _other_tasks() == set()


async def test_runner_cancels_on_sigint():
    task = PipelineTask(WithLoop())
    runner = asyncio.ensure_future(PipelineRunner().run(task))
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(runner, 3)
    assert task.finish_reason == "cancel"
    assert _other_tasks() == set()


async def test_end_task_frame_ends_gracefully_without_an_early_end_upstream():
    """The processors upstream of the requester see the EndFrame once, in band,
    after everything queued before it; never an early one travelling upstream."""
    from vantum_pipeline.frames import EndTaskFrame

    class Hangup(FrameProcessor):
        async def process_frame(self, frame, direction):
            await self.push_frame(frame, direction)
            if isinstance(frame, TextFrame) and frame.text == "goodbye":
                await self.push_frame(EndTaskFrame(reason="call over"), FrameDirection.UPSTREAM)
                await self.push_frame(EndTaskFrame(reason="twice"), FrameDirection.UPSTREAM)

    upstream_side = FrameRecorder()
    task = PipelineTask(Pipeline([upstream_side, Hangup(), FrameRecorder()]))
    await task.queue_frames([TextFrame("hello"), TextFrame("goodbye"), TextFrame("still queued")])
    await asyncio.wait_for(task.run(), 5)
    assert task.finish_reason == "end"
    seen = [(type(f).__name__, d) for f, d in upstream_side.frames if not isinstance(f, StartFrame)]
    ends = [s for s in seen if s[0] == "EndFrame"]
    assert ends == [("EndFrame", FrameDirection.DOWNSTREAM)]
    texts = [f.text for f in upstream_side.of_type(TextFrame)]
    assert texts == ["hello", "goodbye", "still queued"]


async def test_cancel_task_frame_cancels():
    from vantum_pipeline.frames import CancelTaskFrame

    class Quit(FrameProcessor):
        async def process_frame(self, frame, direction):
            await self.push_frame(frame, direction)
            if isinstance(frame, TextFrame):
                await self.push_frame(CancelTaskFrame(reason="line dead"), FrameDirection.UPSTREAM)

    task = PipelineTask(Pipeline([FrameRecorder(), Quit()]))
    await task.queue_frame(TextFrame("x"))
    await asyncio.wait_for(task.run(), 5)
    assert task.finish_reason == "cancel"
