"""WAV input transport and call recorder, in running pipelines."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest

from vantum_pipeline import FrameDirection, FrameProcessor
from vantum_pipeline.audio.wav import WavAudio, decode_wav, encode_wav
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.testing.pipeline import PipelineHarness, run_pipeline
from vantum_pipeline.transports.wav import WavInputTransport, WavOutputTransport, WavRecorder


def tone(freq: float, rate: int, seconds: float, amp: float = 8000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


class ArrivalTimes(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame):
            self.times.append(time.monotonic())
        await self.push_frame(frame, direction)


async def test_plays_the_file_in_20_ms_frames_and_ends() -> None:
    pcm = tone(440, 16000, 0.31)  # 4960 samples: 15.5 frames
    source = WavInputTransport(WavAudio(pcm, 16000), realtime=False, tail_silence=0.1)
    out = await run_pipeline([source], [], send_end=False, timeout=5)
    frames = [f for f in out.downstream if isinstance(f, InputAudioRawFrame)]
    assert all(len(f.audio) == 640 and f.sample_rate == 16000 for f in frames)
    assert len(frames) == 16 + 5
    played = b"".join(f.audio for f in frames)
    assert played[: len(pcm)] == pcm and not any(played[len(pcm) :])  # padding and tail are silence
    assert out.finish_reason == "end" and source.done.is_set()


async def test_reads_a_wav_file_resamples_and_mixes_down() -> None:
    left = samples(tone(300, 22050, 0.5))
    stereo = np.stack([left, left], axis=1).astype("<i2").tobytes()
    wav = io.BytesIO(encode_wav(stereo, 22050, num_channels=2))
    source = WavInputTransport(wav, sample_rate=16000, realtime=False)
    out = await run_pipeline([source], [], send_end=False, timeout=5)
    audio = b"".join(f.audio for f in out.of_type(InputAudioRawFrame))
    assert len(audio) // 2 == 8000  # 0.5 s at 16 kHz, a whole number of frames
    body = samples(audio)[1000:7000].astype(float)
    assert abs(np.sqrt(np.mean(body**2)) - 8000 / np.sqrt(2)) < 100  # same level after mixdown


async def test_realtime_pacing_follows_an_absolute_clock() -> None:
    times = ArrivalTimes()
    source = WavInputTransport(WavAudio(tone(440, 8000, 0.3), 8000), realtime=True)
    start = time.monotonic()
    await run_pipeline([source, times], [], send_end=False, timeout=5)
    assert len(times.times) == 15
    # Frame i is never early: it leaves at start + i * 20 ms or later.
    for i, arrival in enumerate(times.times):
        assert arrival - start >= i * 0.02 - 0.005


async def test_after_silence_keeps_the_line_open() -> None:
    source = WavInputTransport(WavAudio(tone(440, 8000, 0.04), 8000), realtime=False, after="silence")
    async with PipelineHarness([source]) as harness:
        await harness.wait_for(InputAudioRawFrame, count=10, timeout=5)
        await harness.send(EndFrame())
        await harness.wait_finished(5)
    frames = harness.collected.of_type(InputAudioRawFrame)
    assert not any(b"".join(f.audio for f in frames[2:10]))


def test_invalid_input_settings() -> None:
    audio = WavAudio(b"", 8000)
    with pytest.raises(ConfigurationError):
        WavInputTransport(audio, frame_ms=0)
    with pytest.raises(ConfigurationError):
        WavInputTransport(audio, after="loop")  # type: ignore[arg-type]


# --------------------------------------------------------------------- recorder


def user_frames(seconds: float, rate: int = 16000) -> list[Frame]:
    pcm = tone(200, rate, seconds, amp=1000)
    size = rate // 50 * 2
    return [InputAudioRawFrame(pcm[i : i + size], sample_rate=rate) for i in range(0, len(pcm), size)]


async def test_recorder_aligns_bot_audio_on_the_input_clock() -> None:
    buffer = io.BytesIO()
    recorder = WavRecorder(buffer, sample_rate=16000, record_input=True, clock="input")
    bot = tone(1000, 24000, 0.3, amp=5000)  # arrives at 24 kHz: resampled
    user = user_frames(1.0)
    frames = [*user[:10], TTSAudioRawFrame(bot, sample_rate=24000, context_id="a"), *user[10:]]
    await run_pipeline([recorder], frames, timeout=5)
    audio = decode_wav(buffer.getvalue())
    assert audio.num_channels == 2 and audio.sample_rate == 16000
    stereo = samples(audio.pcm).reshape(-1, 2)
    assert len(stereo) == 16000  # the input's second; the bot audio ended before it
    caller, bot_track = stereo[:, 0], stereo[:, 1]
    assert caller.tobytes() == b"".join(f.audio for f in user)
    heard = np.nonzero(np.abs(bot_track) > 100)[0]
    # Bot audio from 0.2 s (after 10 input frames) for 0.3 s, silence elsewhere.
    assert abs(heard[0] - 3200) <= 4 and abs(heard[-1] - 8000) <= 80


async def test_recorder_cuts_bot_audio_at_an_interruption() -> None:
    buffer = io.BytesIO()
    recorder = WavRecorder(buffer, sample_rate=16000, clock="input")
    bot = tone(1000, 16000, 1.0, amp=5000)  # a whole second, sent at once, ahead of the clock
    user = user_frames(1.0)
    frames = [*user[:5], TTSAudioRawFrame(bot, 16000, context_id="a"), *user[5:20], InterruptionFrame(), *user[20:]]
    out = await run_pipeline([recorder], frames, timeout=5)
    assert [f for f in out.downstream if isinstance(f, InputAudioRawFrame)] == user  # passed on
    track = samples(decode_wav(buffer.getvalue()).pcm)
    heard = np.nonzero(np.abs(track) > 100)[0]
    assert len(track) == 16000  # mono: the bot only
    assert abs(heard[0] - 1600) <= 2 and abs(heard[-1] - 6400) <= 2  # 0.1 s .. 0.4 s


async def test_recorder_plays_out_queued_audio_at_the_end_on_a_custom_clock() -> None:
    now = [100.0]
    buffer = io.BytesIO()
    recorder = WavRecorder(buffer, sample_rate=8000, clock=lambda: now[0])

    class Tick(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, TextFrame):
                now[0] += float(frame.text)  # advance the test clock
            await self.push_frame(frame, direction)

    bot = tone(500, 8000, 0.25, amp=4000)
    frames = [TextFrame("0.5"), TTSAudioRawFrame(bot, 8000), TextFrame("0.1"), TTSAudioRawFrame(bot, 8000)]
    await run_pipeline([Tick(), recorder], frames, timeout=5)
    track = samples(decode_wav(buffer.getvalue()).pcm)
    # First clip at 0.5 s; the second arrives at 0.6 s while the first still plays: it follows it.
    assert len(track) == 8000
    assert not track[:4000].any() and track[4000:8000].any()
    assert np.array_equal(track[4000:6000], samples(bot)) and np.array_equal(track[6000:], samples(bot))


async def test_recorder_on_the_wall_clock_writes_silence_for_the_time_that_passed() -> None:
    buffer = io.BytesIO()
    recorder = WavRecorder(buffer, sample_rate=8000)
    started = time.monotonic()
    clip = np.full(800, 3000, dtype="<i2").tobytes()
    async with PipelineHarness([recorder], end_timeout=5) as harness:
        await harness.wait_for(StartFrame)  # the recorder's clock has started
        await asyncio.sleep(0.2)
        await harness.send(TTSAudioRawFrame(clip, 8000))
        await harness.send(EndFrame())
        await harness.wait_finished(5)
    elapsed = time.monotonic() - started
    track = samples(decode_wav(buffer.getvalue()).pcm)
    first = int(np.nonzero(track)[0][0])
    assert 0.2 * 8000 <= first <= elapsed * 8000
    assert track[first : first + 800].tobytes() == clip


async def test_recorder_ignores_upstream_and_survives_without_audio() -> None:
    buffer = io.BytesIO()
    await run_pipeline([WavRecorder(buffer, clock="input")], [TextFrame("hi")], timeout=5)
    assert decode_wav(buffer.getvalue()).num_samples == 0


async def test_wav_input_into_recorder_round_trip() -> None:
    pcm = tone(440, 16000, 0.5)
    buffer = io.BytesIO()
    source = WavInputTransport(WavAudio(pcm, 16000), realtime=False)
    recorder = WavRecorder(buffer, sample_rate=16000, record_input=True, clock="input")
    await asyncio.wait_for(run_pipeline([source, recorder], [], send_end=False, timeout=5), timeout=10)
    stereo = samples(decode_wav(buffer.getvalue()).pcm).reshape(-1, 2)
    assert stereo[:, 0].tobytes() == pcm and not stereo[:, 1].any()


# ----------------------------------------------------------- output transport


async def test_output_transport_plays_into_the_file_in_real_time() -> None:
    buffer = io.BytesIO()
    output = WavOutputTransport(buffer, stop_hangover=0.05)
    clip = np.full(1600, 2500, dtype="<i2").tobytes()  # 0.1 s at 16 kHz
    started = time.monotonic()
    frames: list[Frame | float] = [
        TTSStartedFrame(context_id="c"),
        TTSAudioRawFrame(clip, 16000, context_id="c"),
        TTSStoppedFrame(context_id="c"),
        0.3,  # the line goes quiet
        TTSAudioRawFrame(clip, 16000, context_id="d"),
        0.2,
    ]
    out = await run_pipeline([output], frames, timeout=5)
    elapsed = time.monotonic() - started
    track = samples(decode_wav(buffer.getvalue()).pcm)
    loud = np.nonzero(track)[0]
    # Two clips of 0.1 s with silence around them; the second was sent 0.3 s after the first, so it
    # starts at least 0.3 s into the file (the first may itself start late on a loaded machine).
    assert int(np.count_nonzero(track)) == 3200
    first_end = loud[np.nonzero(np.diff(loud) > 1)[0][0]]
    second_start = loud[np.nonzero(np.diff(loud) > 1)[0][0] + 1]
    assert first_end - loud[0] == 1599 and second_start >= int(0.3 * 16000)
    assert len(track) <= (elapsed + 0.1) * 16000
    assert out.types(FrameDirection.UPSTREAM).count("BotStartedSpeakingFrame") == 2
    assert out.types().count("BotStoppedSpeakingFrame") == 2


async def test_output_transport_cuts_the_file_at_an_interruption() -> None:
    buffer = io.BytesIO()
    output = WavOutputTransport(buffer, sample_rate=8000, lead=0.5, record_input=True)
    bot = np.full(16000, 3000, dtype="<i2").tobytes()  # 1 s at 16 kHz, resampled to the file's 8 kHz
    started = time.monotonic()
    async with PipelineHarness([output], end_timeout=5) as harness:
        await harness.send(TTSAudioRawFrame(bot, 16000, context_id="c"))
        # 0.3 s from the first write on (not from the send: a loaded machine may start playing later).
        await harness.wait_for(BotStartedSpeakingFrame, direction=FrameDirection.UPSTREAM)
        await asyncio.sleep(0.3)
        await harness.send(InterruptionFrame())
        await harness.send(InputAudioRawFrame(np.full(160, 700, dtype="<i2").tobytes(), 8000))
        await asyncio.sleep(0.1)
        await harness.send(EndFrame())
        await harness.wait_finished(5)
    elapsed = time.monotonic() - started
    stereo = samples(decode_wav(buffer.getvalue()).pcm).reshape(-1, 2)
    caller, heard = stereo[:, 0], stereo[:, 1]
    played = int(np.count_nonzero(np.abs(heard) > 1000))
    # Cut at the interruption: about 0.3 s of the second played, not the 0.5 s written ahead, nor the rest.
    assert 0.25 * 8000 <= played <= (elapsed - 0.05) * 8000 and played < 0.6 * 8000
    assert int(np.count_nonzero(caller == 700)) == 160
