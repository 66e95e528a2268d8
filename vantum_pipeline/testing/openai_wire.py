"""The OpenAI chat-completions wire format, sans I/O: what FakeOpenAI speaks.

Plain functions and classes that take and return values (dicts, bytes); the
aiohttp server in ``vantum_pipeline.testing.openai`` is a thin layer on top.

- ``validate_chat_request(body)`` checks a request body the way the API does
  (unknown top-level arguments, unknown message fields such as our own
  ``interrupted`` flag, roles, tool-call pairing, numeric ranges) and raises
  ``RequestRejected`` with the API's status and error shape.
- ``split_tokens(text)`` cuts text into plausible BPE-sized pieces whose
  concatenation is the text; ``count_prompt_tokens`` estimates a request's
  prompt size with the usual per-message overhead. Not tiktoken, but the same
  order of magnitude, which is what cost tests need.
- ``CompletionBuilder`` turns a reply (text and/or tool calls) into the
  streaming chunks (role delta first, content deltas, tool-call deltas by
  index with fragmented arguments, finish_reason, usage) or the non-streaming
  completion object.
- ``encode_sse(obj)`` frames one server-sent event; ``error_body`` builds the
  ``{"error": {...}}`` object every failure carries.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "SSE_DONE",
    "CompletionBuilder",
    "Reply",
    "RequestRejected",
    "ToolCall",
    "count_prompt_tokens",
    "encode_sse",
    "error_body",
    "last_user_text",
    "split_tokens",
    "validate_chat_request",
]

SSE_DONE: Final = b"data: [DONE]\n\n"

#: Top-level arguments the chat-completions endpoint accepts.
KNOWN_ARGUMENTS: Final = frozenset(
    {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
        "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n",
        "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options",
        "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier", "seed",
        "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
        "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
    }
)  # fmt: skip

#: Fields each message role may carry; anything else is rejected like the API does.
MESSAGE_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset({"role", "content", "name", "tool_calls", "function_call", "refusal", "audio"}),
    "tool": frozenset({"role", "content", "tool_call_id"}),
    "function": frozenset({"role", "content", "name"}),
}

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Words (with their leading space), digit groups, single punctuation, runs of whitespace.
_PIECES = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]|\s+")
_LONG_WORD = 8


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the fake model makes: ``arguments`` is a dict (sent as
    JSON) or a string sent verbatim (to script malformed arguments)."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the fake model answers: text, tool calls, or both (text first).

    ``finish_reason`` defaults to ``"tool_calls"`` when there are tool calls,
    else ``"stop"`` (``"length"`` when ``max_tokens`` cut the text).
    ``time_to_first_token`` / ``tokens_per_second`` override the fake's
    pacing for this reply only.
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    time_to_first_token: float | None = None
    tokens_per_second: float | None = None


class RequestRejected(Exception):
    """The API would refuse this request: ``status`` and the error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type=type, param=param, code=code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON object of every OpenAI error response."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def encode_sse(obj: Mapping[str, Any]) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# ------------------------------------------------------------------ tokens


def split_tokens(text: str) -> list[str]:
    """Cut ``text`` into token-like pieces; ``"".join(pieces) == text``."""
    pieces: list[str] = []
    for match in _PIECES.finditer(text):
        piece = match.group()
        core = piece.lstrip(" ")
        if core.isalpha() and len(core) > _LONG_WORD:
            lead = piece[: len(piece) - len(core)]
            parts = [core[i : i + 5] for i in range(0, len(core), 5)]
            parts[0] = lead + parts[0]
            pieces.extend(parts)
        else:
            pieces.append(piece)
    return pieces


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Plausible prompt size: 3 tokens per message, its content and tool
    calls, 3 to prime the reply, plus the tools' schemas."""
    total = 3
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        total += 3 + len(split_tokens(_content_text(message.get("content"))))
        if message.get("name"):
            total += 1
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, Mapping) else {}
            total += 3 + len(split_tokens(str(function.get("name", "")) + str(function.get("arguments", ""))))
    tools = body.get("tools")
    if tools:
        total += len(split_tokens(json.dumps(tools))) // 2
    return total


def last_user_text(body: Mapping[str, Any]) -> str:
    """The content of the request's last user message ('' when none): what a
    responder usually answers."""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


# -------------------------------------------------------------- validation


def _reject(message: str, param: str | None = None, code: str | None = None) -> RequestRejected:
    return RequestRejected(400, message, param=param, code=code)


def _check_range(body: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject(f"Invalid type for '{name}': expected a number, but got {type(value).__name__} instead.", name)
    if not low <= value <= high:
        raise _reject(
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, but got {value} instead."
            if value > high
            else f"Invalid '{name}': decimal below minimum value. Expected a value >= {low}, but got {value} instead.",
            name,
            "decimal_above_max_value" if value > high else "decimal_below_min_value",
        )


def _validate_tools(tools: Any) -> set[str]:
    if not isinstance(tools, list):
        raise _reject("Invalid type for 'tools': expected an array.", "tools")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        if (
            not isinstance(tool, Mapping)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), Mapping)
        ):
            raise _reject(f"Invalid value for 'tools[{i}]': expected a function tool.", f"tools[{i}]")
        name = tool["function"].get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _reject(
                f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                f"tools[{i}].function.name",
                "invalid_value",
            )
        parameters = tool["function"].get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise _reject(f"Invalid type for 'tools[{i}].function.parameters': expected an object.")
        names.add(name)
    return names


def _validate_message(i: int, message: Any) -> None:
    if not isinstance(message, Mapping):
        raise _reject(f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]")
    role = message.get("role")
    if not isinstance(role, str) or role not in MESSAGE_FIELDS:
        raise _reject(
            f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
            "'tool', and 'developer'.",
            f"messages[{i}].role",
            "invalid_value",
        )
    extra = sorted(set(message) - MESSAGE_FIELDS[role])
    if extra:
        unexpected = ", ".join(f"'{name}'" for name in extra)
        verb = "was" if len(extra) == 1 else "were"
        raise _reject(f"Additional properties are not allowed ({unexpected} {verb} unexpected) - 'messages.{i}'")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise _reject(f"Invalid type for 'messages[{i}].content': expected one of a string or array of objects.")
    if role == "assistant":
        if content is None and not message.get("tool_calls") and not message.get("function_call"):
            raise _reject(
                f"Invalid value for 'content': expected a string, got null. - 'messages[{i}].content'",
                f"messages[{i}].content",
            )
        for j, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(call, Mapping) or not call.get("id") or not isinstance(function, Mapping):
                raise _reject(f"Invalid value for 'messages[{i}].tool_calls[{j}]'.", f"messages[{i}].tool_calls[{j}]")
            if not isinstance(function.get("arguments"), str):
                raise _reject(
                    f"Invalid type for 'messages[{i}].tool_calls[{j}].function.arguments': expected a string."
                )
    elif content is None:
        raise _reject(
            f"Invalid value for 'content': expected a string, got null. - 'messages[{i}].content'",
            f"messages[{i}].content",
        )
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _reject(f"Missing required parameter: 'messages[{i}].tool_call_id'.", f"messages[{i}].tool_call_id")


def _validate_tool_pairing(messages: Sequence[Mapping[str, Any]]) -> None:
    """Every tool message answers the assistant message right before the
    tool run, and every tool call of that message is answered."""
    i = 0
    while i < len(messages):
        message = messages[i]
        if message.get("role") == "tool":
            raise _reject(
                "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                "with 'tool_calls'.",
                f"messages.[{i}].role",
            )
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        i += 1
        if not calls:
            continue
        pending = [call["id"] for call in calls]
        while i < len(messages) and messages[i].get("role") == "tool":
            call_id = messages[i].get("tool_call_id")
            if call_id not in pending:
                raise _reject(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    "with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            pending.remove(call_id)
            i += 1
        if pending:
            raise _reject(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
                f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}",
                f"messages.[{i - 1}].role",
            )


def validate_chat_request(body: Any) -> set[str]:
    """Raise ``RequestRejected`` where the API would answer 400; return the
    names of the request's function tools."""
    if not isinstance(body, Mapping):
        raise _reject("Invalid request body: expected a JSON object.")
    unknown = sorted(set(body) - KNOWN_ARGUMENTS)
    if unknown:
        raise _reject(f"Unrecognized request argument supplied: {unknown[0]}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _reject("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise _reject("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _reject("Invalid type for 'messages': expected an array of objects.", "messages")
    if not messages:
        raise _reject("[] is too short - 'messages'", "messages")
    for i, message in enumerate(messages):
        _validate_message(i, message)
    _validate_tool_pairing(messages)
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    _check_range(body, "frequency_penalty", -2, 2)
    _check_range(body, "presence_penalty", -2, 2)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _reject(f"Invalid '{name}': integer below minimum value. Expected a value >= 1.", name)
    if body.get("n") not in (None, 1):
        raise _reject("FakeOpenAI supports n=1 only.", "n")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise _reject(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    tools = body.get("tools")
    return _validate_tools(tools) if tools is not None else set()


# ------------------------------------------------------------- completions


@dataclass(slots=True)
class _Plan:
    content: list[str]
    tool_calls: list[tuple[str, str, list[str]]]  # (id, name, argument fragments)
    finish_reason: str


class CompletionBuilder:
    """Builds the chunks (or the whole completion) of one reply to ``body``.

    ``token_events()`` are the chunks that carry generated tokens (each
    content piece, each tool-call fragment), the unit of the fake's pacing;
    ``role_chunk()`` goes first, ``finish_chunk()`` and ``usage_chunk()``
    (only with ``stream_options.include_usage``) last.
    """

    def __init__(self, body: Mapping[str, Any], reply: Reply, *, model_version: str | None = None) -> None:
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model_version or str(body.get("model", "gpt-4o"))
        self.fingerprint = "fp_" + secrets.token_hex(5)
        options = body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))
        self.prompt_tokens = count_prompt_tokens(body)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        self._plan = self._plan_reply(reply, limit if isinstance(limit, int) else None)

    @staticmethod
    def _plan_reply(reply: Reply, limit: int | None) -> _Plan:
        content = split_tokens(reply.text)
        calls = [
            (call.id or "call_" + secrets.token_hex(12), call.name, _fragments(call.arguments_json()))
            for call in reply.tool_calls
        ]
        finish = reply.finish_reason or ("tool_calls" if calls else "stop")
        if limit is not None and len(content) > limit:
            content, calls, finish = content[:limit], [], "length"
        return _Plan(content, calls, finish)

    @property
    def completion_tokens(self) -> int:
        plan = self._plan
        return len(plan.content) + sum(2 + len(fragments) for _, _, fragments in plan.tool_calls)

    @property
    def text(self) -> str:
        return "".join(self._plan.content)

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def role_chunk(self) -> dict[str, Any]:
        # The API opens with an empty content string, or null when the reply is a tool call.
        content = "" if self._plan.content or not self._plan.tool_calls else None
        return self._chunk({"role": "assistant", "content": content, "refusal": None})

    def token_events(self) -> list[dict[str, Any]]:
        events = [self._chunk({"content": piece}) for piece in self._plan.content]
        for index, (call_id, name, fragments) in enumerate(self._plan.tool_calls):
            events.append(
                self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            events.extend(
                self._chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
                for fragment in fragments
            )
        return events

    def finish_chunk(self) -> dict[str, Any]:
        return self._chunk({}, self._plan.finish_reason)

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            "choices": [],
            "usage": self.usage(),
        }

    def completion(self) -> dict[str, Any]:
        """The non-streaming response object."""
        plan = self._plan
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(plan.content) if plan.content or not plan.tool_calls else None,
            "refusal": None,
            "annotations": [],
        }
        if plan.tool_calls:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": "".join(fragments)}}
                for call_id, name, fragments in plan.tool_calls
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}],
            "usage": self.usage(),
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
        }


def _fragments(arguments: str, size: int = 7) -> list[str]:
    """Argument JSON in small pieces, as the API streams it (never whole)."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
