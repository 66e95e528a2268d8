"""Word accuracy of a transcript against what was said: normalization and edit distance.

``normalize_words`` is also how the domain language model tokenizes its
phrases, so the recognizer and the scoring agree on what a word is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["WordErrors", "normalize_words", "word_errors"]

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")
_SPACES = re.compile(r"\s+")


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation; hyphens and slashes split words."""
    lowered = text.lower().replace("’", "'")
    cleaned = _NOT_WORD.sub(" ", lowered)
    return [word.strip("'") for word in _SPACES.split(cleaned) if word.strip("'")]


@dataclass(frozen=True, slots=True)
class WordErrors:
    """Word-level edit distance between a reference and a hypothesis."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def accuracy(self) -> float:
        """1 − word error rate (may be negative with many insertions); 1.0 for two empty texts."""
        if self.reference_words == 0:
            return 1.0 if self.insertions == 0 else 0.0
        return 1.0 - self.errors / self.reference_words

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Levenshtein alignment of normalized words (substitution, deletion, insertion cost 1)."""
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    # Each cell: (cost, substitutions, deletions, insertions); rows over ref, columns over hyp.
    previous = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        current = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            same = ref[i - 1] == hyp[j - 1]
            diagonal = previous[j - 1]
            candidates = (
                (diagonal[0] + (0 if same else 1), diagonal[1] + (0 if same else 1), diagonal[2], diagonal[3]),
                (previous[j][0] + 1, previous[j][1], previous[j][2] + 1, previous[j][3]),
                (current[j - 1][0] + 1, current[j - 1][1], current[j - 1][2], current[j - 1][3] + 1),
            )
            current.append(min(candidates))
        previous = current
    _, substitutions, deletions, insertions = previous[-1]
    return WordErrors(substitutions, deletions, insertions, len(ref))
