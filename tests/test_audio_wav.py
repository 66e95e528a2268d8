"""WAV read/write: round trips, streaming writes, clear errors."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest

from vantum_pipeline.audio.wav import WavAudio, WavWriter, decode_wav, encode_wav, read_wav, write_wav
from vantum_pipeline.errors import ConfigurationError


def ramp(n: int, channels: int = 1) -> bytes:
    return (np.arange(n * channels) * 37 % 65536 - 32768).astype("<i2").tobytes()


def test_bytes_round_trip() -> None:
    pcm = ramp(1000)
    audio = decode_wav(encode_wav(pcm, 8000))
    assert audio == WavAudio(pcm=pcm, sample_rate=8000, num_channels=1)
    assert audio.num_samples == 1000 and audio.duration == pytest.approx(0.125)


def test_file_round_trip_stereo(tmp_path: Path) -> None:
    pcm = ramp(441, channels=2)
    write_wav(tmp_path / "a.wav", pcm, 44100, num_channels=2)
    audio = read_wav(tmp_path / "a.wav")
    assert (audio.pcm, audio.sample_rate, audio.num_channels, audio.num_samples) == (pcm, 44100, 2, 441)
    assert read_wav(str(tmp_path / "a.wav")) == audio


def test_written_file_is_a_standard_wav(tmp_path: Path) -> None:
    write_wav(tmp_path / "b.wav", ramp(160), 16000)
    with wave.open(str(tmp_path / "b.wav"), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate(), reader.getnframes()) == (
            1,
            2,
            16000,
            160,
        )


def test_streaming_writer_fixes_the_header_on_close() -> None:
    buffer = io.BytesIO()
    chunks = [ramp(320 - i) for i in range(10)]
    with WavWriter(buffer, 16000) as writer:
        for chunk in chunks:
            writer.write(chunk)
    assert writer.closed and not buffer.closed  # a caller's file object stays open
    audio = decode_wav(buffer.getvalue())
    assert audio.pcm == b"".join(chunks)
    assert audio.num_samples == writer.samples_written == sum(320 - i for i in range(10))


def test_writer_refuses_partial_sample_frames_and_writes_after_close() -> None:
    writer = WavWriter(io.BytesIO(), 16000, num_channels=2)
    with pytest.raises(ConfigurationError, match="4-byte sample frames"):
        writer.write(b"\x00\x00\x00")
    writer.close()
    with pytest.raises(ConfigurationError, match="after close"):
        writer.write(b"\x00\x00\x00\x00")


def test_eight_bit_wav_is_refused_clearly() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * 100)
    with pytest.raises(ConfigurationError, match="16-bit PCM, got 8-bit"):
        decode_wav(buffer.getvalue())


def test_garbage_is_not_a_wav() -> None:
    with pytest.raises(ConfigurationError, match="not a PCM WAV"):
        decode_wav(b"RIFF....not really")


def test_invalid_format() -> None:
    with pytest.raises(ConfigurationError):
        WavWriter(io.BytesIO(), 0)
