"""The conversation: messages, the campaign's system prompt, the history window.

``LLMContext`` is shared by the user aggregator (adds the user's turns), the
LLM service (reads it, adds tool calls and their results) and the assistant
aggregator (adds the bot's replies as the callee heard them).

Our messages are ``Message`` objects, not API dicts, because they carry what
the API must not see: ``interrupted`` (the callee cut the bot off; the content
is what was actually heard). ``api_messages()`` is what a request sends: the
history window, only API fields, nothing the API would refuse.

History window: the system message, then the last ``max_messages`` messages
(10..20, default 20), never starting with a tool result whose call fell out
of the window, and without tool calls whose results are not in yet.

The system prompt comes from a campaign template and the call's dynamic
context (prospect, company, product, objective, notes...):

    context = LLMContext.from_template(SALES_PROMPT, {"agent_name": "Sarah", ...})

A variable the template needs and the call does not provide is a
ConfigurationError naming it, at call start, never a ``{name}`` spoken to a
prospect.
"""

from __future__ import annotations

import string
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from vantum_pipeline.errors import ConfigurationError

__all__ = [
    "MAX_HISTORY",
    "MIN_HISTORY",
    "SALES_PROMPT",
    "FunctionCall",
    "LLMContext",
    "Message",
    "PromptTemplate",
]

Role = Literal["system", "user", "assistant", "tool"]

MIN_HISTORY: Final = 10
MAX_HISTORY: Final = 20
#: The whole transcript kept in memory (the window is what is sent): a bound
#: far above any phone call; the oldest messages go first past it.
MAX_TRANSCRIPT: Final = 1000


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A function call the model made: ``arguments`` is its JSON text."""

    id: str
    name: str
    arguments: str

    def to_api(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True, eq=False)
class Message:
    """One message of the conversation, with our own flags.

    ``interrupted``: the bot was cut off; ``content`` holds what the callee
    heard, and ``full_text`` the whole reply as it was to be said (what a
    resume after a false interruption speaks the rest of). ``provider``: the
    LLM provider that wrote an assistant message. None of them reaches the API
    (see ``to_api``).
    """

    role: Role
    content: str | None = None
    tool_calls: tuple[FunctionCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    interrupted: bool = False
    full_text: str | None = None
    created_at: float = field(default_factory=time.time)
    provider: str | None = None

    def to_api(self) -> dict[str, Any]:
        """The message as the API accepts it: only the fields it knows."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.to_api() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role in ("system", "user", "assistant"):
            message["name"] = self.name
        return message


class PromptTemplate:
    """A system prompt with ``{variable}`` fields (``{{`` for a literal brace).

    ``defaults`` fill variables the call does not give. Only plain names are
    allowed: no attribute access or indexing, so rendering can only insert
    the values given.
    """

    def __init__(self, template: str, *, defaults: Mapping[str, object] | None = None) -> None:
        fields: set[str] = set()
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigurationError(f"invalid system prompt template: {exc}") from exc
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conversion:
                raise ConfigurationError(
                    f"system prompt template field {{{name}}} must be a plain variable name like {{prospect_name}}"
                )
            fields.add(name)
        self.template = template
        self.fields: frozenset[str] = frozenset(fields)
        self.defaults: dict[str, object] = dict(defaults or {})

    def missing(self, variables: Mapping[str, object]) -> list[str]:
        """The template's variables that neither ``variables`` nor the
        defaults provide (None counts as missing), sorted."""
        merged = {**self.defaults, **variables}
        return sorted(name for name in self.fields if merged.get(name) is None)

    def render(self, variables: Mapping[str, object] | None = None) -> str:
        """The prompt; ConfigurationError naming every missing variable."""
        variables = variables or {}
        missing = self.missing(variables)
        if missing:
            names = ", ".join(missing)
            raise ConfigurationError(
                f"the system prompt needs {names}: missing from the call's context "
                f"(given: {', '.join(sorted(variables)) or 'nothing'})"
            )
        merged = {**self.defaults, **variables}
        return self.template.format_map({name: str(merged[name]) for name in self.fields})


#: The product's sales prompt. Needs agent_name, company_name, product_name,
#: prospect_name, prospect_company; call_objective and notes have defaults.
SALES_PROMPT: Final = PromptTemplate(
    """You are {agent_name}, a friendly and professional sales representative for {company_name}, \
on a phone call with {prospect_name} of {prospect_company}.
Your goal is to engage the prospect in a natural conversation, understand their needs, \
and determine if {product_name} is a good fit. Objective of this call: {call_objective}.
What we know about the prospect: {notes}

Guidelines:
- Be concise: respond in 1-2 sentences maximum
- Ask one question at a time
- Listen carefully and respond naturally
- Show empathy and understanding
- Don't be pushy; focus on helping
- If the prospect sounds busy, offer to call back later
- If the prospect is interested, offer to schedule a demo
- If not interested, politely thank them and end the call
- Record the result with record_outcome; when the conversation is over, say a short goodbye and call end_call
- If the prospect asks to be removed from the list, not to be called again, or to stop calling, call do_not_call \
at once and say nothing yourself: the confirmation is said for you
- If the prospect asks to speak to a person, a manager or a sales rep, and you have the transfer_call function, \
call it and say nothing yourself: the handover line is said for you

Remember: you're having a phone conversation. Keep responses brief and conversational, \
with no lists, markdown or emojis.""",
    defaults={"call_objective": "find out whether there is interest and, if so, book a demo", "notes": "nothing yet"},
)


class LLMContext:
    """The messages of one call, the tools the model may call, and the
    history window. See the module docstring."""

    def __init__(
        self,
        system_prompt: str | None = None,
        *,
        messages: Iterable[Message] = (),
        tools: Sequence[Mapping[str, Any]] = (),
        max_messages: int = MAX_HISTORY,
    ) -> None:
        if not MIN_HISTORY <= max_messages <= MAX_HISTORY:
            raise ConfigurationError(
                f"max_messages (history window) must be between {MIN_HISTORY} and {MAX_HISTORY}, got {max_messages}"
            )
        self.max_messages = max_messages
        self.messages: list[Message] = []
        if system_prompt is not None:
            self.messages.append(Message("system", system_prompt))
        self.messages.extend(messages)
        self.tools: list[dict[str, Any]] = [dict(tool) for tool in tools]
        #: The LLM provider that answered the latest turn (set by the LLM
        #: service); the assistant messages added after it record it.
        self.provider: str | None = None

    @classmethod
    def from_template(
        cls,
        template: PromptTemplate | str,
        variables: Mapping[str, object] | None = None,
        **options: Any,
    ) -> LLMContext:
        """A context whose system prompt is ``template`` rendered with the
        call's ``variables`` (ConfigurationError naming any missing one)."""
        if isinstance(template, str):
            template = PromptTemplate(template)
        return cls(template.render(variables), **options)

    # ------------------------------------------------------------ writing

    @property
    def system_prompt(self) -> str | None:
        for message in self.messages:
            if message.role == "system":
                return message.content
        return None

    @system_prompt.setter
    def system_prompt(self, text: str) -> None:
        for message in self.messages:
            if message.role == "system":
                message.content = text
                return
        self.messages.insert(0, Message("system", text))

    def add(self, message: Message) -> Message:
        self.messages.append(message)
        self._bound()
        return message

    def add_user(self, text: str) -> Message:
        return self.add(Message("user", text))

    def add_assistant(self, text: str, *, interrupted: bool = False) -> Message:
        return self.add(Message("assistant", text, interrupted=interrupted, provider=self.provider))

    def add_tool_calls(self, calls: Sequence[FunctionCall], content: str | None = None) -> Message:
        """The assistant message asking for ``calls``; their results follow it."""
        if not calls:
            raise ValueError("add_tool_calls needs at least one call")
        return self.add(Message("assistant", content, tool_calls=tuple(calls), provider=self.provider))

    def add_tool_result(self, call_id: str, content: str) -> Message:
        """Record the result of call ``call_id`` right after the message
        that made the call (and its other results), wherever the
        conversation is now: a result that completes late still pairs."""
        message = Message("tool", content, tool_call_id=call_id)
        for index in range(len(self.messages) - 1, -1, -1):
            candidate = self.messages[index]
            if candidate.role == "assistant" and any(call.id == call_id for call in candidate.tool_calls):
                position = index + 1
                while position < len(self.messages) and self.messages[position].role == "tool":
                    position += 1
                self.messages.insert(position, message)
                return message
        raise ValueError(f"no tool call {call_id!r} in the context")

    def _bound(self) -> None:
        excess = len(self.messages) - MAX_TRANSCRIPT
        if excess <= 0:
            return
        kept = [m for m in self.messages if m.role == "system"]
        rest = [m for m in self.messages if m.role != "system"][excess:]
        while rest and rest[0].role == "tool":
            rest.pop(0)
        self.messages = kept + rest

    # ------------------------------------------------------------ reading

    def _sendable(self) -> list[Message]:
        """Non-system messages the API may see: no empty (unheard) replies,
        no tool calls whose results are incomplete, no orphan results."""
        out: list[Message] = []
        messages = [m for m in self.messages if m.role != "system"]
        i = 0
        while i < len(messages):
            message = messages[i]
            if message.role == "tool":
                i += 1  # an orphan: its call was dropped or trimmed
                continue
            if message.role == "assistant" and message.tool_calls:
                j = i + 1
                while j < len(messages) and messages[j].role == "tool":
                    j += 1
                results = messages[i + 1 : j]
                answered = {r.tool_call_id for r in results}
                if all(call.id in answered for call in message.tool_calls):
                    wanted = {call.id for call in message.tool_calls}
                    out.append(message)
                    out.extend(r for r in results if r.tool_call_id in wanted)
                i = j
                continue
            if message.role == "assistant" and not (message.content or "").strip():
                i += 1  # interrupted before a word was heard: nothing was said
                continue
            out.append(message)
            i += 1
        return out

    def window(self) -> list[Message]:
        """The system message(s) and the last ``max_messages`` others, cut
        so that no tool result is separated from its call."""
        system = [m for m in self.messages if m.role == "system"]
        tail = self._sendable()[-self.max_messages :]
        while tail and tail[0].role == "tool":
            tail.pop(0)
        return system + tail

    def api_messages(self) -> list[dict[str, Any]]:
        """The window as API dicts, without our own flags."""
        return [message.to_api() for message in self.window()]

    @property
    def has_conversation(self) -> bool:
        """True once anybody said something (the opening turn is over)."""
        return any(m.role in ("user", "assistant") for m in self.messages)

    def __repr__(self) -> str:
        return f"<LLMContext {len(self.messages)} messages, {len(self.tools)} tools>"
