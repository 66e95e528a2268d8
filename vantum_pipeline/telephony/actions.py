"""What the callee can ask for during a call: a human, to be left alone, a repeat.

``CallActions`` is a processor placed just before the TTS (after the LLM and
its sentence aggregator). The model reaches it through two tools, the keypad
through ``KeypadProcessor`` bindings, and applications through its methods:

``await actions.transfer(reason)`` / the ``transfer_call`` tool
    The bot says the handover line, then the pipeline ends (the handover's
    last mark comes back first) and the server redirects the live call to a
    TwiML ``<Dial>`` of the rep (``TransferSettings``). Without a configured
    number the tool answers the model that no transfer is possible.
``await actions.opt_out(source)`` / the ``do_not_call`` tool
    The number goes to the do-not-call sink at once; the bot confirms and
    the call ends; outcome ``opted_out``. Should the sink fail, the bot says
    ``failure_line`` (promising nothing it has not done), the call still
    ends ``opted_out`` and the failure is logged, so the campaign can retry.
``await actions.repeat()``
    The bot says its last utterance again.

A requested action waits for the reply in progress to finish (the model's
``LLMFullResponseEndFrame`` passing by), so that the handover or the
confirmation follows what the model said rather than cutting into it. Once
the call is ending, later bot output is dropped: nothing is said after the
goodbye.

The error phrase ("I'm experiencing technical difficulties. Let me transfer
you to a human.") becomes true: a ``TTSSpeakFrame`` of category ``error`` is
followed by a transfer when a rep number is configured and
``transfer_on_error`` is on; with no number its promise of a transfer is
replaced by ``no_transfer_error_line``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger

from vantum_pipeline.frames import (
    EndTaskFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
    TextFrame,
    TTSSpeakFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.tools import Tool, ToolResult
from vantum_pipeline.telephony.control import RESUMED_AFTER_TRANSFER, CallControl, TransferRequest
from vantum_pipeline.telephony.dnc import DncEntry, DncSink
from vantum_pipeline.telephony.numbers import mask_number
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.telephony.settings import TRANSFER_END, CallFeatureSettings

__all__ = ["CallActions", "do_not_call_tool", "transfer_call_tool"]

_TRANSFER = "transfer"
_OPT_OUT = "opt_out"
_REPEAT = "repeat"
_END = "end"


class CallActions(FrameProcessor):
    """See the module docstring. ``dnc``: where opt-outs go (None: opt-outs
    are logged and concluded, but stored nowhere: a warning says so)."""

    def __init__(
        self,
        control: CallControl,
        features: CallFeatureSettings | None = None,
        *,
        dnc: DncSink | None = None,
        from_number: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.control = control
        self.features = features or CallFeatureSettings()
        self.dnc = dnc
        self.from_number = from_number
        #: Actions carried out, in order (``"transfer"``, ``"opt_out"``, ``"repeat"``).
        self.performed: list[str] = []
        self.last_said: str = ""
        self._pending: list[tuple[str, str]] = []
        self._ending = False
        self._suppressing = False
        self._in_response = False
        self._response_text: list[str] = []
        self._lock = asyncio.Lock()

    @property
    def ending(self) -> bool:
        return self._ending

    def tools(self) -> list[Tool]:
        """The tools to give the model: ``do_not_call`` always, ``transfer_call``
        when a rep number is configured."""
        tools = [do_not_call_tool(self)]
        if self.features.transfer.enabled:
            tools.append(transfer_call_tool(self))
        return tools

    # ----------------------------------------------------------- the API

    async def transfer(self, reason: str = "") -> bool:
        """Transfer the callee to the rep; False when no rep number is configured.

        Returns once the transfer is queued (it starts when the reply in
        progress ends). Cancel-safe: cancelled before queuing, nothing happens."""
        if not self.features.transfer.enabled:
            logger.warning("{}: transfer asked for, but no TRANSFER_NUMBER is configured", self.name)
            return False
        await self._request(_TRANSFER, reason)
        return True

    async def opt_out(self, source: str = "model") -> bool:
        """Put the callee's number on the do-not-call list now, then confirm
        and end the call. True when the sink took it (bounded: 5 s).
        Not cancel-safe: cancelled after the sink took the number, the
        confirmation may not be said (the number stays on the list)."""
        if self._ending and _OPT_OUT in self.performed:
            return True
        stored = await self._store_opt_out(source)
        self.control.conclude(CallOutcome.OPTED_OUT)
        await self._request(_OPT_OUT, "stored" if stored else "failed")
        return stored

    async def repeat(self) -> None:
        """Say the bot's last utterance again."""
        await self._request(_REPEAT, "")

    # ------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self.control.resumed_after == RESUMED_AFTER_TRANSFER:
                await self._back_from_transfer()
            return
        if direction is FrameDirection.DOWNSTREAM:
            if isinstance(frame, InterruptionFrame):
                self._in_response = False
                self._suppressing = False
                self._response_text.clear()
            elif self._ending and isinstance(frame, TextFrame | TTSSpeakFrame | LLMFullResponseStartFrame):
                # The call is ending: nothing more is said (a dropped reply's end goes too).
                self._suppressing = self._suppressing or isinstance(frame, LLMFullResponseStartFrame)
                return
            elif self._suppressing and isinstance(frame, LLMFullResponseEndFrame):
                self._suppressing = False
                return
            elif isinstance(frame, LLMFullResponseStartFrame):
                self._in_response = True
                self._response_text.clear()
            elif isinstance(frame, LLMFullResponseEndFrame):
                self._in_response = False
                if self._response_text:
                    self.last_said = " ".join(self._response_text)
                await self.push_frame(frame, direction)
                await self._run_pending()
                return
            elif isinstance(frame, TTSSpeakFrame):
                await self._speak_frame(frame)
                return
            elif isinstance(frame, TextFrame) and self._in_response:
                self._response_text.append(frame.text.strip())
        await self.push_frame(frame, direction)

    async def _speak_frame(self, frame: TTSSpeakFrame) -> None:
        transfer = self.features.transfer
        if frame.category == "error" and "transfer" in frame.text.lower():
            if transfer.enabled and transfer.transfer_on_error:
                await self.push_frame(frame)
                self.last_said = frame.text
                await self._begin_transfer("the reply failed", say_handover=False)
                return
            if not transfer.enabled:
                frame.text = transfer.no_transfer_error_line
        if frame.category not in ("repeat",):
            self.last_said = frame.text
        await self.push_frame(frame)

    # ----------------------------------------------------------- running

    async def _request(self, action: str, detail: str) -> None:
        self._pending.append((action, detail))
        if not self._in_response:
            await self._run_pending()

    async def _run_pending(self) -> None:
        async with self._lock:
            while self._pending and not self._ending:
                action, detail = self._pending.pop(0)
                if action == _TRANSFER:
                    await self._begin_transfer(detail, say_handover=True)
                elif action == _OPT_OUT:
                    opt_out = self.features.opt_out
                    line = opt_out.confirmation_line if detail == "stored" else opt_out.failure_line
                    await self._say_and_end(line, "opt_out", _OPT_OUT)
                elif action == _REPEAT:
                    self.performed.append(_REPEAT)
                    if self.last_said:
                        await self.push_frame(TTSSpeakFrame(self.last_said, category="repeat"))

    async def _begin_transfer(self, reason: str, *, say_handover: bool) -> None:
        settings = self.features.transfer
        assert settings.number is not None
        request = TransferRequest(
            settings.number, settings.caller_id or self.from_number, settings.timeout, reason=reason
        )
        self.performed.append(_TRANSFER)
        self._ending = True
        logger.info("{}: call {}: transferring to {}", self.name, self.control.call_sid, mask_number(settings.number))
        if say_handover:
            await self.push_frame(TTSSpeakFrame(settings.handover_line, category="transfer"))
        self.control.request_transfer(request)
        await self.push_frame(EndTaskFrame(reason="transfer"), FrameDirection.UPSTREAM)

    async def _say_and_end(self, line: str, category: str, action: str) -> None:
        self.performed.append(action)
        self._ending = True
        await self.push_frame(TTSSpeakFrame(line, category=category))
        await self.push_frame(EndTaskFrame(reason=action), FrameDirection.UPSTREAM)

    async def _back_from_transfer(self) -> None:
        settings = self.features.transfer
        if settings.on_no_answer == TRANSFER_END:
            async with self._lock:
                await self._say_and_end(settings.end_line, "transfer_failed", _END)
            return
        logger.info("{}: call {}: back from an unanswered transfer", self.name, self.control.call_sid)
        self.last_said = settings.fallback_line
        await self.push_frame(TTSSpeakFrame(settings.fallback_line, category="transfer_failed"))

    async def _store_opt_out(self, source: str) -> bool:
        entry = DncEntry(
            self.control.to,
            source,
            call_sid=self.control.call_sid,
            campaign_id=self.control.campaign_id,
            prospect_id=self.control.prospect_id,
        )
        if self.dnc is None:
            logger.warning("{}: call {}: opt-out, but no do-not-call sink is configured", self.name, entry.call_sid)
            return False
        try:
            async with asyncio.timeout(5.0):
                await self.dnc.add(entry)
        except Exception as exc:
            logger.error("{}: call {}: the do-not-call list refused {!r}: {}", self.name, entry.call_sid, entry, exc)
            return False
        logger.info(
            "{}: call {}: {} added to the do-not-call list ({})",
            self.name,
            entry.call_sid,
            mask_number(entry.number),
            source,
        )
        return True


# ------------------------------------------------------------------- tools


def transfer_call_tool(actions: CallActions) -> Tool:
    """``transfer_call``: connect the prospect with a human rep."""

    async def transfer_call(args: dict[str, Any]) -> ToolResult:
        if not await actions.transfer(str(args.get("reason") or "")):
            return ToolResult({"error": "no colleague can take the call now; offer a call back instead"})
        return ToolResult(
            {"status": "transferring; the handover line is being said, say nothing more"}, continue_model=False
        )

    return Tool(
        "transfer_call",
        "Transfer the call to a human colleague. Call it when the prospect asks to speak to a person, a manager or a "
        "sales rep, or needs something you cannot do. Do not say goodbye: a handover line is said for you.",
        {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why, in a few words."}},
        },
        transfer_call,
    )


def do_not_call_tool(actions: CallActions) -> Tool:
    """``do_not_call``: the prospect asked not to be called again."""

    async def do_not_call(args: dict[str, Any]) -> ToolResult:
        stored = await actions.opt_out("model")
        status = "removed from the list" if stored else "noted; the list could not be updated"
        return ToolResult(
            {"status": f"{status}; a confirmation is said for you and the call ends"}, continue_model=False
        )

    return Tool(
        "do_not_call",
        "Put the prospect's number on the do-not-call list and end the call. Call it at once when the prospect asks "
        "to be removed from the list, to stop calling, or not to be called again. Say nothing yourself: a "
        "confirmation is said for you.",
        {"type": "object", "properties": {}},
        do_not_call,
    )
