"""ResamplerProcessor in a running pipeline."""

from __future__ import annotations

import asyncio

import numpy as np

from vantum_pipeline import FrameDirection, Pipeline, PipelineTask
from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.frames import (
    MULAW,
    AudioRawFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processors.resampler import ResamplerProcessor


def tone_pcm(freq: float, rate: int, n: int, amp: float = 8000.0, phase: int = 0) -> bytes:
    t = (np.arange(n) + phase) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


async def run(processor: ResamplerProcessor, frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
    """Runs the frames through; returns (downstream out of the tail, upstream out of the head)."""
    down: list[Frame] = []
    up: list[Frame] = []
    task = PipelineTask(Pipeline([processor]))
    task.add_observer(lambda f, d: (down if d is FrameDirection.DOWNSTREAM else up).append(f))
    await task.queue_frames([*frames, EndFrame()])
    await asyncio.wait_for(task.run(), timeout=10)
    return down, up


def audio_of(frames: list[Frame], kind: type[AudioRawFrame] = AudioRawFrame) -> bytes:
    return b"".join(f.audio for f in frames if isinstance(f, kind))


async def test_mulaw_phone_audio_becomes_16k_pcm_identical_to_one_stream() -> None:
    phone = lin2ulaw(tone_pcm(440, 8000, 8000))
    frames: list[Frame] = [
        InputAudioRawFrame(phone[i : i + 160], sample_rate=8000, encoding=MULAW) for i in range(0, len(phone), 160)
    ]
    down, _ = await run(ResamplerProcessor(16000), frames)
    out = [f for f in down if isinstance(f, AudioRawFrame)]
    assert out and all(type(f) is InputAudioRawFrame for f in out)
    assert all(f.sample_rate == 16000 and f.encoding == "pcm16" for f in out)
    reference = StreamResampler(8000, 16000)
    expected = reference.resample(ulaw2lin(phone)) + reference.flush()
    got = np.frombuffer(audio_of(out), "<i2").astype(int)
    assert len(got) == 16000
    assert np.abs(got - np.frombuffer(expected, "<i2")).max() <= 1


async def test_tts_turn_is_flushed_before_its_stopped_frame() -> None:
    pcm = tone_pcm(300, 24000, 2400)
    frames: list[Frame] = [TTSStartedFrame(context_id="c1")]
    frames += [TTSAudioRawFrame(pcm[i : i + 960], sample_rate=24000, context_id="c1") for i in range(0, len(pcm), 960)]
    frames += [TTSStoppedFrame(context_id="c1"), TextFrame("after")]
    down, _ = await run(ResamplerProcessor(16000), frames)
    kinds = [type(f).__name__ for f in down]
    stopped = kinds.index("TTSStoppedFrame")
    audio = [f for f in down[:stopped] if isinstance(f, TTSAudioRawFrame)]
    assert all(f.context_id == "c1" and f.sample_rate == 16000 for f in audio)
    assert len(audio_of(audio)) // 2 == 1600  # the whole turn, tail included, before the stop
    assert not [f for f in down[stopped:] if isinstance(f, AudioRawFrame)]


async def test_matching_rate_passes_through_and_mulaw_is_decoded() -> None:
    pcm = tone_pcm(440, 16000, 320)
    same = InputAudioRawFrame(pcm, sample_rate=16000)
    coded = InputAudioRawFrame(lin2ulaw(pcm), sample_rate=16000, encoding=MULAW)
    down, _ = await run(ResamplerProcessor(16000), [same, coded])
    out = [f for f in down if isinstance(f, AudioRawFrame)]
    assert out[0] is same
    assert out[1].encoding == "pcm16" and out[1].audio == ulaw2lin(lin2ulaw(pcm))


async def test_rate_change_starts_a_new_stream() -> None:
    a = tone_pcm(440, 8000, 800)
    b = tone_pcm(440, 24000, 2400)
    frames: list[Frame] = [InputAudioRawFrame(a, sample_rate=8000), InputAudioRawFrame(b, sample_rate=24000)]
    down, _ = await run(ResamplerProcessor(16000), frames)
    got = audio_of(down)
    first = StreamResampler(8000, 16000).resample(a)  # the 8 kHz stream's tail is dropped at the change
    second = StreamResampler(24000, 16000)
    expected = first + second.resample(b) + second.flush()
    assert len(got) == len(expected)
    assert np.abs(np.frombuffer(got, "<i2").astype(int) - np.frombuffer(expected, "<i2")).max() <= 1


async def test_user_and_bot_audio_are_separate_streams() -> None:
    user = tone_pcm(500, 8000, 1600)
    bot = tone_pcm(700, 24000, 4800)
    frames: list[Frame] = []
    for i in range(10):
        frames.append(InputAudioRawFrame(user[i * 320 : (i + 1) * 320], sample_rate=8000))
        frames.append(TTSAudioRawFrame(bot[i * 960 : (i + 1) * 960], sample_rate=24000, context_id="c"))
    down, _ = await run(ResamplerProcessor(16000), frames)
    ref = StreamResampler(8000, 16000)
    expected_user = ref.resample(user) + ref.flush()
    got_user = audio_of(down, InputAudioRawFrame)
    assert np.abs(np.frombuffer(got_user, "<i2").astype(int) - np.frombuffer(expected_user, "<i2")).max() <= 1
    assert len(audio_of(down, TTSAudioRawFrame)) // 2 == 3200


async def test_interruption_drops_the_bot_stream_tail() -> None:
    loud = tone_pcm(700, 24000, 960, amp=20000)
    quiet = bytes(960 * 2)
    frames: list[Frame] = [
        TTSAudioRawFrame(loud, sample_rate=24000, context_id="a"),
        InterruptionFrame(),
        TTSAudioRawFrame(quiet, sample_rate=24000, context_id="b"),
    ]
    down, _ = await run(ResamplerProcessor(16000), frames)
    after = [f for f in down if isinstance(f, TTSAudioRawFrame) and f.context_id == "b"]
    # A fresh stream: silence in, silence out (no tail of the loud turn).
    assert after and not any(np.frombuffer(f.audio, "<i2").any() for f in after)


async def test_stereo_is_reported_as_an_error() -> None:
    frame = InputAudioRawFrame(bytes(640), sample_rate=8000, num_channels=2)
    _, up = await run(ResamplerProcessor(16000), [frame])
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert errors and "mono" in errors[0].error
