"""espeak-ng speech for the tests that judge how it is recognized: each line made in a fresh process.

A synthesis depends on the ones before it in the process (state inside
libespeak-ng that no call resets; see ``vantum_pipeline.services.offline.espeak``),
and which test files ran earlier in a test worker changes from run to run. Made
in the test's own process, the same line could come out a little different from
one run to the next, and be heard differently (a confidence moved by 0.07 that
way). Made first thing in a process of its own, a line is the same samples on
every run. Each line is made once per test process and kept.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

from vantum_pipeline.services.offline.espeak import BOT_VOICE, EspeakSynthesizer, EspeakVoice, Synthesis

_CHILD = """
import pickle, sys
from vantum_pipeline.services.offline.espeak import EspeakSynthesizer
text, voice = pickle.load(sys.stdin.buffer)
sys.stdout.buffer.write(pickle.dumps(EspeakSynthesizer.load().synthesize(text, voice)))
"""

_made: dict[tuple[str, EspeakVoice], Synthesis] = {}


class FreshSpeech:
    """``EspeakSynthesizer.synthesize`` and ``sample_rate``, each line made first in a new process."""

    def __init__(self) -> None:
        self.sample_rate = EspeakSynthesizer.load().sample_rate

    def synthesize(self, text: str, voice: EspeakVoice = BOT_VOICE) -> Synthesis:
        key = (text, voice)
        if key not in _made:
            child = subprocess.run(
                [sys.executable, "-c", _CHILD],
                input=pickle.dumps(key),
                capture_output=True,
                timeout=60,
                check=False,
            )
            if child.returncode != 0:
                raise RuntimeError(f"espeak-ng in a fresh process failed on {text!r}: {child.stderr.decode()[-2000:]}")
            _made[key] = pickle.loads(child.stdout)
        return _made[key]
