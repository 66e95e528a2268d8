"""WAV file transport: play a file as the caller, record the call to a file.

``WavInputTransport`` is the head of a pipeline: it plays a WAV file as
``InputAudioRawFrame``s of ``frame_ms`` (20 ms), paced on an absolute clock
(frame ``i`` leaves at ``start + i * frame_ms``, so sleeps never drift), or
as fast as the pipeline takes them (``realtime=False``, for tests). At the
end of the file it sends ``tail_silence`` seconds of silence, then asks for a
graceful end, keeps sending silence, or just stops (``after``).

``WavOutputTransport`` is an output transport (``transports.base``) whose
device is a WAV file: the base paces the bot's audio in real time, sends the
bot speaking frames and the heard text, and the file receives each chunk
where it would have been heard, silence in between, the queued audio cut at
an interruption. With ``record_input`` the caller's audio passing by is the
left channel, so a whole call can be listened to afterwards.

``WavRecorder`` writes the same recording from a pass-through processor, for
runs that are not real time: bot audio (``OutputAudioRawFrame``, including
``TTSAudioRawFrame``) is laid out as a player would play it (from when it
arrives, or after the audio already queued), and its clock is the wall clock
from ``StartFrame``, the amount of caller audio that passed
(``clock="input"``: a simulated call fed as fast as possible), or any
callable returning seconds. Place it just before the output transport, or at
the tail of a file-only pipeline; it neither paces nor reports playback.

Both build on ``CallRecording``, the timeline and file writer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, BinaryIO, Literal

import numpy as np
from loguru import logger

from vantum_pipeline.audio.mulaw import as_pcm16
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.audio.wav import WavAudio, WavWriter, read_wav
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    PCM16,
    AudioRawFrame,
    CancelFrame,
    EndFrame,
    EndTaskFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.transports.base import AudioChunk, OutputTransport

__all__ = ["CallRecording", "WavInputTransport", "WavOutputTransport", "WavRecorder"]

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
            self._pump = self.create_task(self._play(), name="play", essential=True)

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
            await self.push_frame(EndTaskFrame(reason="end of WAV input"), FrameDirection.UPSTREAM)
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
    """One channel of a recording: samples from ``base`` (the first not yet written) onwards."""

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

    def cut(self, position: int) -> None:
        """Drop the samples from ``position`` on."""
        del self.buffer[2 * max(0, position - self.base) :]

    def take(self, count: int) -> bytes:
        """The next ``count`` samples (silence beyond the buffer), removed from it."""
        chunk = bytes(self.buffer[: 2 * count])
        del self.buffer[: 2 * count]
        self.base += count
        return chunk + bytes(2 * count - len(chunk))


class CallRecording:
    """A call laid out on a timeline of samples, written to a WAV file as time passes.

    No clock of its own: callers give positions in samples.

    The bot track (and, with ``record_input``, the caller's, as the left
    channel of a stereo file) holds audio from the last sample written on;
    ``write_until(position)`` commits everything before ``position`` (the
    past: it can no longer change) and ``cut_bot(position)`` drops bot audio
    from ``position`` on (a player stopped). ``max_ahead`` (seconds) bounds
    the bot audio held beyond the last position written; more is dropped and
    counted in ``dropped_samples``.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        sample_rate: int,
        *,
        record_input: bool = False,
        max_ahead: float = 120.0,
        name: str = "recording",
    ) -> None:
        if sample_rate <= 0:
            raise ConfigurationError(f"{name}: sample_rate must be > 0, got {sample_rate}")
        self.sample_rate = sample_rate
        self.record_input = record_input
        self.max_ahead = max_ahead
        self.name = name
        self.dropped_samples = 0
        self._writer = WavWriter(target, sample_rate, 2 if record_input else 1)
        self._bot = _Track()
        self._user = _Track()

    @property
    def closed(self) -> bool:
        return self._writer.closed

    @property
    def samples_written(self) -> int:
        return self._writer.samples_written

    @property
    def bot_end(self) -> int:
        """Where the bot audio queued so far ends."""
        return self._bot.end

    def add_bot(self, position: int, audio: bytes, sample_rate: int, encoding: str = PCM16) -> int:
        """Place bot audio at ``position`` (or after the bot audio queued); returns its length."""
        pcm = self._convert(audio, sample_rate, encoding, self._bot)
        room = int(self.max_ahead * self.sample_rate) - max(0, self._bot.end - self._bot.base)
        if len(pcm) // 2 > room:
            self.dropped_samples += len(pcm) // 2 - max(0, room)
            logger.warning("{}: bot audio more than {:.0f} s ahead, dropped", self.name, self.max_ahead)
            pcm = pcm[: 2 * max(0, room)]
        self._bot.place(position, pcm)
        return len(pcm) // 2

    def add_user(self, end: int, audio: bytes, sample_rate: int, encoding: str = PCM16) -> int:
        """Place caller audio ending at ``end`` (or after the caller audio queued); returns its length.

        Ignored (but measured) unless ``record_input``.
        """
        pcm = self._convert(audio, sample_rate, encoding, self._user)
        count = len(pcm) // 2
        if self.record_input:
            self._user.place(max(end - count, self._user.end), pcm)
        return count

    def cut_bot(self, position: int) -> None:
        self._bot.cut(max(position, self._bot.base))
        self._bot.resampler = None  # the interrupted audio's filter tail must not leak into the next

    def write_until(self, position: int) -> None:
        """Write everything before ``position`` to the file."""
        count = position - self._bot.base
        if count <= 0 or self._writer.closed:
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

    def close(self, position: int, *, play_out: bool) -> None:
        """Write up to ``position`` (and, with ``play_out``, all the audio queued) and close the file."""
        if self._writer.closed:
            return
        if play_out:
            position = max(position, self._bot.end, self._user.end)
        self.write_until(position)
        self._writer.close()

    def _convert(self, audio: bytes, sample_rate: int, encoding: str, track: _Track) -> bytes:
        pcm = as_pcm16(audio, encoding)
        if sample_rate == self.sample_rate:
            return pcm
        if track.resampler is None or track.resampler.in_rate != sample_rate:
            track.resampler = StreamResampler(sample_rate, self.sample_rate)
        return track.resampler.resample(pcm)


class WavRecorder(FrameProcessor):
    """Records the call to a WAV file; passes every frame on. See the module docstring.

    ``sample_rate`` is the file's rate (audio at other rates is resampled).
    With ``record_input`` the file is stereo: the caller left, the bot right.
    ``max_ahead`` bounds the bot audio held ahead of the clock (seconds).
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
        self.recording: CallRecording | None = None
        self._start_time = 0.0
        self._input_samples = 0  # caller audio seen, at the recording rate: the "input" clock

    @property
    def samples_written(self) -> int:
        return self.recording.samples_written if self.recording is not None else 0

    @property
    def dropped_samples(self) -> int:
        return self.recording.dropped_samples if self.recording is not None else 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        recording = self.recording
        if isinstance(frame, StartFrame) and recording is None:
            self.recording = CallRecording(
                self._target,
                self.sample_rate,
                record_input=self.record_input,
                max_ahead=self.max_ahead,
                name=self.name,
            )
            self._start_time = self._seconds()
        elif recording is not None and direction is FrameDirection.DOWNSTREAM and isinstance(frame, AudioRawFrame):
            self._record(recording, frame)
        elif recording is not None and isinstance(frame, InterruptionFrame):
            # The player stops: queued bot audio beyond this moment is never heard.
            recording.cut_bot(self._now())
        elif recording is not None and isinstance(frame, EndFrame):
            recording.close(self._now(), play_out=True)
        elif recording is not None and isinstance(frame, CancelFrame):
            recording.close(self._now(), play_out=False)
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        if self.recording is not None:
            self.recording.close(self._now(), play_out=False)

    def _now(self) -> int:
        """The recording clock, in samples."""
        if self.clock == "input":
            return self._input_samples
        return int((self._seconds() - self._start_time) * self.sample_rate)

    def _seconds(self) -> float:
        if callable(self.clock):
            return self.clock()
        return asyncio.get_running_loop().time()

    def _record(self, recording: CallRecording, frame: AudioRawFrame) -> None:
        if frame.num_channels != 1:
            raise ConfigurationError(f"{self.name}: only mono audio is recorded, got {frame.num_channels} channels")
        if isinstance(frame, InputAudioRawFrame):
            self._input_samples += recording.add_user(self._now(), frame.audio, frame.sample_rate, frame.encoding)
        elif isinstance(frame, OutputAudioRawFrame):
            recording.add_bot(self._now(), frame.audio, frame.sample_rate, frame.encoding)
        recording.write_until(self._now())


class WavOutputTransport(OutputTransport):
    """An output transport whose device is a WAV file: the bot's audio, paced
    in real time by the output base (bot speaking frames, heard text, cut on
    interruption), lands in the file where it would have been heard, with
    silence in between. ``sample_rate`` is the file's rate (None: the
    pipeline's output rate); ``record_input`` adds the caller's audio passing
    by as the left channel. Other keyword arguments go to ``OutputTransport``.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        *,
        sample_rate: int | None = None,
        record_input: bool = False,
        name: str | None = None,
        **output_options: Any,
    ) -> None:
        super().__init__(name=name, **output_options)
        self._target = target
        self._file_rate = sample_rate
        self.record_input = record_input
        self.recording: CallRecording | None = None
        self._start_time = 0.0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        recording = self.recording
        if (
            recording is not None
            and direction is FrameDirection.DOWNSTREAM
            and isinstance(frame, InputAudioRawFrame)
            and frame.num_channels == 1
        ):
            recording.add_user(self._position(), frame.audio, frame.sample_rate, frame.encoding)
            recording.write_until(self._position())
        await super().process_frame(frame, direction)

    async def open_output(self, start: StartFrame) -> None:
        if self.recording is None:
            rate = self._file_rate or start.audio_out_sample_rate
            self.recording = CallRecording(self._target, rate, record_input=self.record_input, name=self.name)
            self._start_time = self._now()

    async def write_audio(self, chunk: AudioChunk) -> None:
        if self.recording is None:
            return
        if chunk.num_channels != 1:
            raise ConfigurationError(f"{self.name}: only mono audio is recorded, got {chunk.num_channels} channels")
        now = self._position()
        # Written to an idle line it plays now; otherwise right after what is playing.
        self.recording.add_bot(now, chunk.audio, chunk.sample_rate, chunk.encoding)
        self.recording.write_until(now)

    async def clear_output(self) -> None:
        if self.recording is not None:
            self.recording.cut_bot(self._position())

    async def close_output(self) -> None:
        if self.recording is not None:
            self.recording.close(self._position(), play_out=False)

    def _position(self) -> int:
        assert self.recording is not None
        return int((self._now() - self._start_time) * self.recording.sample_rate)
