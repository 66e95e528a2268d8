"""Our conversation as pipecat's ``LLMContext``, and one turn's tool rounds.

A pipecat LLM service reads pipecat's ``LLMContext``: ``to_pipecat_context``
builds one from ours for every request. Messages are our history window as
the API sees it (``LLMContext.api_messages()``: our ``interrupted`` flag and
creation times never reach a request; an interrupted reply is sent as what
the callee heard). Tools are our ``Tool``\\ s plus the context's own schemas,
as pipecat ``FunctionSchema``\\ s.

A pipecat LLM service takes the system prompt as its ``system_instruction``
setting, not as a ``"system"`` message in the context (deprecated since
pipecat 1.9): ``to_pipecat_context(..., system_in_context=False)`` leaves the
system message(s) out, and ``system_instruction`` gives the prompt to set.

``ToolRound`` follows the function calls of one turn: which calls are still
running, what their results asked for (end the call, ask the model again),
and how many rounds the turn has left.

Importing this module imports pipecat: only ``interop/pipecat.py`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

try:
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
    from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
    from pipecat.processors.aggregators.llm_context import LLMContext as PipecatLLMContext
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    from vantum_pipeline.interop import PIPECAT_MISSING

    raise ImportError(PIPECAT_MISSING) from exc

from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.tools import Tool, ToolResult

__all__ = ["ToolRound", "system_instruction", "to_pipecat_context", "to_pipecat_tools"]


def _schema(tool: Mapping[str, Any]) -> FunctionSchema:
    function = tool.get("function", tool)
    parameters = function.get("parameters") or {}
    return FunctionSchema(
        name=str(function["name"]),
        description=str(function.get("description", "")),
        properties=dict(parameters.get("properties") or {}),
        required=list(parameters.get("required") or ()),
    )


def to_pipecat_tools(tools: Iterable[Tool], extra: Iterable[Mapping[str, Any]] = ()) -> ToolsSchema | None:
    """Our tools and chat-completions tool schemas as pipecat's ``ToolsSchema`` (None: no tools)."""
    schemas: dict[str, FunctionSchema] = {}
    for tool in tools:
        schemas[tool.name] = _schema(tool.schema())
    for schema in extra:
        converted = _schema(schema)
        schemas.setdefault(converted.name, converted)
    return ToolsSchema(standard_tools=list(schemas.values())) if schemas else None


def system_instruction(context: LLMContext) -> str | None:
    """The system message(s) of ``context`` as one pipecat ``system_instruction`` (None: there is none)."""
    parts = [m.content or "" for m in context.messages if m.role == "system"]
    return "\n\n".join(parts) if parts else None


def to_pipecat_context(
    context: LLMContext, tools: Iterable[Tool] = (), *, system_in_context: bool = True
) -> PipecatLLMContext:
    """A pipecat ``LLMContext`` holding what a request built from ``context`` would send.

    With ``system_in_context=False`` the system message(s) are left out: the
    prompt then goes to the service as its ``system_instruction``.
    """
    schema = to_pipecat_tools(tools, context.tools)
    messages: list[Any] = context.api_messages()
    if not system_in_context:
        messages = [m for m in messages if m.get("role") != "system"]
    if schema is None:
        return PipecatLLMContext(messages=messages)
    return PipecatLLMContext(messages=messages, tools=schema)


class ToolRound:
    """The tool calls of one turn: started, settled, and what they asked for.

    ``max_rounds`` bounds how often the model is asked again after results.
    """

    def __init__(self, max_rounds: int) -> None:
        self.rounds_left = max_rounds
        self.pending: set[str] = set()
        self.end_call = False
        #: The model said something this turn (an ``end_call`` then needs no goodbye).
        self.spoke = False
        self._continue: bool | None = None
        self._continued_to_end = False

    def expect(self, call_ids: Iterable[str]) -> None:
        self.pending.update(call_ids)

    def record(self, result: ToolResult) -> None:
        if result.end_call:
            self.end_call = True
        if result.continue_model is not None:
            self._continue = bool(self._continue) or result.continue_model

    def settle(self, call_id: str) -> bool:
        """Mark ``call_id`` done; True once no call of the round is pending."""
        self.pending.discard(call_id)
        return not self.pending

    def continue_model(self) -> bool:
        """Whether to ask the model again now that the round's results are in (uses up a round)."""
        wanted = self._continue if self._continue is not None else not (self.end_call and self.spoke)
        self._continue = None
        if not wanted or self.rounds_left <= 0:
            return False
        self.rounds_left -= 1
        if self.end_call:
            self._continued_to_end = True  # the model says goodbye, then the call ends
        return True

    def ending(self) -> bool:
        """True for the reply that follows an ``end_call`` round: the call ends after it."""
        return self._continued_to_end and not self.pending
