"""Deepgram's results → transcription frames and user turns, without I/O.

``TurnAssembler`` takes Deepgram's ``Results`` and ``UtteranceEnd`` messages
(the SDK's models of them, or ``deepgram_socket.JSONMessage``: the same
fields by attribute) and returns the frames to push: an interim
transcript, a final one, and ``EndOfTurnFrame`` once the turn is over. The
final segments of one turn are joined; the turn ends on the first of
``speech_final``, the final answering our ``Finalize``, or an
``UtteranceEnd`` about the turn's words, and only once. Neither form is
validated (the SDK builds its models without), so every field read is checked here: a bad one is
a ``ProtocolError`` (counted and skipped by the service).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vantum_pipeline.errors import ProtocolError
from vantum_pipeline.frames import EndOfTurnFrame, Frame, InterimTranscriptionFrame, TranscriptionFrame

__all__ = ["TurnAssembler", "number"]

_MAX_RAW = 200


def number(value: Any, what: str) -> float:
    """A numeric field of a Deepgram message, or a ProtocolError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"Deepgram {what} is not a number: {value!r}", raw=repr(value))
    return float(value)


@dataclass(frozen=True, slots=True)
class _Alternative:
    transcript: str
    confidence: float
    words: tuple[tuple[str, float, float], ...]
    language: str | None


def _best_alternative(results: Any) -> _Alternative:
    """The first alternative of a Results message, validated (the SDK does not)."""
    channel = results.channel
    alternatives = getattr(channel, "alternatives", None)
    if not isinstance(alternatives, list):
        raise ProtocolError("Deepgram Results without channel.alternatives", raw=repr(results)[:_MAX_RAW])
    if not alternatives:
        return _Alternative("", 0.0, (), None)
    if any(
        isinstance(alternative, str | bytes | int | float | list) or alternative is None for alternative in alternatives
    ):
        # Only the first is read, but a list the SDK cannot model is a malformed message either way.
        raise ProtocolError("Deepgram Results with an alternative that is not an object", raw=repr(results)[:_MAX_RAW])
    best = alternatives[0]
    transcript = best.transcript
    if not isinstance(transcript, str):
        raise ProtocolError(f"Deepgram transcript is not a string: {transcript!r}", raw=repr(best)[:_MAX_RAW])
    confidence = number(best.confidence, "confidence") if transcript.strip() else 0.0
    words = []
    for word in best.words or ():
        text = word.punctuated_word or word.word
        if not isinstance(text, str):
            raise ProtocolError(f"Deepgram word is not a string: {text!r}", raw=repr(word)[:_MAX_RAW])
        words.append((text, number(word.start, "word start"), number(word.end, "word end")))
    languages = best.languages
    language = languages[0] if isinstance(languages, list) and languages and isinstance(languages[0], str) else None
    return _Alternative(transcript.strip(), confidence, tuple(words), language)


class TurnAssembler:
    """Deepgram results → transcription frames and end-of-turn frames.

    No I/O: feed it the SDK's messages, push what it returns. ``offset`` is
    added to every server time (seconds of call audio before the current
    socket's first byte).
    """

    def __init__(self, *, language: str, min_confidence: float) -> None:
        self.language = language
        self.min_confidence = min_confidence
        self.offset = 0.0
        self._segments: list[tuple[str, float, int]] = []  # text, confidence, weight
        self._last_word_end: float | None = None
        self._finalize_pending = False

    @property
    def turn_open(self) -> bool:
        """Final text was heard that no end of turn has closed yet."""
        return bool(self._segments)

    def finalize_sent(self) -> None:
        """We sent Finalize: its final (``from_finalize``) closes the turn."""
        self._finalize_pending = True

    def reset_connection(self, offset: float) -> None:
        """A new socket: server times restart at ``offset`` seconds of call audio."""
        self.offset = offset
        self._finalize_pending = False

    def on_results(self, results: Any) -> list[Frame]:
        alternative = _best_alternative(results)
        start = self.offset + number(results.start, "start")
        language = alternative.language or self.language
        text = alternative.transcript
        frames: list[Frame] = []
        if not results.is_final:
            if text:
                frames.append(
                    InterimTranscriptionFrame(
                        text, timestamp=start, confidence=alternative.confidence, language=language
                    )
                )
            return frames
        if text:
            words = tuple((w, self.offset + s, self.offset + e) for w, s, e in alternative.words)
            frames.append(
                TranscriptionFrame(
                    text, timestamp=start, confidence=alternative.confidence, words=words, language=language
                )
            )
            self._segments.append((text, alternative.confidence, max(1, len(words))))
            if words:
                self._last_word_end = max(words[-1][2], self._last_word_end or 0.0)
        closes = bool(results.speech_final) or (bool(results.from_finalize) and self._finalize_pending)
        if results.from_finalize:
            self._finalize_pending = False
        if closes and self._segments:
            frames.append(self._end_turn())
        return frames

    def on_utterance_end(self, message: Any) -> EndOfTurnFrame | None:
        """The turn's end if it is still open and this is about its words."""
        last_word_end = self.offset + number(message.last_word_end, "last_word_end")
        if not self._segments:
            return None  # already closed by speech_final or Finalize
        if self._last_word_end is not None and last_word_end < self._last_word_end - 0.01:
            return None  # about words of a turn closed earlier
        return self._end_turn()

    def _end_turn(self) -> EndOfTurnFrame:
        text = " ".join(segment for segment, _, _ in self._segments)
        weight = sum(w for _, _, w in self._segments)
        confidence = sum(c * w for _, c, w in self._segments) / weight
        self._segments.clear()
        return EndOfTurnFrame(text, confidence=confidence, low_confidence=confidence < self.min_confidence)
