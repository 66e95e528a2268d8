"""Answering-machine detection (AMD): Twilio's verdict on who picked up.

With ``MachineDetection`` on a placed call, Twilio listens to the first
seconds of the answer and says who answered in ``AnsweredBy``:

============================  ==============================================
``human``                     a person
``machine_start``             a machine (``MachineDetection=Enable``: said
                              as soon as it is known, during the greeting)
``machine_end_beep``          a machine whose greeting ended with a beep
``machine_end_silence``       ... ended in silence
``machine_end_other``         ... ended some other way
                              (the three ``machine_end_*`` come with
                              ``DetectMessageEnd``: the greeting is over, a
                              voicemail may be left now)
``fax``                       a fax machine
``unknown``                   AMD could not tell within its timeout
============================  ==============================================

With ``AsyncAmd=true`` the call is connected at once (our media stream
starts while AMD listens) and the verdict arrives later as a form POST to
``AsyncAmdStatusCallback`` with ``CallSid``, ``AccountSid``, ``AnsweredBy``
and ``MachineDetectionDuration`` (milliseconds). ``parse_amd_callback``
reads it (sans I/O); ``MachineDetection`` holds one call's verdict for the
pipeline to await.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from loguru import logger

from vantum_pipeline.errors import ProtocolError

__all__ = ["AmdVerdict", "AnsweredBy", "MachineDetection", "parse_amd_callback"]


class AnsweredBy(enum.StrEnum):
    HUMAN = "human"
    MACHINE_START = "machine_start"
    MACHINE_END_BEEP = "machine_end_beep"
    MACHINE_END_SILENCE = "machine_end_silence"
    MACHINE_END_OTHER = "machine_end_other"
    FAX = "fax"
    UNKNOWN = "unknown"

    @property
    def is_machine(self) -> bool:
        return self.value.startswith("machine_")

    @property
    def greeting_over(self) -> bool:
        """The machine's greeting has ended: a message may be left now."""
        return self.value.startswith("machine_end_")


@dataclass(slots=True, frozen=True)
class AmdVerdict:
    """One AMD result. ``duration_ms``: how long AMD listened (None if not said)."""

    answered_by: AnsweredBy
    duration_ms: int | None = None
    call_sid: str | None = None


def parse_amd_callback(params: Mapping[str, str]) -> AmdVerdict:
    """The verdict in an AMD status callback's form parameters.

    Raises ProtocolError when ``AnsweredBy`` is missing. A value Twilio may
    add in the future (not in the table above) is read as ``unknown``, and
    logged: the call goes on as if AMD could not tell.
    """
    raw = params.get("AnsweredBy")
    if not raw:
        raise ProtocolError("AMD callback without AnsweredBy")
    try:
        answered_by = AnsweredBy(raw)
    except ValueError:
        logger.warning("AMD callback: unknown AnsweredBy {!r}, read as 'unknown'", raw[:40])
        answered_by = AnsweredBy.UNKNOWN
    duration: int | None = None
    raw_duration = params.get("MachineDetectionDuration")
    if raw_duration:
        try:
            duration = int(raw_duration)
        except ValueError:
            logger.warning("AMD callback: MachineDetectionDuration {!r} is not an integer", raw_duration[:20])
    return AmdVerdict(answered_by, duration if duration is None or duration >= 0 else None, params.get("CallSid"))


class MachineDetection:
    """The AMD verdict of one call, as it arrives; the first one counts.

    The AMD callback may come before the media stream has even started, or
    long after: ``decide`` stores it, ``wait`` returns it (None if it did not
    come within the timeout).
    """

    def __init__(self) -> None:
        self.verdict: AmdVerdict | None = None
        self._decided = asyncio.Event()

    @property
    def decided(self) -> bool:
        return self.verdict is not None

    def decide(self, verdict: AmdVerdict) -> bool:
        """Record ``verdict``; False (ignored) when there already is one."""
        if self.verdict is not None:
            return False
        self.verdict = verdict
        self._decided.set()
        return True

    async def wait(self, timeout: float) -> AmdVerdict | None:
        """The verdict, or None after ``timeout`` seconds without one. Cancel-safe."""
        try:
            async with asyncio.timeout(timeout):
                await self._decided.wait()
        except TimeoutError:
            return None
        return self.verdict
