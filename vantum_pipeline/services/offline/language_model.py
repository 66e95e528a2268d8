"""A domain language model for pocketsphinx, built at start from a campaign's phrases.

A sales call is a narrow dialogue: the bot's script and a few dozen things a
callee says. A trigram model of those phrases (with back-off, so unseen
orders and combinations still decode) plus a pronunciation dictionary holding
only their words recognizes such speech far better than the general English
model shipped with pocketsphinx: on espeak-ng speech of the sales script,
0.96-0.99 word accuracy against 0.3-0.7 at 16 kHz, 0.89-0.95 against 0.2-0.4
after an 8 kHz μ-law phone line (``benchmarks/offline_engines.py``). A JSGF
grammar of the same phrases (``grammar``) does better on short, fixed answers
and worse on long lines and on anything said off-script.

``discount_mass`` is the probability the model keeps for what the phrases do
not say (back-off). 0.2 by default: against 0.5, the callee's lines after a
phone line went from 0.85 to 0.89, the bot's from 0.93 to 0.95, a dozen
off-script callee sentences made of the model's words (``"Can you send me the
price?"``) from 0.71 to 0.75, and streamed recognition of the callee's lines
from 0.85 to 0.91. 0.1 was mixed: better on the callee's lines, worse on
the bot's and on off-script speech at 16 kHz.

Pronunciations come from the CMU dictionary in the pocketsphinx wheel; words
it lacks (a brand name) take theirs from ``pronunciations`` (ARPAbet phones,
e.g. ``{"vantum": "V AE N T AH M"}``) and are otherwise left out of the model,
with a warning naming them. Only the first pronunciation of each word is kept
by default: alternates split the posterior and make confidences of correct
words look low.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.services.offline.word_accuracy import normalize_words

__all__ = ["DomainLanguageModel", "model_path"]

_ARPABET = frozenset(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()
)


def model_path(name: str = "en-us/en-us") -> Path:
    """A file or directory of the en-us model shipped in the pocketsphinx wheel
    (``en-us/en-us``: acoustic model, ``en-us/cmudict-en-us.dict``: dictionary)."""
    import pocketsphinx

    return Path(pocketsphinx.get_model_path(name))


_dictionary_lock = threading.Lock()


@lru_cache(maxsize=1)
def _cmu_dictionary() -> dict[str, tuple[str, ...]]:
    entries: dict[str, list[str]] = {}
    with open(model_path("en-us/cmudict-en-us.dict"), encoding="utf-8") as lines:
        for line in lines:
            word, _, phones = line.strip().partition(" ")
            if not phones:
                continue
            base = word.split("(", 1)[0]
            entries.setdefault(base, []).append(phones.strip())
    return {word: tuple(phones) for word, phones in entries.items()}


def _lookup(word: str) -> tuple[str, ...]:
    with _dictionary_lock:
        return _cmu_dictionary().get(word, ())


@dataclass(frozen=True)
class DomainLanguageModel:
    """An ARPA trigram model, its dictionary, and a JSGF grammar of the same phrases."""

    phrases: tuple[str, ...]
    arpa: str
    dictionary: str
    grammar: str
    vocabulary: frozenset[str]
    missing: tuple[str, ...] = field(default=())

    @classmethod
    def from_phrases(
        cls,
        phrases: Iterable[str],
        *,
        pronunciations: Mapping[str, str] | None = None,
        alternates: bool = False,
        discount_mass: float = 0.2,
    ) -> DomainLanguageModel:
        """Build the model of ``phrases`` (sentences a speaker may say).

        Raises ConfigurationError when no phrase has a word the dictionary knows.
        """
        from pocketsphinx.lm import ArpaBoLM

        extra = {word.lower(): _check_phones(word, phones) for word, phones in (pronunciations or {}).items()}
        sentences: list[list[str]] = []
        for phrase in phrases:
            # Each sentence is a line of its own (<s> and </s> match utterance edges, and a
            # speaker may pause between sentences), and so is the whole phrase (or not).
            parts = _sentences(phrase)
            for sentence in parts if len(parts) == 1 else [*parts, phrase]:
                words = normalize_words(sentence)
                if words:
                    sentences.append(words)
        if not sentences:
            raise ConfigurationError("a domain language model needs at least one phrase with words")
        entries: dict[str, tuple[str, ...]] = {}
        missing: list[str] = []
        for word in sorted({w for sentence in sentences for w in sentence}):
            if word in extra:
                entries[word] = (extra[word],)
                continue
            known = _lookup(word)
            if known:
                entries[word] = known if alternates else known[:1]
            else:
                missing.append(word)
        if missing:
            logger.warning(
                "domain language model: no pronunciation for {} (pass pronunciations=...): left out",
                ", ".join(missing),
            )
        kept = [[w for w in sentence if w in entries] for sentence in sentences]
        kept = [sentence for sentence in kept if sentence]
        if not kept:
            raise ConfigurationError("a domain language model needs at least one word with a pronunciation")
        unique_lines = list(dict.fromkeys(" ".join(sentence) for sentence in kept))
        builder = ArpaBoLM(text="\n".join(unique_lines) + "\n", add_start=True, discount_mass=discount_mass)
        builder.compute()
        arpa = io.StringIO()
        builder.write(arpa)
        dictionary = "".join(
            f"{word}{'' if i == 0 else f'({i + 1})'} {phones}\n"
            for word, variants in entries.items()
            for i, phones in enumerate(variants)
        )
        alternatives = " | ".join(f"( {line} )" for line in unique_lines)
        grammar = f"#JSGF V1.0;\ngrammar domain;\npublic <utterance> = {alternatives};\n"
        return cls(
            phrases=tuple(" ".join(s) for s in kept),
            arpa=arpa.getvalue(),
            dictionary=dictionary,
            grammar=grammar,
            vocabulary=frozenset(entries),
            missing=tuple(missing),
        )


def _sentences(phrase: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    for char in phrase:
        current.append(char)
        if char in ".!?":
            parts.append("".join(current))
            current = []
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _check_phones(word: str, phones: str) -> str:
    units = phones.upper().split()
    unknown = [unit for unit in units if unit not in _ARPABET]
    if not units or unknown:
        raise ConfigurationError(f"pronunciation of {word!r} must be ARPAbet phones, got {phones!r}")
    return " ".join(units)
