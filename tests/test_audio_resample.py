"""Streaming resampler: lengths, chunk invariance, fidelity, anti-aliasing, delay."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.audio.resample import SUPPORTED_RATES, StreamResampler, design_filter
from vantum_pipeline.errors import ConfigurationError

PAIRS = [(a, b) for a, b in itertools.permutations(SUPPORTED_RATES, 2)]
DOWN_PAIRS = [(a, b) for a, b in PAIRS if a > b]


def pcm(samples: npt.ArrayLike) -> bytes:
    return np.clip(np.rint(np.asarray(samples, dtype=np.float64)), -32768, 32767).astype("<i2").tobytes()


def samples(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def tone(freq: float, rate: int, n: int, amp: float = 10000.0) -> npt.NDArray[np.float64]:
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)


def run_stream(in_rate: int, out_rate: int, data: bytes, chunk_bytes: int = 0) -> bytes:
    resampler = StreamResampler(in_rate, out_rate)
    if not chunk_bytes:
        return resampler.resample(data) + resampler.flush()
    parts = [resampler.resample(data[i : i + chunk_bytes]) for i in range(0, len(data), chunk_bytes)]
    return b"".join(parts) + resampler.flush()


def rms_db(x: npt.NDArray[np.float64], reference: float) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x**2)) / reference + 1e-12))


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_chunk_invariance_under_random_chunking(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(in_rate * 7 + out_rate)
    data = pcm(rng.normal(0, 4000, size=in_rate // 2))
    whole = samples(run_stream(in_rate, out_rate, data))
    resampler = StreamResampler(in_rate, out_rate)
    parts, i = [], 0
    while i < len(data):
        n = int(rng.integers(0, 700))  # odd byte counts and empty chunks included
        parts.append(resampler.resample(data[i : i + n]))
        i += n
    parts.append(resampler.flush())
    chunked = samples(b"".join(parts))
    assert len(chunked) == len(whole)
    assert np.abs(chunked - whole).max() <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_total_length(in_rate: int, out_rate: int) -> None:
    for n in (0, 1, 7, 160, 441, 1001):
        out = run_stream(in_rate, out_rate, pcm(np.ones(n)), chunk_bytes=64)
        assert abs(len(out) // 2 - round(n * out_rate / in_rate)) <= 2, n


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_tone_fidelity_and_alignment(in_rate: int, out_rate: int) -> None:
    # The output of a whole stream is aligned with its input: a 1 kHz tone comes
    # out as the same tone, in phase, with the error near the 16-bit floor.
    n = in_rate // 4
    out = samples(run_stream(in_rate, out_rate, pcm(tone(1000, in_rate, n)), chunk_bytes=in_rate // 50 * 2))
    ideal = tone(1000, out_rate, len(out))
    edge = out_rate // 50  # the ends see the zeros before and after the stream
    error = out[edge:-edge] - ideal[edge:-edge]
    snr = 10 * np.log10(np.sum(ideal[edge:-edge] ** 2) / np.sum(error**2))
    assert snr > 60, f"SNR {snr:.1f} dB"


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_passband_is_flat_for_speech(in_rate: int, out_rate: int) -> None:
    top = 3400 if min(in_rate, out_rate) == 8000 else 6800
    for freq in (100, 300, 1000, 2000, top):
        out = samples(run_stream(in_rate, out_rate, pcm(tone(freq, in_rate, in_rate // 5))))
        body = out[len(out) // 4 : -len(out) // 4]
        gain = rms_db(body, 10000 / np.sqrt(2))
        assert abs(gain) < 0.1, f"{freq} Hz: {gain:.3f} dB"


@pytest.mark.parametrize(("in_rate", "out_rate"), DOWN_PAIRS)
def test_downsampling_rejects_aliases(in_rate: int, out_rate: int) -> None:
    # Every tone above the output's Nyquist frequency would fold back into the band.
    for freq in np.linspace(out_rate / 2 + 20, in_rate / 2 - 20, 9):
        out = samples(run_stream(in_rate, out_rate, pcm(tone(freq, in_rate, in_rate // 5))))
        body = out[len(out) // 4 : -len(out) // 4]
        level = rms_db(body, 10000 / np.sqrt(2))
        assert level < -40, f"{freq:.0f} Hz leaks at {level:.1f} dB"


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 48000), (22050, 44100), (8000, 22050)])
def test_upsampling_rejects_images(in_rate: int, out_rate: int) -> None:
    out = samples(run_stream(in_rate, out_rate, pcm(tone(1000, in_rate, in_rate // 2))))
    spectrum = np.abs(np.fft.rfft(out[len(out) // 8 : -len(out) // 8] * np.hanning(len(out) * 3 // 4)))
    freqs = np.fft.rfftfreq(len(out) * 3 // 4, 1 / out_rate)
    images = spectrum[freqs > in_rate / 2].max()
    assert 20 * np.log10(images / spectrum.max()) < -40


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_group_delay_at_most_10_ms(in_rate: int, out_rate: int) -> None:
    design = design_filter(in_rate, out_rate)
    assert design.group_delay_s <= 0.010
    # Streaming latency, as seen by a caller feeding 20 ms chunks: audio fed minus audio returned.
    resampler = StreamResampler(in_rate, out_rate)
    chunk = pcm(np.zeros(in_rate // 50))
    returned = sum(len(resampler.resample(chunk)) // 2 for _ in range(10))
    fed_s = 10 * (in_rate // 50) / in_rate
    assert fed_s - returned / out_rate <= 0.010


def test_impulse_lands_where_it_was() -> None:
    x = np.zeros(16000)
    x[8000] = 20000
    out = samples(run_stream(16000, 8000, pcm(x), chunk_bytes=640))
    assert int(np.argmax(np.abs(out))) == 4000


@pytest.mark.parametrize(("in_rate", "out_rate"), [(48000, 8000), (16000, 8000), (8000, 16000), (24000, 16000)])
def test_large_buffer_is_processed_in_blocks_with_the_same_result(in_rate: int, out_rate: int) -> None:
    # 3 s in one call: several scratch blocks, and products split to stay on one BLAS thread.
    rng = np.random.default_rng(3)
    data = pcm(rng.normal(0, 3000, size=in_rate * 3))
    whole = samples(run_stream(in_rate, out_rate, data))
    chunked = samples(run_stream(in_rate, out_rate, data, chunk_bytes=in_rate // 25))
    assert len(whole) == len(chunked) == out_rate * 3
    assert np.abs(whole - chunked).max() <= 1


def test_equal_rates_pass_through() -> None:
    resampler = StreamResampler(16000, 16000)
    assert resampler.resample(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"
    assert resampler.flush() == b""


def test_reset_starts_a_new_stream() -> None:
    data = pcm(tone(440, 8000, 800))
    resampler = StreamResampler(8000, 16000)
    first = resampler.resample(data) + resampler.flush()
    resampler.resample(pcm(np.full(100, 9000)))
    resampler.reset()
    second = resampler.resample(data) + resampler.flush()
    assert first == second


@pytest.mark.parametrize("rate", [0, -8000, 16000.5, 10_000_000])
def test_invalid_rate_is_a_configuration_error(rate: object) -> None:
    with pytest.raises(ConfigurationError, match="in_rate"):
        StreamResampler(rate, 16000)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    out_rate=st.sampled_from([16000, 24000, 48000, 44100]),
    audio=st.integers(min_value=0, max_value=12_000).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    cuts=st.lists(st.integers(min_value=0, max_value=12_000), max_size=8),
)
def test_mulaw_input_is_the_same_stream_as_its_decoded_samples(out_rate: int, audio: bytes, cuts: list[int]) -> None:
    # The fused mu-law path gives what decoding first gives, to the bit, however the stream
    # is cut; and, to 1 LSB, what the whole decoded buffer gives in one call. Chunks past
    # the kept scratch (4800 samples) grow it and shrink it again.
    bounds = [0, *sorted(c for c in cuts if c <= len(audio)), len(audio)]
    fused, decoded = StreamResampler(8000, out_rate), StreamResampler(8000, out_rate)
    via_mulaw = b"".join(fused.resample_mulaw(audio[a:b]) for a, b in itertools.pairwise(bounds)) + fused.flush()
    via_pcm = b"".join(decoded.resample(ulaw2lin(audio[a:b])) for a, b in itertools.pairwise(bounds))
    assert via_mulaw == via_pcm + decoded.flush()
    whole = run_stream(8000, out_rate, ulaw2lin(audio))
    assert len(via_mulaw) == len(whole) == 2 * round(len(audio) * out_rate / 8000)
    if whole:
        assert np.abs(samples(via_mulaw) - samples(whole)).max() <= 1


@pytest.mark.parametrize("out_rate", [16000, 24000])
def test_frames_after_a_long_chunk_go_on_with_the_stream(out_rate: int) -> None:
    # 20 ms frames, a 1.2 s chunk (the scratch grows past what is kept), frames again.
    audio = pcm(np.random.default_rng(5).normal(0, 3000, size=16000))
    sizes = [320] * 10 + [19200] + [320] * 25 + [7]
    resampler, parts, i = StreamResampler(8000, out_rate), [], 0
    for size in sizes:
        parts.append(resampler.resample(audio[i : i + size]))
        i += size
    chunked = b"".join(parts) + resampler.resample(audio[i:]) + resampler.flush()
    whole = run_stream(8000, out_rate, audio)
    assert len(chunked) == len(whole)
    assert np.abs(samples(chunked) - samples(whole)).max() <= 1


def test_mulaw_input_at_equal_rates_is_decoded() -> None:
    resampler = StreamResampler(8000, 8000)
    assert resampler.resample_mulaw(b"\x00\xff\x7f") == ulaw2lin(b"\x00\xff\x7f")
    assert resampler.resample_mulaw(b"") == b""
