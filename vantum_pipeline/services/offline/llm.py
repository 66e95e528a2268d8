"""ScriptedLLMService: the rule-based sales agent behind the OpenAI service's interface.

    LLMContextFrame → LLMFullResponseStartFrame, LLMTextFrame*, LLMFullResponseEndFrame

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
import inspect
import time
from typing import Any

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    EndTaskFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.tools import OutcomeCallback, SalesOutcome
from vantum_pipeline.services.offline.agent import AgentReply, SalesScript, ScriptedSalesAgent

__all__ = ["ScriptedLLMService", "tokens_of"]

SERVICE = "scripted"
_LABELS = {"service": SERVICE}


def tokens_of(text: str) -> list[str]:
    """The reply cut as a model streams it: each word with the space before it."""
    words = text.split(" ")
    return [words[0], *(f" {word}" for word in words[1:])] if text else []


def _estimate_tokens(text: str) -> int:
    return max(1, round(len(text) / 4)) if text else 0


class ScriptedLLMService(FrameProcessor):
    """A deterministic stand-in for ``OpenAILLMService``; see the module docstring."""

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
        super().__init__(name=name)
        if time_to_first_token < 0 or (tokens_per_second is not None and tokens_per_second <= 0):
            raise ConfigurationError(
                f"time_to_first_token must be >= 0 and tokens_per_second > 0, "
                f"got {time_to_first_token} and {tokens_per_second}"
            )
        self.agent = agent or ScriptedSalesAgent(script)
        self.time_to_first_token = time_to_first_token
        self.tokens_per_second = tokens_per_second
        self._on_outcome = on_outcome
        self.outcomes: list[SalesOutcome] = []
        #: Every reply chosen, in order (including interrupted ones).
        self.replies: list[AgentReply] = []
        self._turn_task: asyncio.Task[Any] | None = None
        self._bracket_open = False
        self._ending = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, LLMContextFrame):
            await self._start_turn(frame.context)
            return
        if isinstance(frame, InterruptionFrame):
            self._stop_turn()
            self._bracket_open = False  # the interruption closes it implicitly
        elif isinstance(frame, CancelFrame):
            self._stop_turn()
        elif isinstance(frame, EndFrame):
            await self._finish_turn()
        await self.push_frame(frame, direction)

    # ------------------------------------------------------------- turns

    async def _start_turn(self, context: Any) -> None:
        if not isinstance(context, LLMContext):
            raise ConfigurationError(f"LLMContextFrame.context must be an LLMContext, got {type(context).__name__}")
        if self._ending:
            logger.debug("{}: the call is ending; context ignored", self.name)
            return
        self._stop_turn()
        if self._bracket_open:
            self._bracket_open = False
            await self.push_frame(LLMFullResponseEndFrame())
        self._turn_task = self.create_turn_task(self._run_turn(context.api_messages()), "turn")

    def _stop_turn(self) -> None:
        task, self._turn_task = self._turn_task, None
        if task is not None and not task.done():
            task.cancel()

    async def _finish_turn(self) -> None:
        task = self._turn_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=5.0)

    async def _run_turn(self, messages: list[dict[str, Any]]) -> None:
        started = time.monotonic()
        reply = self.agent.reply(messages)
        self.replies.append(reply)
        await self._metric("service.request", 1)
        await self.push_frame(LLMFullResponseStartFrame())
        self._bracket_open = True
        if self.time_to_first_token:
            await asyncio.sleep(self.time_to_first_token)
        tokens = tokens_of(reply.text)
        interval = 1 / self.tokens_per_second if self.tokens_per_second else 0.0
        first_at = time.monotonic()
        for index, token in enumerate(tokens):
            if interval and index:
                # Absolute pacing: late tokens catch up instead of drifting.
                delay = first_at + index * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.push_frame(LLMTextFrame(token))
            if index == 0:
                await self._metric("latency.llm_ttft", time.monotonic() - started, "s")
        prompt = sum(_estimate_tokens(str(m.get("content") or "")) for m in messages)
        await self._metric("usage.llm_prompt_tokens", prompt, "tokens")
        await self._metric("usage.llm_completion_tokens", _estimate_tokens(reply.text), "tokens")
        await self.push_frame(LLMFullResponseEndFrame())
        self._bracket_open = False
        if reply.end_call is not None:
            self._ending = True
            await self._record_outcome(SalesOutcome(outcome=reply.end_call, notes=f"{reply.intent}: {reply.step}"))
            await self.push_frame(EndTaskFrame(reason="end_call"), FrameDirection.UPSTREAM)

    async def _record_outcome(self, outcome: SalesOutcome) -> None:
        self.outcomes.append(outcome)
        logger.info("{}: call outcome recorded: {}", self.name, outcome.outcome)
        if self._on_outcome is not None:
            produced = self._on_outcome(outcome)
            if inspect.isawaitable(produced):
                await produced

    async def _metric(self, metric: str, value: float, unit: str = "") -> None:
        await self.push_frame(MetricsFrame(metric=metric, value=value, unit=unit, processor=self.name, labels=_LABELS))
