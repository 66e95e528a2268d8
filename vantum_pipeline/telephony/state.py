"""The lifecycle of one outbound call, as an explicit state machine.

::

    queued ──► ringing ──► answered ──► streaming ──► ended
       │          │            │                        ▲
       └──────────┴────────────┴────────────────────────┘

Twilio's status callbacks and our media websocket report progress from
different connections, so events can arrive out of order (an ``answered``
callback after the stream started) or twice. A move the table allows is
taken; any other event is ignored and reported as such (``advance`` returns
False), never raised: a late callback must not break a live call.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["TRANSITIONS", "CallState", "CallStateMachine", "state_for_status"]


class CallState(enum.StrEnum):
    QUEUED = "queued"
    RINGING = "ringing"
    ANSWERED = "answered"
    STREAMING = "streaming"
    ENDED = "ended"


TRANSITIONS: Mapping[CallState, frozenset[CallState]] = {
    CallState.QUEUED: frozenset({CallState.RINGING, CallState.ANSWERED, CallState.STREAMING, CallState.ENDED}),
    CallState.RINGING: frozenset({CallState.ANSWERED, CallState.STREAMING, CallState.ENDED}),
    CallState.ANSWERED: frozenset({CallState.STREAMING, CallState.ENDED}),
    CallState.STREAMING: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}

#: Twilio ``CallStatus`` values and the state each one means.
_STATUS_STATES: Mapping[str, CallState] = {
    "queued": CallState.QUEUED,
    "initiated": CallState.QUEUED,
    "ringing": CallState.RINGING,
    "in-progress": CallState.ANSWERED,
    "answered": CallState.ANSWERED,
    "completed": CallState.ENDED,
    "busy": CallState.ENDED,
    "no-answer": CallState.ENDED,
    "failed": CallState.ENDED,
    "canceled": CallState.ENDED,
}


def state_for_status(call_status: str) -> CallState | None:
    """The state a Twilio ``CallStatus`` means; None for an unknown status."""
    return _STATUS_STATES.get(call_status)


class CallStateMachine:
    """Current state plus the history of moves (state, monotonic time)."""

    def __init__(self, clock: float = 0.0) -> None:
        self.state = CallState.QUEUED
        self.history: list[tuple[CallState, float]] = [(CallState.QUEUED, clock)]

    def can_advance(self, target: CallState) -> bool:
        return target in TRANSITIONS[self.state]

    def advance(self, target: CallState, clock: float = 0.0) -> bool:
        """Move to ``target`` if the table allows it; False (no change) otherwise."""
        if target not in TRANSITIONS[self.state]:
            return False
        self.state = target
        self.history.append((target, clock))
        return True

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    def entered(self, state: CallState) -> float | None:
        """When ``state`` was entered, if it was."""
        for seen, at in self.history:
            if seen is state:
                return at
        return None
