"""Speech scenes for the audio tests and benchmarks: espeak-ng utterances
(tests/data, 16 kHz) placed at known times in seeded noise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from vantum_pipeline.audio.wav import read_wav

DATA = Path(__file__).parent / "data"
RATE = 16000


def utterance(name: str) -> npt.NDArray[np.float64]:
    """A fixture's samples; speech starts at the first one and ends at the last."""
    audio = read_wav(DATA / name)
    assert audio.sample_rate == RATE and audio.num_channels == 1
    return np.frombuffer(audio.pcm, dtype="<i2").astype(np.float64)


@dataclass(frozen=True)
class Scene:
    pcm: bytes  # 16 kHz mono 16-bit
    onsets: tuple[float, ...]  # seconds at which each utterance starts
    offsets: tuple[float, ...]  # and ends

    def chunks(self, ms: int = 20) -> list[bytes]:
        size = RATE * ms // 1000 * 2
        return [self.pcm[i : i + size] for i in range(0, len(self.pcm), size)]


def noise(kind: str, n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Unit-RMS noise: "white", "pink" (1/f) or "speech" (speech-shaped: the
    long-term spectrum of the fixtures with random phase, no syllables)."""
    if kind == "white":
        out = rng.standard_normal(n)
    elif kind == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        k = np.arange(len(spectrum), dtype=np.float64)
        k[0] = 1.0
        out = np.fft.irfft(spectrum / np.sqrt(k), n)
    elif kind == "speech":
        source = np.resize(np.concatenate([utterance("speech_hello.wav"), utterance("speech_yes.wav")]), n)
        magnitude = np.abs(np.fft.rfft(source))
        phase = rng.uniform(0, 2 * np.pi, len(magnitude))
        out = np.fft.irfft(magnitude * np.exp(1j * phase), n)
    else:
        raise ValueError(f"unknown noise {kind!r}")
    return out / np.sqrt(np.mean(out**2))


def speech_power(speech: npt.NDArray[np.float64]) -> float:
    """Mean power over the active 10 ms frames (pauses inside the utterance excluded)."""
    frames = speech[: len(speech) // 160 * 160].reshape(-1, 160)
    energy = np.sqrt(np.mean(frames**2, axis=1))
    return float(np.mean(frames[energy > 0.05 * energy.max()] ** 2))


def conversation(
    *,
    snr_db: float | None = 20.0,
    noise_kind: str = "white",
    seed: int = 0,
    gain: float = 1.0,
    lead: float = 1.0,
    gap: float = 1.5,
    tail: float = 1.0,
) -> Scene:
    """``lead`` s of noise, "Hello, this is Sam...", ``gap`` s, "Yes, I do...", ``tail`` s.

    ``snr_db`` is relative to the speech's active power; None: no noise.
    """
    hello = utterance("speech_hello.wav") * gain
    yes = utterance("speech_yes.wav") * gain
    parts = [np.zeros(int(lead * RATE)), hello, np.zeros(int(gap * RATE)), yes, np.zeros(int(tail * RATE))]
    clean = np.concatenate(parts)
    first = len(parts[0])
    second = first + len(hello) + len(parts[2])
    signal = clean
    if snr_db is not None:
        level = np.sqrt(speech_power(np.concatenate([hello, yes])) / 10 ** (snr_db / 10))
        signal = clean + level * noise(noise_kind, len(clean), np.random.default_rng(seed))
    pcm = np.clip(np.rint(signal), -32768, 32767).astype("<i2").tobytes()
    return Scene(
        pcm=pcm,
        onsets=(first / RATE, second / RATE),
        offsets=((first + len(hello)) / RATE, (second + len(yes)) / RATE),
    )


def noise_only(seconds: float, level_rms: float, kind: str = "white", seed: int = 0) -> bytes:
    samples = level_rms * noise(kind, int(seconds * RATE), np.random.default_rng(seed))
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
