"""What a fake speech-to-text server "hears": the recognizer protocol and the
scripted recognizer that ships as its default.

A :class:`Recognizer` turns the audio of one utterance into a
:class:`Recognition` (text, confidence, words with times). The fake Deepgram
server (``vantum_pipeline.testing.deepgram``) decides *when* an utterance
starts and ends (energy-based speech detection, Deepgram's endpointing
rules); the recognizer only decides *what* was said.

    class MyRecognizer:
        def transcribe(self, pcm16: bytes, sample_rate: int, *, final: bool = True) -> Recognition: ...

- ``pcm16`` is the utterance's audio so far (mono 16-bit little-endian PCM at
  ``sample_rate``), from a little before the speech onset;
- ``final`` is False for an interim hypothesis (the utterance goes on; the
  answer may be revised) and True once the utterance is complete: the answer
  is definitive and a stateful recognizer may move on (the scripted one
  advances to its next line);
- word times are seconds from the start of ``pcm16``.

``transcribe`` is synchronous. The server runs it in a worker thread unless
the recognizer has a true ``runs_inline`` attribute (cheap recognizers like
the scripted one), so a slow recognizer never stalls the event loop.

:class:`ScriptedRecognizer` returns the line a test scripted for each
successive utterance, with word times spread over the speech it detects, and
partial lines for interim hypotheses at a nominal speaking rate.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from vantum_pipeline.frames import PCM16
from vantum_pipeline.services.interruptions import level_dbfs

__all__ = [
    "Recognition",
    "Recognizer",
    "ScriptedLine",
    "ScriptedRecognizer",
    "Word",
    "dbfs",
    "speech_span",
]

#: Speech detection threshold shared by the fake server and the scripted recognizer.
DEFAULT_THRESHOLD_DBFS = -40.0

_PUNCTUATION = re.compile(r"[^\w']+")


@dataclass(frozen=True, slots=True)
class Word:
    """One recognized word; times in seconds from the start of the audio given."""

    word: str
    start: float
    end: float
    confidence: float
    #: The word as written (case, punctuation); None: same as ``word``.
    punctuated_word: str | None = None


@dataclass(frozen=True, slots=True)
class Recognition:
    """What a recognizer heard in one utterance (or the part of it so far)."""

    text: str
    confidence: float
    words: tuple[Word, ...] = ()

    EMPTY: ClassVar[Recognition]


Recognition.EMPTY = Recognition("", 0.0, ())


@runtime_checkable
class Recognizer(Protocol):
    """Turns one utterance's audio into text; see the module docstring."""

    def transcribe(self, pcm16: bytes, sample_rate: int, *, final: bool = True) -> Recognition: ...


def dbfs(pcm16: bytes | bytearray | memoryview) -> float:
    """RMS level of 16-bit PCM in dB relative to full scale (-inf for silence): the barge-in judge's level."""
    if len(pcm16) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm16)}")
    return level_dbfs(bytes(pcm16), PCM16)


def speech_span(
    pcm16: bytes | bytearray | memoryview,
    sample_rate: int,
    *,
    threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS,
    frame_seconds: float = 0.02,
) -> tuple[float, float] | None:
    """Start and end (seconds) of the 20 ms frames louder than the threshold;
    None when there are none."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    frame = max(1, int(sample_rate * frame_seconds))
    count = samples.size // frame
    if count == 0:
        return None
    frames = samples[: count * frame].reshape(count, frame)
    rms = np.sqrt(np.mean(np.square(frames), axis=1))
    loud = np.nonzero(rms > 32768 * 10 ** (threshold_dbfs / 20))[0]
    if loud.size == 0:
        return None
    return float(loud[0] * frame / sample_rate), float((loud[-1] + 1) * frame / sample_rate)


@dataclass(frozen=True, slots=True)
class ScriptedLine:
    """One scripted utterance: what the caller "says", and how sure the recognizer is."""

    text: str
    confidence: float = 0.95


def _plain(token: str) -> str:
    """A token as Deepgram's ``word`` field has it: lower case, no punctuation."""
    return _PUNCTUATION.sub("", token).lower() or token.lower()


class ScriptedRecognizer:
    """Recognizes the next scripted line in each utterance.

    ``script`` holds strings or :class:`ScriptedLine`; an utterance heard
    after the script ran out gets ``default`` (empty: an empty transcript, as
    the service returns for noise). Lines can be added while running with
    :meth:`say`. ``recognized`` lists the lines consumed by final results.

    Interim hypotheses reveal the line's words at ``words_per_second`` of
    detected speech; the final spreads all its words over the speech span in
    proportion to their length. Thread-safe.
    """

    runs_inline = True

    def __init__(
        self,
        script: Iterable[str | ScriptedLine] = (),
        *,
        default: str = "",
        confidence: float = 0.95,
        words_per_second: float = 3.0,
        threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS,
    ) -> None:
        if words_per_second <= 0:
            raise ValueError(f"words_per_second must be > 0, got {words_per_second}")
        self._confidence = confidence
        self._lines: deque[ScriptedLine] = deque()
        self._default = ScriptedLine(default, confidence)
        self._words_per_second = words_per_second
        self._threshold = threshold_dbfs
        self._lock = threading.Lock()
        self.recognized: list[str] = []
        for line in script:
            self.say(line)

    def say(self, line: str | ScriptedLine, confidence: float | None = None) -> None:
        """Script the next utterance (after those already scripted)."""
        if isinstance(line, str):
            line = ScriptedLine(line, self._confidence if confidence is None else confidence)
        with self._lock:
            self._lines.append(line)

    @property
    def pending(self) -> list[str]:
        """Lines not yet recognized."""
        with self._lock:
            return [line.text for line in self._lines]

    def transcribe(self, pcm16: bytes, sample_rate: int, *, final: bool = True) -> Recognition:
        with self._lock:
            line = self._lines[0] if self._lines else self._default
            if final:
                if self._lines:
                    self._lines.popleft()
                self.recognized.append(line.text)
        tokens = line.text.split()
        if not tokens:
            return Recognition.EMPTY
        duration = len(pcm16) / 2 / sample_rate
        span = speech_span(pcm16, sample_rate, threshold_dbfs=self._threshold) or (0.0, duration)
        start, end = span
        if final:
            words = _spread(tokens, start, end, line.confidence)
        else:
            step = 1 / self._words_per_second
            heard = min(len(tokens), int((end - start) * self._words_per_second))
            words = tuple(
                Word(_plain(t), start + i * step, start + (i + 0.9) * step, line.confidence, t)
                for i, t in enumerate(tokens[:heard])
            )
        return Recognition(" ".join(w.punctuated_word or w.word for w in words), line.confidence, words)


def _spread(tokens: list[str], start: float, end: float, confidence: float) -> tuple[Word, ...]:
    """Words laid end to end over [start, end], each as long as its letters."""
    weights = [len(t) + 1 for t in tokens]
    scale = max(end - start, 0.0) / sum(weights)
    words = []
    at = start
    for token, weight in zip(tokens, weights, strict=True):
        length = weight * scale
        words.append(Word(_plain(token), round(at, 3), round(at + length * 0.9, 3), confidence, token))
        at += length
    return tuple(words)
