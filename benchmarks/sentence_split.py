"""Sentence splitter on the sales-call corpus: exact-split accuracy and emit delay.

    PYTHONPATH=. python benchmarks/sentence_split.py

Every reply of ``tests/data/sentence_corpus.json`` is streamed through
``SentenceSplitter`` in several LLM-like chunkings (tokens with punctuation
split off, words, phrases, random character pieces, punctuation glued to the
next word, the whole text at once). A run is exact when the emitted sentences
equal the expected ones. Emit delay is counted in chunks: the index of the
``push`` that returned a sentence minus the index of the chunk holding its
last character (sentences only complete at the end of the reply are emitted
by ``flush`` and counted apart). A terminator at the end of a chunk waits for
the next one (``?`` may become ``?!``), so a delay of one chunk is the norm.
The product's baseline rule (emit the buffer when it matches
``[.!?]\\s|[.!?]$``) is measured on the same runs.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vantum_pipeline.processors.sentence import SentenceSplitter

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "sentence_corpus.json"
AT_END = -1


def load_corpus(path: Path = CORPUS) -> list[dict[str, object]]:
    replies: list[dict[str, object]] = json.loads(path.read_text(encoding="utf-8"))["replies"]
    return replies


# ------------------------------------------------------------------ chunkings


def _tokens(text: str, rng: random.Random) -> list[str]:
    """BPE-like: a word with its leading space, punctuation on its own, long words in pieces."""
    out: list[str] = []
    for token in re.findall(r"\s*\w+|\s*[^\w\s]", text) + ([text[-1]] if text[-1:].isspace() else []):
        while len(token.strip()) > 6 and rng.random() < 0.5:
            cut = len(token) - len(token.lstrip()) + rng.randint(3, 5)
            out.append(token[:cut])
            token = token[cut:]
        out.append(token)
    return out


def _words(text: str, rng: random.Random) -> list[str]:
    return re.findall(r"\s*\S+\s*?(?=\s|$)", text) or [text]


def _phrases(text: str, rng: random.Random) -> list[str]:
    words = _words(text, rng)
    out: list[str] = []
    while words:
        take = rng.randint(2, 5)
        out.append("".join(words[:take]))
        words = words[take:]
    return out


def _pieces(text: str, rng: random.Random) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        step = rng.randint(1, 7)
        out.append(text[i : i + step])
        i += step
    return out


def _lead_punct(text: str, rng: random.Random) -> list[str]:
    """Punctuation glued to the next word: 'today' '. Want' (lookahead inside a chunk)."""
    out: list[str] = []
    glue = ""
    for token in re.findall(r"\s*\w+|\s*[^\w\s]", text):
        if token.strip().isalnum() or token.strip().replace("_", "").isalnum():
            out.append(glue + token)
            glue = ""
        else:
            glue += token
    if glue:
        out.append(glue)
    return out


def _whole(text: str, rng: random.Random) -> list[str]:
    return [text]


CHUNKINGS: dict[str, Callable[[str, random.Random], list[str]]] = {
    "tokens": _tokens,
    "words": _words,
    "phrases": _phrases,
    "pieces": _pieces,
    "lead-punct": _lead_punct,
    "whole": _whole,
}


def chunk(text: str, how: str, seed: int = 0) -> list[str]:
    chunks = CHUNKINGS[how](text, random.Random(f"{how}:{seed}:{text}"))
    assert "".join(chunks) == text, (how, chunks)
    return chunks


# ------------------------------------------------------------------ expectations


def expected_units(text: str, sentences: list[str], merge_words: int) -> list[str]:
    """The sentences as the splitter should emit them: short fragments (not
    the first, not ended by a newline) joined to the next sentence."""
    out: list[str] = []
    held = ""
    pos = 0
    for sentence in sentences:
        pos = text.index(sentence, pos) + len(sentence)
        newline = text[pos:].lstrip(" \t").startswith("\n")
        unit = f"{held} {sentence}" if held else sentence
        held = ""
        if out and not newline and len(unit.split()) <= merge_words:
            held = unit
            continue
        out.append(unit)
    if held:
        out.append(held)
    return out


def split_stream(chunks: list[str], splitter: SentenceSplitter) -> list[tuple[int, str]]:
    """(chunk index that emitted it or AT_END, sentence)."""
    emitted = [(i, s) for i, piece in enumerate(chunks) for s in splitter.push(piece)]
    return emitted + [(AT_END, s) for s in splitter.flush()]


def baseline_split(chunks: list[str]) -> list[str]:
    """The product's rule: emit the whole buffer once it matches [.!?]\\s|[.!?]$."""
    out: list[str] = []
    buffer = ""
    for piece in chunks:
        buffer += piece
        if re.search(r"[.!?]\s|[.!?]$", buffer):
            out.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        out.append(buffer.strip())
    return out


def delays(text: str, chunks: list[str], emitted: list[tuple[int, str]]) -> list[int]:
    """Emit delay in chunks of each sentence emitted by push."""
    ends: list[int] = []
    total = 0
    for piece in chunks:
        total += len(piece)
        ends.append(total)
    out: list[int] = []
    pos = 0
    for index, sentence in emitted:
        found = text.find(sentence, pos)
        if found < 0:
            continue  # a wrong split: no delay to speak of
        last = found + len(sentence) - 1
        pos = last + 1
        completed = next(i for i, end in enumerate(ends) if end > last)
        if index != AT_END:
            out.append(index - completed)
    return out


@dataclass
class Report:
    runs: int = 0
    exact: int = 0
    baseline_exact: int = 0
    sentences: int = 0
    sentences_right: int = 0
    delays: list[int] = field(default_factory=list)
    first_delays: list[int] = field(default_factory=list)
    at_end: int = 0
    failures: list[tuple[str, str, list[str], list[str]]] = field(default_factory=list)


def evaluate(merge_words: int = 2, seeds: int = 3) -> dict[str, Report]:
    reports: dict[str, Report] = {how: Report() for how in CHUNKINGS}
    for reply in load_corpus():
        text = str(reply["text"])
        sentences = [str(s) for s in reply["sentences"]]  # type: ignore[attr-defined]
        want = expected_units(text, sentences, merge_words)
        for how, report in reports.items():
            for seed in range(seeds if how in ("tokens", "phrases", "pieces") else 1):
                chunks = chunk(text, how, seed)
                emitted = split_stream(chunks, SentenceSplitter(merge_words=merge_words))
                got = [s for _, s in emitted]
                report.runs += 1
                report.exact += got == want
                report.baseline_exact += baseline_split(chunks) == want
                report.sentences += len(want)
                report.sentences_right += len(set(got) & set(want))
                lags = delays(text, chunks, emitted)
                report.delays += lags
                if emitted and emitted[0][0] != AT_END and emitted[0][1] == want[0]:
                    report.first_delays += lags[:1]
                report.at_end += sum(1 for i, _ in emitted if i == AT_END)
                if got != want:
                    report.failures.append((str(reply["id"]), how, want, got))
    return reports


def main() -> None:
    for merge_words in (0, 2):
        reports = evaluate(merge_words)
        label = "no merging" if merge_words == 0 else f"short fragments (<= {merge_words} words) merged"
        print(f"\n== SentenceSplitter, {label}: {len(load_corpus())} replies ==")
        print(f"{'chunking':<11} {'runs':>5} {'exact':>7} {'baseline':>9} {'delay0':>7} {'delay1':>7} {'max':>4}")
        total = Report()
        for how, r in reports.items():
            zero = r.delays.count(0) / max(1, len(r.delays))
            one = r.delays.count(1) / max(1, len(r.delays))
            print(
                f"{how:<11} {r.runs:>5} {r.exact / r.runs:>7.1%} {r.baseline_exact / r.runs:>9.1%}"
                f" {zero:>7.1%} {one:>7.1%} {max(r.delays, default=0):>4}"
            )
            total.runs += r.runs
            total.exact += r.exact
            total.baseline_exact += r.baseline_exact
            total.delays += r.delays
            total.first_delays += r.first_delays
            total.at_end += r.at_end
            total.failures += r.failures
        print(
            f"{'all':<11} {total.runs:>5} {total.exact / total.runs:>7.1%} {total.baseline_exact / total.runs:>9.1%}"
            f" {total.delays.count(0) / len(total.delays):>7.1%} {total.delays.count(1) / len(total.delays):>7.1%}"
            f" {max(total.delays):>4}"
        )
        print(
            f"emit delay (chunks) of sentences emitted mid-stream: mean {statistics.mean(total.delays):.2f},"
            f" max {max(total.delays)}; first sentence: mean {statistics.mean(total.first_delays):.2f},"
            f" max {max(total.first_delays)}; {total.at_end} sentences emitted at the end of their reply"
        )
        for reply_id, how, want, got in total.failures[:8]:
            print(f"  MISS {reply_id} [{how}]\n     want {want}\n     got  {got}")


if __name__ == "__main__":
    main()
