"""SentenceSplitter properties over arbitrary texts and chunkings (hypothesis)."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vantum_pipeline.processors.sentence import SentenceSplitter

# Pieces that reach the splitter's rules (terminator runs, closers, abbreviations,
# times, list markers, newlines), mixed with arbitrary characters.
_WORDS = "Really wonderful news that That I Is it I'm she asked and Hmm Ok Sure Yes 3 $3 3.50 2.0".split()
_PUNCTUATION = [*"?!.…,;:\"'”’“()[]", "..", "...", "?!", "!!", " - "]
_SPACES = [" ", "  ", "\t", "\n", "\n\n", "\r\n"]
_ABBREVIATIONS = "Dr. Mr. vs. e.g. i.e. etc. U.S. No. Jan. ext. approx. 1. a. p.m. a.m.".split()
_TIME_ZONES = "EST East Eastern Pacific".split()
_ADDRESSES = ["vantum.ai/x?y=1", "ana@vantum.ai"]
_PIECES = _WORDS + _PUNCTUATION + _SPACES + _ABBREVIATIONS + _TIME_ZONES + _ADDRESSES
_texts = st.one_of(
    st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=3)), max_size=40).map("".join),
    st.text(max_size=120),
)


@st.composite
def _text_and_chunks(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(_texts)
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(1, len(text) - 1)), max_size=len(text))))
    cuts = [c for c in cuts if 0 < c < len(text)]
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


def _split(chunks: list[str], merge_words: int, max_chars: int) -> list[str]:
    splitter = SentenceSplitter(merge_words=merge_words, max_chars=max_chars)
    out = [s for piece in chunks for s in splitter.push(piece)]
    return out + splitter.flush()


def _assert_covers(text: str, sentences: list[str]) -> None:
    """``text`` is exactly whitespace, sentence, whitespace, ..., sentence, whitespace."""
    pos = 0
    for sentence in sentences:
        assert sentence and sentence == sentence.strip(), sentences
        while pos < len(text) and text[pos].isspace():
            pos += 1
        assert text.startswith(sentence, pos), (text, sentences, pos)
        pos += len(sentence)
    assert not text[pos:].strip(), (text, sentences, text[pos:])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_text_and_chunks(), merge_words=st.sampled_from([0, 2]), max_chars=st.sampled_from([20, 300]))
def test_the_split_never_changes_the_text_and_does_not_depend_on_the_chunking(
    case: tuple[str, list[str]], merge_words: int, max_chars: int
) -> None:
    text, chunks = case
    whole = _split([text], merge_words, max_chars)
    _assert_covers(text, whole)
    assert _split(chunks, merge_words, max_chars) == whole, chunks
