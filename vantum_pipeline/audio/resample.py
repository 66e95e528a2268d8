"""Streaming sample-rate conversion of 16-bit PCM.

A rational polyphase FIR resampler: the ratio ``out/in`` is reduced to
``up/down``; conceptually the input is zero-stuffed by ``up``, low-pass
filtered at the lower Nyquist frequency and decimated by ``down``. Only the
output samples actually kept are computed, each from ``taps_per_phase``
input samples and one of ``up`` sub-filters (the phases) of the prototype.

The filter is a Kaiser-windowed sinc designed with scipy: flat (±0.01 dB) up
to 0.43 x the lower rate (3.44 kHz at 8 kHz: the whole telephone band),
65 dB down from 0.5 x the lower rate, so nothing folds back into the band
when downsampling and no image survives when upsampling. Its delay is about
4 ms when 8 kHz is involved, 2 ms between wideband rates.

Streaming: the resampler keeps the last ``taps_per_phase - 1`` input samples
and the index of the next output sample, so the output does not depend on how
the input is cut into chunks (to float rounding: at most 1 LSB). The filter
delay is trimmed from the start of the output and :meth:`StreamResampler.flush`
emits the tail, so the output of a whole stream is time-aligned with the input
and ``round(n * out / in)`` samples long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy import signal

from vantum_pipeline.audio.mulaw import ULAW_TO_PCM16, ulaw2lin
from vantum_pipeline.errors import ConfigurationError

__all__ = ["SUPPORTED_RATES", "FilterDesign", "StreamResampler", "design_filter"]

#: Rates every pair of which is tested; any positive integer rates work.
SUPPORTED_RATES = (8000, 16000, 22050, 24000, 44100, 48000)

PASSBAND_EDGE = 0.43  # x the lower rate: flat up to here
STOPBAND_EDGE = 0.50  # x the lower rate: attenuated from here on
STOPBAND_ATTENUATION_DB = 65.0
MAX_RATE = 384_000  # beyond any audio device; bounds the prototype's size

_LE_INT16 = np.dtype("<i2")
_INT16_MIN = np.float32(-32768)
_INT16_MAX = np.float32(32767)
_SCRATCH_ELEMENTS = 1 << 20
#: Window elements per BLAS call at most. Past a few hundred thousand, OpenBLAS splits a product over
#: its threads, which then spin on a second core for a while after it: a 1 s buffer resampled
#: 16 -> 8 kHz in one product kept a second thread busy about 5 ms per call, and a process doing it
#: for every utterance (the test callee) used twice its CPU. A 20 ms frame is one call far below this.
_BLAS_ELEMENTS = 1 << 17
#: Input samples of scratch kept between chunks: 100 ms at 48 kHz, any frame a stream sends.
_KEPT_SCRATCH = 4800
#: mu-law byte -> its 16-bit sample, as float32: mu-law goes into the filter in one step.
_ULAW_TO_FLOAT32 = ULAW_TO_PCM16.astype(np.float32)


@dataclass(frozen=True, slots=True)
class FilterDesign:
    """The polyphase filter for one rate pair.

    ``phases[p]`` holds sub-filter ``p`` in reversed order (oldest input first),
    so one output is ``window @ phases[p]`` where ``window`` is the
    ``taps_per_phase`` input samples ending at the current one.
    """

    in_rate: int
    out_rate: int
    up: int
    down: int
    taps_per_phase: int
    phases: npt.NDArray[np.float32]
    #: Filter delay, in output samples (trimmed from the output).
    delay_out: int

    @property
    def group_delay_s(self) -> float:
        """Delay of the filter, in seconds."""
        return self.delay_out / self.out_rate


@lru_cache(maxsize=64)
def design_filter(in_rate: int, out_rate: int) -> FilterDesign:
    """Design (once per rate pair, cached) the polyphase filter for ``in_rate -> out_rate``."""
    for name, rate in (("in_rate", in_rate), ("out_rate", out_rate)):
        if not isinstance(rate, int) or not 0 < rate <= MAX_RATE:
            raise ConfigurationError(f"resampler: {name} must be an integer in 1..{MAX_RATE} Hz, got {rate!r}")
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    proto_rate = in_rate * up
    low = min(in_rate, out_rate)
    nyquist = proto_rate / 2
    width = (STOPBAND_EDGE - PASSBAND_EDGE) * low / nyquist
    num_taps, beta = signal.kaiserord(STOPBAND_ATTENUATION_DB, width)
    # Odd length, and a delay of a whole number of output samples, so that trimming
    # it leaves the output exactly aligned with the input.
    num_taps = 2 * down * -(-(num_taps - 1) // (2 * down)) + 1
    cutoff = (PASSBAND_EDGE + STOPBAND_EDGE) / 2 * low
    proto = signal.firwin(num_taps, cutoff, window=("kaiser", beta), fs=proto_rate) * up
    taps_per_phase = -(-num_taps // up)
    padded = np.zeros(taps_per_phase * up)
    padded[:num_taps] = proto
    # padded[p + k*up] multiplies input sample (base - k): row p, reversed, lines up with a window.
    phases = padded.reshape(taps_per_phase, up).T[:, ::-1]
    delay_out = (num_taps - 1) // 2 // down
    return FilterDesign(
        in_rate=in_rate,
        out_rate=out_rate,
        up=up,
        down=down,
        taps_per_phase=taps_per_phase,
        phases=np.ascontiguousarray(phases, dtype=np.float32),
        delay_out=delay_out,
    )


class StreamResampler:
    """Converts one stream of mono 16-bit PCM from ``in_rate`` to ``out_rate``.

    Not thread-safe; one instance per stream. Equal rates pass audio through
    untouched.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._design = design_filter(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        d = self._design
        #: The phases as (taps, up) columns, for the upsampling product.
        self._phases_t = np.ascontiguousarray(d.phases.T)
        # Input samples per block: about a million window elements (4 MB) of scratch at most.
        self._block = max(d.down, _SCRATCH_ELEMENTS // d.taps_per_phase * d.down // d.up)
        self.reset()

    def __repr__(self) -> str:
        return f"StreamResampler({self.in_rate} -> {self.out_rate})"

    @property
    def design(self) -> FilterDesign:
        return self._design

    def reset(self) -> None:
        """Forget the stream: the next call starts a new one."""
        k = self._design.taps_per_phase
        # buf[: k - 1] holds the last k - 1 input samples (zeros before the stream);
        # each chunk's samples are converted straight into the space after them.
        self._buf = np.zeros(k - 1 + _KEPT_SCRATCH, dtype=np.float32)
        self._inputs = 0  # input samples consumed
        self._next_out = 0  # index of the next output sample, before the delay is trimmed
        self._emitted = 0  # output samples returned, after the delay was trimmed
        self._odd_byte = b""

    def resample(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Convert a chunk; returns the output samples it completes (maybe none).

        A chunk may have an odd number of bytes: the dangling byte waits for the next one.
        """
        if self._passthrough:
            return bytes(pcm)
        data = self._odd_byte + bytes(pcm) if self._odd_byte else pcm
        usable = len(data) - len(data) % 2
        self._odd_byte = bytes(data[usable:])
        if usable == 0:
            return b""
        return self._convert(np.frombuffer(data, dtype=_LE_INT16, count=usable // 2), None)

    def resample_mulaw(self, data: bytes | bytearray | memoryview) -> bytes:
        """Convert a chunk of mu-law (one byte per sample) to 16-bit PCM at ``out_rate``.

        The same stream as :meth:`resample` of the decoded samples, without the
        intermediate 16-bit buffer: phone audio on its way to a wideband service.
        """
        if self._passthrough:
            return ulaw2lin(data)
        if not data:
            return b""
        return self._convert(np.frombuffer(data, dtype=np.uint8), _ULAW_TO_FLOAT32)

    def flush(self) -> bytes:
        """End the stream: return the remaining output and reset.

        The stream's total output is then ``round(n * out_rate / in_rate)``
        samples for ``n`` input samples.
        """
        if self._passthrough:
            self.reset()
            return b""
        d = self._design
        total = round(self._inputs * d.up / d.down)
        missing = total - self._emitted
        out = np.zeros(0, dtype=np.float32)
        if missing > 0:
            # Zeros after the end push the filter's tail out.
            inputs_needed = -(-(total + d.delay_out) * d.down // d.up)
            zeros = inputs_needed - self._inputs
            self._slot(zeros)[:] = 0
            out = self._run(zeros)[:missing]
        self.reset()
        return self._to_pcm(out)

    def _convert(
        self, samples: npt.NDArray[np.int16] | npt.NDArray[np.uint8], table: npt.NDArray[np.float32] | None
    ) -> bytes:
        """Run ``samples`` (16-bit, or mu-law codes decoded through ``table``), block by block."""
        outputs = []
        for i in range(0, len(samples), self._block):
            chunk = samples[i : i + self._block]
            slot = self._slot(len(chunk))
            if table is None:
                slot[:] = chunk
            else:
                table.take(chunk, out=slot)
            outputs.append(self._run(len(chunk)))
        # A long buffer (a whole file) goes in blocks, to bound the scratch memory.
        return self._to_pcm(outputs[0] if len(outputs) == 1 else np.concatenate(outputs))

    def _slot(self, n: int) -> npt.NDArray[np.float32]:
        """The scratch space for the next ``n`` input samples, after the kept history."""
        h = self._design.taps_per_phase - 1
        if len(self._buf) < h + n:
            grown = np.empty(h + n, dtype=np.float32)
            grown[:h] = self._buf[:h]
            self._buf = grown
        return self._buf[h : h + n]

    def _run(self, n: int) -> npt.NDArray[np.float32]:
        """Filter the ``n`` samples just written to :meth:`_slot`; returns the outputs they complete."""
        d = self._design
        k = d.taps_per_phase
        buf = self._buf[: k - 1 + n]
        buf_start = self._inputs - (k - 1)  # absolute input index of buf[0]
        self._inputs += n
        # Output n needs input floor(n*down/up); those up to the last input are ready.
        n0 = self._next_out
        n1 = -(-self._inputs * d.up // d.down)
        self._next_out = n1
        if n1 <= n0:
            y = np.zeros(0, dtype=np.float32)
        else:
            # windows[i] = buf[i : i + k], a view; built directly, as sliding_window_view
            # costs tens of microseconds per call in argument checks.
            step = buf.strides[0]
            if d.down == 1:
                # Every input sample yields `up` outputs, one per phase: a single matrix product.
                first = n0 // d.up - buf_start - (k - 1)
                windows: npt.NDArray[np.float32] = np.ndarray(
                    ((n1 - n0) // d.up, k), np.float32, buf, first * step, (step, step)
                )
                y = _products(windows, self._phases_t).ravel()
            elif d.up == 1:
                # Decimation by `down`: output i is window (first + i * down) against the one
                # phase, so the windows a `down`-sample stride apart make one matrix-vector product.
                first = n0 * d.down - buf_start - (k - 1)
                strided: npt.NDArray[np.float32] = np.ndarray(
                    (n1 - n0, k), np.float32, buf, first * step, (d.down * step, step)
                )
                y = _products(strided, d.phases[0])
            else:
                t = np.arange(n0, n1, dtype=np.int64) * d.down
                rows = t // d.up - buf_start - (k - 1)
                windows = np.ndarray((len(buf) - k + 1, k), np.float32, buf, 0, (step, step))
                y = np.einsum("ij,ij->i", windows[rows], d.phases[t % d.up])
        # Keep the last k - 1 inputs at the front (an overlapping copy: numpy handles it).
        if k > 1:
            self._buf[: k - 1] = buf[n:]
        if len(self._buf) > k - 1 + _KEPT_SCRATCH:
            self._buf = self._buf[: k - 1 + _KEPT_SCRATCH].copy()  # a long buffer's scratch is not kept
        # Trim the filter delay from the start of the stream.
        skip = d.delay_out - n0
        if skip > 0:
            y = y[skip:]
        self._emitted += len(y)
        return y

    @staticmethod
    def _to_pcm(y: npt.NDArray[np.float32]) -> bytes:
        y = np.rint(y, out=y)  # y is the resampler's own array
        # minimum/maximum: np.clip costs three times as much on a 20 ms frame.
        np.minimum(np.maximum(y, _INT16_MIN, out=y), _INT16_MAX, out=y)
        return y.astype(_LE_INT16).tobytes()


def _products(rows: npt.NDArray[np.float32], weights: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``rows @ weights``, in products of at most ``_BLAS_ELEMENTS`` window elements (one BLAS thread)."""
    step = max(1, _BLAS_ELEMENTS // rows.shape[1])
    if len(rows) <= step:
        product: npt.NDArray[np.float32] = np.dot(rows, weights)
        return product
    return np.concatenate([np.dot(rows[i : i + step], weights) for i in range(0, len(rows), step)])
