"""How a call ended, what to do with the number next, and the per-call record.

The product's mapping from Twilio's final ``CallStatus`` (or the error that
stopped the call from being placed):

==================  ===============  =======================================
Twilio              outcome          what a campaign does with the number
==================  ===============  =======================================
busy                retry_later      call again later
no-answer           unreachable      mark the prospect unreachable
failed, 21211,      remove           take the number off the list
21217, 21610, ...
completed           completed        done (``answered_by`` says human or
                                     machine when AMD is on)
canceled            canceled         we canceled it before it was answered
other errors        error            our side failed (auth, network, 5xx)
==================  ===============  =======================================

A call that Twilio reports ``completed`` may have achieved something more
specific, which the call's pipeline concludes (``OutboundCall.conclude``):
``voicemail_left`` (a machine answered and the voicemail was played whole),
``machine`` (a machine answered and no voicemail was left), ``fax``,
``transferred`` (the prospect was connected to a rep), ``opted_out`` (the
prospect asked to be put on the do-not-call list). ``do_not_call`` is the
outcome of a call refused before any request because the number is on the
do-not-call list.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from loguru import logger

__all__ = [
    "INVALID_NUMBER_CODES",
    "CallOutcome",
    "CallRecord",
    "call_cost",
    "outcome_for_error",
    "outcome_for_status",
]


class CallOutcome(enum.StrEnum):
    COMPLETED = "completed"
    RETRY_LATER = "retry_later"
    UNREACHABLE = "unreachable"
    REMOVE = "remove"
    CANCELED = "canceled"
    ERROR = "error"
    VOICEMAIL_LEFT = "voicemail_left"
    MACHINE = "machine"
    FAX = "fax"
    TRANSFERRED = "transferred"
    OPTED_OUT = "opted_out"
    DO_NOT_CALL = "do_not_call"


#: Twilio error codes that mean "this number will never work": drop it.
INVALID_NUMBER_CODES = frozenset(
    {
        21211,  # invalid 'To' phone number
        21217,  # phone number not valid
        21216,  # account not allowed to call this number (blocked)
        21610,  # recipient unsubscribed
        13224,  # Dial: invalid phone number
    }
)
#: Codes that mean "nobody could be reached at this number right now".
UNREACHABLE_CODES = frozenset({21214})  # 'To' number cannot be reached
#: Codes that mean "try again later".
RETRY_CODES = frozenset({20429, 31005})  # too many requests; connection error

_STATUS_OUTCOMES = {
    "completed": CallOutcome.COMPLETED,
    "busy": CallOutcome.RETRY_LATER,
    "no-answer": CallOutcome.UNREACHABLE,
    "failed": CallOutcome.REMOVE,
    "canceled": CallOutcome.CANCELED,
}


def outcome_for_status(call_status: str) -> CallOutcome | None:
    """Outcome of a final ``CallStatus``; None while the call is not over.

    ``failed`` means Twilio could not connect the call at all (a number that
    passed validation but is not in service, rejected by the carrier): the
    product drops such numbers, whatever the error code.
    """
    return _STATUS_OUTCOMES.get(call_status)


def outcome_for_error(code: int | None, http_status: int | None = None) -> CallOutcome:
    """Outcome of a call that Twilio refused to place (REST error)."""
    if code in INVALID_NUMBER_CODES:
        return CallOutcome.REMOVE
    if code in UNREACHABLE_CODES:
        return CallOutcome.UNREACHABLE
    if code in RETRY_CODES or http_status == 429:
        return CallOutcome.RETRY_LATER
    return CallOutcome.ERROR


@dataclass(slots=True, frozen=True)
class CallRecord:
    """One line of the call log. ``to`` is masked; ``cost`` is in USD."""

    call_sid: str | None
    to: str
    outcome: CallOutcome
    status: str
    duration: float
    cost: float
    answered_by: str | None = None
    error_code: int | None = None
    campaign_id: str | None = None
    prospect_id: str | None = None

    def log(self) -> None:
        """Write the call's one log line."""
        logger.info(
            "call {} to {}: {} (status {}{}), {:.0f}s, ${:.4f}{}{}",
            self.call_sid or "-",
            self.to,
            self.outcome.value,
            self.status,
            f", error {self.error_code}" if self.error_code is not None else "",
            self.duration,
            self.cost,
            f", answered by {self.answered_by}" if self.answered_by else "",
            f", campaign {self.campaign_id}" if self.campaign_id else "",
        )


def call_cost(duration: float, price_per_minute: float) -> float:
    """Twilio bills voice calls per started minute."""
    if duration <= 0:
        return 0.0
    return math.ceil(duration / 60.0) * price_per_minute
