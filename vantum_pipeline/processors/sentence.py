"""Sentences out of a streamed LLM reply, as early as they are certain.

A TTS service speaks best (and soonest) sentence by sentence: the first
sentence of a reply should reach it as soon as it is certain, not when the
reply ends. ``SentenceSplitter`` is the sans-I/O core (text in,
sentences out, no asyncio); ``SentenceAggregator`` is the processor around it.

Where a sentence ends
---------------------
A candidate boundary is a run of terminators (``. ! ? …``) followed by
optional closing quotes and brackets, which stay with their sentence. The
characters after the run decide:

- a non-space character: no boundary (``$3.50``, ``2.5%``, ``version 2.0``,
  ``vantum.ai``, ``sarah@vantum.ai``, ``e.g``, ``a.m``);
- whitespace, then a lowercase letter: no boundary (``"Is it?" she asked``,
  ``approx. ten``);
- whitespace, then anything else: a boundary, except after a title (``Mr.``,
  ``Dr.``, ``St.``), ``vs.``, ``e.g.``, ``i.e.``, a list marker at the start of
  a line (``1.``), an abbreviation followed by a number (``No. 5``,
  ``Jan. 15``, ``ext. 204``), a time before a time zone (``3 p.m. Eastern``) or
  an ellipsis before ``I`` (``Hmm... I see``);
- a newline: always a boundary; a line without terminal punctuation (a list
  item, "Here are the options:") is a sentence of its own.

Latency: a sentence is emitted by the ``push`` that makes it certain, which is
the chunk bringing the first non-blank character after its candidate boundary
(that character, or the word it starts, decides). A terminator at the very end
of the text so far is never certain: ``$3.`` may become ``$3.50``, ``Really?``
may become ``Really?!`` or ``Really?"``, ``pricing?`` a URL's query. So a
sentence waits for one more chunk in the usual LLM stream, where a word comes
with its leading space; a chunk of whitespace alone decides nothing. The wait is
bounded: a time zone's prefix (``3 p.m. East``) waits only until its word is
whole, and a run of whitespace longer than ``max_chars`` ends the sentence.

Short fragments ("Great.", "Got it.") of at most ``merge_words`` words are held
and spoken together with the next sentence, except the first sentence of a
reply (holding it would delay the first audio) and lines ending at a newline.
A run without a boundary within ``max_chars`` characters is cut at a clause
break (``, ; :``), else at its last space, else at ``max_chars``: the buffer is
bounded and so is every sentence the splitter finds on its own.

Text is never rewritten: the input is exactly the emitted sentences with
whitespace between them (a merged fragment keeps its original whitespace), and
the split depends on the text only, never on how it was chunked.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TextFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["SentenceAggregator", "SentenceSplitter"]

_TERMINATORS: Final = ".!?…"
_CLOSERS: Final = "\"'”’)]}»"
_TOKEN_LEADERS: Final = "\"'“‘([{*_$<"
_INLINE_SPACE: Final = " \t\r"

# Titles: always followed by a name, never end a sentence (case-sensitive).
_TITLES: Final = frozenset("Mr Mrs Ms Mx Dr Prof St Mt Ft Sgt Capt Lt Col Gen Gov Sen Rep Rev Hon Messrs".split())
# Never end a sentence, whatever the case.
_NEVER_END: Final = frozenset({"vs", "e.g", "i.e", "cf", "viz", "incl", "esp", "w.r.t"})
# Not a boundary when a number follows ("No. 5", "Jan. 15", "ext. 204").
_BEFORE_NUMBER: Final = frozenset(
    "no nos vol pg pp p ext tel fig ch sec approx est op jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# May end a sentence: the case of the next word decides.
_MAY_END: Final = frozenset(
    "etc inc ltd co corp llc jr sr bros dept hr hrs min mins sec secs yr yrs mo mos wk wks ph.d".split()
)
_TIMES: Final = frozenset({"a.m", "p.m"})
_TIME_ZONES: Final = frozenset(
    "ET EST EDT CT CST CDT MT MST MDT PT PST PDT GMT UTC BST CET Eastern Central Mountain Pacific".split()
)
_ACRONYM: Final = re.compile(r"^(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}$")  # U.S, U.K, U.S.A, e.u
_LIST_MARKER: Final = re.compile(r"^(?:\d{1,2}|[A-Za-z])$")
_I_WORD: Final = re.compile(r"I(?:\b|'|’)")
_CLAUSE_BREAK: Final = re.compile(r"[,;:](?=\s)|\s[-–—](?=\s)")


class _Verdict(enum.Enum):
    BOUNDARY = "boundary"
    CONTINUE = "continue"
    UNDECIDED = "undecided"


class _Kind(enum.Enum):
    PLAIN = "plain"
    NEVER_END = "never"
    BEFORE_NUMBER = "before_number"
    MAY_END = "may_end"
    TIME = "time"
    LIST_MARKER = "list_marker"


class SentenceSplitter:
    """Splits streamed text into sentences; see the module docstring.

    ``push(text)`` returns the sentences that became certain with this chunk;
    ``flush()`` returns the rest at the end of a reply and starts a new one;
    ``reset()`` drops everything (an interruption). Sans-I/O: no asyncio.
    """

    def __init__(self, *, merge_words: int = 2, max_chars: int = 300) -> None:
        if max_chars < 20:
            raise ValueError(f"max_chars must be >= 20, got {max_chars}")
        self.merge_words = merge_words
        self.max_chars = max_chars
        self._buf = ""
        self._held = ""
        self._emitted = False  # the reply's first sentence is out
        self._line_start = True  # the buffer starts at the beginning of a line

    @property
    def pending(self) -> str:
        """Text received but not emitted yet (held fragment included)."""
        return (self._held + self._buf).strip()

    def reset(self) -> None:
        """Forget everything: a new reply starts."""
        self._buf = ""
        self._held = ""
        self._emitted = False
        self._line_start = True

    def push(self, text: str) -> list[str]:
        """Add a chunk; return the sentences it completed."""
        if not text:
            return []
        self._buf += text
        return self._split(final=False)

    def flush(self) -> list[str]:
        """Return what is left (the reply ended) and start a new reply."""
        out = self._split(final=True)
        rest = (self._held + self._buf).strip()
        self.reset()
        return [*out, rest] if rest else out

    # ----------------------------------------------------------- internals

    def _split(self, *, final: bool) -> list[str]:
        """Emit every sentence the buffer makes certain (``final``: nothing more will come)."""
        out: list[str] = []
        while True:
            found = self._find_boundary(final=final)
            if isinstance(found, tuple) and found[0] <= self.max_chars:
                end, resume, newline = found
                raw = self._buf[:end]
                self._buf = self._buf[resume:]
                self._line_start = newline or raw.endswith("\n")
                out.extend(self._emit(raw, hold_allowed=not newline))
            elif len(self._buf) > self.max_chars and not (isinstance(found, int) and found <= self.max_chars):
                # No boundary within max_chars, and no candidate still waiting there to be decided.
                out.extend(self._cut_long())
            else:
                return out

    def _emit(self, raw: str, *, hold_allowed: bool) -> list[str]:
        """Emit ``raw`` (with a held fragment before it, whitespace as it came), or hold it."""
        text = self._held + raw
        self._held = ""
        sentence = text.strip()
        if not sentence:
            return []
        if self._emitted and hold_allowed and len(sentence.split()) <= self.merge_words:
            self._held = text
            return []
        self._emitted = True
        return [sentence]

    def _cut_long(self) -> list[str]:
        """Bound the buffer: cut a run-on at its last clause break (or space)."""
        window = self._buf[: self.max_chars]
        cut = -1
        for match in _CLAUSE_BREAK.finditer(window):
            if match.start() > self.max_chars // 3:
                cut = match.start() + 1
        if cut < 0:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = self.max_chars
        raw = self._buf[:cut]
        self._buf = self._buf[cut:]
        self._line_start = False
        return self._emit(raw, hold_allowed=False)

    def _find_boundary(self, *, final: bool) -> tuple[int, int, bool] | int | None:
        """The first boundary in the buffer as (end of sentence, where the rest
        starts, ended by a newline); or, if a candidate before it needs more
        text to be decided, that candidate's end; or None."""
        buf = self._buf
        n = len(buf)
        i = 0
        while i < n:
            ch = buf[i]
            if ch == "\n":
                if _speakable(buf[:i]):
                    return i, i + 1, True
                i += 1
                continue
            if ch not in _TERMINATORS:
                i += 1
                continue
            run_end = i
            while run_end < n and buf[run_end] in _TERMINATORS:
                run_end += 1
            close_end = run_end
            while close_end < n and buf[close_end] in _CLOSERS:
                close_end += 1
            verdict, newline = self._judge(i, run_end, close_end, final=final)
            if verdict is _Verdict.UNDECIDED:
                return close_end
            if verdict is _Verdict.BOUNDARY and _speakable(buf[:close_end]):
                return close_end, close_end, newline
            i = close_end
        return None

    def _judge(self, start: int, run_end: int, close_end: int, *, final: bool) -> tuple[_Verdict, bool]:
        """Decide the candidate ``buf[start:close_end]``; UNDECIDED when what
        decides it has not arrived yet (never when ``final``)."""
        buf = self._buf
        n = len(buf)
        if close_end == n:
            # The run, or its closers, may go on: "Really?" + "!", "$3." + "50".
            return (_Verdict.BOUNDARY if final else _Verdict.UNDECIDED), False
        if not buf[close_end].isspace():
            return _Verdict.CONTINUE, False
        j = close_end
        while j < n and buf[j] in _INLINE_SPACE:
            j += 1
        if j - close_end > self.max_chars:
            return _Verdict.BOUNDARY, False  # bounds the wait for the next word
        if j < n and buf[j] == "\n":
            return _Verdict.BOUNDARY, True
        if j == n and not final:
            return _Verdict.UNDECIDED, False
        nxt = buf[j] if j < n else None
        run = buf[start:run_end]
        ellipsis = "…" in run or run.startswith("..")
        if ellipsis:
            if nxt is None:
                return _Verdict.BOUNDARY, False
            if nxt == "I" and j + 1 == n and not final:
                return _Verdict.UNDECIDED, False  # "Hmm... I" may become "Hmm... It's"
            if nxt.isupper() and not _I_WORD.match(buf, j):
                return _Verdict.BOUNDARY, False
            return _Verdict.CONTINUE, False
        if "?" in run or "!" in run:
            return (_Verdict.CONTINUE if nxt is not None and nxt.islower() else _Verdict.BOUNDARY), False
        kind = self._classify(start)
        if kind in (_Kind.NEVER_END, _Kind.LIST_MARKER):
            return _Verdict.CONTINUE, False
        if nxt is None:
            return _Verdict.BOUNDARY, False
        if nxt.islower():
            return _Verdict.CONTINUE, False
        if kind is _Kind.BEFORE_NUMBER and nxt.isdigit():
            return _Verdict.CONTINUE, False
        if kind is _Kind.TIME:
            word = _next_word(buf, j)
            if j + len(word) == n and not final:
                return _Verdict.UNDECIDED, False  # "3 p.m. East" may become "Eastern"
            if word in _TIME_ZONES:
                return _Verdict.CONTINUE, False
        return _Verdict.BOUNDARY, False

    def _token_before(self, index: int) -> str:
        k = index
        while k > 0 and not self._buf[k - 1].isspace():
            k -= 1
        return self._buf[k:index]

    def _classify(self, period: int) -> _Kind:
        """What the word before the period at ``period`` is."""
        raw = self._token_before(period)
        token = raw.lstrip(_TOKEN_LEADERS)
        lower = token.lower()
        before = self._buf[: period - len(raw)]
        if not before.strip() and _LIST_MARKER.match(token):
            if self._line_start or "\n" in before:
                return _Kind.LIST_MARKER
        if token in _TITLES or lower in _NEVER_END:
            return _Kind.NEVER_END
        if lower in _TIMES:
            return _Kind.TIME
        if lower in _BEFORE_NUMBER:
            return _Kind.BEFORE_NUMBER
        if lower in _MAY_END or _ACRONYM.match(token):
            return _Kind.MAY_END
        return _Kind.PLAIN


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _next_word(text: str, start: int) -> str:
    end = start
    while end < len(text) and (text[end].isalnum()):
        end += 1
    return text[start:end]


class SentenceAggregator(FrameProcessor):
    """LLMTextFrames in, one TextFrame per sentence out.

    Passes ``LLMFullResponseStartFrame`` / ``LLMFullResponseEndFrame`` on
    (the rest of the reply is flushed just before the end frame), flushes at
    ``EndFrame`` too, and drops the partial sentence on an interruption or a
    cancel. Other frames, including plain TextFrames, pass through.
    """

    def __init__(self, *, merge_words: int = 2, max_chars: int = 300, name: str | None = None) -> None:
        super().__init__(name=name)
        self._splitter = SentenceSplitter(merge_words=merge_words, max_chars=max_chars)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, LLMTextFrame):
            for sentence in self._splitter.push(frame.text):
                await self.push_frame(TextFrame(sentence))
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            self._splitter.reset()
        elif isinstance(frame, LLMFullResponseEndFrame | EndFrame):
            for sentence in self._splitter.flush():
                await self.push_frame(TextFrame(sentence))
        elif isinstance(frame, InterruptionFrame | CancelFrame):
            self._splitter.reset()
        await self.push_frame(frame, direction)
