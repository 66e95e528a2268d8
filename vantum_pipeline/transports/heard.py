"""What the listener heard of each TTS context, sans I/O.

The output transport tells a :class:`HeardTextTracker` where each context's
audio sits on the line timeline (see ``playback.py``) and how far playback
got; the tracker answers with the text heard so far, per context:

- with word timestamps (``TTSWordTimestampsFrame``, seconds from the start of
  the context's audio), a word counts as heard once its end has played: a
  word cut in the middle was not understood;
- without them, by characters: the share of the context's text equal to the
  share of its audio played (a nominal speaking rate while the total is not
  known yet), cut back to a whole word.

The text of a context without timestamps comes from the ``TextFrame``s the
TTS passes on: a text frame belongs to the context open when it arrives, or
to the next one to open.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import pairwise

from vantum_pipeline.transports.playback import Segment

__all__ = ["HeardTextTracker", "HeardUpdate", "SpokenContext"]

#: A word ending this close after the played position counts as heard
#: (timestamps are rounded to tens of milliseconds by most services).
WORD_END_TOLERANCE = 0.02
#: Characters per second of speech, for contexts whose total length is not known yet.
NOMINAL_CHARS_PER_SECOND = 15.0


@dataclass(slots=True)
class HeardUpdate:
    """Text heard of ``context_id`` so far; ``final`` when the context is done."""

    context_id: str
    text: str
    final: bool


@dataclass(slots=True)
class _Placement:
    line: Segment
    offset: float  # position of ``line.start`` within the context's audio


@dataclass(slots=True)
class SpokenContext:
    """One TTS context as far as playback is concerned."""

    context_id: str
    placements: list[_Placement] = field(default_factory=list)
    written: float = 0.0
    words: list[tuple[str, float, float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    accepting_text: bool = True
    complete: bool = False  # all its audio has been written
    last_text: str | None = None
    # The words' ends in order (None: not in order), for as many words as ``_ends_of``,
    # and the last count of heard words with its text: playout asks once or twice per chunk.
    _ends: list[float] | None = field(default=None, repr=False)
    _ends_of: int = field(default=-1, repr=False)
    _heard: tuple[int, str] = field(default=(-1, ""), repr=False)

    def place(self, line: Segment) -> None:
        """Its next ``line.end - line.start`` seconds were written at ``line``."""
        last = self.placements[-1] if self.placements else None
        if last is not None and abs(last.line.end - line.start) < 1e-9:
            last.line = Segment(last.line.start, line.end)
        else:
            self.placements.append(_Placement(line, self.written))
        self.written += line.end - line.start

    def played(self, heard_line: float) -> float:
        """Seconds of this context's audio played when the line is at ``heard_line``."""
        played = 0.0
        for placement in self.placements:
            if heard_line <= placement.line.start:
                break
            played = placement.offset + min(heard_line, placement.line.end) - placement.line.start
        return played

    @property
    def text(self) -> str:
        return " ".join(part.strip() for part in self.texts if part.strip())

    def heard_text(self, played: float) -> str:
        if self.written <= 0:
            return ""
        if self.complete and played >= self.written - 1e-6:
            return self.full_text()
        if self.words:
            return self._heard_words(played + WORD_END_TOLERANCE)
        text = self.text
        if not text or played <= 0:
            return ""
        if self.complete:
            count = round(len(text) * min(1.0, played / self.written))
        else:
            count = int(played * NOMINAL_CHARS_PER_SECOND)
        return _whole_words(text, count)

    def _heard_words(self, line: float) -> str:
        """The words whose end is at or before ``line``, in order."""
        if self._ends_of != len(self.words):
            ends = [end for _word, _start, end in self.words]
            self._ends = ends if all(a <= b for a, b in pairwise(ends)) else None
            self._ends_of = len(self.words)
            self._heard = (-1, "")
        if self._ends is None:  # overlapping words: no prefix to count
            return " ".join(w for w, _start, end in self.words if end <= line)
        count = bisect_right(self._ends, line)
        if count != self._heard[0]:
            self._heard = (count, " ".join(w for w, _start, _end in self.words[:count]))
        return self._heard[1]

    def full_text(self) -> str:
        if self.words:
            return " ".join(w for w, _start, _end in self.words)
        return self.text


def _whole_words(text: str, count: int) -> str:
    if count >= len(text):
        return text
    if count <= 0:
        return ""
    cut = text[:count]
    if not text[count].isspace():
        space = cut.rfind(" ")
        cut = cut[:space] if space >= 0 else ""
    return cut.rstrip()


class HeardTextTracker:
    """Per-context heard text; see the module docstring.

    ``max_contexts`` bounds the contexts tracked at once: opening one more
    finishes the oldest (its last update is returned by the next ``progress``).
    """

    def __init__(self, *, max_contexts: int = 32) -> None:
        self.max_contexts = max_contexts
        self._contexts: OrderedDict[str, SpokenContext] = OrderedDict()
        self._pending_text: list[str] = []
        self._evicted: list[HeardUpdate] = []

    def __contains__(self, context_id: object) -> bool:
        return context_id in self._contexts

    def get(self, context_id: str) -> SpokenContext | None:
        return self._contexts.get(context_id)

    @property
    def active(self) -> int:
        return len(self._contexts)

    def open(self, context_id: str) -> SpokenContext:
        context = self._contexts.get(context_id)
        if context is not None:
            return context
        while len(self._contexts) >= self.max_contexts:
            _, oldest = self._contexts.popitem(last=False)
            self._evicted.append(HeardUpdate(oldest.context_id, oldest.last_text or "", True))
        context = SpokenContext(context_id)
        if self._pending_text:
            context.texts.extend(self._pending_text)
            self._pending_text.clear()
        self._contexts[context_id] = context
        return context

    def add_text(self, text: str) -> None:
        """A TextFrame the TTS passed on: part of the open context's text."""
        for context in reversed(self._contexts.values()):
            if context.accepting_text:
                context.texts.append(text)
                return
        if len(self._pending_text) < 64:
            self._pending_text.append(text)

    def stop_text(self, context_id: str) -> None:
        """The TTS closed ``context_id`` (TTSStoppedFrame arrived)."""
        context = self._contexts.get(context_id)
        if context is not None:
            context.accepting_text = False

    def add_words(self, context_id: str, words: tuple[tuple[str, float, float], ...]) -> None:
        context = self.open(context_id)
        context.words.extend(words)
        context.words.sort(key=lambda w: w[1])
        context._ends_of = -1  # the order may have changed with the same count (never in practice)

    def place(self, context_id: str, line: Segment) -> None:
        self.open(context_id).place(line)

    def complete(self, context_id: str) -> None:
        """All of ``context_id``'s audio has been written."""
        context = self._contexts.get(context_id)
        if context is not None:
            context.complete = True
            context.accepting_text = False

    def progress(self, heard_line: float) -> list[HeardUpdate]:
        """Updates since the last call; finished contexts are forgotten."""
        updates, self._evicted = self._evicted, []
        for context_id, context in list(self._contexts.items()):
            played = context.played(heard_line)
            text = context.heard_text(played)
            final = context.complete and played >= context.written - 1e-6
            if final:
                del self._contexts[context_id]
            if final or (text and text != context.last_text):
                context.last_text = text
                updates.append(HeardUpdate(context_id, text, final))
        return updates

    def cut(self, heard_line: float) -> list[HeardUpdate]:
        """Playback stopped for good (interruption): the final text of every
        context still tracked, heard or not; forgets them all."""
        updates, self._evicted = self._evicted, []
        for context in self._contexts.values():
            text = context.heard_text(context.played(heard_line))
            updates.append(HeardUpdate(context.context_id, text, True))
        self._contexts.clear()
        self._pending_text.clear()
        return updates
