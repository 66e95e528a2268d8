"""Pre-recorded phrases a TTS service plays when synthesis fails.

The package ships one short WAV per situation (``greeting``, ``error``,
``goodbye``; 16 kHz mono 16-bit, spoken by espeak-ng, see
``scripts/make_fallback_audio.py``) and their text in
``vantum_pipeline/assets/fallbacks.json``. ``fallback_audio(category,
sample_rate, encoding)`` returns the phrase converted to the pipeline's
output format (resampled, and mu-law encoded for the phone), with word
timings spread over the audio by length so that what the caller heard can
still be tracked. An unknown category gets the ``error`` phrase.
"""

from __future__ import annotations

import functools
import io
import json
import wave
from importlib import resources
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from vantum_pipeline.audio.mulaw import lin2ulaw
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MULAW, PCM16
from vantum_pipeline.services.tts_cache import CachedAudio

__all__ = ["FALLBACK_CATEGORIES", "fallback_audio", "fallback_text"]


@functools.cache
def _manifest() -> dict[str, dict[str, str]]:
    text = resources.files("vantum_pipeline").joinpath("assets", "fallbacks.json").read_text(encoding="utf-8")
    manifest: dict[str, dict[str, str]] = json.loads(text)
    return manifest


FALLBACK_CATEGORIES: tuple[str, ...] = ("greeting", "error", "goodbye")


def _category(category: str | None) -> str:
    return category if category in _manifest() else "error"


def fallback_text(category: str | None) -> str:
    """The words of the fallback phrase played for ``category``."""
    return _manifest()[_category(category)]["text"]


@functools.cache
def _pcm16(category: str) -> tuple[bytes, int]:
    data = resources.files("vantum_pipeline").joinpath("assets", _manifest()[category]["file"]).read_bytes()
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ConfigurationError(f"fallback {category!r} must be mono 16-bit PCM")
        return wav.readframes(wav.getnframes()), wav.getframerate()


@functools.cache
def fallback_audio(category: str | None, sample_rate: int, encoding: str = PCM16) -> CachedAudio:
    """The ``category`` phrase as ``encoding`` (``pcm16`` or ``mulaw``) at ``sample_rate``."""
    if encoding not in (PCM16, MULAW):
        raise ConfigurationError(f"fallback audio encoding must be {PCM16!r} or {MULAW!r}, got {encoding!r}")
    name = _category(category)
    pcm, rate = _pcm16(name)
    if rate != sample_rate:
        g = gcd(rate, sample_rate)
        samples = resample_poly(np.frombuffer(pcm, dtype="<i2").astype(np.float64), sample_rate // g, rate // g)
        pcm = np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
    audio = lin2ulaw(pcm) if encoding == MULAW else pcm
    duration = len(pcm) / 2 / sample_rate
    return CachedAudio(audio, sample_rate, encoding, _spread_words(fallback_text(name), duration))


def _spread_words(text: str, duration: float) -> tuple[tuple[str, float, float], ...]:
    """Word timings proportional to word length (plus one for the gap)."""
    words = text.split()
    weights = [len(w) + 1 for w in words]
    total = sum(weights) or 1
    out: list[tuple[str, float, float]] = []
    t = 0.0
    for word, weight in zip(words, weights, strict=True):
        span = duration * weight / total
        out.append((word, round(t, 3), round(t + span * 0.9, 3)))
        t += span
    return tuple(out)
