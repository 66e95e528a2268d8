"""Acting on the AMD verdict: talk to a human, leave a voicemail, hang up on a fax.

``MachineDetectionGate`` sits just before the TTS of a call placed with
answering-machine detection (asynchronous: the stream starts while AMD
listens). Until the verdict comes, the bot's words are

- held (``while_detecting="wait"``): its greeting does not start into an
  answering machine's greeting; held words go out in order on ``human`` or
  ``unknown``, or when no verdict came within ``decision_timeout``;
- or let through (``"start_and_yield"``): the bot starts at once, and on a
  machine the gate interrupts it (the audio is cleared on the line).

On a machine, every later word of the bot is dropped, and once the greeting
is over (``machine_end_*`` says so; after ``machine_start`` the gate waits for
the callee side to be quiet for ``greeting_end_silence`` seconds, at most
``max_greeting_wait``) the gate speaks the voicemail (a ``TTSSpeakFrame`` of
category ``"voicemail"``: the TTS service's phrase cache synthesizes a given
message once) and asks the task to end: the output transport waits for the
message's last mark, then the server hangs up. The call concludes
``voicemail_left`` (downgraded to ``machine`` if the call was cut off before
the end), or ``machine`` when the campaign leaves no message. A fax is hung
up on at once: ``fax``.

``gate.turn_guard()`` is its companion, placed right after the STT: the
callee's turns are held with the bot's words while AMD decides (``wait``),
and dropped once a machine or a fax answered, so the model is never asked
to answer a machine's greeting (no tokens spent on it).

``VoicemailMessage`` fills the campaign's message template (``{name}``,
``{agent_name}``...) from the call's variables.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping

from loguru import logger

from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    EndTaskFrame,
    Frame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.context import PromptTemplate
from vantum_pipeline.telephony.amd import AmdVerdict, AnsweredBy
from vantum_pipeline.telephony.control import CallControl
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.telephony.settings import AMD_WAIT, AmdSettings

__all__ = ["GateState", "MachineDetectionGate", "VoicemailMessage"]

#: Bot output the gate holds or drops: what would become speech.
_BOT_OUTPUT = (TextFrame, TTSSpeakFrame, LLMFullResponseStartFrame, LLMFullResponseEndFrame)
#: The callee's words the turn guard holds or drops: what would reach the model.
_CALLEE_WORDS = (EndOfTurnFrame, TranscriptionFrame, InterimTranscriptionFrame)


class VoicemailMessage:
    """A campaign's voicemail with ``{variable}`` fields, e.g.
    ``"Hi {name}, this is Sarah from Vantum. Call us back at 415 555 0100."``.
    ``render`` raises ConfigurationError naming any variable the call lacks."""

    def __init__(self, template: str, *, defaults: Mapping[str, object] | None = None) -> None:
        self._template = PromptTemplate(template, defaults=defaults)

    @property
    def fields(self) -> frozenset[str]:
        return self._template.fields

    def render(self, variables: Mapping[str, object] | None = None) -> str:
        return self._template.render(variables)


class GateState:
    """The gate's states; moves only forward (detecting → one of the others)."""

    DETECTING = "detecting"
    HUMAN = "human"
    MACHINE = "machine"
    FAX = "fax"


class MachineDetectionGate(FrameProcessor):
    """See the module docstring. ``control``: the call (its ``machine_detection``
    is None when AMD is off: the gate then passes everything).
    ``variables``: what fills the voicemail's fields (``name``, ...).
    ``max_held``: bound on the frames held while AMD decides (beyond it the
    oldest are dropped, counted in ``dropped``)."""

    def __init__(
        self,
        control: CallControl,
        settings: AmdSettings | None = None,
        *,
        variables: Mapping[str, object] | None = None,
        max_held: int = 256,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.control = control
        self.settings = settings or AmdSettings()
        self.voicemail: str | None = None
        if self.settings.voicemail_message is not None:
            # Rendered now: a missing variable fails the call's set-up, not its voicemail.
            self.voicemail = VoicemailMessage(self.settings.voicemail_message).render(variables or {})
        self.state = GateState.DETECTING if control.machine_detection is not None else GateState.HUMAN
        self.verdict: AmdVerdict | None = None
        self.dropped = 0
        self._held: deque[Frame] = deque(maxlen=max_held)
        self._turns: _TurnGuard | None = None
        self._user_speaking = False
        self._quiet_since: float | None = None
        self._quiet = asyncio.Event()

    @property
    def waiting(self) -> bool:
        return self.state == GateState.DETECTING and self.settings.while_detecting == AMD_WAIT

    @property
    def silenced(self) -> bool:
        """A machine or a fax answered: nobody to talk with."""
        return self.state in (GateState.MACHINE, GateState.FAX)

    def turn_guard(self) -> FrameProcessor:
        """The companion to place right after the STT (see the module docstring)."""
        if self._turns is None:
            self._turns = _TurnGuard(self, max_held=self._held.maxlen or 256, name=f"{self.name}.turns")
        return self._turns

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self.state == GateState.DETECTING:
                self.create_task(self._await_verdict(), "amd")
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_speaking = True
            self._quiet.clear()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_speaking = False
            self._quiet_since = asyncio.get_running_loop().time()
            self._quiet.set()
        elif isinstance(frame, InterruptionFrame):
            self._held.clear()  # the interrupted turn's words are void
        elif isinstance(frame, EndFrame | CancelFrame):
            self._held.clear()
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, _BOT_OUTPUT):
            if self.silenced:
                return  # nothing but the voicemail is said to a machine
            if self.waiting:
                if len(self._held) == self._held.maxlen:
                    self.dropped += 1
                self._held.append(frame)
                return
        await self.push_frame(frame, direction)

    # ------------------------------------------------------------- verdict

    async def _await_verdict(self) -> None:
        detection = self.control.machine_detection
        assert detection is not None
        verdict = await detection.wait(self.settings.decision_timeout)
        if verdict is None:
            logger.warning(
                "{}: call {}: no AMD verdict within {:.0f}s; going on as with a human",
                self.name,
                self.control.call_sid,
                self.settings.decision_timeout,
            )
            await self._talk()
            return
        self.verdict = verdict
        answered_by = verdict.answered_by
        if answered_by is AnsweredBy.FAX:
            await self._fax()
        elif answered_by.is_machine:
            await self._machine(answered_by)
        else:  # human, unknown
            await self._talk()

    async def _talk(self) -> None:
        # Frames that arrive while the held ones go out are held too, so
        # nothing overtakes them; the state flips once none is left.
        while self._held:
            await self.push_frame(self._held.popleft())
        self.state = GateState.HUMAN
        if self._turns is not None:
            await self._turns.release()

    async def _fax(self) -> None:
        self.state = GateState.FAX
        self._held.clear()
        if self._turns is not None:
            self._turns.drop_held()
        logger.info("{}: call {}: a fax answered; hanging up", self.name, self.control.call_sid)
        self.control.conclude(CallOutcome.FAX)
        await self.push_interruption()
        await self.push_frame(EndTaskFrame(reason="fax"), FrameDirection.UPSTREAM)

    async def _machine(self, answered_by: AnsweredBy) -> None:
        was_talking = self.state == GateState.DETECTING and not self.waiting
        self.state = GateState.MACHINE
        self._held.clear()
        if self._turns is not None:
            self._turns.drop_held()
        if was_talking:
            await self.push_interruption()  # start_and_yield: stop the greeting already playing
        if self.voicemail is None:
            logger.info("{}: call {}: a machine answered; no voicemail to leave", self.name, self.control.call_sid)
            self.control.conclude(CallOutcome.MACHINE)
            await self.push_frame(EndTaskFrame(reason="machine"), FrameDirection.UPSTREAM)
            return
        self.control.conclude(CallOutcome.MACHINE)
        if not answered_by.greeting_over:
            await self._greeting_over()
        logger.info("{}: call {}: leaving the voicemail", self.name, self.control.call_sid)
        await self.push_frame(TTSSpeakFrame(self.voicemail, category="voicemail"))
        # Holds only if the message plays to its end (the EndFrame waits for its last mark).
        self.control.conclude(CallOutcome.VOICEMAIL_LEFT, needs_clean_end=True)
        await self.push_frame(EndTaskFrame(reason="voicemail left"), FrameDirection.UPSTREAM)

    async def _greeting_over(self) -> None:
        """Wait until the machine has been quiet for ``greeting_end_silence``
        seconds (bounded by ``max_greeting_wait``)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.max_greeting_wait
        if self._quiet_since is None and not self._user_speaking:
            self._quiet_since = loop.time()
        while loop.time() < deadline:
            if not self._user_speaking and self._quiet_since is not None:
                remaining = self._quiet_since + s.greeting_end_silence - loop.time()
                if remaining <= 0:
                    return
                await asyncio.sleep(min(remaining, deadline - loop.time()))
                continue
            self._quiet.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self._quiet.wait()
            except TimeoutError:
                break
        logger.info(
            "{}: call {}: the machine's greeting did not end; leaving the message anyway",
            self.name,
            self.control.call_sid,
        )


class _TurnGuard(FrameProcessor):
    """Holds the callee's words while the gate waits, drops them once it is silenced."""

    def __init__(self, gate: MachineDetectionGate, *, max_held: int, name: str) -> None:
        super().__init__(name=name)
        self.gate = gate
        self.dropped = 0
        self._held: deque[Frame] = deque(maxlen=max_held)
        self._releasing = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, _CALLEE_WORDS):
            if self.gate.silenced:
                self.dropped += 1
                return
            if self.gate.waiting or self._releasing:
                if len(self._held) == self._held.maxlen:
                    self.dropped += 1
                self._held.append(frame)
                return
        elif isinstance(frame, EndFrame | CancelFrame):
            self._held.clear()
        await self.push_frame(frame, direction)

    async def release(self) -> None:
        """The callee is a person: their held words go on, in order."""
        self._releasing = True
        try:
            while self._held:
                await self.push_frame(self._held.popleft())
        finally:
            self._releasing = False

    def drop_held(self) -> None:
        self.dropped += len(self._held)
        self._held.clear()
