"""WAV file transport: play a file as the caller, record the call to a file.

``WavInputTransport`` is the head of a pipeline: it plays a WAV file as
``InputAudioRawFrame``s of ``frame_ms`` (20 ms), paced on an absolute clock
(frame ``i`` leaves at ``start + i * frame_ms``, so sleeps never drift), or
as fast as the pipeline takes them (``realtime=False``, for tests). At the
end of the file it sends ``tail_silence`` seconds of silence, then asks for a
graceful end, keeps sending silence, or just stops (``after``).

``WavRecorder`` is a pass-through processor that writes a timestamp-aligned
recording of the call: the bot's audio (``OutputAudioRawFrame`` and
``TTSAudioRawFrame``) laid out as a player would play it (from when it
arrives, or after the audio already queued), silence where nothing was sent,
and, with ``record_input``, the caller's audio on a second channel, so a
whole call can be listened to afterwards. Bot audio still queued when an
interruption arrives is cut, as a player would cut it. The clock is the wall
clock from ``StartFrame``, or (``clock="input"``) the amount of caller audio
that passed, for runs faster than real time, or any callable returning seconds.

The recorder is a plain processor, not an output transport: it neither paces
audio nor sends ``BotStartedSpeakingFrame``; place it just before the output
transport (or at the tail of a file-only pipeline).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import BinaryIO, Literal

import numpy as np
from loguru import logger

from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.audio.wav import WavAudio, WavWriter, read_wav
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    AudioRawFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["WavInputTransport", "WavRecorder"]

AfterFile = Literal["end", "silence", "stop"]
WavSource = str | os.PathLike[str] | BinaryIO | WavAudio


def _mono_pcm16(audio: WavAudio) -> bytes:
    """Downmix interleaved channels to one, by averaging."""
    if audio.num_channels == 1:
        return audio.pcm
    samples = np.frombuffer(audio.pcm, dtype="<i2").reshape(-1, audio.num_channels)
    mono: bytes = np.rint(samples.mean(axis=1)).astype("<i2").tobytes()
    return mono


class WavInputTransport(FrameProcessor):
    """Plays a WAV file (16-bit PCM, any rate, mixed down to mono) as the caller's audio.

    ``sample_rate`` resamples the file (None: the file's own rate). The last
    partial frame is padded with silence. ``done`` is set once the file and
    its tail silence have been sent.
    """

    def __init__(
        self,
        source: WavSource,
        *,
        sample_rate: int | None = None,
        frame_ms: int = 20,
        realtime: bool = True,
        tail_silence: float = 0.0,
        after: AfterFile = "end",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if frame_ms <= 0:
            raise ConfigurationError(f"frame_ms must be > 0, got {frame_ms}")
        if tail_silence < 0:
            raise ConfigurationError(f"tail_silence must be >= 0, got {tail_silence}")
        if after not in ("end", "silence", "stop"):
            raise ConfigurationError(f"after must be 'end', 'silence' or 'stop', got {after!r}")
        self._audio = source if isinstance(source, WavAudio) else read_wav(source)
        self.sample_rate = sample_rate or self._audio.sample_rate
        self.frame_ms = frame_ms
        self.realtime = realtime
        self.tail_silence = tail_silence
        self.after: AfterFile = after
        self.frames_sent = 0
        self.done = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame) and self._pump is None:
            self._pump = self.create_task(self._play(), name="play")

    async def _play(self) -> None:
        pcm = await asyncio.to_thread(self._prepare)  # resampling a long file would stall the loop
        frame_bytes = self.sample_rate * self.frame_ms // 1000 * 2
        if frame_bytes == 0:
            raise ConfigurationError(f"{self.name}: {self.frame_ms} ms at {self.sample_rate} Hz is less than a sample")
        if len(pcm) % frame_bytes:
            pcm += bytes(frame_bytes - len(pcm) % frame_bytes)
        silence = bytes(frame_bytes)
        tail_frames = round(self.tail_silence * 1000 / self.frame_ms)
        frame_secs = self.frame_ms / 1000
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0

        async def send(chunk: bytes) -> None:
            nonlocal index
            if self.realtime:
                delay = start + index * frame_secs - loop.time()
                await asyncio.sleep(max(0.0, delay))
            else:
                await asyncio.sleep(0)  # as fast as possible, but let the rest of the loop run
            await self.push_frame(InputAudioRawFrame(chunk, sample_rate=self.sample_rate))
            index += 1
            self.frames_sent = index

        for offset in range(0, len(pcm), frame_bytes):
            await send(pcm[offset : offset + frame_bytes])
        for _ in range(tail_frames):
            await send(silence)
        self.done.set()
        if self.after == "end":
            await self.push_frame(EndFrame(reason="end of WAV input"), FrameDirection.UPSTREAM)
        elif self.after == "silence":
            while True:  # cancelled when the pipeline stops
                await send(silence)

    def _prepare(self) -> bytes:
        pcm = _mono_pcm16(self._audio)
        if self._audio.sample_rate == self.sample_rate:
            return pcm
        resampler = StreamResampler(self._audio.sample_rate, self.sample_rate)
        return resampler.resample(pcm) + resampler.flush()


class _Track:
    """One channel of the recording: samples from ``base`` (the first not yet written) onwards."""

    def __init__(self) -> None:
        self.base = 0
        self.buffer = bytearray()
        self.resampler: StreamResampler | None = None

    @property
    def end(self) -> int:
        return self.base + len(self.buffer) // 2

    def place(self, position: int, pcm: bytes) -> None:
        """Put ``pcm`` at ``position`` or, if audio is already queued there, right after it."""
        if position > self.end:
            self.buffer += bytes(2 * (position - self.end))
        self.buffer += pcm

    def cut(self, position: int) -> int:
        """Drop the samples from ``position`` on; returns how many were dropped."""
        keep = max(0, position - self.base)
        dropped = max(0, len(self.buffer) // 2 - keep)
        del self.buffer[2 * keep :]
        return dropped

    def take(self, count: int) -> bytes:
        """The next ``count`` samples (silence beyond the buffer), removed from it."""
        chunk = bytes(self.buffer[: 2 * count])
        del self.buffer[: 2 * count]
        self.base += count
        return chunk + bytes(2 * count - len(chunk))


class WavRecorder(FrameProcessor):
    """Records the call to a WAV file; passes every frame on. See the module docstring.

    ``sample_rate`` is the file's rate (audio at other rates is resampled).
    With ``record_input`` the file is stereo: the caller left, the bot right.
    ``max_ahead`` bounds the bot audio held ahead of the clock (seconds); audio
    beyond it is dropped and counted in ``dropped_samples``.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        *,
        sample_rate: int = 16000,
        record_input: bool = False,
        clock: Literal["wall", "input"] | Callable[[], float] = "wall",
        max_ahead: float = 120.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not callable(clock) and clock not in ("wall", "input"):
            raise ConfigurationError(f"clock must be 'wall', 'input' or a callable, got {clock!r}")
        if sample_rate <= 0:
            raise ConfigurationError(f"sample_rate must be > 0, got {sample_rate}")
        self._target = target
        self.sample_rate = sample_rate
        self.record_input = record_input
        self.clock = clock
        self.max_ahead = max_ahead
        self.dropped_samples = 0
        self._writer: WavWriter | None = None
        self._start_time = 0.0
        self._input_samples = 0  # caller audio seen, at the recording rate: the "input" clock
        self._bot = _Track()
        self._user = _Track()

    @property
    def samples_written(self) -> int:
        return self._writer.samples_written if self._writer is not None else 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            self._open()
        elif isinstance(frame, AudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
            self._record(frame)
        elif isinstance(frame, InterruptionFrame):
            # The player stops: queued bot audio beyond this moment is never heard.
            self._bot.cut(max(self._now(), self._bot.base))
            self._bot.resampler = None
        elif isinstance(frame, EndFrame):
            self._close(play_out=True)
        elif isinstance(frame, CancelFrame):
            self._close(play_out=False)
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        self._close(play_out=False)

    def _open(self) -> None:
        if self._writer is None:
            channels = 2 if self.record_input else 1
            self._writer = WavWriter(self._target, self.sample_rate, channels)
            self._start_time = self._seconds()

    def _now(self) -> int:
        """The recording clock, in samples."""
        if self.clock == "input":
            return self._input_samples
        return int((self._seconds() - self._start_time) * self.sample_rate)

    def _seconds(self) -> float:
        if callable(self.clock):
            return self.clock()
        return asyncio.get_running_loop().time()

    def _record(self, frame: AudioRawFrame) -> None:
        if self._writer is None:
            return
        is_input = isinstance(frame, InputAudioRawFrame)
        if not is_input and not isinstance(frame, OutputAudioRawFrame):
            return
        track = self._user if is_input else self._bot
        pcm = self._to_rate(frame, track)
        count = len(pcm) // 2
        if is_input:
            self._input_samples += count
            if self.record_input:
                # The caller's audio is continuous: it ends now (or after what is already there).
                track.place(max(self._now() - count, track.end), pcm)
        else:
            now = self._now()
            room = int(self.max_ahead * self.sample_rate) - max(0, track.end - now)
            if count > room:
                self.dropped_samples += count - max(0, room)
                logger.warning("{}: bot audio more than {:.0f} s ahead, dropped", self.name, self.max_ahead)
                pcm = pcm[: 2 * max(0, room)]
            track.place(now, pcm)
        self._write_until(self._now())

    def _to_rate(self, frame: AudioRawFrame, track: _Track) -> bytes:
        if frame.num_channels != 1:
            raise ConfigurationError(f"{self.name}: only mono audio is recorded, got {frame.num_channels} channels")
        if frame.encoding == MULAW:
            pcm = ulaw2lin(frame.audio)
        elif frame.encoding == PCM16:
            pcm = frame.audio
        else:
            raise ConfigurationError(f"{self.name}: unknown audio encoding {frame.encoding!r}")
        if frame.sample_rate == self.sample_rate:
            return pcm
        if track.resampler is None or track.resampler.in_rate != frame.sample_rate:
            track.resampler = StreamResampler(frame.sample_rate, self.sample_rate)
        return track.resampler.resample(pcm)

    def _write_until(self, position: int) -> None:
        """Write everything before ``position``: it is in the past and can no longer change."""
        assert self._writer is not None
        count = position - self._bot.base
        if count <= 0:
            return
        bot = self._bot.take(count)
        if not self.record_input:
            self._writer.write(bot)
            return
        user = self._user.take(count)
        stereo = np.empty((count, 2), dtype="<i2")
        stereo[:, 0] = np.frombuffer(user, dtype="<i2")
        stereo[:, 1] = np.frombuffer(bot, dtype="<i2")
        self._writer.write(stereo.tobytes())

    def _close(self, *, play_out: bool) -> None:
        if self._writer is None or self._writer.closed:
            return
        end = self._now()
        if play_out:
            end = max(end, self._bot.end, self._user.end)
        self._write_until(end)
        self._writer.close()
