"""Synthetic audio for tests: what a scripted caller "says" and the silence
between, as 16-bit PCM (or mu-law), generated in code.

Energy-based speech detection (``FakeDeepgram``'s default recognizer, simple
VADs) hears a tone or a noise burst as speech and zeros as silence::

    audio = silence(0.5) + speech(1.2) + silence(1.5)
    for chunk in frames(audio, 16000):
        ...
"""

from __future__ import annotations

import numpy as np

from vantum_pipeline.audio.mulaw import lin2ulaw

__all__ = ["frames", "mulaw", "silence", "speech", "tone"]


def silence(seconds: float, sample_rate: int = 16000) -> bytes:
    """Digital silence."""
    return bytes(2 * round(seconds * sample_rate))


def tone(seconds: float, sample_rate: int = 16000, *, frequency: float = 220.0, level_dbfs: float = -12.0) -> bytes:
    """A sine tone at ``level_dbfs`` (RMS)."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    amplitude = 32768 * 10 ** (level_dbfs / 20) * np.sqrt(2)
    samples: np.ndarray = (np.sin(2 * np.pi * frequency * t) * amplitude).astype("<i2")
    return samples.tobytes()


def speech(seconds: float, sample_rate: int = 16000, *, level_dbfs: float = -18.0, seed: int = 0) -> bytes:
    """Speech-like sound: noise shaped by a syllable-rate (4 Hz) envelope that
    never falls silent, so an energy detector hears one continuous utterance."""
    rng = np.random.default_rng(seed)
    count = round(seconds * sample_rate)
    t = np.arange(count) / sample_rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    noise = rng.standard_normal(count) * envelope
    rms = float(np.sqrt(np.mean(noise**2))) if count else 1.0
    scaled = noise / rms * 32768 * 10 ** (level_dbfs / 20)
    return np.clip(scaled, -32768, 32767).astype("<i2").tobytes()


def mulaw(pcm16: bytes) -> bytes:
    """``pcm16`` encoded as G.711 mu-law (phone audio)."""
    return lin2ulaw(pcm16)


def frames(audio: bytes, sample_rate: int = 16000, *, frame_ms: int = 20, sample_width: int = 2) -> list[bytes]:
    """``audio`` cut into ``frame_ms`` chunks (the last one may be shorter)."""
    size = sample_rate * frame_ms // 1000 * sample_width
    return [audio[i : i + size] for i in range(0, len(audio), size)]
