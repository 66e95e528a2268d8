"""Frame movement: ordering, re-entrancy, backpressure, system frames, errors."""

import asyncio
import gc
import random
import warnings

import pytest

from vantum_pipeline import FrameDirection, FrameProcessor, Pipeline, PipelineTask
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    MetricsFrame,
    StartFrame,
    TextFrame,
)
from vantum_pipeline.processor import _Deadline
from vantum_pipeline.testing import FrameRecorder, PipelineHarness, run_pipeline

DOWN, UP = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM


class Producer(FrameProcessor):
    """Pushes batches from its own long-lived tasks, in both directions."""

    async def emit(self, label: str, count: int, direction: FrameDirection) -> None:
        for i in range(count):
            await self.push_frame(TextFrame(f"{label}:{i}"), direction)
            if random.random() < 0.3:
                await asyncio.sleep(0)


class Watcher(FrameProcessor):
    """Records order and checks process_frame is never re-entered per direction."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.inside = {DOWN: 0, UP: 0}
        self.max_inside = {DOWN: 0, UP: 0}
        self.seen: dict[FrameDirection, list[str]] = {DOWN: [], UP: []}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TextFrame):
            self.inside[direction] += 1
            self.max_inside[direction] = max(self.max_inside[direction], self.inside[direction])
            self.seen[direction].append(frame.text)
            if self.delay or random.random() < 0.5:
                await asyncio.sleep(self.delay)
            self.inside[direction] -= 1
        await self.push_frame(frame, direction)


async def test_order_per_producer_and_no_reentry_under_concurrent_producers():
    random.seed(7)
    head_side, middle, tail_side = Producer(), Watcher(), Producer()
    async with PipelineHarness([head_side, middle, tail_side]) as h:
        await asyncio.sleep(0.01)
        jobs = []
        for n in range(4):
            jobs.append(head_side.create_task(head_side.emit(f"d{n}", 200, DOWN)))
            jobs.append(tail_side.create_task(tail_side.emit(f"u{n}", 200, UP)))
        await asyncio.wait_for(asyncio.gather(*jobs), 20)
    for direction, prefix in ((DOWN, "d"), (UP, "u")):
        seen = middle.seen[direction]
        assert len(seen) == 800
        for n in range(4):
            mine = [int(s.split(":")[1]) for s in seen if s.startswith(f"{prefix}{n}:")]
            assert mine == list(range(200)), f"{prefix}{n} out of order"
        assert middle.max_inside[direction] == 1
    # what left the pipeline at each end is in producer order too
    tail_texts = [f.text for f in h.downstream if isinstance(f, TextFrame)]
    assert [t for t in tail_texts if t.startswith("d0:")] == [f"d0:{i}" for i in range(200)]


async def test_backpressure_bounds_the_queue_and_slows_the_producer():
    slow = Watcher(delay=0.001)
    producer = Producer()
    high_water = 0

    class Probe(FrameProcessor):
        async def process_frame(self, frame, direction):
            nonlocal high_water
            high_water = max(high_water, len(slow._vp_down.queue or ()))
            await self.push_frame(frame, direction)

    slow._vp_down.maxsize = 8
    async with PipelineHarness([producer, Probe(), slow]):
        await asyncio.sleep(0.01)
        pushers = [producer.create_task(producer.emit(f"p{n}", 100, DOWN)) for n in range(3)]
        await asyncio.wait_for(asyncio.gather(*pushers), 20)
    assert len(slow.seen[DOWN]) == 300
    assert high_water <= 8
    assert slow.overflows == 0


async def test_reentrant_push_does_not_deadlock_and_is_counted():
    """A downstream handler that pushes upstream into a processor that pushes
    downstream again re-enters a busy lane from its own drainer."""

    class Bouncer(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame) and direction is UP and frame.text.startswith("bounce"):
                await self.push_frame(TextFrame("echo:" + frame.text), DOWN)
                return
            await self.push_frame(frame, direction)

    class Reflector(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame) and frame.text.startswith("bounce"):
                await self.push_frame(TextFrame(frame.text), UP)
            await self.push_frame(frame, direction)

    reflector = Reflector(max_queue=1)
    result = await run_pipeline([Bouncer(), reflector], [TextFrame(f"bounce{i}") for i in range(5)], timeout=5)
    texts = [f.text for f in result.of_type(TextFrame)]
    assert sorted(texts) == sorted([f"bounce{i}" for i in range(5)] + [f"echo:bounce{i}" for i in range(5)])
    assert result.finish_reason == "end"


async def test_system_frames_overtake_queued_in_band_frames():
    gate = asyncio.Event()

    class Blocker(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame) and frame.text == "block":
                await gate.wait()
            await self.push_frame(frame, direction)

    producer = Producer()
    async with PipelineHarness([producer, Blocker()]) as h:
        await asyncio.sleep(0.01)
        pushing = producer.create_task(producer.push_frame(TextFrame("block")))
        await asyncio.sleep(0.01)
        queued = [producer.create_task(producer.push_frame(TextFrame(f"q{i}"))) for i in range(5)]
        await asyncio.sleep(0.01)
        await producer.push_frame(MetricsFrame("overtake", 1.0))
        overtaken = [type(f).__name__ for f in h.downstream]
        gate.set()
        await asyncio.gather(pushing, *queued)
        await h.wait_for(TextFrame, count=6)
    assert overtaken[-1] == "MetricsFrame" and "TextFrame" not in overtaken


async def test_in_band_frames_wait_for_the_start():
    """A receive loop pushing before downstream processors handled StartFrame."""
    started = asyncio.Event()

    class SlowStart(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, StartFrame):
                await started.wait()
            await self.push_frame(frame, direction)

    class EagerSource(FrameProcessor):
        async def process_frame(self, frame, direction):
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                self.create_task(self.emit())

        async def emit(self):
            for i in range(3):
                await self.push_frame(TextFrame(str(i)))

    # EagerSource starts its loop before SlowStart has started
    source, slow, recorder = EagerSource(), SlowStart(), FrameRecorder()
    task = PipelineTask(Pipeline([source, slow, recorder]))

    async def release():
        await asyncio.sleep(0.05)
        started.set()
        await asyncio.sleep(0.05)
        await task.queue_frame(EndFrame())

    await asyncio.wait_for(asyncio.gather(task.run(), release()), 5)
    kinds = [type(f).__name__ for f, _ in recorder.frames]
    assert kinds[0] == "StartFrame"
    assert [f.text for f in recorder.of_type(TextFrame)] == ["0", "1", "2"]


async def test_nested_pipelines_pass_frames_both_ways_in_order():
    inner_recorders = [FrameRecorder() for _ in range(3)]

    class Turnaround(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame) and direction is DOWN:
                await self.push_frame(TextFrame("up:" + frame.text), UP)
            await self.push_frame(frame, direction)

    pipeline = Pipeline([FrameRecorder(), Pipeline([inner_recorders[0], Pipeline(inner_recorders[1:])]), Turnaround()])
    result = await run_pipeline(pipeline, [TextFrame(str(i)) for i in range(10)])
    assert [f.text for f in result.of_type(TextFrame)] == [str(i) for i in range(10)]
    assert [f.text for f in result.of_type(TextFrame, UP)] == [f"up:{i}" for i in range(10)]
    for recorder in inner_recorders:
        assert len(recorder.of_type(TextFrame, DOWN)) == 10
        assert len(recorder.of_type(TextFrame, UP)) == 10


def test_pipeline_construction_errors():
    with pytest.raises(ConfigurationError, match="at least one"):
        Pipeline([])
    p = FrameRecorder()
    with pytest.raises(ConfigurationError, match="twice"):
        Pipeline([p, Pipeline([p])])
    with pytest.raises(ConfigurationError, match="not a FrameProcessor"):
        Pipeline([object()])  # type: ignore[list-item]


async def test_exception_becomes_an_error_frame_and_the_pipeline_goes_on(caplog):
    class Flaky(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame) and frame.text == "boom":
                raise ValueError("bad text")
            await self.push_frame(frame, direction)

    flaky = Flaky(name="flaky")
    result = await run_pipeline([FrameRecorder(), flaky], [TextFrame("a"), TextFrame("boom"), TextFrame("b")])
    assert [f.text for f in result.of_type(TextFrame)] == ["a", "b"]
    errors = result.of_type(ErrorFrame, UP)
    assert len(errors) == 1 and not errors[0].fatal
    assert errors[0].processor == "flaky" and "bad text" in errors[0].error
    assert result.finish_reason == "end"


async def test_fatal_error_ends_the_run():
    class Fatal(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, TextFrame):
                await self.push_error("the line is gone", fatal=True)
                return
            await self.push_frame(frame, direction)

    task = PipelineTask(Pipeline([FrameRecorder(), Fatal()]))
    await task.queue_frames([TextFrame("x")])
    await asyncio.wait_for(task.run(), 5)
    assert task.finish_reason == "error"
    assert task.error is not None and "the line is gone" in task.error.error


async def test_exception_at_start_is_fatal():
    class BadStart(FrameProcessor):
        async def process_frame(self, frame, direction):
            if isinstance(frame, StartFrame):
                raise RuntimeError("cannot open the socket")
            await self.push_frame(frame, direction)

    task = PipelineTask(BadStart())
    await asyncio.wait_for(task.run(), 5)
    assert task.finish_reason == "error"


async def test_exception_in_owned_task_is_reported():
    class Looper(FrameProcessor):
        async def process_frame(self, frame, direction):
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                self.create_task(self.loop())

        async def loop(self):
            await asyncio.sleep(0)
            raise ConnectionError("socket reset")

    async with PipelineHarness([Looper(name="looper")]) as h:
        error = await h.wait_for(ErrorFrame, direction=UP, timeout=2)
    assert "socket reset" in error.error and error.processor == "looper"


def test_max_queue_must_be_positive():
    with pytest.raises(ConfigurationError):
        FrameProcessor(max_queue=0)


def test_a_subclass_cannot_shadow_the_framework_internals():
    with pytest.raises(TypeError, match="_flush"):

        class Clash(FrameProcessor):
            def _flush(self, epoch):  # a natural name for "flush my buffer"
                pass


async def test_an_essential_task_that_raises_ends_the_run_with_a_fatal_error():
    class Reader(FrameProcessor):
        async def process_frame(self, frame, direction):
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                self.create_task(self.loop(), "receive", essential=True)

        async def loop(self):
            await asyncio.sleep(0)
            raise KeyError("decoder state")

    recorder = FrameRecorder()
    task = PipelineTask(Pipeline([recorder, Reader(name="reader")]))  # nothing else would ever end it
    await asyncio.wait_for(task.run(), 10)
    assert task.finish_reason == "error"
    assert task.error is not None and task.error.fatal and task.error.processor == "reader"
    assert "decoder state" in task.error.error


def test_a_turn_task_cancelled_before_it_started_leaves_no_never_awaited_warning():
    class Speaker(FrameProcessor):
        async def say(self) -> None:
            await asyncio.sleep(1)

    async def main() -> list[str]:
        speaker = Speaker()
        ran: list[asyncio.Task] = []
        for _ in range(3):
            turn = speaker.create_turn_task(speaker.say())
            turn.cancel()  # an interruption before the task's first step
            ran.append(turn)
        long_lived = speaker.create_task(speaker.say())
        long_lived.cancel()
        ran.append(long_lived)
        await asyncio.wait(ran, timeout=5)
        return [t.get_name() for t in ran if t.cancelled()]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cancelled = asyncio.run(main())
        gc.collect()
    assert len(cancelled) == 4
    never_awaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert never_awaited == []


async def test_a_started_processor_knows_its_running_task_without_asking_asyncio():
    # The lanes' owner is read from the processor's loop (asyncio.current_task() costs a system
    # call per frame on Python 3.11); it must be the very task asyncio reports, in every handler.
    seen = []

    class Asker(FrameProcessor):
        async def process_frame(self, frame, direction):
            seen.append((self._running_task(), asyncio.current_task()))
            await self.push_frame(frame, direction)

    asker = Asker()
    assert asker._running_task() is asyncio.current_task()  # not started: asyncio's own answer
    await run_pipeline([asker], [TextFrame(f"t{i}") for i in range(3)], timeout=5)
    assert len(seen) >= 5  # start, three texts, end
    assert all(mine is theirs and mine is not None for mine, theirs in seen)
    assert asker._vp_loop is asyncio.get_running_loop()


async def _timeout_scenarios(timeout):
    """What a timeout context does in each case, as (case, outcome) pairs."""
    outcomes = []

    async def attempt(case, body, seconds):
        try:
            async with timeout(seconds):
                await body()
            outcome = "done"
        except TimeoutError:
            outcome = "timeout"
        except asyncio.CancelledError:
            outcomes.append((case, "cancelled", asyncio.current_task().cancelling()))
            raise
        outcomes.append((case, outcome, asyncio.current_task().cancelling()))

    async def sleeps(seconds):
        await asyncio.sleep(seconds)

    # In time whatever the machine: a task ready to run goes before a timer due in the same pass.
    await attempt("in time", lambda: sleeps(0), 0.05)
    await asyncio.sleep(0.1)  # a timer left behind would cancel this sleep
    outcomes.append(("after", "quiet", asyncio.current_task().cancelling()))
    await attempt("too long", lambda: sleeps(5), 0.02)

    async def outer_first():
        async with asyncio.timeout(0.02):
            await attempt("inside a shorter asyncio.timeout", lambda: sleeps(5), 1.0)

    try:
        await outer_first()
    except TimeoutError:
        outcomes.append(("outer", "timeout", asyncio.current_task().cancelling()))

    async def inner_first():
        async with asyncio.timeout(1.0):
            await attempt("inside a longer asyncio.timeout", lambda: sleeps(5), 0.02)
        outcomes.append(("outer", "done", asyncio.current_task().cancelling()))

    await inner_first()
    return outcomes


async def _cancelled_under_timeout(timeout):
    started = asyncio.Event()

    async def body():
        async with timeout(1.0):
            started.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    except TimeoutError:
        return "timeout"
    return "done"


async def test_a_started_processors_timeout_behaves_as_asyncio_timeout():
    # Transports and the STT send under the processor's own timeout (cheaper than asyncio's on
    # Python 3.11); it must raise, pass on and count cancellations exactly as asyncio.timeout does.
    processor = FrameProcessor()
    assert not isinstance(processor._timeout(1.0), _Deadline)  # not started: asyncio's own
    async with PipelineHarness([processor]):
        results = {}
        for name, timeout in (("asyncio", asyncio.timeout), ("processor", processor._timeout)):
            task = processor.create_task(_timeout_scenarios(timeout))
            results[name] = await asyncio.wait_for(task, 10)
        fast = processor.create_task(_check_is_deadline(processor))
        assert await asyncio.wait_for(fast, 5)
        cancelled = [await _cancelled_under_timeout(t) for t in (asyncio.timeout, processor._timeout)]
    assert results["processor"] == results["asyncio"]
    assert [outcome for _, outcome, _ in results["asyncio"]] == [
        "done", "quiet", "timeout", "cancelled", "timeout", "timeout", "done",
    ]  # fmt: skip
    # Only the cancellation of the enclosing asyncio.timeout is still pending where it passes through.
    assert [cancelling for _, _, cancelling in results["processor"]] == [0, 0, 0, 1, 0, 0, 0]
    assert cancelled == ["cancelled", "cancelled"]


async def _check_is_deadline(processor):
    async with processor._timeout(None):  # no deadline, as asyncio.timeout(None)
        await asyncio.sleep(0.01)
    return isinstance(processor._timeout(1.0), _Deadline)


def test_a_processor_run_again_on_another_loop_uses_the_new_one():
    # The processor keeps its loop from each StartFrame; a second run on a new loop must not
    # schedule its timeouts on the first, closed one.
    class Timed(FrameProcessor):
        async def process_frame(self, frame, direction):
            async with self._timeout(1.0):
                await asyncio.sleep(0)
            await self.push_frame(frame, direction)

    timed = Timed()
    loops = []
    for _ in range(2):

        async def one_run():
            loops.append(asyncio.get_running_loop())
            return await run_pipeline([timed], [TextFrame("a"), TextFrame("b")], timeout=5)

        result = asyncio.run(one_run())
        assert result.finish_reason == "end"
        assert [f.text for f in result.of_type(TextFrame)] == ["a", "b"]
        assert timed._vp_loop is loops[-1]
    assert loops[0] is not loops[1]
