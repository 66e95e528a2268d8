"""Keypad input: digit sequences (DTMF) mapped to actions.

The Twilio input transport turns each ``dtmf`` message of the media stream
into an ``InputDTMFFrame(digit)``. ``KeypadProcessor`` (anywhere after the
input transport) collects the digits into a sequence and runs the action
bound to it:

- a sequence ends as soon as it matches a binding that no longer binding
  extends ("9" with bindings {"9", "0"} fires at once);
- otherwise it ends ``inter_digit_timeout`` seconds after its last digit
  (then it fires if it matches: "1" with bindings {"1", "12"});
- a sequence no binding starts with is dropped at once (logged), as is one
  longer than ``max_digits``.

Actions are coroutines (``bindings={"9": actions.opt_out, "0": actions.transfer}``);
``keypad_bindings`` builds them from ``KeypadSettings`` names and a
``CallActions``. One action runs at a time, in an owned task; the digits
(``InputDTMFFrame``) are passed on unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import CancelFrame, EndFrame, Frame, InputDTMFFrame
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.telephony.actions import CallActions
from vantum_pipeline.telephony.settings import KEYPAD_ACTIONS

__all__ = ["KeypadAction", "KeypadProcessor", "keypad_bindings"]

KeypadAction = Callable[[], Coroutine[Any, Any, Any]]


def keypad_bindings(names: Mapping[str, str], actions: CallActions) -> dict[str, KeypadAction]:
    """Bindings from action names (``"opt_out"``, ``"transfer"``, ``"repeat"``)."""

    async def opt_out() -> None:
        await actions.opt_out("keypad")

    async def transfer() -> None:
        await actions.transfer("keypad")

    table: dict[str, KeypadAction] = {"opt_out": opt_out, "transfer": transfer, "repeat": actions.repeat}
    unknown = sorted(set(names.values()) - set(KEYPAD_ACTIONS))
    if unknown:
        raise ConfigurationError(f"unknown keypad action {unknown[0]!r}; expected one of {', '.join(KEYPAD_ACTIONS)}")
    return {sequence: table[name] for sequence, name in names.items()}


class KeypadProcessor(FrameProcessor):
    """See the module docstring."""

    def __init__(
        self,
        bindings: Mapping[str, KeypadAction],
        *,
        inter_digit_timeout: float = 2.0,
        max_digits: int = 8,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if inter_digit_timeout <= 0 or max_digits < 1:
            raise ConfigurationError("inter_digit_timeout must be > 0 and max_digits >= 1")
        for sequence in bindings:
            if not sequence or len(sequence) > max_digits:
                raise ConfigurationError(f"keypad sequence {sequence!r} must be 1-{max_digits} keys")
        self.bindings = dict(bindings)
        self.inter_digit_timeout = inter_digit_timeout
        self.max_digits = max_digits
        #: Sequences that triggered an action, and those dropped, in order.
        self.fired: list[str] = []
        self.unmatched: list[str] = []
        self._digits = ""
        self._timer: asyncio.Task[None] | None = None
        self._running: asyncio.Task[Any] | None = None

    @property
    def digits(self) -> str:
        """The sequence being typed."""
        return self._digits

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InputDTMFFrame):
            self._on_digit(frame.digit)
        elif isinstance(frame, EndFrame | CancelFrame):
            self._cancel_timer()
        await self.push_frame(frame, direction)

    def _on_digit(self, digit: str) -> None:
        self._cancel_timer()
        self._digits += digit
        sequence = self._digits
        candidates = [s for s in self.bindings if s.startswith(sequence)]
        if not candidates or len(sequence) > self.max_digits:
            self._drop(sequence)
            return
        if candidates == [sequence]:
            self._fire(sequence)
            return
        self._timer = self.create_task(self._expire(sequence), "keypad-timeout")

    async def _expire(self, sequence: str) -> None:
        await asyncio.sleep(self.inter_digit_timeout)
        self._timer = None
        if self._digits != sequence:
            return
        if sequence in self.bindings:
            self._fire(sequence)
        else:
            self._drop(sequence)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done() and timer is not asyncio.current_task():
            timer.cancel()

    def _drop(self, sequence: str) -> None:
        self._digits = ""
        self.unmatched.append(sequence)
        logger.info("{}: keypad sequence {!r} matches no action; ignored", self.name, sequence[:16])

    def _fire(self, sequence: str) -> None:
        self._digits = ""
        if self._running is not None and not self._running.done():
            logger.info("{}: keypad sequence {!r} ignored: an action is still running", self.name, sequence)
            self.unmatched.append(sequence)
            return
        self.fired.append(sequence)
        logger.info("{}: keypad sequence {!r}: running its action", self.name, sequence)
        self._running = self.create_task(self.bindings[sequence](), f"keypad:{sequence}")
