"""Pipecat processors hosted in vantum pipelines: frame order, translation, teardown, the missing extra."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("pipecat")

from pipecat.frames import frames as pc
from pipecat.processors.filters.function_filter import FunctionFilter
from pipecat.processors.frame_processor import FrameDirection as PipecatDirection
from pipecat.processors.frame_processor import FrameProcessor as PipecatFrameProcessor

from tests.waiting import until
from vantum_pipeline.frames import (
    EndOfTurnFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMTextFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    UserStartedSpeakingFrame,
)
from vantum_pipeline.interop.pipecat import PipecatProcessor
from vantum_pipeline.interop.pipecat_frames import TABLE, ForeignFrame
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.testing.pipeline import PipelineHarness, run_pipeline

pytestmark = pytest.mark.timeout(30)


def pipecat_tasks() -> list[asyncio.Task]:
    """Tasks pipecat started (its task manager names them after their coroutine's owner)."""
    return [t for t in asyncio.all_tasks() if not t.done() and "site-packages/pipecat/" in repr(t.get_coro())]


class Tagger(FrameProcessor):
    """A native processor that tags every TextFrame it passes on, and notes interruptions."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted = asyncio.Event()

    async def process_frame(self, frame, direction):
        if isinstance(frame, TextFrame) and direction is FrameDirection.DOWNSTREAM:
            frame.text += "+"
        if isinstance(frame, InterruptionFrame):
            self.interrupted.set()
            return
        await self.push_frame(frame, direction)


async def test_a_pipecat_filter_between_native_processors_keeps_frame_order():
    async def keep(frame: pc.Frame) -> bool:
        return not (isinstance(frame, pc.TextFrame) and frame.text.startswith("drop"))

    hosted = PipecatProcessor(FunctionFilter(keep))
    sent = []
    for i in range(60):
        if i % 3 == 0:
            sent.append(InputAudioRawFrame(bytes([i]) * 320, 16000))
        elif i % 4 == 0:
            sent.append(TTSAudioRawFrame(bytes([i]) * 320, 16000, context_id="c"))
        elif i % 7 == 0:
            sent.append(TextFrame(f"drop {i}"))
        elif i % 5 == 0:
            sent.append(EndOfTurnFrame(f"turn {i}"))  # no row in the table: carried through
        else:
            sent.append(TextFrame(f"text {i}"))
    collected = await run_pipeline([Tagger(), hosted, Tagger()], sent)
    kept = [f for f in sent if not (isinstance(f, TextFrame) and f.text.startswith("drop"))]
    # Our own frames come out as the very frames that went in, in order. Pipecat
    # makes input audio a system frame (it overtakes queued data), so its order
    # holds among audio frames and the rest keep theirs among themselves.
    for kind in (InputAudioRawFrame, TextFrame | EndOfTurnFrame | TTSAudioRawFrame):
        out = [f for f in collected.downstream if isinstance(f, kind)]
        assert [f.id for f in out] == [f.id for f in kept if isinstance(f, kind)]
    assert all(f.text.endswith("++") for f in out if isinstance(f, TextFrame))
    assert hosted.unmapped_in["EndOfTurnFrame"] == sum(isinstance(f, EndOfTurnFrame) for f in sent)
    assert collected.finish_reason == "end"
    assert hosted.pipecat_tasks == []


class Emitter(PipecatFrameProcessor):
    """A pipecat processor that answers each TextFrame with frames of its own."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.TextFrame) and frame.text == "go":
            await self.push_frame(pc.LLMTextFrame("token"))
            await self.push_frame(pc.TTSAudioRawFrame(b"\x01\x00" * 160, 8000, 1, context_id="c1"))
            await self.push_frame(pc.OutputTransportMessageFrame(message={"x": 1}))  # no row: carried as foreign
            await self.push_frame(pc.ErrorFrame("upstream trouble"), PipecatDirection.UPSTREAM)
            return
        await self.push_frame(frame, direction)


async def test_pipecat_frames_are_translated_and_unmapped_ones_pass_counted():
    hosted = PipecatProcessor(Emitter())
    async with PipelineHarness([hosted]) as harness:
        await harness.send(TextFrame("go"))
        await harness.wait_for(ForeignFrame)
        from vantum_pipeline.frames import ErrorFrame

        error = await harness.wait_for(ErrorFrame, direction=FrameDirection.UPSTREAM)
    [token] = harness.collected.of_type(LLMTextFrame)
    assert token.text == "token"
    [audio] = harness.collected.of_type(TTSAudioRawFrame)
    assert (audio.sample_rate, audio.context_id, audio.audio) == (8000, "c1", b"\x01\x00" * 160)
    [foreign] = harness.collected.of_type(ForeignFrame)
    assert isinstance(foreign.frame, pc.OutputTransportMessageFrame)
    assert hosted.unmapped_out["OutputTransportMessageFrame"] == 1
    assert error.error == "upstream trouble"


class Slow(PipecatFrameProcessor):
    """Holds each TextFrame for a while, then answers with audio: work an interruption must cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.interruptions = 0

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.InterruptionFrame):
            self.interruptions += 1
        if type(frame) is pc.TextFrame:
            for _ in range(20):
                await asyncio.sleep(0.02)
                await self.push_frame(pc.TTSAudioRawFrame(b"\x00\x00" * 160, 16000, 1, context_id=frame.text))
            return
        await self.push_frame(frame, direction)


class Interrupter(FrameProcessor):
    async def process_frame(self, frame, direction):
        await self.push_frame(frame, direction)
        if isinstance(frame, UserStartedSpeakingFrame):
            await self.push_interruption()


async def test_an_interruption_reaches_the_hosted_processor_and_no_stale_audio_follows():
    slow = Slow()
    hosted = PipecatProcessor(slow)
    async with PipelineHarness([Interrupter(), hosted]) as harness:
        await harness.send(TextFrame("old"))
        await harness.wait_for(TTSAudioRawFrame, count=3)
        await harness.send(UserStartedSpeakingFrame())
        await until(lambda: slow.interruptions > 0)  # the hosted processor has the interruption
        cut = len(harness.collected.of_type(TTSAudioRawFrame))
        await asyncio.sleep(0.3)
        assert len(harness.collected.of_type(TTSAudioRawFrame)) == cut  # nothing of the old turn after the cut
        await harness.send(TextFrame("new"))
        await harness.wait_for(TTSAudioRawFrame, count=cut + 20, timeout=5)
    assert slow.interruptions == 1
    old = [f for f in harness.collected.of_type(TTSAudioRawFrame) if f.context_id == "old"]
    assert 3 <= len(old) < 20
    assert all(f.context_id == "new" for f in harness.collected.of_type(TTSAudioRawFrame)[len(old) :])


async def test_cancel_leaves_no_pipecat_task_behind():
    hosted = PipecatProcessor(Slow())
    async with PipelineHarness([hosted]) as harness:
        await harness.send(TextFrame("busy"))
        await harness.wait_for(TTSAudioRawFrame)
        assert hosted.pipecat_tasks
        await harness.task.cancel("test")
    assert harness.task.finish_reason == "cancel"
    assert hosted.pipecat_tasks == []
    assert pipecat_tasks() == []


def test_the_table_maps_each_of_our_frames_once_per_direction():
    ours = [row.ours for row in TABLE if row.ours is not None and row.to_theirs is not None]
    theirs = [row.theirs for row in TABLE if row.to_ours is not None]
    assert len(ours) == len(set(ours))
    assert len(theirs) == len(set(theirs))


def test_without_pipecat_the_import_names_the_extra():
    program = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "pipecat" or name.startswith("pipecat."):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import importlib
        import vantum_pipeline, vantum_pipeline.interop  # nothing else imports pipecat
        for name in ("pipecat", "pipecat_frames", "pipecat_context"):
            try:
                importlib.import_module(f"vantum_pipeline.interop.{name}")
            except ImportError as exc:
                print(exc)
            else:
                print("imported")
        """
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout, whatever is installed
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all("pip install vantum-pipeline[pipecat]" in line for line in lines), lines


class SelfInterrupting(PipecatFrameProcessor):
    """Raises pipecat's own interruption (both ways, as pipecat broadcasts it) on "stop"."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.TextFrame) and frame.text.startswith("stop"):
            await self.broadcast_interruption()
            return
        await self.push_frame(frame, direction)


async def test_an_interruption_raised_by_the_hosted_processor_interrupts_the_pipeline_once():
    hosted = PipecatProcessor(SelfInterrupting())
    after = Tagger()
    async with PipelineHarness([Tagger(), hosted, after]) as harness:
        await harness.send(TextFrame("before"))
        await harness.wait_for(TextFrame)
        await harness.send(TextFrame("stop"))
        await asyncio.wait_for(after.interrupted.wait(), 5)
        await harness.send(TextFrame("after"))  # a frame of the new turn: it passes
        await harness.wait_for(TextFrame, count=2)
    assert harness.task.state.interruptions == 1
    assert [f.text for f in harness.collected.of_type(TextFrame)] == ["before++", "after++"]


class StuckOnCleanup(PipecatFrameProcessor):
    """Starts a task that ignores nothing, and never finishes its cleanup."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.StartFrame):
            self.create_task(asyncio.sleep(3600), "forever")
        await self.push_frame(frame, direction)

    async def cleanup(self):
        await super().cleanup()
        await asyncio.sleep(3600)


async def test_teardown_stays_within_the_shutdown_bound_when_the_hosted_processor_hangs():
    hosted = PipecatProcessor(StuckOnCleanup())
    loop = asyncio.get_running_loop()
    async with PipelineHarness([hosted]) as harness:
        await harness.send(TextFrame("x"))
        await harness.wait_for(TextFrame)
        assert hosted.pipecat_tasks
        started = loop.time()
    stopped = loop.time() - started
    assert harness.task.finish_reason == "end"
    assert stopped < 5.0  # the bound is stop_timeout (0.9 s); an hour without it
    assert hosted.pipecat_tasks == []
    assert pipecat_tasks() == []


class Broken(PipecatFrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.TextFrame) and frame.text == "boom":
            raise ValueError("bad text 'boom'")
        await self.push_frame(frame, direction)


async def test_an_exception_in_the_hosted_processor_becomes_our_error_and_the_run_goes_on():
    from vantum_pipeline.frames import ErrorFrame

    hosted = PipecatProcessor(Broken())
    async with PipelineHarness([hosted]) as harness:
        await harness.send(TextFrame("boom"))
        error = await harness.wait_for(ErrorFrame, direction=FrameDirection.UPSTREAM)
        await harness.send(TextFrame("fine"))
        await harness.wait_for(TextFrame)
    assert "bad text 'boom'" in error.error and not error.fatal
    assert [f.text for f in harness.collected.of_type(TextFrame)] == ["fine"]


class LateChunks(PipecatFrameProcessor):
    """A TTS-like processor whose cancelled context still sends a chunk after the interruption,
    as a provider's socket does with audio already in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.late_sent = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, pc.TextFrame):
            await self.push_frame(pc.TTSStartedFrame(context_id=frame.text))
            await self.push_frame(pc.TTSAudioRawFrame(b"\x00\x00" * 160, 16000, 1, context_id=frame.text))
            return
        await self.push_frame(frame, direction)
        if isinstance(frame, pc.InterruptionFrame):
            self.create_task(self._late(), "late")

    async def _late(self):
        await asyncio.sleep(0.05)
        await self.push_frame(pc.TTSAudioRawFrame(b"\x00\x00" * 160, 16000, 1, context_id="old"))
        await self.push_frame(pc.TTSStoppedFrame(context_id="old"))
        self.late_sent.set()


async def test_late_audio_of_a_context_cut_by_an_interruption_is_dropped():
    late = LateChunks()
    hosted = PipecatProcessor(late)
    async with PipelineHarness([Interrupter(), hosted]) as harness:
        await harness.send(TextFrame("old"))
        await harness.wait_for(TTSAudioRawFrame)
        await harness.send(UserStartedSpeakingFrame())
        await asyncio.wait_for(late.late_sent.wait(), 5)
        await harness.send(TextFrame("new"))
        await harness.wait_for(TTSAudioRawFrame, count=2)
    assert [f.context_id for f in harness.collected.of_type(TTSAudioRawFrame)] == ["old", "new"]
    assert harness.task.state.stale_dropped >= 2  # the late chunk and its TTSStoppedFrame


class NeverReady(PipecatFrameProcessor):
    async def setup(self, setup):
        await super().setup(setup)
        await asyncio.sleep(3600)


async def test_a_setup_that_never_finishes_ends_the_run_with_an_error():
    hosted = PipecatProcessor(NeverReady(), setup_timeout=0.2)
    async with PipelineHarness([hosted]) as harness:
        await harness.wait_finished(5)
    assert harness.task.finish_reason == "error"
    assert "did not finish its setup within 0.2s" in harness.task.error.error
    assert hosted.pipecat_tasks == []


async def test_transcripts_queued_in_the_hosted_processor_survive_an_interruption():
    slow = Slow()
    hosted = PipecatProcessor(slow)
    async with PipelineHarness([Interrupter(), hosted]) as harness:
        await harness.send(TextFrame("busy"))  # keeps pipecat's process task busy
        await harness.wait_for(TTSAudioRawFrame)
        await harness.send(TranscriptionFrame("yes please"))  # queued behind it inside pipecat
        await harness.send(UserStartedSpeakingFrame())
        transcript = await harness.wait_for(TranscriptionFrame)
    assert transcript.text == "yes please"


def test_bad_settings_are_configuration_errors_naming_the_value():
    from vantum_pipeline.errors import ConfigurationError
    from vantum_pipeline.processors.tools import end_call_tool

    with pytest.raises(ConfigurationError, match="hosts a pipecat FrameProcessor, got 'not a processor'"):
        PipecatProcessor("not a processor")
    with pytest.raises(ConfigurationError, match="turn_timeout must be > 0 seconds, got 0"):
        PipecatProcessor(FunctionFilter(lambda f: True), turn_timeout=0)
    with pytest.raises(ConfigurationError, match="tools need a pipecat LLM service"):
        PipecatProcessor(FunctionFilter(lambda f: True), tools=[end_call_tool()])
    with pytest.raises(ConfigurationError, match="max_outstanding must be >= 1, got 0"):
        PipecatProcessor(FunctionFilter(lambda f: True), max_outstanding=0)
    with pytest.raises(ConfigurationError, match="backlog_timeout must be > 0 seconds, got -1"):
        PipecatProcessor(FunctionFilter(lambda f: True), backlog_timeout=-1)


FRAME_KINDS = {
    "text": lambda i: TextFrame(f"t{i}"),
    "llm": lambda i: LLMTextFrame(f"l{i}"),
    "tts_audio": lambda i: TTSAudioRawFrame(bytes([i % 256]) * 4, 16000, context_id="c"),
    "end_of_turn": lambda i: EndOfTurnFrame(f"e{i}"),  # unmapped: carried
    "transcription": lambda i: TranscriptionFrame(f"s{i}"),
    "input_audio": lambda i: InputAudioRawFrame(bytes([i % 256]) * 4, 16000),
}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(sorted(FRAME_KINDS)), min_size=1, max_size=40))
def test_any_sequence_of_our_frames_crosses_a_hosted_pass_through_unchanged(kinds):
    async def run():
        hosted = PipecatProcessor(FunctionFilter(_keep_all))
        sent = [FRAME_KINDS[kind](i) for i, kind in enumerate(kinds)]
        collected = await run_pipeline([hosted], sent, timeout=10)
        return hosted, sent, collected

    hosted, sent, collected = asyncio.run(run())
    ours = {id(f) for f in sent}
    out = [f for f in collected.downstream if id(f) in ours]
    # Every frame arrives, as itself; input audio (a system frame in pipecat) keeps its
    # order among input audio, every other frame among the others.
    assert sorted(id(f) for f in out) == sorted(ours)
    for audio in (True, False):
        assert [f.id for f in out if isinstance(f, InputAudioRawFrame) is audio] == [
            f.id for f in sent if isinstance(f, InputAudioRawFrame) is audio
        ]
    assert hosted.unmapped_in["EndOfTurnFrame"] == kinds.count("end_of_turn")
    assert hosted.pipecat_tasks == []


async def _keep_all(frame: pc.Frame) -> bool:
    return True


def test_the_table_converts_fields_faithfully():
    from vantum_pipeline.audio.mulaw import lin2ulaw
    from vantum_pipeline.frames import MULAW, ErrorFrame, MetricsFrame
    from vantum_pipeline.interop.pipecat_frames import to_ours, to_pipecat

    said = TranscriptionFrame("hello", user_id="callee", timestamp=1_700_000_000.25)
    theirs = to_pipecat(said)
    assert (theirs.text, theirs.user_id) == ("hello", "callee")
    back = to_ours(theirs)
    assert back.text == "hello" and back.timestamp == pytest.approx(said.timestamp, abs=0.001)

    pcm = b"\x10\x00\xf0\xff" * 80
    phone = InputAudioRawFrame(lin2ulaw(pcm), 8000, encoding=MULAW)
    converted = to_pipecat(phone)
    assert (converted.sample_rate, len(converted.audio)) == (8000, len(pcm))  # μ-law became 16-bit PCM

    failure = to_ours(pc.ErrorFrame("it broke"))
    assert isinstance(failure, ErrorFrame) and not failure.fatal and failure.error == "it broke"
    fatal = ErrorFrame("ours", fatal=True)
    assert not to_pipecat(fatal).fatal  # pipecat deprecated the flag; ours crosses as itself

    from pipecat.metrics.metrics import TTFBMetricsData

    [ttfb] = to_ours(pc.MetricsFrame(data=[TTFBMetricsData(processor="llm", value=0.25)]))
    assert isinstance(ttfb, MetricsFrame) and (ttfb.value, ttfb.unit, ttfb.processor) == (0.25, "s", "llm")


def test_only_the_adapter_modules_import_pipecat():
    import re

    package = Path(__file__).resolve().parent.parent / "vantum_pipeline"
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+pipecat\b", path.read_text(), flags=re.M)
    )
    assert importers == [
        "interop/pipecat.py",
        "interop/pipecat_context.py",
        "interop/pipecat_frames.py",
        "interop/pipecat_inbox.py",
    ]


async def test_a_whole_pipecat_pipeline_is_hosted_as_one_processor():
    from pipecat.pipeline.pipeline import Pipeline as PipecatPipeline

    def without(text: str):
        async def keep(frame: pc.Frame) -> bool:
            return not (isinstance(frame, pc.TextFrame) and frame.text == text)

        return keep

    hosted = PipecatProcessor(PipecatPipeline([FunctionFilter(without("a")), FunctionFilter(without("b"))]))
    collected = await run_pipeline([hosted, Tagger()], [TextFrame("a"), TextFrame("x"), TextFrame("b"), TextFrame("c")])
    assert [f.text for f in collected.of_type(TextFrame)] == ["x+", "c+"]
    assert collected.finish_reason == "end" and hosted.pipecat_tasks == []
