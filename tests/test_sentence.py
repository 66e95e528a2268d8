"""SentenceSplitter on the sales-call corpus and edge cases; SentenceAggregator in a pipeline."""

from __future__ import annotations

import random

import pytest

from benchmarks.sentence_split import (
    AT_END,
    CHUNKINGS,
    chunk,
    delays,
    evaluate,
    expected_units,
    load_corpus,
    split_stream,
)
from vantum_pipeline.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TextFrame,
    TTSSpeakFrame,
)
from vantum_pipeline.processors.sentence import SentenceAggregator, SentenceSplitter
from vantum_pipeline.testing import PipelineHarness, run_pipeline

CORPUS = load_corpus()


def split(chunks: list[str], **options: int) -> list[str]:
    return [s for _, s in split_stream(chunks, SentenceSplitter(**options))]


def split_all_ways(text: str, **options: int) -> set[tuple[str, ...]]:
    """The results of every chunking of ``text`` (one set element when they agree)."""
    return {tuple(split(chunk(text, how, seed), **options)) for how in CHUNKINGS for seed in range(2)}


# ---------------------------------------------------------------- the corpus


@pytest.mark.parametrize("merge_words", [0, 2])
def test_corpus_exact_split_every_chunking(merge_words: int) -> None:
    reports = evaluate(merge_words=merge_words, seeds=2)
    failures = [f for r in reports.values() for f in r.failures]
    assert not failures, failures[:3]
    runs = sum(r.runs for r in reports.values())
    assert runs >= len(CORPUS) * len(CHUNKINGS)


def test_corpus_emit_delay_is_at_most_one_non_blank_chunk() -> None:
    for reply in CORPUS:
        text = str(reply["text"])
        for how in CHUNKINGS:
            chunks = chunk(text, how, 1)
            emitted = split_stream(chunks, SentenceSplitter())
            lags = delays(text, chunks, emitted)
            blank = [i for i, piece in enumerate(chunks) if not piece.strip()]
            mid_stream = [i for i, _ in emitted if i != AT_END]
            for index, lag in zip(mid_stream, lags, strict=True):
                # A chunk of whitespace alone decides nothing: the next word does.
                waited = lag - sum(1 for i in blank if index - lag < i < index)
                assert 0 <= waited <= 1, (reply["id"], how, chunks, lags)


def test_corpus_words_never_lost_duplicated_or_reordered() -> None:
    rng = random.Random(7)
    for reply in CORPUS:
        text = str(reply["text"])
        for _ in range(5):
            cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 30))))
            chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            assert " ".join(split(chunks)).split() == text.split()


def test_corpus_entries_are_consistent() -> None:
    assert len(CORPUS) >= 80
    for reply in CORPUS:
        sentences = [str(s) for s in reply["sentences"]]  # type: ignore[attr-defined]
        assert " ".join(sentences).split() == str(reply["text"]).split(), reply["id"]


def test_first_sentence_is_emitted_by_the_chunk_that_makes_it_certain() -> None:
    # A terminator at the end of the text so far waits for the next chunk ("?" may become "?!").
    emitted = split_stream(["Do you", " have a", " minute?", " I'll", " be quick."], SentenceSplitter())
    assert emitted[0] == (3, "Do you have a minute?")
    emitted = split_stream(["Do you", " have a", " minute? I'll", " be quick."], SentenceSplitter())
    assert emitted[0] == (2, "Do you have a minute?")
    emitted = split_stream(["This is", " Sarah", ".", " Do you", " have", " a minute?"], SentenceSplitter())
    assert emitted[0] == (3, "This is Sarah.")
    assert emitted[1] == (AT_END, "Do you have a minute?")


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Call Dr. Smith today. He is in.", ["Call Dr. Smith today.", "He is in."]),
        ("Mr. and Mrs. Lee signed. Great news.", ["Mr. and Mrs. Lee signed.", "Great news."]),
        ("It's on Main St. near the bank. See you.", ["It's on Main St. near the bank.", "See you."]),
        ("It's us vs. them. We win.", ["It's us vs. them.", "We win."]),
        ("Tools, e.g. Slack, work. Also i.e. chat.", ["Tools, e.g. Slack, work.", "Also i.e. chat."]),
        ("We sell CRMs, dialers, etc. Want one?", ["We sell CRMs, dialers, etc.", "Want one?"]),
        ("We sell CRMs, etc. and more. Okay?", ["We sell CRMs, etc. and more.", "Okay?"]),
        ("We're in the U.S. Are you?", ["We're in the U.S.", "Are you?"]),
        ("Call at 4 p.m. Does that work?", ["Call at 4 p.m.", "Does that work?"]),
        ("Call at 4 p.m. EST on Monday. Thanks!", ["Call at 4 p.m. EST on Monday.", "Thanks!"]),
        ("It's $3.50 a seat. Or 2.5% off.", ["It's $3.50 a seat.", "Or 2.5% off."]),
        ("That's $1,000.00 total. Deal?", ["That's $1,000.00 total.", "Deal?"]),
        ("Install version 2.0.1 now. It's free.", ["Install version 2.0.1 now.", "It's free."]),
        ("We grew 40%. Nice, right?", ["We grew 40%.", "Nice, right?"]),
        ("Well... maybe later. Sure.", ["Well... maybe later.", "Sure."]),
        ("Well… Let me check.", ["Well…", "Let me check."]),
        ("Go to https://vantum.ai/a.b?x=1 now. Done.", ["Go to https://vantum.ai/a.b?x=1 now.", "Done."]),
        ("Mail ana@vantum.ai. Thanks.", ["Mail ana@vantum.ai.", "Thanks."]),
        ('He said "yes." Then left.', ['He said "yes."', "Then left."]),
        ('"Really?" she asked. Yes.', ['"Really?" she asked.', "Yes."]),
        ("It's free (for now.) Ask me.", ["It's free (for now.)", "Ask me."]),
        ("Options:\n1. Basic\n2. Pro\n\nPick one.", ["Options:", "1. Basic", "2. Pro", "Pick one."]),
        ("Room No. 5 is free. Jan. 15 too.", ["Room No. 5 is free.", "Jan. 15 too."]),
        ("Hi!\n\nThis is Sarah.", ["Hi!", "This is Sarah."]),
    ],
)
def test_edge_cases_in_every_chunking(text: str, want: list[str]) -> None:
    assert split_all_ways(text, merge_words=0) == {tuple(want)}


def test_decimal_split_across_chunks_waits_one_chunk() -> None:
    splitter = SentenceSplitter(merge_words=0)
    assert splitter.push("It costs $3") == []
    assert splitter.push(".") == []
    assert splitter.push("50 a month.") == []
    assert splitter.push(" Okay?") == ["It costs $3.50 a month."]
    assert splitter.flush() == ["Okay?"]


def test_question_mark_in_a_url_is_not_a_boundary_at_chunk_end() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("See vantum.ai/pricing?") == []
    assert splitter.push("plan=pro today.") == []
    assert splitter.flush() == ["See vantum.ai/pricing?plan=pro today."]


def test_open_quote_holds_a_question_mark_for_its_closing_quote() -> None:
    splitter = SentenceSplitter()
    assert splitter.push('People ask "is it worth it?') == []
    assert splitter.push('" Yes.') == ['People ask "is it worth it?"']


def test_terminator_run_split_by_a_chunk_boundary_stays_whole() -> None:
    assert split(["Wow!!", " That's great."], merge_words=0) == ["Wow!!", "That's great."]
    assert split(["Wow!", "! That's great."], merge_words=0) == ["Wow!!", "That's great."]
    assert split(["Wow!", "!"], merge_words=0) == ["Wow!!"]
    assert split(["Really?", "! That", "'s wonderful news."]) == ["Really?!", "That's wonderful news."]
    assert split(["Really", "?", "!", " That's", " wonderful news."]) == ["Really?!", "That's wonderful news."]
    assert split(['He asked "really?', '" Yes.']) == ['He asked "really?"', "Yes."]


def test_splitting_the_interrobang_case_loses_nothing() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Really?") == []  # "?" at the end of the text so far may go on
    assert splitter.push("! That") == ["Really?!"]
    assert splitter.push("'s wonderful news.") == []
    assert splitter.flush() == ["That's wonderful news."]


def test_whitespace_only_chunk_decides_nothing() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("We sell dialers, etc.") == []
    assert splitter.push(" ") == []  # "etc. and more" would go on: the next word decides
    assert splitter.push("And") == ["We sell dialers, etc."]
    splitter = SentenceSplitter()
    assert splitter.push("We sell dialers, etc.") == []
    assert splitter.push(" ") == []
    assert splitter.push("and more.") == []
    assert splitter.flush() == ["We sell dialers, etc. and more."]


def test_a_long_run_of_whitespace_ends_the_wait() -> None:
    splitter = SentenceSplitter(max_chars=40)
    assert splitter.push("Okay.") == []
    assert splitter.push(" " * 41) == ["Okay."]


def test_a_time_zone_prefix_waits_for_its_whole_word() -> None:
    assert split(["Call at 3 p.m. East", "ern. Bye."], merge_words=0) == ["Call at 3 p.m. Eastern.", "Bye."]
    assert split(["Call at 3 p.m. East", "er is over. Bye."], merge_words=0) == [
        "Call at 3 p.m.",
        "Easter is over.",
        "Bye.",
    ]


def test_empty_chunks_change_nothing() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hello.") == []
    assert splitter.push("") == []
    assert splitter.push(" Bye.") == ["Hello."]


def test_short_fragments_merge_but_never_the_first_sentence() -> None:
    chunks = ["Sure!", " Great.", " So what's", " your budget?", " Thanks."]
    assert split(chunks) == ["Sure!", "Great. So what's your budget?", "Thanks."]
    assert split(chunks, merge_words=0) == ["Sure!", "Great.", "So what's your budget?", "Thanks."]


def test_list_lines_are_never_merged() -> None:
    assert split(["Plans:\n1. Basic\n", "2. Pro\n", "3. Max"]) == ["Plans:", "1. Basic", "2. Pro", "3. Max"]


def test_run_on_text_is_cut_at_a_clause_break() -> None:
    text = "We cover billing, " + ", ".join(f"feature number {i}" for i in range(40)) + " and more"
    out = split(chunk(text, "words"), max_chars=120)
    assert all(len(s) <= 120 for s in out)
    assert " ".join(out).split() == text.split()
    assert out[0].endswith(",")
    assert split([text], max_chars=120) == out  # the cuts do not depend on the chunking


def test_a_sentence_longer_than_max_chars_is_cut_in_every_chunking() -> None:
    text = "We cover " + ", ".join(f"feature number {i}" for i in range(20)) + ". Thanks!"
    results = split_all_ways(text, max_chars=80)
    assert len(results) == 1
    (out,) = results
    assert all(len(s) <= 80 for s in out)
    assert out[-1] == "Thanks!"


def test_flush_returns_the_rest_and_starts_a_new_reply() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("First one. Ok.") == ["First one."]
    assert splitter.flush() == ["Ok."]
    assert splitter.pending == ""
    # A new reply: its first sentence is not held even if short.
    assert splitter.push("Yes! More text here.") == ["Yes!"]


def test_reset_drops_the_partial_sentence() -> None:
    splitter = SentenceSplitter()
    splitter.push("This will be interr")
    splitter.reset()
    assert splitter.flush() == []


def test_expected_units_helper_merges_like_the_splitter() -> None:
    text = "Hi there, friend. Ok. Got it now, thanks. Bye."
    sentences = ["Hi there, friend.", "Ok.", "Got it now, thanks.", "Bye."]
    assert expected_units(text, sentences, 2) == ["Hi there, friend.", "Ok. Got it now, thanks.", "Bye."]
    assert split([text]) == expected_units(text, sentences, 2)
    assert split_stream(["Hi!", " Bye."], SentenceSplitter()) == [(1, "Hi!"), (AT_END, "Bye.")]
    assert split_stream(["Hi!"], SentenceSplitter()) == [(AT_END, "Hi!")]
    assert split_stream(["Hi."], SentenceSplitter()) == [(AT_END, "Hi.")]


# ---------------------------------------------------------------- the processor


async def test_aggregator_emits_the_first_sentence_before_the_llm_finishes() -> None:
    async with PipelineHarness([SentenceAggregator()]) as harness:
        await harness.send(LLMFullResponseStartFrame())
        for piece in ["Hi", ",", " this is", " Sarah", ".", " Do", " you"]:
            await harness.send(LLMTextFrame(piece))
        first = await harness.wait_for(TextFrame, timeout=2)
        assert first.text == "Hi, this is Sarah."
        assert not harness.collected.of_type(LLMFullResponseEndFrame)
        for piece in [" have", " a", " minute", "?"]:
            await harness.send(LLMTextFrame(piece))
        await harness.send(LLMFullResponseEndFrame())
        await harness.wait_for(LLMFullResponseEndFrame, timeout=2)
    texts = [f for f in harness.downstream if isinstance(f, TextFrame)]
    assert [type(f) for f in texts] == [TextFrame, TextFrame]  # LLMTextFrames are consumed
    assert [f.text for f in texts] == ["Hi, this is Sarah.", "Do you have a minute?"]
    kinds = harness.collected.types()
    assert kinds.index("LLMFullResponseStartFrame") < kinds.index("TextFrame")
    assert kinds.index("LLMFullResponseEndFrame") > len(kinds) - 3


async def test_aggregator_flushes_the_rest_before_the_response_end() -> None:
    frames = [LLMFullResponseStartFrame(), LLMTextFrame("It costs $49"), LLMTextFrame("."), LLMFullResponseEndFrame()]
    out = await run_pipeline([SentenceAggregator()], frames)
    assert out.types()[-3:] == ["TextFrame", "LLMFullResponseEndFrame", "EndFrame"]
    assert out.of_type(TextFrame)[0].text == "It costs $49."


async def test_aggregator_flushes_at_end_frame() -> None:
    out = await run_pipeline([SentenceAggregator()], [LLMFullResponseStartFrame(), LLMTextFrame("Cut off mid")])
    assert [f.text for f in out.of_type(TextFrame)] == ["Cut off mid"]


async def test_aggregator_drops_the_partial_sentence_on_interruption() -> None:
    async with PipelineHarness([SentenceAggregator()]) as harness:
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(LLMTextFrame("This part is never"))
        await harness.send(InterruptionFrame())
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(LLMTextFrame("Sorry, go ahead."))
        await harness.send(LLMFullResponseEndFrame())
        await harness.wait_for(LLMFullResponseEndFrame, timeout=2)
    assert [f.text for f in harness.collected.of_type(TextFrame)] == ["Sorry, go ahead."]


async def test_aggregator_passes_other_frames_through() -> None:
    out = await run_pipeline([SentenceAggregator()], [TextFrame("Verbatim. Text"), TTSSpeakFrame("Hello.")])
    assert [f.text for f in out.of_type(TextFrame)] == ["Verbatim. Text"]
    assert [f.text for f in out.of_type(TTSSpeakFrame)] == ["Hello."]
