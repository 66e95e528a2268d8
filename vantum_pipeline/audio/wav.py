"""WAV files of 16-bit PCM: read, write, and write as a stream.

Built on the standard library's ``wave``. ``encode_wav`` / ``decode_wav`` work
on bytes (no I/O); ``read_wav`` / ``write_wav`` on paths or binary files;
``WavWriter`` appends audio as it comes (a recording of a call) and fixes the
header when closed.

Only 16-bit PCM is read: the library's audio format. Other sample widths or
compressed WAVs are refused with a ConfigurationError naming what was found.
"""

from __future__ import annotations

import io
import os
import wave
from dataclasses import dataclass
from typing import BinaryIO

from vantum_pipeline.errors import ConfigurationError

__all__ = ["WavAudio", "WavWriter", "decode_wav", "encode_wav", "read_wav", "write_wav"]

WavTarget = str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True, slots=True)
class WavAudio:
    """Interleaved 16-bit little-endian PCM and its format."""

    pcm: bytes
    sample_rate: int
    num_channels: int = 1

    @property
    def num_samples(self) -> int:
        """Samples per channel."""
        return len(self.pcm) // (2 * self.num_channels)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.num_samples / self.sample_rate


def read_wav(source: WavTarget) -> WavAudio:
    """Read a 16-bit PCM WAV file (a path or a binary file object)."""
    name = source if isinstance(source, str | os.PathLike) else getattr(source, "name", "<stream>")
    try:
        with wave.open(_open_arg(source), "rb") as reader:
            width = reader.getsampwidth()
            if width != 2:
                raise ConfigurationError(f"WAV {name}: expected 16-bit PCM, got {8 * width}-bit samples")
            return WavAudio(
                pcm=reader.readframes(reader.getnframes()),
                sample_rate=reader.getframerate(),
                num_channels=reader.getnchannels(),
            )
    except (wave.Error, EOFError) as exc:
        raise ConfigurationError(f"WAV {name}: not a PCM WAV file ({exc})") from exc


def write_wav(target: WavTarget, pcm: bytes, sample_rate: int, num_channels: int = 1) -> None:
    """Write 16-bit PCM as a WAV file (a path or a binary file object)."""
    with WavWriter(target, sample_rate, num_channels) as writer:
        writer.write(pcm)


def decode_wav(data: bytes) -> WavAudio:
    """Parse the bytes of a 16-bit PCM WAV file."""
    return read_wav(io.BytesIO(data))


def encode_wav(pcm: bytes, sample_rate: int, num_channels: int = 1) -> bytes:
    """The bytes of a WAV file holding ``pcm``."""
    buffer = io.BytesIO()
    write_wav(buffer, pcm, sample_rate, num_channels)
    return buffer.getvalue()


class WavWriter:
    """Writes a WAV file incrementally; ``close()`` (or leaving ``with``) finalizes the header.

    A file object passed in stays open (the caller owns it); a path is opened
    and closed here.
    """

    def __init__(self, target: WavTarget, sample_rate: int, num_channels: int = 1) -> None:
        if sample_rate <= 0 or num_channels <= 0:
            raise ConfigurationError(f"WavWriter: invalid format {sample_rate} Hz x {num_channels} channels")
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self._frame_bytes = 2 * num_channels
        self._writer: wave.Wave_write | None = wave.open(_open_arg(target), "wb")  # closed in close()
        self._writer.setnchannels(num_channels)
        self._writer.setsampwidth(2)
        self._writer.setframerate(sample_rate)
        self.samples_written = 0

    def write(self, pcm: bytes) -> None:
        """Append whole frames of interleaved 16-bit PCM."""
        if self._writer is None:
            raise ConfigurationError("WavWriter: write after close")
        if len(pcm) % self._frame_bytes:
            raise ConfigurationError(
                f"WavWriter: {len(pcm)} bytes is not a whole number of {self._frame_bytes}-byte sample frames"
            )
        # writeframesraw leaves the header to close(): no seek per write.
        self._writer.writeframesraw(pcm)
        self.samples_written += len(pcm) // self._frame_bytes

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    @property
    def closed(self) -> bool:
        return self._writer is None

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _open_arg(target: WavTarget) -> str | BinaryIO:
    return os.fspath(target) if isinstance(target, str | os.PathLike) else target
