"""The two ends of the conversation layer around the LLM.

    transport.input() → STT → UserAggregator → LLM → SentenceAggregator → TTS
        → transport.output() → AssistantAggregator

``UserAggregator``
    Each ``EndOfTurnFrame`` (the STT's whole user turn) becomes one user
    message in the shared ``LLMContext``, then ``LLMContextFrame(context)``
    asks the LLM for a reply. A low-confidence turn is not sent to the model:
    the callee hears the ask-to-repeat phrase (``TTSSpeakFrame``) instead.
    Empty turns are ignored. The ``EndOfTurnFrame`` itself travels on.

``AssistantAggregator`` (at the tail)
    Builds the assistant message of each bot turn from the ``TextFrame``\\ s
    the TTS passes on (and any ``TTSSpeakFrame`` that reaches it), and writes
    it into the context when the reply ends (``LLMFullResponseEndFrame``).
    When the turn is interrupted, before or after that point, while it is
    still being played, the message holds only what the callee heard (the
    output transport's cumulative ``HeardTextFrame``\\ s, per TTS context,
    including the final one it sends after the interruption) and is flagged
    ``interrupted``. A turn counts as fully played once a ``HeardTextFrame``
    covered all of its text, or the bot stopped speaking after the reply
    ended and its TTS contexts stopped; an interruption after that changes
    nothing. Without an output transport nothing is ever "heard": an
    interrupted reply then keeps no text.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from vantum_pipeline.frames import (
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    HeardTextFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TextFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.context import LLMContext, Message
from vantum_pipeline.processors.phrases import FallbackPhrases

__all__ = ["AssistantAggregator", "UserAggregator"]

#: TTS contexts remembered for late HeardTextFrames (a few turns' worth).
MAX_TRACKED_CONTEXTS: Final = 32

_WORDS = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(text)]


def _join(left: str, right: str) -> str:
    """Join sentence-sized pieces with one space."""
    if not left:
        return right
    if not right or left[-1].isspace() or right[0].isspace():
        return left + right
    return f"{left} {right}"


class UserAggregator(FrameProcessor):
    """User turns → user messages → ``LLMContextFrame``; see the module docstring.

    ``ask_to_repeat`` is the phrase for low-confidence turns; a turn is low
    confidence when the STT says so (``EndOfTurnFrame.low_confidence``) or,
    with ``min_confidence`` set, when its confidence is below it.
    """

    def __init__(
        self,
        context: LLMContext,
        *,
        ask_to_repeat: str = FallbackPhrases().ask_to_repeat,
        min_confidence: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.context = context
        self.ask_to_repeat = ask_to_repeat
        self.min_confidence = min_confidence

    def _low_confidence(self, frame: EndOfTurnFrame) -> bool:
        if frame.low_confidence:
            return True
        return (
            self.min_confidence is not None and frame.confidence is not None and frame.confidence < self.min_confidence
        )

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if not isinstance(frame, EndOfTurnFrame) or direction is not FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
            return
        await self.push_frame(frame, direction)
        text = frame.text.strip()
        if not text:
            return
        if self._low_confidence(frame):
            await self.push_frame(TTSSpeakFrame(self.ask_to_repeat, category="ask_to_repeat"))
            return
        self.context.add_user(text)
        await self.push_frame(LLMContextFrame(self.context))


@dataclass(eq=False)
class _Turn:
    """One bot turn as seen at the tail."""

    bracketed: bool  # opened by LLMFullResponseStartFrame (else by a bare TextFrame)
    text: str = ""
    open: bool = True
    message: Message | None = None
    interrupted: bool = False
    played: bool = False
    heard: dict[str, str] = field(default_factory=dict)  # TTS context id → cumulative heard text
    started: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)

    def heard_text(self) -> str:
        text = ""
        for piece in self.heard.values():
            text = _join(text, piece.strip())
        return text


class AssistantAggregator(FrameProcessor):
    """Bot replies → assistant messages, as heard; see the module docstring."""

    def __init__(self, context: LLMContext, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.context = context
        self._turn: _Turn | None = None
        self._contexts: OrderedDict[str, _Turn] = OrderedDict()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            self._observe(frame)
        await self.push_frame(frame, direction)

    # ---------------------------------------------------------- the model

    def _observe(self, frame: Frame) -> None:
        if isinstance(frame, LLMFullResponseStartFrame):
            self._commit()
            self._turn = _Turn(bracketed=True)
        elif isinstance(frame, TextFrame):
            turn = self._open_turn()
            # LLM tokens carry their own spacing; sentences do not.
            turn.text = turn.text + frame.text if isinstance(frame, LLMTextFrame) else _join(turn.text, frame.text)
        elif isinstance(frame, TTSSpeakFrame):
            if self._turn is not None and self._turn.open:
                self._turn.text = _join(self._turn.text, frame.text)
            else:
                self._commit()
                self._turn = _Turn(bracketed=False, text=frame.text)
                self._commit()
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._commit()
        elif isinstance(frame, TTSStartedFrame) and frame.context_id is not None:
            self._turn_of(frame.context_id).started.add(frame.context_id)
        elif isinstance(frame, TTSStoppedFrame) and frame.context_id is not None:
            turn = self._turn_of(frame.context_id)
            turn.stopped.add(frame.context_id)
            if not turn.bracketed:
                self._commit()
        elif isinstance(frame, HeardTextFrame):
            self._heard(frame)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            latest = self._turn
            if latest is not None and not latest.open and latest.started <= latest.stopped:
                latest.played = True
        elif isinstance(frame, InterruptionFrame):
            self._interrupt()
        elif isinstance(frame, EndOfTurnFrame):
            if self._turn is not None and not self._turn.bracketed:
                self._commit()
        elif isinstance(frame, EndFrame | CancelFrame):
            self._commit()

    def _open_turn(self) -> _Turn:
        if self._turn is None or not self._turn.open:
            self._turn = _Turn(bracketed=False)
        return self._turn

    def _turn_of(self, context_id: str) -> _Turn:
        """The turn a TTS context belongs to: the one current when it was first seen."""
        turn = self._contexts.get(context_id)
        if turn is None:
            turn = self._turn if self._turn is not None else self._open_turn()
            self._contexts[context_id] = turn
            while len(self._contexts) > MAX_TRACKED_CONTEXTS:
                self._contexts.popitem(last=False)
        return turn

    def _commit(self) -> None:
        """Write the open turn into the context (with everything it said)."""
        turn = self._turn
        if turn is None or not turn.open:
            return
        turn.open = False
        if turn.message is None and turn.text.strip():
            turn.message = self.context.add_assistant(turn.text.strip())

    def _heard(self, frame: HeardTextFrame) -> None:
        turn = self._turn_of(frame.context_id) if frame.context_id is not None else self._turn
        if turn is None:
            return
        turn.heard[frame.context_id or ""] = frame.text
        heard = turn.heard_text()
        if turn.interrupted:
            if turn.message is not None:
                turn.message.content = heard
            elif heard:
                turn.message = self.context.add_assistant(heard, interrupted=True)
        elif not turn.open and len(_words(heard)) >= len(_words(turn.text)):
            turn.played = True

    def _interrupt(self) -> None:
        """Cut the turn being played down to what was heard, flagged."""
        turn = self._turn
        if turn is None or turn.played or turn.interrupted:
            return
        if not turn.open and turn.message is None:
            return  # nothing was said
        turn.interrupted = True
        turn.open = False
        heard = turn.heard_text()
        if turn.message is None:
            # Kept even when empty, so the final HeardTextFrame (sent after
            # the interruption) has somewhere to land; an empty reply is
            # never sent to the API.
            turn.message = self.context.add_assistant(heard, interrupted=True)
        else:
            turn.message.content = heard
            turn.message.interrupted = True
