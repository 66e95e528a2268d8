"""mu-law codec: bit-exact with audioop on every input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.errors import ConfigurationError, VantumError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python >= 3.13
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")

ALL_PCM16 = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


@needs_audioop
def test_encode_matches_audioop_for_every_16_bit_sample() -> None:
    assert lin2ulaw(ALL_PCM16) == audioop.lin2ulaw(ALL_PCM16, 2)


@needs_audioop
def test_decode_matches_audioop_for_every_code() -> None:
    assert ulaw2lin(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


@needs_audioop
def test_random_buffer_matches_audioop() -> None:
    rng = np.random.default_rng(7)
    pcm = rng.integers(-32768, 32768, size=160 * 50, dtype=np.int16).astype("<i2").tobytes()
    assert lin2ulaw(pcm) == audioop.lin2ulaw(pcm, 2)


def test_known_values() -> None:
    # G.711: silence encodes to 0xFF, full-scale positive to 0x80, negative to 0x00.
    assert lin2ulaw(np.array([0, 32767, -32768], dtype="<i2").tobytes()) == b"\xff\x80\x00"
    assert np.frombuffer(ulaw2lin(b"\xff\x7f\x80\x00"), dtype="<i2").tolist() == [0, 0, 32124, -32124]


def test_decode_then_encode_is_identity_on_codes() -> None:
    # Every code but 0x7F (negative zero, which decodes to 0 and re-encodes as 0xFF).
    round_trip = lin2ulaw(ulaw2lin(ALL_CODES))
    assert [i for i in range(256) if round_trip[i] != i] == [0x7F]


def test_quantization_error_is_bounded_relative_to_the_amplitude() -> None:
    pcm = np.frombuffer(ALL_PCM16, dtype="<i2").astype(np.int32)
    back = np.frombuffer(ulaw2lin(lin2ulaw(ALL_PCM16)), dtype="<i2").astype(np.int32)
    err = np.abs(back - pcm)
    inside = np.abs(pcm) <= 32124  # the largest magnitude mu-law represents; beyond it the codec clips
    # Logarithmic steps: 16 per segment, each segment twice the last, so the
    # error stays within about 1/32 of the amplitude plus the finest step.
    assert np.all(err[inside] <= np.abs(pcm[inside]) / 32 + 8)
    assert err[np.abs(pcm) < 100].max() <= 8


def test_empty_input() -> None:
    assert lin2ulaw(b"") == b""
    assert ulaw2lin(b"") == b""


def test_accepts_bytearray_and_memoryview() -> None:
    pcm = np.array([1000, -1000], dtype="<i2").tobytes()
    assert lin2ulaw(bytearray(pcm)) == lin2ulaw(memoryview(pcm)) == lin2ulaw(pcm)


def test_odd_length_pcm_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="even number of bytes, got 3"):
        lin2ulaw(b"\x00\x01\x02")
    assert issubclass(ConfigurationError, VantumError)
    assert issubclass(ConfigurationError, ValueError)
