"""G.711 mu-law codec, bit-exact with the standard library's ``audioop``.

Phone audio (Twilio media streams) is 8 kHz mu-law, one byte per sample.
``audioop`` is gone from Python 3.13, so the codec lives here: two lookup
tables built once at import from the G.711 rules (the same rules, including
``audioop``'s rounding of 16-bit input to 14 bits), applied with numpy.

PCM is 16-bit signed little-endian, as everywhere in the library.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MULAW, PCM16

__all__ = ["PCM16_TO_ULAW", "ULAW_TO_PCM16", "as_pcm16", "lin2ulaw", "ulaw2lin"]

_LE_INT16 = np.dtype("<i2")
_LE_UINT16 = np.dtype("<u2")
_BIAS = 0x84
_CLIP = 8159  # largest 14-bit magnitude mu-law can represent
# Upper bound (inclusive) of each of the 8 segments, in biased 14-bit magnitude.
_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _build_decode_table() -> npt.NDArray[np.int16]:
    code = ~np.arange(256, dtype=np.int32) & 0xFF  # mu-law bytes are stored inverted
    mantissa = code & 0x0F
    exponent = (code & 0x70) >> 4
    magnitude = ((mantissa << 3) + _BIAS) << exponent
    linear = np.where(code & 0x80, _BIAS - magnitude, magnitude - _BIAS)
    return linear.astype(_LE_INT16)


def _build_encode_table() -> npt.NDArray[np.uint8]:
    # Indexed by the 16-bit sample reinterpreted as unsigned, so that encoding
    # is a single table lookup on a uint16 view of the PCM buffer.
    pcm = np.arange(65536, dtype=np.int32)
    pcm = np.where(pcm >= 32768, pcm - 65536, pcm)
    pcm14 = pcm >> 2  # arithmetic shift: audioop keeps the top 14 bits
    negative = pcm14 < 0
    magnitude = np.minimum(np.abs(pcm14), _CLIP) + (_BIAS >> 2)
    segment = np.searchsorted(_SEGMENT_ENDS, magnitude, side="left")
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    # A clipped magnitude still lands past the last segment: it takes the largest code.
    code = np.where(segment >= len(_SEGMENT_ENDS), 0x7F, code)
    mask = np.where(negative, 0x7F, 0xFF)
    table: npt.NDArray[np.uint8] = ((code ^ mask) & 0xFF).astype(np.uint8)
    return table


#: mu-law byte -> 16-bit linear sample.
ULAW_TO_PCM16: npt.NDArray[np.int16] = _build_decode_table()
#: 16-bit sample (as unsigned, ``sample & 0xFFFF``) -> mu-law byte.
PCM16_TO_ULAW: npt.NDArray[np.uint8] = _build_encode_table()


def lin2ulaw(pcm: bytes | bytearray | memoryview) -> bytes:
    """Encode 16-bit little-endian PCM as mu-law (one byte per sample).

    Raises ConfigurationError when ``pcm`` has an odd number of bytes (it
    cannot be 16-bit audio: a truncated buffer or the wrong encoding).
    """
    if len(pcm) % 2:
        raise ConfigurationError(f"lin2ulaw: 16-bit PCM must have an even number of bytes, got {len(pcm)}")
    # take() beats fancy indexing on frame-sized arrays.
    return PCM16_TO_ULAW.take(np.frombuffer(pcm, dtype=_LE_UINT16)).tobytes()


def ulaw2lin(data: bytes | bytearray | memoryview) -> bytes:
    """Decode mu-law bytes to 16-bit little-endian PCM (two bytes per sample)."""
    return ULAW_TO_PCM16.take(np.frombuffer(data, dtype=np.uint8)).tobytes()


def as_pcm16(audio: bytes, encoding: str) -> bytes:
    """``audio`` as 16-bit PCM, whichever encoding an audio frame declares.

    A trailing odd byte of PCM is dropped; an unknown encoding raises
    ConfigurationError naming it.
    """
    if encoding == PCM16:
        return audio[: len(audio) - len(audio) % 2]
    if encoding == MULAW:
        return ulaw2lin(audio)
    raise ConfigurationError(f"unknown audio encoding {encoding!r} (expected {PCM16!r} or {MULAW!r})")
