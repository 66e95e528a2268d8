"""The scripted sales agent: intents, whole conversations, interrupted lines; word accuracy scoring."""

from __future__ import annotations

from typing import Any

import pytest

from vantum_pipeline.services.offline.agent import (
    AgentReply,
    Intent,
    SalesScript,
    ScriptedSalesAgent,
    classify_intent,
)
from vantum_pipeline.services.offline.word_accuracy import normalize_words, word_errors

SYSTEM = {"role": "system", "content": "You are a friendly sales representative."}


def converse(agent: ScriptedSalesAgent, callee_lines: list[str]) -> list[tuple[str, AgentReply]]:
    """Run a conversation; return (what the callee said, the agent's reply) per turn, greeting first."""
    messages: list[dict[str, Any]] = [SYSTEM]
    turns: list[tuple[str, AgentReply]] = []
    reply = agent.reply(messages)
    messages.append({"role": "assistant", "content": reply.text})
    turns.append(("", reply))
    for line in callee_lines:
        messages.append({"role": "user", "content": line})
        reply = agent.reply(messages)
        messages.append({"role": "assistant", "content": reply.text})
        turns.append((line, reply))
        if reply.end_call:
            break
    return turns


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Yes, let's book a meeting.", Intent.YES),
        ("that sounds interesting tell me more", Intent.YES),
        ("I'm not interested.", Intent.NOT_INTERESTED),
        ("no thanks", Intent.NOT_INTERESTED),
        ("Can you call me back later?", Intent.BUSY),
        ("sorry i'm busy right now", Intent.BUSY),
        ("Who is this?", Intent.WHO),
        ("what is this about", Intent.WHO),
        ("How much does it cost?", Intent.PRICE),
        ("what is the price", Intent.PRICE),
        ("Okay, goodbye.", Intent.GOODBYE),
        ("Thursday at ten works for me.", Intent.TIME),
        ("No.", Intent.NO),
        ("banana helicopter", Intent.OTHER),
        ("", Intent.OTHER),
    ],
)
def test_intents(text: str, intent: str) -> None:
    assert classify_intent(text) == intent


def test_a_booked_meeting() -> None:
    agent = ScriptedSalesAgent()
    script = agent.script
    turns = converse(
        agent, ["Who is this?", "What is the price?", "Yes, let's book a meeting.", "Thursday at ten works for me."]
    )
    said = [reply.text for _, reply in turns]
    assert said[0] == script.greeting
    assert said[1] == script.who
    assert said[2] == script.price
    assert said[3] == script.ask_day
    assert said[4] == "Perfect, I will send you an invite for Thursday at ten. Thanks, and goodbye!"
    assert [reply.end_call for _, reply in turns] == [None, None, None, None, "meeting_booked"]


def test_a_busy_callee_gets_a_call_back() -> None:
    turns = converse(ScriptedSalesAgent(), ["Sorry, I'm busy right now.", "Tomorrow morning."])
    assert turns[1][1].step == "ask_when"
    assert turns[2][1].text == "Thanks, I will call you back tomorrow morning. Have a great day!"
    assert turns[2][1].end_call == "callback_requested"


def test_not_interested_and_goodbye_end_the_call() -> None:
    turns = converse(ScriptedSalesAgent(), ["I'm not interested."])
    assert turns[-1][1].end_call == "not_interested" and "Goodbye" in turns[-1][1].text
    turns = converse(ScriptedSalesAgent(), ["Yes.", "Okay, goodbye."])
    assert turns[1][1].step == "pitch"
    assert turns[-1][1].end_call == "other"


def test_unclear_answers_are_asked_again_then_resumed() -> None:
    turns = converse(
        ScriptedSalesAgent(), ["Yes.", "purple elephants", "Yes, a demo sounds good.", "Tuesday afternoon."]
    )
    steps = [reply.step for _, reply in turns]
    assert steps == ["greeting", "pitch", "repeat", "ask_day", "booked"]
    assert "Tuesday afternoon" in turns[-1][1].text


def test_an_interrupted_line_is_recognized_from_what_was_heard() -> None:
    agent = ScriptedSalesAgent()
    messages = [
        SYSTEM,
        {"role": "assistant", "content": agent.script.greeting},
        {"role": "user", "content": "Yes."},
        # The callee barged in after a few words of the pitch: only those are in the context.
        {"role": "assistant", "content": "Great. Vantum places AI", "interrupted": True},
        {"role": "user", "content": "Yes, let's book a meeting."},
    ]
    assert agent.reply(messages).step == "ask_day"
    # Cut before any word was heard: the line before counts.
    messages[3] = {"role": "assistant", "content": "", "interrupted": True}
    assert agent.reply(messages).step == "pitch"


def test_the_agent_is_deterministic_and_pure() -> None:
    lines = ["Who is this?", "What is the price?", "Yes.", "Friday morning."]
    assert converse(ScriptedSalesAgent(), lines) == converse(ScriptedSalesAgent(), lines)
    agent = ScriptedSalesAgent()
    messages = [SYSTEM]
    agent.reply(messages)
    assert messages == [SYSTEM]


def test_content_parts_are_read() -> None:
    messages = [
        SYSTEM,
        {"role": "assistant", "content": [{"type": "text", "text": SalesScript().greeting}]},
        {"role": "user", "content": [{"type": "text", "text": "What is the price?"}]},
    ]
    assert ScriptedSalesAgent().reply(messages).step == "price"


def test_bot_lines_have_only_spelled_out_numbers() -> None:
    for line in SalesScript().bot_lines():
        assert not any(ch.isdigit() for ch in line), line


def test_word_errors() -> None:
    assert normalize_words("Ninety-nine dollars, I'm 'free'!") == ["ninety", "nine", "dollars", "i'm", "free"]
    exact = word_errors("Hi, this is Alex.", "hi this is alex")
    assert exact.errors == 0 and exact.accuracy == 1.0
    mixed = word_errors("a b c d", "a x c d e")
    assert (mixed.substitutions, mixed.deletions, mixed.insertions) == (1, 0, 1)
    assert mixed.accuracy == pytest.approx(0.5)
    dropped = word_errors("one two three", "one three")
    assert dropped.deletions == 1 and dropped.errors == 1
    assert word_errors("", "").accuracy == 1.0
    assert word_errors("", "noise").accuracy == 0.0
    total = exact + mixed
    assert total.reference_words == 8 and total.errors == 2
