"""Function calling: Python coroutines the model may call during a turn.

A ``Tool`` is a name, a description and a JSON schema for the arguments (what
the model sees), and an async handler that receives the decoded arguments:

    async def check_calendar(args: dict[str, Any]) -> Any:
        return {"free": ["Tuesday 10:00", "Thursday 15:00"]}

    tool = Tool("check_calendar", "Free demo slots this week", {"type": "object", "properties": {}},
                check_calendar)

The handler returns the result the model reads next: a string, any
JSON-serialisable value, or a ``ToolResult`` that also says whether the call
should end (``end_call``) and whether the model should be asked to continue.
An exception becomes an error result the model can react to.

Two tools every sales call needs ship here: ``end_call_tool()`` (the service
makes the bot say goodbye, then ends the call) and ``record_outcome_tool()``
(the call's result: meeting booked, not interested, ...).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from vantum_pipeline.errors import ConfigurationError

__all__ = [
    "OUTCOMES",
    "SalesOutcome",
    "Tool",
    "ToolHandler",
    "ToolResult",
    "decode_arguments",
    "end_call_tool",
    "record_outcome_tool",
    "result_text",
]

ToolHandler = Callable[[dict[str, Any]], Awaitable[Any]]

OUTCOMES: Final = (
    "meeting_booked",
    "interested",
    "callback_requested",
    "not_interested",
    "do_not_call",
    "wrong_person",
    "voicemail",
    "other",
)

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A handler's answer with instructions for the turn.

    ``content`` goes back to the model. ``end_call``: hang up once this turn
    has been spoken. ``continue_model``: ask the model for more after the
    results (default: yes, unless the call is ending and the bot already
    said its goodbye).
    """

    content: Any = "ok"
    end_call: bool = False
    continue_model: bool | None = None


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the model may call; ``timeout`` bounds each run."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: ToolHandler
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or not set(self.name) <= _NAME_CHARS:
            raise ConfigurationError(f"tool name {self.name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        if self.parameters.get("type") != "object":
            raise ConfigurationError(f"tool {self.name!r}: parameters must be a JSON schema of type 'object'")
        if not callable(self.handler):
            raise ConfigurationError(f"tool {self.name!r}: handler must be an async function")
        if self.timeout <= 0:
            raise ConfigurationError(f"tool {self.name!r}: timeout must be > 0")

    def schema(self) -> dict[str, Any]:
        """The tool as the chat-completions API wants it."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }


def decode_arguments(tool: Tool, arguments: str) -> dict[str, Any]:
    """The call's arguments as a dict; ValueError (with a message meant for
    the model) when they are not a JSON object or miss a required field."""
    try:
        decoded = json.loads(arguments or "{}")
    except ValueError as exc:
        raise ValueError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise ValueError("arguments must be a JSON object")
    required = tool.parameters.get("required") or ()
    missing = [name for name in required if name not in decoded]
    if missing:
        raise ValueError(f"missing required argument(s): {', '.join(missing)}")
    return decoded


def result_text(content: Any) -> str:
    """A result as the text of a tool message."""
    if isinstance(content, str):
        return content
    try:
        return json.dumps(content)
    except (TypeError, ValueError):
        return str(content)


# ------------------------------------------------------------- built-ins


def end_call_tool(description: str | None = None) -> Tool:
    """``end_call``: the conversation is over. The LLM service lets the bot
    say goodbye (asking the model for one if it has not said anything this
    turn), then pushes an EndFrame downstream after it, so the transport
    hangs up once the goodbye has played."""

    async def end_call(args: dict[str, Any]) -> ToolResult:
        return ToolResult({"status": "the call ends after your goodbye"}, end_call=True)

    return Tool(
        "end_call",
        description
        or "End the phone call. Call it when the conversation is over, after saying a brief goodbye in the same reply.",
        {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "Why the call ends, in a few words."}},
        },
        end_call,
    )


@dataclass(frozen=True, slots=True)
class SalesOutcome:
    """The sales result of a call as the model recorded it (meeting booked, not
    interested...); not to be confused with ``telephony.CallOutcome``, how the
    phone call itself ended."""

    outcome: str
    notes: str = ""
    meeting_time: str | None = None
    recorded_at: float = field(default_factory=time.time)


OutcomeCallback = Callable[[SalesOutcome], Awaitable[None] | None]


def record_outcome_tool(on_outcome: OutcomeCallback | None = None, *, outcomes: tuple[str, ...] = OUTCOMES) -> Tool:
    """``record_outcome``: store the call's result (e.g. a meeting booked);
    ``on_outcome(SalesOutcome)`` is called with it (sync or async)."""

    async def record_outcome(args: dict[str, Any]) -> Any:
        outcome = args.get("outcome")
        if outcome not in outcomes:
            raise ValueError(f"outcome must be one of {', '.join(outcomes)}, got {outcome!r}")
        meeting_time = args.get("meeting_time")
        result = SalesOutcome(
            outcome=str(outcome),
            notes=str(args.get("notes") or ""),
            meeting_time=str(meeting_time) if meeting_time else None,
        )
        if on_outcome is not None:
            produced = on_outcome(result)
            if inspect.isawaitable(produced):
                await produced
        return {"recorded": result.outcome}

    return Tool(
        "record_outcome",
        "Record the result of this call, e.g. a meeting booked with its time, or that the prospect is not interested.",
        {
            "type": "object",
            "properties": {
                "outcome": {"type": "string", "enum": list(outcomes)},
                "meeting_time": {"type": "string", "description": "When a meeting was booked: day and time agreed."},
                "notes": {"type": "string", "description": "One sentence worth remembering about the prospect."},
            },
            "required": ["outcome"],
        },
        record_outcome,
    )
