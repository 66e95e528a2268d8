"""Regenerate the pre-recorded fallback phrases in vantum_pipeline/assets/.

    python scripts/make_fallback_audio.py

Speaks each phrase of ``vantum_pipeline/assets/fallbacks.json`` with the
espeak-ng library bundled by ``espeakng-loader`` (through ctypes) and writes
16 kHz mono 16-bit WAV files next to it. The TTS services play these when
synthesis fails, so they must not need the network.
"""

from __future__ import annotations

import ctypes
import json
import wave
from pathlib import Path

import espeakng_loader
import numpy as np
from scipy.signal import resample_poly

ASSETS = Path(__file__).resolve().parent.parent / "vantum_pipeline" / "assets"
RATE = 16000
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1  # espeakRATE: words per minute
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def speak(lib: ctypes.CDLL, text: str) -> np.ndarray:
    samples: list[np.ndarray] = []

    def collect(wav: ctypes._Pointer, count: int, events: int) -> int:
        if count > 0:
            samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    callback = CALLBACK(collect)
    lib.espeak_SetSynthCallback(callback)
    data = text.encode() + b"\0"
    lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    return np.concatenate(samples) if samples else np.zeros(0, dtype=np.int16)


def main() -> None:
    lib = espeakng_loader.load_library()
    data_parent = str(Path(espeakng_loader.get_data_path()).parent).encode()
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, 0)
    if rate <= 0:
        raise SystemExit("espeak-ng failed to initialize")
    lib.espeak_SetVoiceByName(b"en-us")
    lib.espeak_SetParameter(ESPEAK_RATE, 160, 0)
    manifest = json.loads((ASSETS / "fallbacks.json").read_text())
    for category, entry in manifest.items():
        audio = speak(lib, entry["text"]).astype(np.float64)
        g = np.gcd(RATE, rate)
        audio = resample_poly(audio, RATE // g, rate // g)
        pcm = np.clip(audio, -32768, 32767).astype("<i2").tobytes()
        with wave.open(str(ASSETS / entry["file"]), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(pcm)
        print(f"{category}: {entry['file']} {len(pcm) / 2 / RATE:.2f}s  {entry['text']!r}")


if __name__ == "__main__":
    main()
