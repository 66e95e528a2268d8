"""A hosted pipecat processor and backpressure: bounded hand-over, overruns, the short way in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("pipecat")

from loguru import logger
from pipecat.frames import frames as pc
from pipecat.processors.frame_processor import FrameDirection as PipecatDirection
from pipecat.processors.frame_processor import FrameProcessor as PipecatFrameProcessor

from tests.waiting import until
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    EndFrame,
    InputAudioRawFrame,
    TextFrame,
    UserStartedSpeakingFrame,
)
from vantum_pipeline.interop.pipecat import PipecatProcessor
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.testing.pipeline import PipelineHarness, run_pipeline

pytestmark = pytest.mark.timeout(30)


def input_task_idle(processor: PipecatFrameProcessor) -> bool:
    """Pipecat's input task of ``processor`` is parked on its empty input queue."""
    inputs = processor._FrameProcessor__input_queue
    return inputs.empty() and bool(inputs._getters)


class SlowPass(PipecatFrameProcessor):
    """Takes ``delay`` seconds over each text frame (after ``release``), notes it, passes it on."""

    def __init__(self, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay
        self.texts: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.started_text = asyncio.Event()

    async def process_frame(self, frame: pc.Frame, direction: PipecatDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.TextFrame):
            self.started_text.set()
            await self.release.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            self.texts.append(frame.text)
        await self.push_frame(frame, direction)


class Producer(FrameProcessor):
    """On a "go" text frame, pushes ``count`` numbered text frames and notes how far ahead
    of the hosted processor each push left it."""

    def __init__(self, count: int, hosted: SlowPass, adapter: PipecatProcessor) -> None:
        super().__init__()
        self.count = count
        self.hosted = hosted
        self.adapter = adapter
        self.leads: list[int] = []
        self.held: list[int] = []  # frames pipecat's queues held, after each push

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        if isinstance(frame, TextFrame) and frame.text == "go":
            for i in range(self.count):
                await self.push_frame(TextFrame(str(i)))
                self.leads.append(i + 1 - len(self.hosted.texts))
                queued = self.adapter.inbox.queued
                assert queued is not None
                self.held.append(queued)
            return
        await self.push_frame(frame, direction)


async def test_a_slow_hosted_processor_makes_the_producer_wait_instead_of_queueing():
    slow = SlowPass(delay=0.002)
    adapter = PipecatProcessor(slow, max_outstanding=4, max_queue=8, enable_metrics=False)
    producer = Producer(150, slow, adapter)
    collected = await run_pipeline([producer, adapter], [TextFrame("go")], timeout=20)
    texts = [f.text for f in collected.of_type(TextFrame)]
    assert texts == [str(i) for i in range(150)]  # all of them, in order
    # At most: 4 held by pipecat, 1 waiting in the adapter, 8 in its lane, the one being pushed
    # (the producer's own push runs the adapter when its lane is idle: it waits right there).
    assert max(producer.leads) <= 4 + 1 + 8 + 1
    assert max(producer.leads) >= 4  # the bound was reached: the producer did wait
    assert max(producer.held) <= 4
    assert adapter.inbox.peak <= 4
    assert adapter.inbox.overruns == 0
    assert adapter.inbox.outstanding == 0


async def test_without_the_bound_pipecat_would_have_queued_everything():
    """The same producer with a bound above the burst: pipecat's queues take it all at once
    (what happened before the bound), which is what the test above rules out."""
    slow = SlowPass(delay=0.002)
    adapter = PipecatProcessor(slow, max_outstanding=1000, max_queue=8, enable_metrics=False)
    producer = Producer(150, slow, adapter)
    await run_pipeline([producer, adapter], [TextFrame("go")], timeout=20)
    assert max(producer.held) > 100


async def test_a_stuck_hosted_processor_is_overrun_counted_and_logged():
    stuck = SlowPass()
    stuck.release.clear()
    adapter = PipecatProcessor(stuck, max_outstanding=2, backlog_timeout=0.05, enable_metrics=False)
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING", format="{message}")
    try:
        async with PipelineHarness([adapter]) as harness:
            for i in range(5):
                await harness.send(TextFrame(str(i)))
            await until(lambda: adapter.inbox.overruns == 3)  # 3 beyond the bound, each after 0.05 s
            assert adapter.inbox.outstanding == 5  # handed over anyway: nothing lost
            stuck.release.set()
            await harness.wait_for(TextFrame, count=5)
        assert [f.text for f in harness.collected.of_type(TextFrame)] == ["0", "1", "2", "3", "4"]
    finally:
        logger.remove(sink)
    behind = [w for w in warnings if "hosted processor is behind" in w]
    assert len(behind) == 1  # one warning per 10 s, with the count so far
    assert "limit 2" in behind[0]


async def test_a_frame_waiting_for_room_when_an_interruption_comes_never_reaches_pipecat():
    stuck = SlowPass()
    stuck.release.clear()
    adapter = PipecatProcessor(stuck, max_outstanding=1, enable_metrics=False)
    head = FrameProcessor()
    async with PipelineHarness([head, adapter]) as harness:
        await harness.send(TextFrame("held"))
        await asyncio.wait_for(stuck.started_text.wait(), 5)
        await harness.send(TextFrame("waiting"))  # no room: it waits in the adapter, in the feeder's task
        await until(lambda: adapter.inbox.waiting == 1)
        assert adapter.inbox.outstanding == 1
        # A barge-in, raised elsewhere (a VAD's task): pipecat drops "held", which makes room.
        await asyncio.wait_for(head.push_interruption(), 5)
        stuck.release.set()
        await harness.send(TextFrame("after"))
        await harness.wait_for(TextFrame, where=lambda f: f.text == "after", timeout=5)
    assert stuck.texts == ["after"]  # "held" was cancelled by pipecat, "waiting" never handed over
    assert adapter.inbox.outstanding == 0
    assert adapter.inbox.overruns == 0


def test_frames_take_the_short_way_into_a_plain_queued_processor():
    """The short way reads pipecat's private queues: this fails if a pipecat release moves them."""
    assert PipecatProcessor(SlowPass()).inbox.short_way
    assert not PipecatProcessor(SlowPass(enable_direct_mode=True)).inbox.short_way

    class OwnQueueing(SlowPass):
        async def queue_frame(self, frame: Any, direction: Any = PipecatDirection.DOWNSTREAM, callback: Any = None):
            await super().queue_frame(frame, direction, callback)

    assert not PipecatProcessor(OwnQueueing()).inbox.short_way
    assert not PipecatProcessor(SlowPass(), short_way=False).inbox.short_way


@pytest.mark.parametrize("direct, short_way", [(False, True), (True, True), (False, False)])
async def test_order_holds_with_system_frames_among_frames_taking_the_short_way(direct: bool, short_way: bool):
    """Audio (a system frame in pipecat) and text, by whatever way in: each keeps its
    own order, and the hosted processor sees every frame once."""
    hosted = SlowPass(enable_direct_mode=direct)
    frames: list[Any] = []
    for i in range(60):
        frames.append(TextFrame(f"t{i}") if i % 3 else InputAudioRawFrame(bytes([i]) * 320, 16000))
    adapter = PipecatProcessor(hosted, max_outstanding=3, short_way=short_way)
    collected = await run_pipeline([adapter], [*frames, EndFrame()], timeout=10)
    texts = [f.text for f in collected.of_type(TextFrame)]
    audio = [f.audio[0] for f in collected.of_type(InputAudioRawFrame)]
    assert texts == [f.text for f in frames if isinstance(f, TextFrame)]
    assert audio == [f.audio[0] for f in frames if isinstance(f, InputAudioRawFrame)]
    assert hosted.texts == texts


class SelfQueueing(PipecatFrameProcessor):
    """On a VAD frame, queues a system frame to itself, then takes a while: pipecat
    processes system frames one at a time, so the queued one must wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, bool]] = []  # (event, in pipecat's input task)

    def _note(self, event: str) -> None:
        self.log.append((event, asyncio.current_task() is self._FrameProcessor__input_frame_task))

    async def process_frame(self, frame: pc.Frame, direction: PipecatDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.VADUserStartedSpeakingFrame):
            self._note("vad start")
            await self.queue_frame(pc.BotStartedSpeakingFrame())
            await asyncio.sleep(0.05)
            self._note("vad end")
        elif isinstance(frame, pc.BotStartedSpeakingFrame):
            self._note("bot")
        await self.push_frame(frame, direction)


async def test_a_system_frame_processed_on_the_short_way_holds_what_is_queued_meanwhile():
    hosted = SelfQueueing()
    async with PipelineHarness([PipecatProcessor(hosted, enable_metrics=False)]) as harness:
        await until(lambda: input_task_idle(hosted))
        await harness.send(UserStartedSpeakingFrame())
        await harness.wait_for(BotStartedSpeakingFrame)
    # Ours was processed in the sender's task (the short way); the frame the processor
    # queued meanwhile waited for it, then pipecat's input task took it.
    assert hosted.log == [("vad start", False), ("vad end", False), ("bot", True)]


class Flooding(SlowPass):
    """At its first text frame, queues ``flood`` text frames to itself, then waits for ``release``."""

    def __init__(self, flood: int) -> None:
        super().__init__()
        self.flood = flood
        self.release.clear()

    async def process_frame(self, frame: pc.Frame, direction: PipecatDirection) -> None:
        if isinstance(frame, pc.TextFrame) and self.flood:
            flood, self.flood = self.flood, 0
            for _ in range(flood):
                await self.queue_frame(pc.TextFrame("own"))
        await super().process_frame(frame, direction)


async def test_pipecat_queues_filled_by_the_processor_itself_are_an_overrun_counted_and_logged():
    flooding = Flooding(6)
    adapter = PipecatProcessor(flooding, max_outstanding=4, enable_metrics=False)
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING", format="{message}")
    try:
        async with PipelineHarness([adapter]) as harness:
            await harness.send(TextFrame("first"))
            await asyncio.wait_for(flooding.started_text.wait(), 5)
            await until(lambda: adapter.inbox.queued == 6)
            await harness.send(TextFrame("second"))  # ours: 1 outstanding, under the bound
            await until(lambda: adapter.inbox.overruns == 1)
            assert adapter.inbox.queued == 7  # handed over anyway: nothing lost
            flooding.release.set()
            await harness.wait_for(TextFrame, count=8)
    finally:
        logger.remove(sink)
    assert [f.text for f in harness.collected.of_type(TextFrame)] == ["first", *["own"] * 6, "second"]
    assert any("pipecat's queues hold 6 frames" in w for w in warnings)


class Failing(PipecatFrameProcessor):
    """Raises on every text frame; passes the rest on."""

    async def process_frame(self, frame: pc.Frame, direction: PipecatDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.TextFrame):
            raise ValueError(f"cannot take {frame.text!r}")
        await self.push_frame(frame, direction)


async def test_a_frame_a_direct_mode_processor_failed_on_does_not_stay_outstanding():
    adapter = PipecatProcessor(Failing(enable_direct_mode=True), max_outstanding=2)
    async with PipelineHarness([adapter]) as harness:
        for text in ("a", "b", "c", "d"):
            await harness.send(TextFrame(text))
        # Each was processed (and failed) when it was handed over: none stays outstanding,
        # so the bound never made the sender wait.
        assert adapter.inbox.outstanding == 0
        await harness.send(EndFrame())
    assert adapter.inbox.overruns == 0


class FailingOnOdd(PipecatFrameProcessor):
    """Raises on the text frames that carry an odd number; passes the rest on."""

    async def process_frame(self, frame: pc.Frame, direction: PipecatDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.TextFrame) and int(frame.text) % 2:
            raise ValueError(f"cannot take {frame.text!r}")
        await self.push_frame(frame, direction)


@pytest.mark.parametrize("short_way", [True, False], ids=["short-way", "queue-frame"])
async def test_frames_a_queued_processor_failed_on_are_settled_by_the_next_one_it_processes(short_way: bool):
    # Pipecat calls no frame callback for a frame its processor raised on. Each queue is taken in
    # order, so the next frame processed settles the failed ones before it: failures never pile
    # up in the bound and make the sender wait out the backlog timeout.
    # 2 s: a send waiting for room on a loaded machine is not an overrun; failures piling up still are.
    adapter = PipecatProcessor(FailingOnOdd(), max_outstanding=2, backlog_timeout=2.0, short_way=short_way)
    async with PipelineHarness([adapter]) as harness:
        for i in range(20):  # ends on 19 (fails); 20 is processed and settles it
            await harness.send(TextFrame(str(i)))
        await harness.send(TextFrame("20"))
        await until(lambda: adapter.inbox.outstanding == 0)
        await harness.send(EndFrame())
    assert adapter.inbox.overruns == 0
    texts = [f.text for f in harness.collected.of_type(TextFrame)]
    assert texts == [str(i) for i in range(0, 21, 2)]
