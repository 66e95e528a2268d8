"""Barge-in: epochs, the two-phase flush, late work, exactly-once delivery."""

import asyncio

from vantum_pipeline import FrameDirection, FrameProcessor
from vantum_pipeline.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMTextFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
)
from vantum_pipeline.testing import FrameRecorder, PipelineHarness, run_pipeline

DOWN, UP = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM


class Counter(FrameProcessor):
    """Counts InterruptionFrames and the directions they arrive from."""

    def __init__(self) -> None:
        super().__init__()
        self.interruptions: list[FrameDirection] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            self.interruptions.append(direction)
        await self.push_frame(frame, direction)


class Trigger(Counter):
    async def fire(self) -> None:
        await self.push_interruption()


class Gate(FrameProcessor):
    """Holds in-band text frames until opened (a slow consumer)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    async def process_frame(self, frame, direction):
        if isinstance(frame, TextFrame):
            await self.open.wait()
        await self.push_frame(frame, direction)


async def test_every_processor_sees_exactly_one_interruption_in_the_right_direction():
    counters = [Counter() for _ in range(3)]
    trigger = Trigger()
    more = [Counter() for _ in range(3)]
    async with PipelineHarness([*counters, trigger, *more]):
        await asyncio.sleep(0.01)
        await trigger.fire()
    for c in counters:
        assert c.interruptions == [UP]
    assert trigger.interruptions == [DOWN]
    for c in more:
        assert c.interruptions == [DOWN]


async def test_concurrent_triggers_for_one_barge_in_coalesce():
    class SlowCounter(Counter):
        async def process_frame(self, frame, direction):
            if isinstance(frame, InterruptionFrame):
                await asyncio.sleep(0.02)
            await super().process_frame(frame, direction)

    a, b, c = Trigger(), SlowCounter(), Trigger()
    async with PipelineHarness([a, b, c]) as h:
        await asyncio.sleep(0.01)
        await asyncio.gather(a.fire(), c.fire())
        # a trigger after the first interruption completed is a new interruption
        await c.fire()
    assert b.interruptions == [DOWN, UP]
    assert h.task.state.interruptions == 2


async def test_pushing_a_new_interruption_frame_interrupts_and_redelivery_is_a_no_op():
    class Repusher(Counter):
        pass

    first, middle, last = Counter(), Repusher(), Counter()
    async with PipelineHarness([first, middle, last]):
        await asyncio.sleep(0.01)
        await middle.push_frame(InterruptionFrame())  # every processor passes it on: harmless
    assert first.interruptions == [UP] and middle.interruptions == [DOWN] and last.interruptions == [DOWN]


async def test_queued_old_epoch_frames_are_dropped_and_system_frames_are_not():
    source, gate, sink = Trigger(), Gate(), FrameRecorder()
    async with PipelineHarness([source, gate, sink]) as h:
        await asyncio.sleep(0.01)
        first = source.create_task(source.push_frame(TextFrame("in-flight")))
        await asyncio.sleep(0.01)
        for i in range(200):
            gate._vp_down.append(_stamped(TextFrame(f"queued{i}"), 0))
        await source.push_frame(MetricsFrame("m", 1.0))
        await source.fire()
        gate.open.set()
        await first
        await source.push_frame(TextFrame("after"))
        await h.wait_for(TextFrame, where=lambda f: f.text == "after")
    texts = [f.text for f in sink.of_type(TextFrame)]
    assert texts == ["after"], texts  # 0 stale frames reached the tail
    assert sink.of_type(MetricsFrame) and h.task.state.stale_dropped >= 201


async def test_user_input_survives_an_interruption():
    source, gate, sink = Trigger(), Gate(), FrameRecorder()
    async with PipelineHarness([source, gate, sink]) as h:
        await asyncio.sleep(0.01)
        blocker = source.create_task(source.push_frame(TextFrame("bot")))
        await asyncio.sleep(0.01)
        pushes = [
            source.create_task(source.push_frame(InputAudioRawFrame(b"\0\0" * 160, 16000))),
            source.create_task(source.push_frame(TranscriptionFrame("yes please"))),
            source.create_task(source.push_frame(TextFrame("bot reply"))),
        ]
        await asyncio.sleep(0.01)
        await source.fire()
        gate.open.set()
        await asyncio.gather(blocker, *pushes)
        await h.wait_for(TranscriptionFrame)
    assert len(sink.of_type(InputAudioRawFrame)) == 1
    assert [f.text for f in sink.of_type(TranscriptionFrame)] == ["yes please"]
    assert [f.text for f in sink.of_type(TextFrame)] == []


async def test_late_frames_from_old_turn_work_are_dropped():
    release = asyncio.Event()

    class SlowLLM(Trigger):
        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame) and frame.text == "prompt":
                self.create_turn_task(self.reply())
                return
            await super().process_frame(frame, direction)

        async def reply(self):
            await self.push_frame(LLMTextFrame("early"))
            await asyncio.shield(release.wait())  # cancellation arrives, but only after this
            await self.push_frame(LLMTextFrame("late"))

    class LateTool(FrameProcessor):
        """A long-lived task answering the old turn: stamps the turn's epoch."""

        async def process_frame(self, frame, direction):
            if isinstance(frame, LLMTextFrame) and frame.text == "early":
                epoch = self.handling_epoch
                self.create_task(self.tool_result(epoch))
            await self.push_frame(frame, direction)

        async def tool_result(self, epoch):
            await release.wait()
            result = TextFrame("tool result")
            result.epoch = epoch
            await self.push_frame(result)

    llm, tool, sink = SlowLLM(), LateTool(), FrameRecorder()
    async with PipelineHarness([llm, tool, sink]) as h:
        await h.send(TextFrame("prompt"))
        await h.wait_for(LLMTextFrame)
        await llm.fire()
        release.set()
        await asyncio.sleep(0.05)
        await h.send(TextFrame("next"))
        await h.wait_for(TextFrame, where=lambda f: f.text == "next")
    texts = [f.text for f in sink.of_type(TextFrame)]
    assert texts == ["early", "next"], texts
    assert not llm._vp_turn_tasks  # the turn task was cancelled and forgotten


async def test_new_epoch_frames_wait_until_the_processor_saw_the_interruption():
    """Flush-stop: a processor slow to handle the interruption must not see a
    new-turn frame before it (it would cancel the new turn)."""
    order: list[str] = []

    class SlowToInterrupt(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, InterruptionFrame):
                order.append("interruption:start")
                await asyncio.sleep(0.05)
                order.append("interruption:end")
            elif isinstance(frame, TextFrame):
                order.append(frame.text)
            await self.push_frame(frame, direction)

    trigger, slow = Trigger(), SlowToInterrupt()
    async with PipelineHarness([trigger, slow]) as h:
        await asyncio.sleep(0.01)
        firing = asyncio.ensure_future(trigger.fire())
        await asyncio.sleep(0.01)
        # new-epoch frame pushed while slow is still handling the interruption
        await trigger.push_frame(TextFrame("new turn"))
        await firing
        await h.wait_for(TextFrame)
    assert order == ["interruption:start", "interruption:end", "new turn"]


async def test_end_frame_survives_an_interruption():
    trigger, gate = Trigger(), Gate()
    async with PipelineHarness([trigger, gate], end_timeout=3) as h:
        await asyncio.sleep(0.01)
        blocker = trigger.create_task(trigger.push_frame(TextFrame("speaking")))
        await asyncio.sleep(0.01)
        await h.send(EndFrame())
        await asyncio.sleep(0.01)
        await trigger.fire()
        gate.open.set()
        await blocker
        await h.wait_finished(3)
    assert h.task.finish_reason == "end"


async def test_interruption_from_the_task_queue():
    c1, c2 = Counter(), Counter()
    result = await run_pipeline([c1, c2], [TextFrame("a"), InterruptionFrame(), TextFrame("b")])
    assert c1.interruptions == [DOWN] and c2.interruptions == [DOWN]
    assert [f.text for f in result.of_type(TextFrame)] == ["a", "b"]


async def test_a_stale_turn_task_that_interrupts_cancels_itself_after_delivery():
    class SelfInterrupting(Counter):
        def __init__(self):
            super().__init__()
            self.after = False

        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame):
                self.create_turn_task(self.work())
            await super().process_frame(frame, direction)

        async def work(self):
            await self.push_interruption()
            await asyncio.sleep(0)
            self.after = True  # never reached: the task belongs to the old turn

    p, c = SelfInterrupting(), Counter()
    async with PipelineHarness([p, c]) as h:
        await h.send(TextFrame("x"))
        for _ in range(20):
            await asyncio.sleep(0.005)
    assert c.interruptions == [DOWN] and p.interruptions == [DOWN]
    assert not p.after


async def test_interruptions_can_be_disabled():
    t, c = Trigger(), Counter()
    async with PipelineHarness([t, c], allow_interruptions=False):
        await asyncio.sleep(0.01)
        await t.fire()
    assert c.interruptions == []


def _stamped(frame, epoch):
    frame.epoch = epoch
    return frame


async def test_a_stuck_interruption_handler_is_bounded():
    class Stuck(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, InterruptionFrame):
                await asyncio.Event().wait()
            await self.push_frame(frame, direction)

    t, s, c = Trigger(), Stuck(), Counter()
    async with PipelineHarness([t, s, c], interruption_timeout=0.1) as h:
        await asyncio.sleep(0.01)
        await asyncio.wait_for(t.fire(), 2)
        await t.push_frame(TextFrame("goes on"))
        await h.wait_for(TextFrame)
    assert c.interruptions == [DOWN]


async def test_one_deadline_bounds_the_whole_delivery():
    """Each slow handler fits the timeout, together they do not: the delivery is
    cut at the deadline, and the processors after the cut still get theirs."""

    class Slow(Counter):
        async def process_frame(self, frame, direction):
            if isinstance(frame, InterruptionFrame):
                await asyncio.sleep(1.0)
            await super().process_frame(frame, direction)

    # 1 s per handler against a 2.5 s deadline: the first has 1.5 s to spare, the third cannot make it.
    t, slow1, slow2, slow3, c = Trigger(), Slow(), Slow(), Slow(), Counter()
    async with PipelineHarness([t, slow1, slow2, slow3, c], interruption_timeout=2.5) as h:
        await asyncio.sleep(0.01)
        await asyncio.wait_for(t.fire(), 10)
        await t.push_frame(TextFrame("goes on"))
        await h.wait_for(TextFrame)
    assert slow1.interruptions == [DOWN]
    assert slow3.interruptions == []  # 3 s into the delivery at best: abandoned at the deadline
    assert c.interruptions == [DOWN]


_ = StartFrame


async def test_frames_waiting_in_the_task_queue_are_flushed_too():
    """Frames queued at the task before an interruption belong to the old turn,
    even when a blocked processor keeps them waiting in the task's queue."""
    trigger, gate, sink = Trigger(), Gate(), FrameRecorder()
    async with PipelineHarness([trigger, gate, sink]) as h:
        await h.send(TextFrame("blocks the feeder"))
        for i in range(20):
            await h.send(TextFrame(f"old{i}"))
        await asyncio.sleep(0.01)
        await trigger.fire()
        await h.send(TextFrame("new"))
        gate.open.set()
        await h.wait_for(TextFrame, where=lambda f: f.text == "new")
    assert [f.text for f in sink.of_type(TextFrame)] == ["new"]


async def test_queued_interruption_with_interruptions_disabled_does_not_hold_frames():
    result = await run_pipeline(
        [Counter()], [TextFrame("a"), InterruptionFrame(), TextFrame("b")], allow_interruptions=False
    )
    assert [f.text for f in result.of_type(TextFrame)] == ["a", "b"]


async def test_interruption_settled_waits_for_delivery_to_every_processor():
    order: list[str] = []

    class Slow(Counter):
        async def process_frame(self, frame, direction):
            if isinstance(frame, InterruptionFrame):
                await asyncio.sleep(0.05)
                order.append("slow handled")
            await super().process_frame(frame, direction)

    class Waiter(Counter):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, InterruptionFrame):
                self.create_task(self.after())

        async def after(self):
            await self.interruption_settled()
            order.append("settled")

    trigger, waiter, slow = Trigger(), Waiter(), Slow()
    async with PipelineHarness([trigger, waiter, slow]):
        await asyncio.sleep(0.01)
        await trigger.fire()
        await asyncio.sleep(0.01)
        await waiter.interruption_settled()  # none in progress: returns at once
    assert order == ["slow handled", "settled"]
