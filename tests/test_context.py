"""LLMContext (prompt template, history window, API view) and the user /
assistant aggregators, run in real pipelines."""

from __future__ import annotations

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    BotStoppedSpeakingFrame,
    EndOfTurnFrame,
    HeardTextFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TextFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import SALES_PROMPT, FunctionCall, LLMContext, Message, PromptTemplate
from vantum_pipeline.processors.phrases import FallbackPhrases
from vantum_pipeline.testing.openai_wire import RequestRejected, validate_chat_request
from vantum_pipeline.testing.pipeline import run_pipeline

CALL = {
    "agent_name": "Sarah",
    "company_name": "Vantum",
    "product_name": "Vantum Dialer",
    "prospect_name": "Jordan Lee",
    "prospect_company": "Acme Logistics",
}


def assert_valid_for_api(context: LLMContext) -> None:
    """What the context sends passes the fake API's request validation."""
    validate_chat_request({"model": "gpt-4o", "messages": context.api_messages()})


# ----------------------------------------------------------------- prompt


def test_sales_prompt_renders_the_call_context() -> None:
    context = LLMContext.from_template(SALES_PROMPT, {**CALL, "notes": "Asked for pricing last week."})
    prompt = context.system_prompt
    assert prompt is not None
    assert "Sarah" in prompt and "Acme Logistics" in prompt and "Vantum Dialer" in prompt
    assert "Asked for pricing last week." in prompt
    assert "{" not in prompt and "}" not in prompt


def test_missing_template_variable_fails_at_start_naming_it() -> None:
    call = dict(CALL)
    del call["prospect_name"]
    with pytest.raises(ConfigurationError, match="prospect_name"):
        LLMContext.from_template(SALES_PROMPT, call)


def test_every_missing_variable_is_named_and_none_counts_as_missing() -> None:
    template = PromptTemplate("Call {prospect_name} about {product_name} for {company_name}.")
    with pytest.raises(ConfigurationError) as caught:
        template.render({"company_name": "Vantum", "product_name": None})
    assert "prospect_name" in str(caught.value) and "product_name" in str(caught.value)
    assert "company_name" not in str(caught.value).split("given")[0]


def test_template_defaults_and_literal_braces() -> None:
    template = PromptTemplate("Hi {name}, {{not a field}} {notes}", defaults={"notes": "none"})
    assert template.render({"name": "Jordan"}) == "Hi Jordan, {not a field} none"


@pytest.mark.parametrize("bad", ["{prospect.name}", "{items[0]}", "{name!r}", "{name:>10}", "{}", "{unclosed"])
def test_template_allows_plain_names_only(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        PromptTemplate(bad)


def test_values_are_not_reinterpreted_as_fields() -> None:
    template = PromptTemplate("Notes: {notes}")
    assert template.render({"notes": "{prospect_name} said hi"}) == "Notes: {prospect_name} said hi"


# ---------------------------------------------------------------- history


def test_history_window_keeps_system_and_last_n() -> None:
    context = LLMContext("You are a sales rep.", max_messages=10)
    for n in range(15):
        context.add_user(f"user {n}")
        context.add_assistant(f"bot {n}")
    window = context.window()
    assert window[0].role == "system" and window[0].content == "You are a sales rep."
    assert len(window) == 11
    assert [m.content for m in window[1:]] == [text for n in range(10, 15) for text in (f"user {n}", f"bot {n}")]
    assert len(context.messages) == 31  # the transcript itself is kept whole
    assert_valid_for_api(context)


def test_history_window_default_is_20() -> None:
    context = LLMContext("system")
    for n in range(30):
        context.add_user(f"u{n}")
    assert len(context.window()) == 21
    assert context.window()[1].content == "u10"


@pytest.mark.parametrize("size", [9, 21, 0])
def test_history_window_setting_is_bounded(size: int) -> None:
    with pytest.raises(ConfigurationError, match="between 10 and 20"):
        LLMContext("system", max_messages=size)


def test_history_window_never_splits_a_tool_call_from_its_result() -> None:
    context = LLMContext("system", max_messages=10)
    for n in range(4):
        context.add_user(f"u{n}")
        context.add_assistant(f"a{n}")
    calls = [FunctionCall("call_1", "check_calendar", "{}"), FunctionCall("call_2", "record_outcome", "{}")]
    context.add_tool_calls(calls)
    context.add_tool_result("call_1", "free Tuesday")
    context.add_tool_result("call_2", "recorded")
    context.add_assistant("Tuesday works.")
    # Slide the window so that it starts inside the tool group, at every offset.
    for n in range(12):
        context.add_user(f"later {n}")
        window = context.window()
        assert window[1].role != "tool", f"window starts with an orphan result after {n + 1} more messages"
        ids = [m.tool_call_id for m in window if m.role == "tool"]
        if any(m.tool_calls for m in window):
            assert ids == ["call_1", "call_2"]
        else:
            assert ids == []
        assert len(window) <= 11
        assert_valid_for_api(context)


def test_incomplete_tool_calls_are_not_sent_until_answered() -> None:
    context = LLMContext("system")
    context.add_user("Book Tuesday.")
    context.add_tool_calls([FunctionCall("call_9", "book", '{"day": "Tuesday"}')])
    context.add_user("Hello? Are you there?")  # the result is late
    assert all(not m.get("tool_calls") for m in context.api_messages())
    assert_valid_for_api(context)
    context.add_tool_result("call_9", "booked")  # lands right after its call, not at the end
    roles = [m["role"] for m in context.api_messages()]
    assert roles == ["system", "user", "assistant", "tool", "user"]
    assert_valid_for_api(context)


def test_interrupted_flag_never_reaches_the_api() -> None:
    context = LLMContext("system")
    context.add_user("Who is this?")
    context.add_assistant("Hi, this is Sarah from", interrupted=True)
    context.add_assistant("", interrupted=True)  # cut off before a word was heard
    messages = context.api_messages()
    assert messages[-1] == {"role": "assistant", "content": "Hi, this is Sarah from"}
    assert all("interrupted" not in m for m in messages)
    assert context.messages[-2].interrupted
    assert_valid_for_api(context)
    leaked = [*messages, {"role": "assistant", "content": "x", "interrupted": True}]
    with pytest.raises(RequestRejected, match="interrupted"):
        validate_chat_request({"model": "gpt-4o", "messages": leaked})


def test_fallback_phrases_defaults_and_overrides() -> None:
    phrases = FallbackPhrases()
    assert phrases.phrase("timeout") == "I'm having trouble processing that. Could you repeat?"
    assert phrases.phrase("rate_limited") == "I need a moment to think. One second..."
    campaign = phrases.with_overrides({"greeting": "Hi, this is Alex from Acme."})
    assert campaign.greeting == "Hi, this is Alex from Acme." and campaign.error == phrases.error
    with pytest.raises(ConfigurationError, match="greetings"):
        phrases.with_overrides(greetings="typo")
    with pytest.raises(ConfigurationError):
        phrases.with_overrides(timeout="  ")


# ------------------------------------------------------------ aggregators


async def test_user_turn_becomes_a_message_and_a_context_frame() -> None:
    context = LLMContext("system")
    out = await run_pipeline(
        [UserAggregator(context)],
        [EndOfTurnFrame("  Yes, I have a minute. ", confidence=0.93), EndOfTurnFrame("   ")],
    )
    frames = out.of_type(LLMContextFrame)
    assert len(frames) == 1 and frames[0].context is context
    assert [(m.role, m.content) for m in context.messages[1:]] == [("user", "Yes, I have a minute.")]
    assert len(out.of_type(EndOfTurnFrame)) == 2  # the turn frames travel on


async def test_low_confidence_turn_asks_to_repeat_instead_of_asking_the_model() -> None:
    context = LLMContext("system")
    aggregator = UserAggregator(context, ask_to_repeat="Sorry, say again?", min_confidence=0.5)
    out = await run_pipeline(
        [aggregator],
        [EndOfTurnFrame("mumble", confidence=0.9, low_confidence=True), EndOfTurnFrame("hmm", confidence=0.3)],
    )
    assert not out.of_type(LLMContextFrame)
    speak = out.of_type(TTSSpeakFrame)
    assert [(f.text, f.category) for f in speak] == [("Sorry, say again?", "ask_to_repeat")] * 2
    assert len(context.messages) == 1


async def test_assistant_message_is_the_text_of_the_turn() -> None:
    context = LLMContext("system")
    await run_pipeline(
        [AssistantAggregator(context)],
        [
            LLMFullResponseStartFrame(),
            TextFrame("Hi there!"),
            TextFrame("Do you have a minute?"),
            LLMFullResponseEndFrame(),
            TTSSpeakFrame("I'm sorry, I didn't catch that.", category="ask_to_repeat"),
        ],
    )
    assert [(m.content, m.interrupted) for m in context.messages[1:]] == [
        ("Hi there! Do you have a minute?", False),
        ("I'm sorry, I didn't catch that.", False),
    ]


async def test_reply_interrupted_during_playback_keeps_only_what_was_heard() -> None:
    context = LLMContext("system")
    frames = [
        LLMFullResponseStartFrame(),
        TextFrame("Hi, this is Sarah from Vantum."),
        TTSStartedFrame(context_id="c1"),
        TextFrame("We help logistics teams book more meetings."),
        LLMFullResponseEndFrame(),  # written into the context here, fully...
        HeardTextFrame("Hi, this is", context_id="c1"),
        0.05,
        InterruptionFrame(),  # ...then cut while still playing
        HeardTextFrame("Hi, this is Sarah", context_id="c1"),  # the transport's final position
    ]
    await run_pipeline([AssistantAggregator(context)], frames)
    message = context.messages[-1]
    assert (message.role, message.content, message.interrupted) == ("assistant", "Hi, this is Sarah", True)
    assert_valid_for_api(context)


async def test_reply_interrupted_before_its_end_with_two_tts_contexts() -> None:
    context = LLMContext("system")
    frames = [
        LLMFullResponseStartFrame(),
        TextFrame("First sentence."),
        TTSStartedFrame(context_id="s1"),
        TextFrame("Second sentence is longer."),
        TTSStartedFrame(context_id="s2"),
        HeardTextFrame("First sentence.", context_id="s1"),
        HeardTextFrame("Second", context_id="s2"),
        0.05,
        InterruptionFrame(),
    ]
    await run_pipeline([AssistantAggregator(context)], frames)
    assert (context.messages[-1].content, context.messages[-1].interrupted) == ("First sentence. Second", True)


async def test_interruption_before_anything_was_heard_sends_nothing() -> None:
    context = LLMContext("system")
    context.add_user("Hello?")
    await run_pipeline(
        [AssistantAggregator(context)],
        [LLMFullResponseStartFrame(), TextFrame("Hi!"), 0.05, InterruptionFrame()],
    )
    assert context.messages[-1].interrupted and context.messages[-1].content == ""
    assert [m["role"] for m in context.api_messages()] == ["system", "user"]


async def test_fully_played_reply_is_not_cut_by_a_later_interruption() -> None:
    context = LLMContext("system")
    await run_pipeline(
        [AssistantAggregator(context)],
        [
            LLMFullResponseStartFrame(),
            TextFrame("Great, talk soon."),
            TTSStartedFrame(context_id="c1"),
            LLMFullResponseEndFrame(),
            HeardTextFrame("Great, talk soon.", context_id="c1"),
            0.05,
            InterruptionFrame(),
        ],
    )
    assert (context.messages[-1].content, context.messages[-1].interrupted) == ("Great, talk soon.", False)


async def test_bot_stopped_speaking_marks_the_reply_played() -> None:
    context = LLMContext("system")
    await run_pipeline(
        [AssistantAggregator(context)],
        [
            LLMFullResponseStartFrame(),
            TextFrame("Thanks, bye."),
            TTSStartedFrame(context_id="c1"),
            LLMFullResponseEndFrame(),
            TTSStoppedFrame(context_id="c1"),
            BotStoppedSpeakingFrame(),
            0.05,
            InterruptionFrame(),
        ],
    )
    assert (context.messages[-1].content, context.messages[-1].interrupted) == ("Thanks, bye.", False)


def test_message_to_api_drops_our_fields() -> None:
    message = Message("assistant", None, tool_calls=(FunctionCall("c1", "end_call", "{}"),), interrupted=True)
    assert message.to_api() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "end_call", "arguments": "{}"}}],
    }
