"""The two ends of the conversation layer around the LLM.

    transport.input() → STT → UserAggregator → LLM → SentenceAggregator → TTS
        → transport.output() → AssistantAggregator

``UserAggregator``
    Each ``EndOfTurnFrame`` (the STT's whole user turn) becomes one user
    message in the shared ``LLMContext``, then ``LLMContextFrame(context)``
    asks the LLM for a reply. A low-confidence turn is not sent to the model:
    the callee hears the ask-to-repeat phrase (``TTSSpeakFrame``) instead.
    Empty turns are ignored. The ``EndOfTurnFrame`` itself travels on.
    A turn flagged ``backchannel`` ("mm-hmm" said over the bot, judged so by
    the STT) is not a turn: no user message, no LLM request.
    On a ``FalseInterruptionFrame`` (the STT's verdict: the last interruption
    was a cough, a click or a backchannel) the interrupted reply resumes:
    ``ResumeSpeakFrame`` with the words the callee did not hear, after the
    last heard ones when the cut was mid-sentence (as many as the frame says,
    from ``InterruptionSettings.resume_lead_in_words``, unless
    ``resume_lead_in_words`` is given here; ``resume=False``: the bot stays
    silent and waits, as before).

``AssistantAggregator`` (at the tail)
    Builds the assistant message of each bot turn from the ``TextFrame``\\ s
    the TTS passes on (and any ``TTSSpeakFrame`` that reaches it), and writes
    it into the context when the reply ends (``LLMFullResponseEndFrame``).
    When the turn is interrupted, before or after that point, while it is
    still being played, the message holds only what the callee heard (the
    output transport's cumulative ``HeardTextFrame``\\ s, per TTS context,
    including the final one it sends after the interruption) and is flagged
    ``interrupted``; its ``full_text`` keeps the whole reply. A
    ``ResumeSpeakFrame`` continues that message instead of starting a new
    one: once the rest has been heard, the context holds one reply, whole,
    no longer flagged (the lead-in, said twice, is counted once). A turn
    counts as fully played once a ``HeardTextFrame`` covered all of its
    text, or the bot stopped speaking after the reply ended and its TTS
    contexts stopped; an interruption after that changes nothing. A
    backchannel ``EndOfTurnFrame`` does not end the bot's turn. Without an output transport nothing is ever "heard": an
    interrupted reply then keeps no text.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from loguru import logger

from vantum_pipeline.frames import (
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    FalseInterruptionFrame,
    Frame,
    HeardTextFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    ResumeSpeakFrame,
    TextFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.context import LLMContext, Message
from vantum_pipeline.processors.phrases import FallbackPhrases

__all__ = ["AssistantAggregator", "UserAggregator", "split_heard"]

#: TTS contexts remembered for late HeardTextFrames (a few turns' worth).
MAX_TRACKED_CONTEXTS: Final = 32

_WORDS = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORDS.findall(text)]


#: Punctuation that ends a sentence: a cut right after it is not mid-sentence.
_SENTENCE_END = (".", "!", "?", "…")


def split_heard(text: str, heard: str) -> tuple[str, str]:
    """``text`` cut after as many words as ``heard`` has: (said, rest).

    ``said`` keeps the punctuation glued to its last word ("you," "today.");
    words are compared by count, since a TTS may spell them differently.
    """
    count = len(_words(heard))
    if count <= 0:
        return "", text.strip()
    seen = 0
    for match in _WORDS.finditer(text):
        seen += 1
        if seen == count:
            end = match.end()
            while end < len(text) and not text[end].isspace() and not (text[end].isalnum() or text[end] == "'"):
                end += 1
            return text[:end].strip(), text[end:].strip()
    return text.strip(), ""


def _drop_words(text: str, count: int) -> str:
    """``text`` without its first ``count`` words (and what is glued to them)."""
    return split_heard(text, " ".join(["w"] * count))[1] if count > 0 else text


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
        resume: bool = True,
        resume_lead_in_words: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.context = context
        self.ask_to_repeat = ask_to_repeat
        self.min_confidence = min_confidence
        self.resume = resume
        self.resume_lead_in_words = resume_lead_in_words
        #: Replies resumed after a false interruption, and backchannels let through.
        self.resumed = 0
        self.backchannels = 0

    def _low_confidence(self, frame: EndOfTurnFrame) -> bool:
        if frame.low_confidence:
            return True
        return (
            self.min_confidence is not None and frame.confidence is not None and frame.confidence < self.min_confidence
        )

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, FalseInterruptionFrame):
            await self.push_frame(frame, direction)
            if self.resume:
                lead_in_words = self.resume_lead_in_words
                await self._resume(frame.lead_in_words if lead_in_words is None else lead_in_words)
            return
        if not isinstance(frame, EndOfTurnFrame) or direction is not FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
            return
        await self.push_frame(frame, direction)
        text = frame.text.strip()
        if not text:
            return
        if frame.backchannel:
            self.backchannels += 1
            logger.debug("{}: backchannel over the bot, not a turn: {!r}", self.name, text)
            return
        if self._low_confidence(frame):
            await self.push_frame(TTSSpeakFrame(self.ask_to_repeat, category="ask_to_repeat"))
            return
        self.context.add_user(text)
        await self.push_frame(LLMContextFrame(self.context))

    async def _resume(self, lead_in_words: int) -> None:
        """Speak the rest of the reply the last interruption cut, if it is
        still the last word of the conversation."""
        message = next((m for m in reversed(self.context.messages) if m.role != "system"), None)
        if message is None or message.role != "assistant" or not message.interrupted or not message.full_text:
            return
        said, rest = split_heard(message.full_text, message.content or "")
        if not rest:
            return  # cut after its last word: nothing to add
        lead_in = ""
        if said and not said.endswith(_SENTENCE_END) and lead_in_words > 0:
            lead_in = " ".join(said.split()[-lead_in_words:])
        self.resumed += 1
        logger.debug("{}: resuming the interrupted reply at {!r}", self.name, rest[:40])
        await self.push_frame(
            ResumeSpeakFrame(_join(lead_in, rest), category="resume", lead_in=lead_in, message=message)
        )


@dataclass(eq=False)
class _Turn:
    """One bot turn as seen at the tail."""

    bracketed: bool  # opened by LLMFullResponseStartFrame (else by a bare TextFrame)
    epoch: int = -1  # interruption epoch the turn was opened in
    text: str = ""
    open: bool = True
    message: Message | None = None
    interrupted: bool = False
    played: bool = False
    heard: dict[str, str] = field(default_factory=dict)  # TTS context id → cumulative heard text
    started: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    # A resumed reply: what the callee heard of it before, and the words said again.
    before: str | None = None
    lead_in_words: int = 0

    def heard_text(self) -> str:
        text = ""
        for piece in self.heard.values():
            text = _join(text, piece.strip())
        return text

    def heard_reply(self) -> str:
        """What the callee heard of the reply (for a resumed one: both parts, the lead-in once)."""
        heard = self.heard_text()
        if self.before is None:
            return heard
        return _join(self.before, _drop_words(heard, self.lead_in_words))


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
            self._turn = _Turn(bracketed=True, epoch=self.handling_epoch)
        elif isinstance(frame, TextFrame):
            turn = self._open_turn()
            # LLM tokens carry their own spacing; sentences do not.
            turn.text = turn.text + frame.text if isinstance(frame, LLMTextFrame) else _join(turn.text, frame.text)
        elif isinstance(frame, ResumeSpeakFrame) and isinstance(frame.message, Message):
            self._commit()
            self._turn = _Turn(
                bracketed=False,
                epoch=self.handling_epoch,
                text=frame.text,
                message=frame.message,
                before=frame.message.content or "",
                lead_in_words=len(_words(frame.lead_in)),
            )
            self._commit()
        elif isinstance(frame, TTSSpeakFrame):
            if self._turn is not None and self._turn.open:
                self._turn.text = _join(self._turn.text, frame.text)
            else:
                self._commit()
                self._turn = _Turn(bracketed=False, epoch=self.handling_epoch, text=frame.text)
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
            # The output transport also stops speaking because of an interruption, and that
            # BotStoppedSpeakingFrame (out of band, of the new epoch) may arrive before this
            # processor's InterruptionFrame: it must not make the cut turn count as played.
            if (
                latest is not None
                and not latest.open
                and latest.started <= latest.stopped
                and frame.epoch <= latest.epoch
            ):
                latest.played = True
        elif isinstance(frame, InterruptionFrame):
            self._interrupt()
        elif isinstance(frame, EndOfTurnFrame):
            # A backchannel is not a turn: the bot's turn goes on.
            if self._turn is not None and not self._turn.bracketed and not frame.backchannel:
                self._commit()
        elif isinstance(frame, EndFrame | CancelFrame):
            self._commit()

    def _open_turn(self) -> _Turn:
        if self._turn is None or not self._turn.open:
            self._turn = _Turn(bracketed=False, epoch=self.handling_epoch)
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
                turn.message.content = turn.heard_reply()
            elif heard:
                turn.message = self.context.add_assistant(heard, interrupted=True)
                turn.message.full_text = turn.text.strip()
        elif not turn.open and len(_words(heard)) >= len(_words(turn.text)):
            turn.played = True
            if turn.before is not None and turn.message is not None:
                # The resumed rest was heard to the end: one whole reply again.
                turn.message.content = turn.heard_reply()
                turn.message.interrupted = False
                turn.message.full_text = None

    def _interrupt(self) -> None:
        """Cut the turn being played down to what was heard, flagged."""
        turn = self._turn
        if turn is None or turn.played or turn.interrupted:
            return
        if not turn.open and turn.message is None:
            return  # nothing was said
        turn.interrupted = True
        turn.open = False
        heard = turn.heard_reply()
        if turn.message is None:
            # Kept even when empty, so the final HeardTextFrame (sent after
            # the interruption) has somewhere to land; an empty reply is
            # never sent to the API.
            turn.message = self.context.add_assistant(heard, interrupted=True)
        else:
            turn.message.content = heard
            turn.message.interrupted = True
        if turn.before is None:
            turn.message.full_text = turn.text.strip()
