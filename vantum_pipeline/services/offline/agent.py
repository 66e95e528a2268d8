"""A deterministic, rule-based sales agent: the offline stand-in for the LLM.

Pure logic over the conversation (no I/O, no randomness): given the messages
so far (``{"role": ..., "content": ...}`` dicts, as in the LLM context), it
returns the next thing the bot says and whether the call should end.

The conversation is a small state machine. The state is what the bot last
asked, recovered from the last assistant message (which, after a barge-in,
holds only the words the callee heard: a prefix of a script line is enough),
and the callee's last message is classified into an intent by key phrases:

    state \\ intent   yes        no / busy    price   who     not interested  goodbye  time    other
    start (no bot)   greeting
    greeting         pitch      call back    price   who     close           bye      pitch   pitch
    pitch            ask day    close        price   who     close           bye      ask day repeat
    price            ask day    close        price   who     close           bye      ask day repeat
    who              pitch      call back    price   who     close           bye      pitch   pitch
    ask day          ask day    close        price   who     close           bye      booked  ask day
    call back        ask when   close        price   who     close           bye      later   ask when

``close``, ``bye``, ``booked`` and ``later`` end the call, with an outcome:
``not_interested``, ``other``, ``meeting_booked``, ``callback_requested`` (the
outcome names of ``processors.tools.OUTCOMES``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vantum_pipeline.services.offline.word_accuracy import normalize_words

__all__ = ["AgentReply", "Intent", "SalesScript", "ScriptedSalesAgent", "classify_intent"]


class Intent:
    """Names of what a callee may mean (plain strings, for logs and records)."""

    YES = "yes"
    NO = "no"
    BUSY = "call_back"
    PRICE = "price"
    WHO = "who_is_this"
    NOT_INTERESTED = "not_interested"
    GOODBYE = "goodbye"
    TIME = "time"
    OTHER = "other"


# Checked in order: the first rule with a matching key phrase wins, so
# "not interested" is seen before "interested" and "call me back" before "yes".
_INTENT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        Intent.NOT_INTERESTED,
        ("not interested", "no thanks", "no thank you", "don't call", "stop calling", "remove me", "not for us"),
    ),
    (Intent.GOODBYE, ("goodbye", "bye")),
    (
        Intent.BUSY,
        ("call me back", "call back", "later", "busy", "bad time", "not a good time", "in a meeting", "driving"),
    ),
    (Intent.WHO, ("who is this", "who's this", "who are you", "who is calling", "what is this about", "what company")),
    (Intent.PRICE, ("how much", "price", "pricing", "cost", "expensive", "charge")),
    (
        Intent.TIME,
        (
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "tomorrow",
            "next week",
            "morning",
            "afternoon",
            "evening",
            "o'clock",
        ),
    ),
    (
        Intent.YES,
        (
            "yes",
            "yeah",
            "yep",
            "sure",
            "okay",
            "ok",
            "of course",
            "sounds good",
            "sounds interesting",
            "interested",
            "tell me more",
            "go ahead",
            "book",
            "meeting",
            "demo",
        ),
    ),
    (Intent.NO, ("no", "nope", "not really", "not now")),
)


def classify_intent(text: str) -> str:
    """The callee's intent in ``text`` (one of the ``Intent`` names)."""
    words = " ".join(normalize_words(text))
    padded = f" {words} "
    for intent, phrases in _INTENT_RULES:
        if any(f" {phrase} " in padded for phrase in phrases):
            return intent
    return Intent.OTHER


@dataclass(frozen=True)
class SalesScript:
    """What the agent says, per step. Numbers are spelled out so that speech
    recognition and synthesis agree on the words."""

    agent_name: str = "Alex"
    company: str = "Vantum"
    greeting: str = "Hi, this is Alex from Vantum. Do you have a minute to talk about your sales calls?"
    pitch: str = (
        "Great. Vantum places AI phone calls for your sales team, so your reps only talk to interested buyers. "
        "Would a short demo next week be useful?"
    )
    price: str = (
        "It starts at ninety nine dollars a month per seat, and the first month is free. "
        "Would you like to book a short demo?"
    )
    who: str = (
        "This is Alex, calling from Vantum. We help sales teams reach more buyers with AI phone calls. "
        "Do you have a minute?"
    )
    ask_day: str = "Wonderful. Which day works best for you next week?"
    ask_day_again: str = "Which day would suit you, for example Tuesday or Thursday?"
    booked: str = "Perfect, I will send you an invite for {when}. Thanks, and goodbye!"
    ask_when: str = "Of course. When would be a better time to call you back?"
    later: str = "Thanks, I will call you back {when}. Have a great day!"
    close: str = "No problem. Thanks for your time, and have a great day. Goodbye!"
    bye: str = "Thanks for your time. Goodbye!"
    repeat: str = "Sorry, could you say that again?"
    #: Words a speech recognizer may not know, with ARPAbet pronunciations.
    pronunciations: Mapping[str, str] = field(default_factory=lambda: {"vantum": "V AE N T AH M"})
    #: Things a callee typically says on such a call (for the bot's speech recognizer).
    callee_phrases: tuple[str, ...] = (
        "Hello?",
        "Hello, who is this?",
        "Who is this?",
        "What is this about?",
        "Yes, I have a minute.",
        "Yes.",
        "No.",
        "Sure.",
        "Okay.",
        "How much does it cost?",
        "What is the price?",
        "That sounds interesting, tell me more.",
        "Yes, let's book a meeting.",
        "Yes, a demo sounds good.",
        "Thursday at ten works for me.",
        "Tuesday afternoon.",
        "Tomorrow morning.",
        "I'm not interested.",
        "No thanks.",
        "Can you call me back later?",
        "Sorry, I'm busy right now.",
        "Okay, goodbye.",
        "Bye.",
        "Send me an email.",
    )

    def bot_lines(self) -> tuple[str, ...]:
        """Every line the agent may say (placeholders filled with typical values)."""
        filled = [
            self.greeting,
            self.pitch,
            self.price,
            self.who,
            self.ask_day,
            self.ask_day_again,
            self.booked.format(when="Thursday at ten"),
            self.ask_when,
            self.later.format(when="tomorrow morning"),
            self.close,
            self.bye,
            self.repeat,
        ]
        return tuple(filled)


@dataclass(frozen=True, slots=True)
class AgentReply:
    """The agent's next line; ``end_call`` is the call's outcome when it ends the call."""

    text: str
    step: str
    intent: str
    end_call: str | None = None


_STEPS = ("greeting", "pitch", "price", "who", "ask_day", "ask_day_again", "ask_when", "repeat")


class ScriptedSalesAgent:
    """Chooses the next line of a ``SalesScript`` from the conversation so far."""

    def __init__(self, script: SalesScript | None = None) -> None:
        self.script = script or SalesScript()
        self._step_words = {step: normalize_words(getattr(self.script, step)) for step in _STEPS}

    def reply(self, messages: Sequence[Mapping[str, Any]]) -> AgentReply:
        """The next line given ``messages`` (system, user and assistant dicts)."""
        state = self._state(messages)
        user = _last_content(messages, "user")
        if state is None:
            return self._say("greeting", Intent.OTHER)
        intent = classify_intent(user or "")
        if state in ("repeat",):
            state = self._state_before_repeat(messages)
        return self._answer(state, intent, user or "")

    # ----------------------------------------------------------- internals

    def _answer(self, state: str, intent: str, user: str) -> AgentReply:
        script = self.script
        if intent == Intent.GOODBYE:
            return AgentReply(script.bye, "bye", intent, end_call="other")
        if intent == Intent.NOT_INTERESTED:
            return AgentReply(script.close, "close", intent, end_call="not_interested")
        if intent == Intent.PRICE:
            return self._say("price", intent)
        if intent == Intent.WHO:
            return self._say("who", intent)
        asking_day = state in ("ask_day", "ask_day_again")
        if asking_day and intent == Intent.TIME:
            when = _when(user)
            return AgentReply(script.booked.format(when=when), "booked", intent, end_call="meeting_booked")
        if state == "ask_when" and intent == Intent.TIME:
            when = _when(user)
            return AgentReply(script.later.format(when=when), "later", intent, end_call="callback_requested")
        if intent == Intent.BUSY:
            return self._say("ask_when", intent)
        if intent == Intent.NO:
            if state in ("greeting", "who"):
                return self._say("ask_when", intent)
            return AgentReply(script.close, "close", intent, end_call="not_interested")
        if asking_day:
            return self._say("ask_day_again", intent)
        if state == "ask_when":
            return self._say("ask_when", intent)
        if state in ("greeting", "who"):
            return self._say("pitch", intent)
        if intent in (Intent.YES, Intent.TIME):
            return self._say("ask_day", intent)
        return self._say("repeat", intent)

    def _say(self, step: str, intent: str) -> AgentReply:
        return AgentReply(getattr(self.script, step), step, intent)

    def _state(self, messages: Sequence[Mapping[str, Any]]) -> str | None:
        spoke = False
        for message in reversed(messages):
            if message.get("role") != "assistant":
                continue
            spoke = True
            said = _text(message.get("content"))
            # A line cut before the callee heard a word leaves an empty message: look further back.
            if normalize_words(said):
                return self._match_step(said)
        return "greeting" if spoke else None

    def _state_before_repeat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        # After "could you say that again?", answer as if to the line before it.
        for message in reversed(messages):
            if message.get("role") == "assistant":
                step = self._match_step(_text(message.get("content")))
                if step != "repeat":
                    return step
        return "greeting"

    def _match_step(self, said: str) -> str:
        words = normalize_words(said)
        if not words:
            return "greeting"
        best, best_len = "greeting", 0
        for step, line in self._step_words.items():
            # What was heard of an interrupted line is a prefix of that line.
            common = 0
            for heard, scripted in zip(words, line, strict=False):
                if heard != scripted:
                    break
                common += 1
            if common > best_len:
                best, best_len = step, common
        return best


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _last_content(messages: Sequence[Mapping[str, Any]], role: str) -> str | None:
    for message in reversed(messages):
        if message.get("role") == role:
            return _text(message.get("content"))
    return None


_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "tomorrow")
_TIME_OF_DAY = re.compile(r"\b(morning|afternoon|evening|at (?:one|two|three|four|five|six|nine|ten|eleven|noon))\b")


def _when(text: str) -> str:
    """A short description of the time the callee named ("Thursday at ten")."""
    words = normalize_words(text)
    joined = " ".join(words)
    day = next((w for w in words if w in _DAYS), None)
    part = _TIME_OF_DAY.search(joined)
    pieces = []
    if day is not None:
        pieces.append(day.capitalize() if day != "tomorrow" else "tomorrow")
    if part is not None:
        pieces.append(part.group(1))
    if "next week" in joined and day is None:
        pieces.insert(0, "next week")
    return " ".join(pieces) or "then"
