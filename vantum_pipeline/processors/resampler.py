"""ResamplerProcessor: bring every audio frame to one sample rate.

Sits where the rates of two neighbours differ: after an 8 kHz mu-law phone
input that feeds a 16 kHz STT, or after a 22.05 kHz TTS that feeds a 16 kHz
output. Every ``AudioRawFrame`` leaves as 16-bit PCM at ``sample_rate``
(mu-law is decoded first), of the same class and with the same other fields;
every other frame passes untouched.

Audio is a continuous signal, so each stream keeps its filter state across
frames (see ``vantum_pipeline.audio.resample``). There is one stream per
direction and per kind (the user's input audio, the bot's output audio), so
that bot audio passing the same processor never disturbs the user's. A
stream starts afresh when its input rate changes. Bot audio is per turn:
its stream is flushed on ``TTSStoppedFrame`` (the last few milliseconds go
out before it) and dropped on an interruption; at ``EndFrame`` every stream
is flushed.
"""

from __future__ import annotations

import dataclasses

from vantum_pipeline.audio.mulaw import as_pcm16
from vantum_pipeline.audio.resample import StreamResampler, design_filter
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    PCM16,
    AudioRawFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["ResamplerProcessor"]

_StreamKey = tuple[FrameDirection, bool]  # (direction, is the user's input audio)


class _Stream:
    """The resampler of one stream and the last frame it saw (to shape its tail)."""

    __slots__ = ("last", "resampler")

    def __init__(self, resampler: StreamResampler, last: AudioRawFrame) -> None:
        self.resampler = resampler
        self.last = last


class ResamplerProcessor(FrameProcessor):
    """Converts audio frames to mono 16-bit PCM at ``sample_rate``."""

    def __init__(self, sample_rate: int, *, name: str | None = None) -> None:
        super().__init__(name=name)
        design_filter(8000, sample_rate)  # validates the rate early, with a clear message
        self.sample_rate = sample_rate
        self._streams: dict[_StreamKey, _Stream] = {}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, AudioRawFrame):
            converted = self._convert(frame, direction)
            if converted is not None:
                await self.push_frame(converted, direction)
            return
        if isinstance(frame, TTSStoppedFrame):
            await self._flush_stream((direction, False), direction)
        elif isinstance(frame, EndFrame):
            for key in list(self._streams):
                await self._flush_stream(key, key[0])
        elif isinstance(frame, InterruptionFrame):
            # The bot's interrupted audio is gone; its filter tail must not leak into the next turn.
            for key in [key for key in self._streams if not key[1]]:
                del self._streams[key]
        elif isinstance(frame, CancelFrame):
            self._streams.clear()
        await self.push_frame(frame, direction)

    def _convert(self, frame: AudioRawFrame, direction: FrameDirection) -> AudioRawFrame | None:
        if frame.num_channels != 1:
            raise ConfigurationError(f"{self.name}: only mono audio is resampled, got {frame.num_channels} channels")
        pcm = as_pcm16(frame.audio, frame.encoding)
        if frame.sample_rate == self.sample_rate:
            if frame.encoding == PCM16:
                return frame
            return dataclasses.replace(frame, audio=pcm, encoding=PCM16)
        key = (direction, isinstance(frame, InputAudioRawFrame))
        stream = self._streams.get(key)
        if stream is None or stream.resampler.in_rate != frame.sample_rate:
            stream = _Stream(StreamResampler(frame.sample_rate, self.sample_rate), frame)
            self._streams[key] = stream
        stream.last = frame
        out = stream.resampler.resample(pcm)
        if not out:
            return None  # the filter holds it; it comes out with the next frame
        return dataclasses.replace(frame, audio=out, sample_rate=self.sample_rate, encoding=PCM16)

    async def _flush_stream(self, key: _StreamKey, direction: FrameDirection) -> None:
        stream = self._streams.pop(key, None)
        if stream is None:
            return
        tail = stream.resampler.flush()
        if tail:
            frame = dataclasses.replace(stream.last, audio=tail, sample_rate=self.sample_rate, encoding=PCM16)
            await self.push_frame(frame, direction)
