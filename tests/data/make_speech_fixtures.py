"""Regenerate the speech fixtures of the audio tests (needs espeakng-loader).

    PYTHONPATH=. python tests/data/make_speech_fixtures.py

Drives libespeak-ng (bundled with the espeakng-loader wheel) through ctypes in
synchronous mode, resamples its 22.05 kHz output to 16 kHz and trims the
leading and trailing silence, so that speech starts at the first sample: tests
place the utterances at known offsets and know where speech begins.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import espeakng_loader
import numpy as np

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.audio.wav import write_wav

HERE = Path(__file__).parent
RATE = 16000

# (file, voice, words per minute, text)
UTTERANCES = [
    ("speech_hello.wav", "en-us", 165, "Hello, this is Sam from the clinic. Do you have a minute?"),
    ("speech_yes.wav", "en-us+f3", 175, "Yes, I do. What is this about?"),
]

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_RATE_PARAMETER = 1

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def synthesize(lib: ctypes.CDLL, voice: str, wpm: int, text: str) -> np.ndarray:
    chunks: list[np.ndarray] = []

    def on_audio(wav: ctypes.POINTER(ctypes.c_short), count: int, _events: int) -> int:  # type: ignore[valid-type]
        if count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    callback = _SynthCallback(on_audio)
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetParameter(_RATE_PARAMETER, wpm, 0)
    data = text.encode()
    status = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
    if status != 0:
        raise RuntimeError(f"espeak_Synth failed with status {status}")
    return np.concatenate(chunks)


def trim(samples: np.ndarray, threshold: int = 200) -> np.ndarray:
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > threshold)[0]
    return samples[loud[0] : loud[-1] + 1]


def main() -> None:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    espeak_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if espeak_rate <= 0:
        raise RuntimeError("espeak_Initialize failed")
    for name, voice, wpm, text in UTTERANCES:
        raw = synthesize(lib, voice, wpm, text)
        resampler = StreamResampler(espeak_rate, RATE)
        pcm = resampler.resample(raw.astype("<i2").tobytes()) + resampler.flush()
        speech = trim(np.frombuffer(pcm, dtype="<i2"))
        write_wav(HERE / name, speech.tobytes(), RATE)
        print(f"{name}: {len(speech) / RATE:.2f} s, peak {np.abs(speech.astype(np.int32)).max()}")


if __name__ == "__main__":
    main()
