"""Answers to common questions, kept for when the model cannot answer.

The product's rule for a rate-limited (or failing) LLM: "use cached responses
for common questions". ``AnswerCache`` is shared by the calls of one
campaign: each reply completed cleanly is stored under the question it
answered (the callee's last utterance, normalized: lower case, no
punctuation, single spaces), and a call whose model is rate limited or down
answers a question it holds from it. It is never read while the model works.

Privacy: nothing marked personal is stored. A campaign marks what is
personal with ``personal_patterns`` (regular expressions, case-insensitive,
matched against question and answer: an account number, "your order") and
each call with its ``personal_values`` (the prospect's name, company, phone
number: ``AnswerCache.for_call(values)`` gives the call's view of the shared
store); a question or answer that contains any of them is neither stored nor
answered. Bounded: ``max_entries`` (least recently used first out), entries
older than ``ttl`` seconds are forgotten, answers longer than
``max_answer_chars`` are not stored.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vantum_pipeline.errors import ConfigurationError

__all__ = ["AnswerCache", "normalize_question"]

_PUNCTUATION = re.compile(r"[^\w\s']+")
_SPACES = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    """``"What's the PRICE?!"`` → ``"what's the price"``."""
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", text.lower())).strip()


@dataclass(slots=True)
class _Entry:
    answer: str
    stored_at: float


class _Store:
    """The campaign's shared entries."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, _Entry] = OrderedDict()


class AnswerCache:
    """A campaign's cached answers, seen by one call; see the module docstring."""

    def __init__(
        self,
        campaign: str,
        *,
        personal_patterns: Iterable[str] = (),
        personal_values: Iterable[str] = (),
        max_entries: int = 500,
        ttl: float = 24 * 3600.0,
        max_answer_chars: int = 600,
        clock: Callable[[], float] = time.monotonic,
        _store: _Store | None = None,
    ) -> None:
        if not campaign:
            raise ConfigurationError("AnswerCache needs the campaign it belongs to")
        if max_entries < 1 or ttl <= 0 or max_answer_chars < 1:
            raise ConfigurationError(
                f"max_entries, ttl and max_answer_chars must be positive, got {max_entries}/{ttl}/{max_answer_chars}"
            )
        self.campaign = campaign
        self.ttl = ttl
        self.max_answer_chars = max_answer_chars
        self._patterns = tuple(re.compile(p, re.IGNORECASE) for p in personal_patterns)
        self._values = tuple(v.lower() for v in personal_values if v and v.strip())
        self._clock = clock
        self._store = _store or _Store(max_entries)
        self.hits = 0
        self.misses = 0
        self.refused = 0  # replies not stored: personal, too long, or empty

    def for_call(self, personal_values: Iterable[str]) -> AnswerCache:
        """This campaign's store, with one call's personal values."""
        view = AnswerCache(
            self.campaign,
            personal_values=personal_values,
            max_entries=self._store.max_entries,
            ttl=self.ttl,
            max_answer_chars=self.max_answer_chars,
            clock=self._clock,
            _store=self._store,
        )
        view._patterns = self._patterns
        return view

    def __len__(self) -> int:
        return len(self._store.entries)

    def is_personal(self, text: str) -> bool:
        lowered = text.lower()
        return any(value in lowered for value in self._values) or any(p.search(text) for p in self._patterns)

    def store(self, question: str, answer: str) -> bool:
        """Keep ``answer`` for ``question``; False when refused."""
        key = normalize_question(question)
        answer = answer.strip()
        if not key or not answer or len(answer) > self.max_answer_chars:
            self.refused += 1
            return False
        if self.is_personal(question) or self.is_personal(answer):
            self.refused += 1
            return False
        entries = self._store.entries
        entries[key] = _Entry(answer, self._clock())
        entries.move_to_end(key)
        while len(entries) > self._store.max_entries:
            entries.popitem(last=False)
        return True

    def holds(self, question: str) -> bool:
        """Whether ``lookup(question)`` would answer (counts nothing)."""
        entry = self._store.entries.get(normalize_question(question))
        return (
            entry is not None
            and self._clock() - entry.stored_at <= self.ttl
            and not self.is_personal(question)
            and not self.is_personal(entry.answer)
        )

    def lookup(self, question: str) -> str | None:
        """The cached answer to ``question``, or None."""
        key = normalize_question(question)
        entry = self._store.entries.get(key)
        if entry is None or self.is_personal(question) or self.is_personal(entry.answer):
            self.misses += 1
            return None
        if self._clock() - entry.stored_at > self.ttl:
            del self._store.entries[key]
            self.misses += 1
            return None
        self._store.entries.move_to_end(key)
        self.hits += 1
        return entry.answer
