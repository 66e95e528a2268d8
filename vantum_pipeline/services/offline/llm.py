"""ScriptedLLMService: the rule-based sales agent behind the OpenAI service's interface.

    LLMContextFrame → LLMFullResponseStartFrame, LLMTextFrame*, LLMFullResponseEndFrame

An engine of the ``LLMService`` skeleton (``services/llm.py``), like the
OpenAI service: the same turn handling, brackets and outcomes.

Each ``LLMContextFrame`` starts a turn in a turn task (``create_turn_task``):
the ``ScriptedSalesAgent`` picks the reply from the context's messages (the
same ``LLMContext`` the aggregators share, read through ``api_messages()``),
and the reply is streamed word by word as ``LLMTextFrame``s, after
``time_to_first_token`` and at ``tokens_per_second`` when set (instant by
default: the agent needs no time to think).

Interruption cancels the turn task; tokens not yet pushed are never pushed,
and those in flight carry the old epoch and are dropped by the framework. A
newer context replacing a reply in progress closes its bracket first.

When the agent ends the call (not interested, goodbye, meeting booked, call
back), the outcome is recorded (``outcomes``, ``on_outcome``, as the OpenAI
service's ``record_outcome`` tool does) and, after the goodbye's
``LLMFullResponseEndFrame``, an ``EndTaskFrame(reason="end_call")`` goes
upstream: the task ends the call through every processor, and the transport
hangs up once the goodbye has played; later
contexts are ignored.

Metrics (labels ``service=scripted``, free): ``latency.llm_ttft``,
``usage.llm_prompt_tokens`` / ``usage.llm_completion_tokens`` (estimated at
four characters a token), ``service.request``.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.tools import OutcomeCallback, SalesOutcome
from vantum_pipeline.services.llm import LLMReply, LLMService
from vantum_pipeline.services.offline.agent import AgentReply, SalesScript, ScriptedSalesAgent

__all__ = ["ScriptedLLMService", "tokens_of"]

SERVICE = "scripted"


def tokens_of(text: str) -> list[str]:
    """The reply cut as a model streams it: each word with the space before it."""
    words = text.split(" ")
    return [words[0], *(f" {word}" for word in words[1:])] if text else []


def _estimate_tokens(text: str) -> int:
    return max(1, round(len(text) / 4)) if text else 0


class ScriptedLLMService(LLMService):
    """A deterministic stand-in for ``OpenAILLMService``; see the module docstring."""

    service: ClassVar[str] = SERVICE

    def __init__(
        self,
        script: SalesScript | None = None,
        *,
        agent: ScriptedSalesAgent | None = None,
        time_to_first_token: float = 0.0,
        tokens_per_second: float | None = None,
        on_outcome: OutcomeCallback | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(turn_timeout=60.0, on_outcome=on_outcome, name=name)
        if time_to_first_token < 0 or (tokens_per_second is not None and tokens_per_second <= 0):
            raise ConfigurationError(
                f"time_to_first_token must be >= 0 and tokens_per_second > 0, "
                f"got {time_to_first_token} and {tokens_per_second}"
            )
        self.agent = agent or ScriptedSalesAgent(script)
        self.time_to_first_token = time_to_first_token
        self.tokens_per_second = tokens_per_second
        #: Every reply chosen, in order (including interrupted ones).
        self.replies: list[AgentReply] = []

    async def respond(self, context: LLMContext, reply: LLMReply) -> None:
        started = time.monotonic()
        messages = context.api_messages()
        chosen = self.agent.reply(messages)
        self.replies.append(chosen)
        await self.metric("service.request", 1)
        if self.time_to_first_token:
            await asyncio.sleep(self.time_to_first_token)
        tokens = tokens_of(chosen.text)
        interval = 1 / self.tokens_per_second if self.tokens_per_second else 0.0
        first_at = time.monotonic()
        for index, token in enumerate(tokens):
            if interval and index:
                # Absolute pacing: late tokens catch up instead of drifting.
                delay = first_at + index * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await reply.token(token, self.name)
            if index == 0:
                await self.metric("latency.llm_ttft", time.monotonic() - started, "s")
        prompt = sum(_estimate_tokens(str(m.get("content") or "")) for m in messages)
        await self.metric("usage.llm_prompt_tokens", prompt, "tokens")
        await self.metric("usage.llm_completion_tokens", _estimate_tokens(chosen.text), "tokens")
        if chosen.end_call is not None:
            reply.end_call = True
            await self.record_outcome(SalesOutcome(outcome=chosen.end_call, notes=f"{chosen.intent}: {chosen.step}"))
