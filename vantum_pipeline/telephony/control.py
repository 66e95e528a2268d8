"""What a call's pipeline may ask of the phone call it serves.

The processors of ``telephony`` (the answering-machine gate, the call
actions, the keypad) do not talk to Twilio: they talk to a ``CallControl``.
``OutboundCall`` is one (the server hands it to the pipeline factory as
``TwilioCall.call``); tests and other transports can provide their own.

- ``to`` / ``call_sid`` / ``campaign_id`` / ``prospect_id``: who is called;
- ``machine_detection``: the AMD verdict holder, None when AMD is off;
- ``conclude(outcome)``: what the call achieved (``voicemail_left``,
  ``opted_out``, ...), used for its record when Twilio reports it completed;
- ``request_transfer(request)``: once the pipeline has ended (after the
  handover line has played), redirect the live call to the rep;
- ``resumed_after``: why this media stream is not the call's first
  (``"transfer_failed"``: the rep did not answer and the call came back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.telephony.amd import MachineDetection
from vantum_pipeline.telephony.numbers import mask_number, validate_e164
from vantum_pipeline.telephony.outcome import CallOutcome

__all__ = ["RESUMED_AFTER_TRANSFER", "CallControl", "TransferRequest"]

#: ``resumed_after`` of a stream that came back from an unanswered transfer.
RESUMED_AFTER_TRANSFER = "transfer_failed"


@dataclass(slots=True, frozen=True)
class TransferRequest:
    """Connect the callee to ``number`` (a rep), showing ``caller_id``,
    ringing at most ``timeout`` seconds (Twilio's ``<Dial timeout>``: 5-600)."""

    number: str
    caller_id: str | None = None
    timeout: int = 20
    reason: str = ""

    def __post_init__(self) -> None:
        validate_e164(self.number, field="transfer number")
        if self.caller_id is not None:
            validate_e164(self.caller_id, field="transfer caller id")
        if not 5 <= self.timeout <= 600:
            raise ConfigurationError(f"transfer timeout must be 5-600 seconds, got {self.timeout}")

    def __repr__(self) -> str:
        return f"TransferRequest({mask_number(self.number)}, timeout={self.timeout}, reason={self.reason!r})"


class CallControl(Protocol):
    """See the module docstring."""

    @property
    def to(self) -> str: ...

    @property
    def call_sid(self) -> str | None: ...

    @property
    def campaign_id(self) -> str | None: ...

    @property
    def prospect_id(self) -> str | None: ...

    @property
    def machine_detection(self) -> MachineDetection | None: ...

    @property
    def resumed_after(self) -> str | None: ...

    def conclude(self, outcome: CallOutcome, *, needs_clean_end: bool = False) -> None:
        """Record what the call achieved. ``needs_clean_end``: the outcome
        holds only if the pipeline ends by its EndFrame (everything played),
        not by a hang-up in the middle."""
        ...

    def request_transfer(self, request: TransferRequest) -> None: ...
