"""Sentences out of a streamed LLM reply, as early as they are certain.

A TTS service speaks best (and soonest) sentence by sentence: the first
sentence of a reply should reach it the moment its last character arrives,
not when the reply ends. ``SentenceSplitter`` is the sans-I/O core (text in,
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

Latency: a sentence is emitted by the ``push`` that makes it certain. ``?`` and
``!`` at the very end of the text so far are certain, unless a quote or bracket
is open or closes right after them, or they may be a URL's query; ``.`` there
is not (``$3.`` may become ``$3.50``), so it waits for the next chunk. A
candidate never waits more than one chunk: if the chunk after it brought only
whitespace, or cut a time zone short, the default decision is taken (a
boundary, except before a time zone's prefix).

Short fragments ("Great.", "Got it.") of at most ``merge_words`` words are held
and spoken together with the next sentence, except the first sentence of a
reply (holding it would delay the first audio) and lines ending at a newline.
A ``!`` or ``?`` split from its sentence by a chunk boundary ("Wow!" then
"! That's great") is dropped rather than spoken at the head of the next one.
A run without any boundary is cut at a clause break (``, ; :``) once it
exceeds ``max_chars``, so the buffer is bounded.

Text is never rewritten: the emitted sentences, joined with spaces, hold the
same words in the same order as the input (only whitespace and such a stray
``!`` may go).
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
_ADDRESS: Final = re.compile(r"[/@=]|\w\.\w")  # a URL or e-mail: "?" may be its query
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
        self._glued = False  # the last cut was at the very end of the text then received

    @property
    def pending(self) -> str:
        """Text received but not emitted yet (held fragment included)."""
        return f"{self._held} {self._buf}".strip() if self._held else self._buf.strip()

    def reset(self) -> None:
        """Forget everything: a new reply starts."""
        self._buf = ""
        self._held = ""
        self._emitted = False
        self._line_start = True
        self._glued = False

    def push(self, text: str) -> list[str]:
        """Add a chunk; return the sentences it completed."""
        if not text:
            return []  # an empty delta carries no information and does not count as a chunk
        previous = len(self._buf)
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._find_boundary(previous)
            if cut is None:
                break
            end, resume, newline = cut
            sentence = self._buf[:end].strip()
            if self._glued:
                # "Wow!" was cut at the end of a chunk and the next began "!":
                # that "!" belongs to the sentence already out; drop it.
                sentence = sentence.lstrip(".!?").strip()
            self._glued = resume == len(self._buf) and not newline
            consumed = self._buf[:resume]
            self._buf = self._buf[resume:]
            previous = max(0, previous - resume)
            self._line_start = newline or consumed.endswith("\n")
            out.extend(self._emit(sentence, hold_allowed=not newline))
        if len(self._buf) > self.max_chars:
            out.extend(self._cut_long())
        return out

    def flush(self) -> list[str]:
        """Return what is left (the reply ended) and start a new reply."""
        rest = self._buf.strip()
        if self._glued:
            rest = rest.lstrip(".!?").strip()
        if self._held:
            rest = f"{self._held} {rest}".strip()
        self.reset()
        return [rest] if rest else []

    # ----------------------------------------------------------- internals

    def _emit(self, sentence: str, *, hold_allowed: bool) -> list[str]:
        text = f"{self._held} {sentence}" if self._held else sentence
        self._held = ""
        if self._emitted and hold_allowed and len(text.split()) <= self.merge_words:
            self._held = text
            return []
        self._emitted = True
        return [text]

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
        sentence = self._buf[:cut].strip()
        self._buf = self._buf[cut:]
        self._line_start = False
        return self._emit(sentence, hold_allowed=False) if sentence else []

    def _find_boundary(self, previous: int) -> tuple[int, int, bool] | None:
        """First certain boundary in the buffer: (end of sentence, where the
        rest starts, ended by a newline), or None."""
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
            verdict, newline = self._judge(i, run_end, close_end, forced=close_end <= previous)
            if verdict is _Verdict.UNDECIDED:
                return None  # only possible at the end of the buffer
            if verdict is _Verdict.BOUNDARY and _speakable(buf[:close_end]):
                return close_end, close_end, newline
            i = close_end
        return None

    def _judge(self, start: int, run_end: int, close_end: int, *, forced: bool) -> tuple[_Verdict, bool]:
        buf = self._buf
        n = len(buf)
        run = buf[start:run_end]
        ellipsis = "…" in run or run.startswith("..")
        question = not ellipsis and ("?" in run or "!" in run)
        if close_end == n:
            if (
                question
                and close_end == run_end  # '"Really?" she asked': a closing quote may take a speech tag
                and not _open_quote(buf[:close_end])
                and not _ADDRESS.search(self._token_before(start))
            ):
                return _Verdict.BOUNDARY, False
            return (_Verdict.BOUNDARY if forced else _Verdict.UNDECIDED), False
        if not buf[close_end].isspace():
            return _Verdict.CONTINUE, False
        j = close_end
        while j < n and buf[j] in _INLINE_SPACE:
            j += 1
        if j < n and buf[j] == "\n":
            return _Verdict.BOUNDARY, True
        nxt = buf[j] if j < n else None
        if ellipsis:
            if nxt is None:
                return (_Verdict.BOUNDARY if forced else _Verdict.UNDECIDED), False
            if nxt.isupper() and not _I_WORD.match(buf, j):
                return _Verdict.BOUNDARY, False
            return _Verdict.CONTINUE, False
        if question:
            if nxt is None:
                undecided = close_end > run_end and not forced
                return (_Verdict.UNDECIDED if undecided else _Verdict.BOUNDARY), False
            return (_Verdict.CONTINUE if nxt.islower() else _Verdict.BOUNDARY), False
        kind = self._classify(start)
        if kind in (_Kind.NEVER_END, _Kind.LIST_MARKER):
            return _Verdict.CONTINUE, False
        if nxt is None:
            if kind is _Kind.PLAIN or forced:
                return _Verdict.BOUNDARY, False
            return _Verdict.UNDECIDED, False
        if nxt.islower():
            return _Verdict.CONTINUE, False
        if kind is _Kind.BEFORE_NUMBER and nxt.isdigit():
            return _Verdict.CONTINUE, False
        if kind is _Kind.TIME:
            word = _next_word(buf, j)
            if word in _TIME_ZONES:
                return _Verdict.CONTINUE, False
            if j + len(word) == n and any(zone.startswith(word) for zone in _TIME_ZONES):
                # "3 p.m. East" may become "Eastern": decide when the word is whole.
                return (_Verdict.CONTINUE if forced else _Verdict.UNDECIDED), False
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


def _open_quote(text: str) -> bool:
    """A quotation or bracket opened in ``text`` is still open at its end."""
    return (
        text.count('"') % 2 == 1
        or text.count("“") > text.count("”")
        or text.count("(") > text.count(")")
        or text.count("[") > text.count("]")
    )


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
