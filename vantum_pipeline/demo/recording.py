"""The call as heard on the line: a stereo WAV, callee left, bot right.

Both channels are 8 kHz (the phone's rate), placed on the stream's clock:
the callee's speech where it was sent, the bot's audio where the callee's
side played it (so a barge-in shows as the bot's channel going silent).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.audio.wav import write_wav

__all__ = ["LINE_RATE", "stereo_line_recording"]

LINE_RATE = 8000


def _place(track: np.ndarray, at: float, mulaw: bytes) -> np.ndarray:
    samples = np.frombuffer(ulaw2lin(mulaw), dtype="<i2")
    start = max(0, round(at * LINE_RATE))
    end = start + len(samples)
    if end > len(track):
        track = np.concatenate([track, np.zeros(end - len(track), dtype="<i2")])
    track[start:end] = samples
    return track


def stereo_line_recording(
    path: str | Path, callee: Iterable[tuple[float, bytes]], bot: Iterable[tuple[float, bytes]]
) -> float:
    """Write the WAV from (stream time, μ-law) pieces of each side; return its duration in seconds."""
    left = np.zeros(0, dtype="<i2")
    right = np.zeros(0, dtype="<i2")
    for at, mulaw in callee:
        left = _place(left, at, mulaw)
    for at, mulaw in bot:
        right = _place(right, at, mulaw)
    length = max(len(left), len(right))
    stereo = np.zeros((length, 2), dtype="<i2")
    stereo[: len(left), 0] = left
    stereo[: len(right), 1] = right
    write_wav(path, stereo.tobytes(), LINE_RATE, num_channels=2)
    return length / LINE_RATE
