"""VADProcessor in a running pipeline: speaking frames, barge-in, pass-through."""

from __future__ import annotations

import asyncio

from tests.audio_scenes import RATE, conversation
from vantum_pipeline import FrameDirection, FrameProcessor, Pipeline, PipelineTask
from vantum_pipeline.audio.mulaw import lin2ulaw
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.audio.vad import VADEvent
from vantum_pipeline.frames import (
    MULAW,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    TextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.processors.vad import VADProcessor


class FakeOutput(FrameProcessor):
    """Stands in for an output transport: TextFrame("bot:start"/"bot:stop") make it
    announce bot speech both ways, as a real one does around playback."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        self.seen.append(frame)
        if isinstance(frame, TextFrame) and frame.text in ("bot:start", "bot:stop"):
            cls = BotStartedSpeakingFrame if frame.text == "bot:start" else BotStoppedSpeakingFrame
            await self.push_frame(cls(), FrameDirection.UPSTREAM)
            await self.push_frame(cls(), FrameDirection.DOWNSTREAM)
            return
        await self.push_frame(frame, direction)


def audio_frames(pcm: bytes, rate: int = RATE, encoding: str = "pcm16") -> list[Frame]:
    size = rate // 50 * (2 if encoding == "pcm16" else 1)
    return [
        InputAudioRawFrame(pcm[i : i + size], sample_rate=rate, encoding=encoding) for i in range(0, len(pcm), size)
    ]


async def run(vad: VADProcessor, frames: list[Frame]) -> tuple[list[Frame], FakeOutput, PipelineTask]:
    output = FakeOutput()
    task = PipelineTask(Pipeline([vad, output]))
    out: list[Frame] = []
    task.add_observer(lambda f, d: out.append(f) if d is FrameDirection.DOWNSTREAM else None)
    # More frames than the task's queue holds: feed while it runs.
    runner = asyncio.create_task(task.run())
    try:
        await asyncio.wait_for(task.queue_frames([*frames, EndFrame()]), timeout=20)
        await asyncio.wait_for(runner, timeout=20)
    finally:
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    return out, output, task


def speaking(frames: list[Frame]) -> list[str]:
    return [
        type(f).__name__
        for f in frames
        if isinstance(f, UserStartedSpeakingFrame | UserStoppedSpeakingFrame | InterruptionFrame)
    ]


async def test_speaking_frames_and_audio_passes_unchanged() -> None:
    scene = conversation(snr_db=20.0, seed=11)
    events: list[VADEvent] = []
    frames = audio_frames(scene.pcm)
    out, _, task = await run(VADProcessor(on_event=events.append), frames)
    assert [f for f in out if isinstance(f, InputAudioRawFrame)] == frames  # same objects, same order
    assert speaking(out) == ["UserStartedSpeakingFrame", "UserStoppedSpeakingFrame"] * 2
    assert all(f.source == "vad" for f in out if isinstance(f, UserStartedSpeakingFrame | UserStoppedSpeakingFrame))
    assert task.state.interruptions == 0
    # Where the frames sit in the stream matches the decision times: 20 ms per audio frame before them.
    starts = [e for e in events if e.speaking]
    started = [f for f in out if isinstance(f, UserStartedSpeakingFrame)]
    for onset, event, frame in zip(scene.onsets, starts, started, strict=True):
        audio_before = sum(isinstance(f, InputAudioRawFrame) for f in out[: out.index(frame)])
        assert abs(audio_before * 0.02 - event.time) <= 0.04
        assert 0.2 <= event.time - onset <= 0.45  # decision latency from speech onset


async def test_user_speech_interrupts_a_speaking_bot_once() -> None:
    scene = conversation(snr_db=20.0, seed=12)
    vad = VADProcessor()
    out, output, task = await run(vad, [TextFrame("bot:start"), *audio_frames(scene.pcm)])
    assert task.state.interruptions == 1  # the second turn: the bot was already cut off
    interruption = next(f for f in output.seen if isinstance(f, InterruptionFrame))
    started = next(f for f in out if isinstance(f, UserStartedSpeakingFrame))
    assert interruption.id < started.id  # the bot is stopped first
    assert speaking(out) == ["UserStartedSpeakingFrame", "UserStoppedSpeakingFrame"] * 2


async def test_no_interruption_once_the_bot_has_stopped() -> None:
    scene = conversation(snr_db=20.0, seed=13)
    frames = [TextFrame("bot:start"), TextFrame("bot:stop"), *audio_frames(scene.pcm)]
    _, _, task = await run(VADProcessor(), frames)
    assert task.state.interruptions == 0


async def test_tts_bracket_counts_as_bot_speaking() -> None:
    scene = conversation(snr_db=20.0, seed=14)
    audio = audio_frames(scene.pcm)
    cut = int(scene.offsets[0] / 0.02) + 20  # between the two utterances
    frames = [TTSStartedFrame(context_id="a"), *audio[:cut], TTSStoppedFrame(context_id="a"), *audio[cut:]]
    _, _, task = await run(VADProcessor(), frames)
    assert task.state.interruptions == 1


async def test_interrupt_bot_can_be_turned_off() -> None:
    scene = conversation(snr_db=20.0, seed=15)
    out, _, task = await run(VADProcessor(interrupt_bot=False), [TextFrame("bot:start"), *audio_frames(scene.pcm)])
    assert task.state.interruptions == 0
    assert speaking(out).count("UserStartedSpeakingFrame") == 2


async def test_phone_mulaw_input() -> None:
    scene = conversation(snr_db=20.0, seed=16)
    down = StreamResampler(RATE, 8000)
    phone = lin2ulaw(down.resample(scene.pcm) + down.flush())
    frames = audio_frames(phone, rate=8000, encoding=MULAW)
    out, _, _ = await run(VADProcessor(), frames)
    assert speaking(out) == ["UserStartedSpeakingFrame", "UserStoppedSpeakingFrame"] * 2
    assert [f for f in out if isinstance(f, InputAudioRawFrame)] == frames


async def test_end_closes_the_speech_bracket() -> None:
    scene = conversation(snr_db=20.0, seed=17)
    cut = int((scene.onsets[0] + 1.0) * RATE) * 2  # a second into the first utterance
    out, _, _ = await run(VADProcessor(), audio_frames(scene.pcm[:cut]))
    assert speaking(out) == ["UserStartedSpeakingFrame", "UserStoppedSpeakingFrame"]
    stopped = next(i for i, f in enumerate(out) if isinstance(f, UserStoppedSpeakingFrame))
    assert isinstance(out[stopped + 1], EndFrame)
