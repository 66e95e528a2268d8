"""Transport bases: playback timeline, heard text, paced output, input overflow."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    ErrorFrame,
    HeardTextFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.testing import FrameRecorder, PipelineHarness, run_pipeline
from vantum_pipeline.transports.base import AudioChunk, InputTransport, OutputTransport
from vantum_pipeline.transports.heard import WORD_END_TOLERANCE, HeardTextTracker
from vantum_pipeline.transports.playback import PlaybackTimeline, Segment
from vantum_pipeline.transports.twilio.serializer import TwilioSerializer
from vantum_pipeline.transports.twilio.transport import TwilioTransport, TwilioTransportParams

RATE = 16000


def pcm(seconds: float) -> bytes:
    return b"\x01\x00" * int(RATE * seconds)


# ------------------------------------------------------------------ timeline


def test_timeline_clock_without_markers():
    t = PlaybackTimeline(uses_markers=False)
    assert t.write(0.5, now=10.0) == Segment(0.0, 0.5)
    assert t.heard_position(10.2) == pytest.approx(0.2)
    assert t.heard_position(11.0) == pytest.approx(0.5)  # never beyond what was written
    # The line ran dry at 10.5; audio written at 12.0 starts playing at 12.0.
    assert t.write(0.5, now=12.0) == Segment(0.5, 1.0)
    assert t.heard_position(12.1) == pytest.approx(0.6)


def test_timeline_markers_bound_and_pin_the_position():
    t = PlaybackTimeline(uses_markers=True)
    t.write(0.2, now=0.0)
    t.add_marker("a")
    t.write(0.2, now=0.0)
    t.add_marker("b")
    # Interpolation by the clock stops at the first marker still pending.
    assert t.heard_position(0.35) == pytest.approx(0.2)
    assert t.marker_echoed("a", now=0.4)  # played late: the far end is behind
    assert t.heard_position(0.45) == pytest.approx(0.25)
    assert t.heard_position(1.0) == pytest.approx(0.4)  # bounded by "b"
    assert not t.drained(1.0)
    assert t.marker_echoed("b", now=1.0)
    assert t.drained(1.0)


def test_timeline_clear_ignores_echoes_of_pending_markers():
    t = PlaybackTimeline(uses_markers=True)
    t.write(1.0, now=0.0)
    t.add_marker("a")
    assert t.clear(now=0.3) == pytest.approx(0.3)
    assert not t.marker_echoed("a", now=0.31)
    assert t.ignored_echoes == 1
    assert t.written == 0.0


def test_timeline_pacing_keeps_a_bounded_lead():
    t = PlaybackTimeline(uses_markers=False)
    t.write(0.02, now=5.0)
    for _ in range(4):
        t.write(0.02, now=5.0)
    # 0.1 s written at 5.0: with a 0.1 s lead the next write is due at 5.0.
    assert t.next_write_time(lead=0.1) == pytest.approx(5.0)
    assert t.next_write_time(lead=0.04) == pytest.approx(5.06)


# --------------------------------------------------------------- heard text


def test_heard_words_count_once_their_end_played():
    tracker = HeardTextTracker()
    tracker.open("c1")
    tracker.add_words("c1", (("Hello", 0.0, 0.3), ("there,", 0.35, 0.6), ("friend.", 0.65, 1.0)))
    tracker.place("c1", Segment(0.0, 1.0))
    assert tracker.progress(0.5)[0].text == "Hello"
    assert tracker.progress(0.55) == []  # unchanged: nothing new to say
    assert tracker.progress(0.7)[0].text == "Hello there,"
    tracker.complete("c1")
    [final] = tracker.progress(1.0)
    assert (final.text, final.final) == ("Hello there, friend.", True)
    assert tracker.active == 0


_WORD = st.tuples(
    st.sampled_from(["yes", "no", "we", "call", "today,", "about", "your", "plan."]),
    st.floats(0.0, 5.0, allow_nan=False),
    st.floats(0.0, 1.0, allow_nan=False),
).map(lambda w: (w[0], w[1], w[1] + w[2]))


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(st.lists(_WORD, max_size=6), min_size=1, max_size=4),
    steps=st.lists(st.floats(0.0, 0.5, allow_nan=False), min_size=1, max_size=30),
)
def test_heard_words_match_their_definition_whatever_the_timings(batches, steps):
    """The heard text is every word whose end has played (within the tolerance), in start order, whether
    the words come in order or overlap, in one frame or several, between playout steps or not."""
    tracker = HeardTextTracker()
    tracker.open("c1")
    given_words: list[tuple[str, float, float]] = []
    tracker.place("c1", Segment(0.0, 7.0))
    heard_line = 0.0
    for i, step in enumerate(steps):
        if i < len(batches):
            tracker.add_words("c1", tuple(batches[i]))
            given_words.extend(batches[i])
        heard_line += step
        context = tracker._contexts["c1"]
        played = context.played(heard_line)
        in_order = sorted(given_words, key=lambda w: w[1])
        expected = " ".join(w for w, _start, end in in_order if end <= played + WORD_END_TOLERANCE)
        assert context.heard_text(played) == expected


def test_heard_text_without_timestamps_is_estimated_by_characters():
    tracker = HeardTextTracker()
    tracker.add_text("One two three four.")  # arrives before its context opens
    tracker.open("c1")
    tracker.place("c1", Segment(0.0, 2.0))
    tracker.complete("c1")
    [update] = tracker.progress(1.0)
    assert update.text == "One two"  # half the characters, cut back to a whole word
    [cut] = tracker.cut(1.2)
    assert cut.final and "One two".startswith(cut.text[:3])


def test_heard_cut_reports_unplayed_contexts_as_empty():
    tracker = HeardTextTracker()
    tracker.open("c1")
    tracker.add_words("c1", (("Hi.", 0.0, 0.2),))
    tracker.place("c1", Segment(0.0, 0.2))
    tracker.open("c2")
    assert [(u.context_id, u.text) for u in tracker.cut(0.1)] == [("c1", ""), ("c2", "")]


async def test_the_playout_alarm_wakes_on_set_or_its_deadline_and_leaves_no_timer():
    from vantum_pipeline.transports.base import _Alarm

    loop = asyncio.get_running_loop()
    alarm = _Alarm()
    alarm.set()  # given before the sleep: the sleep returns at once
    started = loop.time()
    await alarm.sleep(5.0)
    assert loop.time() - started < 0.5
    alarm.clear()
    started = loop.time()
    await alarm.sleep(0.05)  # nobody sets it: the deadline
    assert loop.time() - started >= 0.04
    loop.call_later(0.02, alarm.set)
    started = loop.time()
    await alarm.sleep(None)  # no deadline: only set() ends it
    assert loop.time() - started < 0.5
    alarm.clear()
    sleeper = asyncio.ensure_future(alarm.sleep(5.0))
    await asyncio.sleep(0.01)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    alarm.set()  # after a cancelled sleep: harmless, and the next sleep returns at once
    await asyncio.wait_for(alarm.sleep(5.0), 1.0)
    assert alarm._waiter is None


# ------------------------------------------------------------- output base


class RecordingOutput(OutputTransport):
    """A device that records when each chunk was written."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.writes: list[tuple[float, AudioChunk]] = []
        self.clears: list[float] = []

    async def write_audio(self, chunk: AudioChunk) -> None:
        self.writes.append((asyncio.get_running_loop().time(), chunk))

    async def clear_output(self) -> None:
        self.clears.append(asyncio.get_running_loop().time())


class EchoingOutput(RecordingOutput):
    """A device that confirms markers after the audio before them has 'played'."""

    uses_markers = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.markers: list[str] = []
        self._echoes: list[asyncio.TimerHandle] = []

    async def write_marker(self, name: str) -> None:
        self.markers.append(name)
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.timeline.written - self.timeline.clock_position(loop.time()))
        self._echoes.append(loop.call_later(delay, self.marker_played, name))

    async def cleanup(self) -> None:
        for handle in self._echoes:
            handle.cancel()
        await super().cleanup()


WORDS = (("Good", 0.0, 0.2), ("morning", 0.25, 0.5), ("to", 0.55, 0.6), ("you.", 0.65, 0.9))


def speech(context_id: str, seconds: float = 1.0, words=WORDS) -> list:
    return [
        TTSStartedFrame(context_id=context_id),
        TTSAudioRawFrame(pcm(seconds / 2), RATE, context_id=context_id),
        TTSWordTimestampsFrame(words, context_id=context_id),
        TTSAudioRawFrame(pcm(seconds / 2), RATE, context_id=context_id),
        TTSStoppedFrame(context_id=context_id),
    ]


async def test_output_paces_audio_and_reports_what_was_heard():
    output = RecordingOutput(lead=0.1)
    start = asyncio.get_running_loop().time()
    collected = await run_pipeline([output], speech("c1"), timeout=5)
    writes = output.writes
    assert sum(c.duration for _, c in writes) == pytest.approx(1.0)
    assert {round(c.duration, 3) for _, c in writes} == {0.02}
    # Paced: the last chunk cannot be written before ~0.9 s minus the lead.
    assert writes[-1][0] - start >= 0.75
    heard = [f.text for f in collected.of_type(HeardTextFrame)]
    assert heard[-1] == "Good morning to you."
    assert heard == sorted(heard, key=len)  # cumulative, growing
    for direction in (FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM):
        assert len(collected.of_type(BotStartedSpeakingFrame, direction)) == 1
        assert len(collected.of_type(BotStoppedSpeakingFrame, direction)) == 1
    # The end waited for playback: BotStopped comes before the EndFrame.
    kinds = collected.types()
    assert kinds.index("BotStoppedSpeakingFrame") < kinds.index("EndFrame")


async def test_small_frames_queued_back_to_back_are_written_together_up_to_a_chunk():
    """A TTS streaming 10 ms frames: the writes join them up to ``chunk_duration`` (fewer, larger writes),
    never across two contexts, and the audio written is exactly the audio given, in order."""
    output = RecordingOutput(lead=0.1, chunk_duration=0.04)
    frames: list = []
    given = b""
    for context_id, seconds in (("c1", 0.5), ("c2", 0.3)):
        frames.append(TTSStartedFrame(context_id=context_id))
        for i in range(int(seconds / 0.01)):
            audio = bytes((i % 256, 0)) * int(RATE * 0.01)  # each frame its own samples
            given += audio
            frames.append(TTSAudioRawFrame(audio, RATE, context_id=context_id))
        frames.append(TTSStoppedFrame(context_id=context_id))
    await run_pipeline([output], frames, timeout=5)
    chunks = [c for _, c in output.writes]
    assert b"".join(c.audio for c in chunks) == given
    assert max(c.duration for c in chunks) == pytest.approx(0.04)
    assert all(c.duration <= 0.04 + 1e-9 for c in chunks)
    assert len(chunks) <= 0.8 / 0.04 + 4  # joined: 80 frames of 10 ms in about 20 writes
    assert sum(c.duration for c in chunks if c.context_id == "c1") == pytest.approx(0.5)
    assert sum(c.duration for c in chunks if c.context_id == "c2") == pytest.approx(0.3)


async def test_an_interruption_handled_while_playout_waits_downstream_still_stops_the_bot_downstream():
    """The playout task is held inside a pass (its heard-text push waits on a full lane) while an
    interruption is handled: the wake-up the interruption gives must not be lost, or the
    downstream BotStoppedSpeakingFrame waits for the next audio or marker echo."""

    class HeldOutput(RecordingOutput):
        gate: asyncio.Event | None = None

        async def _check_progress(self, now: float) -> None:
            await super()._check_progress(now)
            if self.gate is not None:  # stands for a push_frame waiting on a full lane
                await self.gate.wait()

    output = HeldOutput(lead=0.1)
    async with PipelineHarness([output]) as harness:
        for frame in speech("c1", seconds=2.0):
            await harness.send(frame)
        await harness.wait_for(BotStartedSpeakingFrame, timeout=2)
        output.gate = asyncio.Event()
        await asyncio.sleep(0.2)  # the playout is now held inside its pass
        await harness.send(InterruptionFrame())
        await harness.wait_for(BotStoppedSpeakingFrame, direction=FrameDirection.UPSTREAM, timeout=2)
        gate, output.gate = output.gate, None
        gate.set()
        await harness.wait_for(BotStoppedSpeakingFrame, timeout=2)  # before the fix: never


async def test_interruption_clears_and_reports_only_the_played_words():
    output = EchoingOutput(lead=0.1, marker_interval=0.1)
    async with PipelineHarness([output]) as h:
        for frame in speech("c1", seconds=2.0, words=tuple((w, s * 2, e * 2) for w, s, e in WORDS)):
            await h.send(frame)
        # "Good morning" is heard alone for 0.2 s ("to" follows); a stalled machine may see "Good morning to"
        # first. Either way the interruption lands before "you." (0.6 s later at the least).
        await h.wait_for(HeardTextFrame, where=lambda f: f.text.startswith("Good morning"), timeout=3)
        await h.send(InterruptionFrame())
        await h.wait_for(BotStoppedSpeakingFrame, timeout=2)
        cut_at = output.clears[0]
    assert len(output.clears) == 1
    final = [f for f in h.downstream if isinstance(f, HeardTextFrame)][-1]
    assert final.text in ("Good morning", "Good morning to")
    # Nothing was written after the clear.
    assert all(t <= cut_at for t, _ in output.writes)
    assert output.timeline.ignored_echoes >= 0
    assert sum(c.duration for _, c in output.writes) < 2.0


async def test_markers_are_written_and_end_waits_for_their_echo():
    output = EchoingOutput(lead=0.05, marker_interval=0.2)
    collected = await run_pipeline([output], speech("c1", seconds=0.6), timeout=5)
    assert len(output.markers) >= 3
    assert output.timeline.pending_markers == 0
    assert [f.text for f in collected.of_type(HeardTextFrame)][-1] == "Good morning to you."


async def test_text_frames_pass_through_and_plain_audio_plays_untracked():
    output = RecordingOutput()
    frames = [TextFrame("hello"), TTSAudioRawFrame(pcm(0.1), RATE)]
    collected = await run_pipeline([output], frames, timeout=5)
    assert [f.text for f in collected.of_type(TextFrame)] == ["hello"]
    assert collected.of_type(HeardTextFrame) == []
    assert sum(c.duration for _, c in output.writes) == pytest.approx(0.1)


async def test_a_failing_device_ends_the_pipeline():
    class Broken(RecordingOutput):
        async def write_audio(self, chunk: AudioChunk) -> None:
            raise ConnectionResetError("socket closed")

    collected = await run_pipeline([Broken()], [TTSAudioRawFrame(pcm(0.2), RATE)], timeout=5)
    assert collected.finish_reason == "error"


async def test_a_stalled_device_write_times_out_and_ends_the_pipeline():
    # A peer that stops reading: the write never returns. io_timeout bounds it; the output
    # breaks with an error that names the hook, and the pipeline ends instead of hanging.
    class Stalled(RecordingOutput):
        async def write_audio(self, chunk: AudioChunk) -> None:
            await asyncio.Event().wait()

    started = time.monotonic()
    collected = await run_pipeline([Stalled(io_timeout=0.2)], [TTSAudioRawFrame(pcm(0.2), RATE)], timeout=5)
    assert collected.finish_reason == "error"
    errors = [f.error for f in collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)]
    assert any("write_audio did not finish within 0.2s" in e for e in errors), errors
    assert time.monotonic() - started < 3


def test_output_rejects_nonsense_settings():
    with pytest.raises(ConfigurationError):
        RecordingOutput(chunk_duration=0)
    with pytest.raises(ConfigurationError):
        InputTransport(overflow="block")  # type: ignore[arg-type]


# -------------------------------------------------------------- input base


async def test_input_offer_never_blocks_and_counts_overflow():
    source = InputTransport(max_pending=3)
    for n in range(5):
        source.offer(InputAudioRawFrame(bytes([n, 0]), RATE))
    assert source.dropped == 2 and source.pending == 3
    collected = await run_pipeline([source], [0.05], timeout=5)
    kept = [f.audio[0] for f in collected.of_type(InputAudioRawFrame)]
    assert kept == [2, 3, 4]  # drop_oldest keeps the freshest audio


async def test_input_drop_newest_policy():
    source = InputTransport(max_pending=2, overflow="drop_newest")
    results = [source.offer(InputAudioRawFrame(bytes([n, 0]), RATE)) for n in range(3)]
    assert results == [True, True, False]
    collected = await run_pipeline([source], [0.05], timeout=5)
    assert [f.audio[0] for f in collected.of_type(InputAudioRawFrame)] == [0, 1]


async def test_end_frame_is_bounded_when_markers_never_come_back():
    class Silent(RecordingOutput):
        uses_markers = True

    output = Silent(lead=0.05, end_timeout=0.2)
    collected = await run_pipeline([output], speech("c1", seconds=0.2), timeout=5)
    assert collected.finish_reason == "end"
    assert collected.of_type(EndFrame)


async def test_downstream_sees_the_interruption_before_the_stop_it_caused():
    output = RecordingOutput(lead=0.1)
    tail = FrameRecorder()
    async with PipelineHarness([output, tail]) as h:
        for frame in speech("c1", seconds=2.0):
            await h.send(frame)
        await h.wait_for(BotStartedSpeakingFrame, timeout=3)
        await asyncio.sleep(0.3)
        await h.send(InterruptionFrame())
        await h.wait_for(BotStoppedSpeakingFrame, timeout=3)
    kinds = [type(f).__name__ for f, d in tail.frames if d is FrameDirection.DOWNSTREAM]
    assert kinds.index("InterruptionFrame") < kinds.index("BotStoppedSpeakingFrame")
    # ...and the cut context's final heard text comes after the interruption too.
    assert kinds.index("InterruptionFrame") < len(kinds) - 1 - kinds[::-1].index("HeardTextFrame")


async def test_input_frames_offered_after_the_end_never_follow_it():
    source = InputTransport(max_pending=10)
    async with PipelineHarness([source]) as h:
        source.offer(InputAudioRawFrame(b"\x01\x00", RATE))
        await h.send(EndFrame())
        await h.wait_finished(5)
        assert not source.offer(InputAudioRawFrame(b"\x02\x00", RATE))
    kinds = h.collected.types()
    assert kinds[-1] == "EndFrame" and kinds.count("InputAudioRawFrame") == 1


# ------------------------------------------------------------ a dead input


class DeadSource(InputTransport):
    """A device whose receive loop delivers a little audio, then raises something unexpected."""

    async def open_input(self, start: StartFrame) -> None:
        self.create_task(self._read_device(), "receive", essential=True)

    async def _read_device(self) -> None:
        for _ in range(3):
            self.offer(InputAudioRawFrame(pcm(0.02), RATE))
            await asyncio.sleep(0.02)
        raise RuntimeError("Concurrent call to receive() is not allowed")


class FailingMediaSocket:
    """A media socket (``MediaSocket``) whose ``receive`` breaks after two messages, as a bug would."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False
        self.received = 0

    async def send_str(self, data: str) -> None:
        self.sent.append(data)

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        self.received += 1
        if self.received > 2:
            raise RuntimeError("WebSocket connection is closed.")
        media = {"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "payload": "////"}}
        return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, json.dumps(media), None)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


async def test_a_receive_loop_that_raises_ends_its_call_at_once():
    # Nothing else would end this pipeline: no idle timeout, no end frame.
    task = PipelineTask(Pipeline([DeadSource(name="source"), FrameRecorder()]))
    async with asyncio.timeout(10):
        await task.run()
    assert task.finish_reason == "error"
    assert task.error is not None and task.error.fatal and "Concurrent call" in task.error.error


async def test_a_twilio_receive_loop_that_raises_ends_its_call_at_once():
    serializer = TwilioSerializer()
    start = {
        "accountSid": "ACx",
        "streamSid": "MZ1",
        "callSid": "CA1",
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    serializer.deserialize(json.dumps({"event": "start", "streamSid": "MZ1", "start": start}))
    socket = FailingMediaSocket()
    transport = TwilioTransport(socket, serializer, TwilioTransportParams(receive_timeout=60.0))
    task = PipelineTask(Pipeline([transport.input(), FrameRecorder(), transport.output()]), audio_in_sample_rate=RATE)
    async with asyncio.timeout(10):
        await task.run()
    assert task.finish_reason == "error"
    assert task.error is not None and task.error.fatal and "WebSocket connection is closed" in task.error.error
    assert socket.received == 3  # two messages, then the failure: nothing waited for the receive timeout
