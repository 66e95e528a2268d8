"""What every LLM service shares, whatever model answers.

    LLMContextFrame → LLMFullResponseStartFrame, LLMTextFrame*, LLMFullResponseEndFrame

``LLMService`` is the turn skeleton; a provider subclass is its *engine*:
``respond(context, reply)`` streams one reply into an ``LLMReply`` (tokens,
phrases, the wish to end the call) and raises ``ServiceError`` when it cannot.
The skeleton does the rest, once for all:

- each ``LLMContextFrame`` starts a turn in a turn task (``create_turn_task``),
  so the next interruption cancels it; a newer context replacing a reply in
  progress closes that reply's bracket first; contexts that arrive once the
  call is ending are ignored;
- the response bracket, whatever happens inside: ``LLMFullResponseStartFrame``
  first, ``LLMFullResponseEndFrame`` last;
- the product's fallbacks: the ``thinking`` filler when the first token is
  ``thinking_after`` seconds late, and when the engine fails before saying
  anything, a cached answer (``AnswerCache``, see below) or the fallback
  phrase (``timeout`` for a first token that never came, ``error``
  otherwise, ``greeting`` on the opening turn) as a ``TTSSpeakFrame``; a
  reply cut short after tokens were spoken ends where it is;
- ``end_call``: the goodbye (the model's, or the goodbye phrase), then an
  ``EndTaskFrame`` upstream; outcomes (``outcomes``, ``on_outcome``);
- which provider answered: ``context.provider`` is set to the engine that
  produced the reply's first token, and the assistant message the aggregator
  adds next records it (``Message.provider``);
- the answer cache: with ``answer_cache`` set, each reply completed cleanly
  (text, no function call) is stored under the last user utterance, and a
  turn whose engine fails (rate limited, down) before a token is answered
  from it when it holds that question; never otherwise. A rate-limited
  engine whose question the cache holds does not wait to retry
  (``LLMReply.cache_ready``): the cache answers at once.

An engine runs inside the host's turn task: an interruption cancels it
there. ``attach(host)`` makes an engine report through another service (a
failover): its metrics and phrases go out through the host.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, ClassVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError
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
    StartFrame,
    TTSSpeakFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.phrases import FallbackPhrases
from vantum_pipeline.processors.tools import OutcomeCallback, SalesOutcome
from vantum_pipeline.services.answer_cache import AnswerCache

__all__ = ["FirstTokenTimeout", "LLMReply", "LLMService"]


class FirstTokenTimeout(ServiceError):
    """No first token within the engine's deadline: the product gives up on
    the request and speaks a fallback rather than retrying."""


class LLMReply:
    """One turn's reply as engines write it.

    ``token(text, provider)`` speaks a piece of the reply (an ``LLMTextFrame``,
    or the parent reply's token when this reply is one provider's part of a
    failover's reply). While the reply is *held* (a hedged request that has
    not won yet) tokens are kept, and phrases dropped; ``release()`` lets
    them out. ``say(category)`` speaks a fallback phrase. ``first_token`` is
    set by the first output.
    """

    def __init__(
        self, host: LLMService, context: LLMContext, *, held: bool = False, parent: LLMReply | None = None
    ) -> None:
        self.host = host
        self.context = context
        self.parent = parent
        self.opening = not context.has_conversation
        self.held = held
        self.spoke = False  # the model's text went out (or is held)
        self.output_started = False  # the first token (or function call) arrived
        self.end_call = False
        self.said: set[str] = set()  # fallback categories spoken
        self.text: list[str] = []
        self.tool_calls = 0
        #: The answer cache holds this turn's question: an engine that is rate
        #: limited gives up at once (the cache answers) rather than waiting.
        self.cache_ready = False
        self.provider: str | None = None  # the engine that produced the first output
        self.first_token = asyncio.Event()
        self._released = asyncio.Event()
        if not held:
            self._released.set()
        self._pending: list[str] = []

    @property
    def content(self) -> str:
        return "".join(self.text)

    def started(self, provider: str) -> None:
        """The engine ``provider`` has its first output (a token or a call)."""
        if self.output_started:
            return
        self.output_started = True
        self.provider = provider
        self.first_token.set()
        if not self.held:
            self._announce()

    def _announce(self) -> None:
        if self.parent is not None:
            self.parent.started(self.provider or "")
        elif self.provider is not None:
            self.context.provider = self.provider

    async def token(self, text: str, provider: str) -> None:
        if not text:
            return
        if not self.output_started:
            self.started(provider)
        self.spoke = True
        self.text.append(text)
        if self.held:
            self._pending.append(text)
        else:
            await self._out(text)

    async def _out(self, text: str) -> None:
        if self.parent is not None:
            await self.parent.token(text, self.provider or "")
        else:
            await self.host.push_frame(LLMTextFrame(text))

    async def wait_released(self) -> None:
        """Until this reply may act (at once unless held): an engine waits here
        before running functions, so that a hedged request that loses never
        runs them."""
        await self._released.wait()

    async def release(self) -> None:
        """Stop holding: the tokens kept so far go out now."""
        self.held = False
        self._released.set()
        if self.output_started:
            self._announce()
        pending, self._pending = self._pending, []
        for text in pending:
            await self._out(text)

    async def say(self, category: str) -> None:
        self.said.add(category)
        if self.held:
            return  # a request that may lose must not speak
        if self.parent is not None:
            await self.parent.say(category)
            return
        text = self.host.fallback_phrases.phrase(category)
        await self.host.push_frame(TTSSpeakFrame(text, category=category))

    def merge_into_parent(self) -> None:
        """What this part of the reply did that the whole reply must know."""
        if self.parent is not None:
            self.parent.end_call |= self.end_call
            self.parent.tool_calls += self.tool_calls


class LLMService(FrameProcessor):
    """Base of the LLM services; see the module docstring.

    A subclass sets ``service`` and implements ``respond``; optionally
    ``engine_start`` / ``engine_close`` and ``cost``.
    """

    #: The metric label.
    service: ClassVar[str] = "llm"

    def __init__(
        self,
        *,
        fallback_phrases: FallbackPhrases | None = None,
        thinking_after: float | None = None,
        turn_timeout: float = 45.0,
        answer_cache: AnswerCache | None = None,
        on_outcome: OutcomeCallback | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if turn_timeout <= 0 or (thinking_after is not None and thinking_after <= 0):
            raise ConfigurationError(
                f"turn_timeout must be > 0 and thinking_after > 0 or None, got {turn_timeout}/{thinking_after}"
            )
        self.fallback_phrases = fallback_phrases or FallbackPhrases()
        self.thinking_after = thinking_after
        self.turn_timeout = turn_timeout
        self.answer_cache = answer_cache
        self._on_outcome = on_outcome
        self.outcomes: list[SalesOutcome] = []
        self._host: LLMService = self
        self._turn_task: asyncio.Task[Any] | None = None
        self._bracket_open = False
        self._ending = False

    # ------------------------------------------------------------ engine (override)

    async def respond(self, context: LLMContext, reply: LLMReply) -> None:
        """Stream one reply to ``context`` into ``reply``. Raises ServiceError
        (``FirstTokenTimeout`` when no first token came in time)."""
        raise NotImplementedError

    async def engine_start(self) -> None:
        """At StartFrame (or when a failover starts its members)."""

    async def engine_close(self) -> None:
        """At cleanup: release clients; never raises."""

    async def abandoned(self, context: LLMContext, reply: LLMReply) -> None:
        """A request for ``reply`` was cancelled by a hedge: count what it
        cost (the provider bills a cancelled request's prompt)."""

    @property
    def cost(self) -> float:
        """Dollars spent by this service so far."""
        return 0.0

    # ------------------------------------------------------------ public

    def attach(self, host: LLMService) -> None:
        """Run this engine for ``host``'s turns: metrics and phrases go out through it."""
        self._host = host

    async def metric(self, metric: str, value: float, unit: str = "") -> None:
        frame = MetricsFrame(metric=metric, value=float(value), unit=unit, processor=self.name)
        frame.labels = {"service": self.service}
        await self._host.push_frame(frame)

    async def record_outcome(self, outcome: SalesOutcome) -> None:
        self.outcomes.append(outcome)
        logger.info("{}: call outcome recorded: {}", self.name, outcome.outcome)
        if self._host is not self:
            await self._host.record_outcome(outcome)
            return
        if self._on_outcome is not None:
            produced = self._on_outcome(outcome)
            if inspect.isawaitable(produced):
                await produced

    # ------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, LLMContextFrame):
            await self._start_turn(frame.context)
            return
        if isinstance(frame, StartFrame):
            await self.engine_start()
        elif isinstance(frame, InterruptionFrame):
            await self._stop_turn(cancel=True)
            self._bracket_open = False  # the interruption closes it implicitly
        elif isinstance(frame, CancelFrame):
            # The call is over: the reply is cancelled, not awaited here (the
            # pipeline's stop awaits this processor's tasks, bounded).
            task, self._turn_task = self._turn_task, None
            if task is not None:
                task.cancel()
        elif isinstance(frame, EndFrame):
            await self._stop_turn(cancel=False)
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await self.engine_close()

    async def _start_turn(self, context: Any) -> None:
        if not isinstance(context, LLMContext):
            raise ConfigurationError(f"LLMContextFrame.context must be an LLMContext, got {type(context).__name__}")
        if self._ending:
            logger.debug("{}: the call is ending; context ignored", self.name)
            return
        await self._stop_turn(cancel=True)
        if self._bracket_open:
            # A newer context replaced a reply in progress: close its bracket.
            self._bracket_open = False
            await self.push_frame(LLMFullResponseEndFrame())
        self._turn_task = self.create_turn_task(self._run_turn(context), "turn")

    async def _stop_turn(self, *, cancel: bool) -> None:
        task, self._turn_task = self._turn_task, None
        if task is None or task.done():
            return
        if cancel:
            task.cancel()
        timeout = 1.5 if cancel else self.turn_timeout
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.error("{}: turn did not stop within {:.1f}s; cancelling", self.name, timeout)
            task.cancel()

    async def _run_turn(self, context: LLMContext) -> None:
        reply = LLMReply(self, context)
        question = _last_user_text(context)
        reply.cache_ready = self.answer_cache is not None and bool(question) and self.answer_cache.holds(question)
        await self.push_frame(LLMFullResponseStartFrame())
        self._bracket_open = True
        filler = None
        if self.thinking_after is not None and not reply.opening:
            filler = self.create_turn_task(self._filler(reply, self.thinking_after), "thinking")
        try:
            async with asyncio.timeout(self.turn_timeout):
                await self.respond(context, reply)
            if self.answer_cache is not None and question and reply.spoke and not reply.tool_calls:
                self.answer_cache.store(question, reply.content)
        except FirstTokenTimeout as exc:
            logger.warning("{}: {}", self.name, exc)
            await self._fallback(reply, "timeout", question, context)
        except (ServiceError, TimeoutError) as exc:
            logger.error("{}: reply failed: {}", self.name, str(exc) or f"turn took over {self.turn_timeout:.1f}s")
            await self._fallback(reply, "error", question, context)
        except Exception as exc:
            # A bug, not the service: still, the callee must not hear dead air.
            logger.opt(exception=exc).error("{}: reply failed: {}: {}", self.name, type(exc).__name__, exc)
            await self._fallback(reply, "error", question, context)
        finally:
            if filler is not None:
                filler.cancel()
        if reply.end_call and not reply.spoke:
            await reply.say("goodbye")
        await self.push_frame(LLMFullResponseEndFrame())
        self._bracket_open = False
        if reply.end_call:
            self._ending = True
            await self.push_frame(EndTaskFrame(reason="end_call"), FrameDirection.UPSTREAM)

    async def _filler(self, reply: LLMReply, delay: float) -> None:
        await asyncio.sleep(delay)
        if not reply.output_started:
            await reply.say("thinking")

    async def _fallback(self, reply: LLMReply, category: str, question: str, context: LLMContext) -> None:
        if reply.spoke:
            return  # a reply cut short ends where it is
        if self.answer_cache is not None and question:
            cached = self.answer_cache.lookup(question)
            if cached is not None:
                logger.info("{}: the model is unavailable; answering from the cache", self.name)
                await self.metric("llm.cache_answer", 1)
                await reply.token(cached, "cache")
                return
        if reply.opening:
            category = "greeting"
        await reply.say(category)


def _last_user_text(context: LLMContext) -> str:
    for message in reversed(context.messages):
        if message.role == "user":
            return message.content or ""
        if message.role == "assistant" and not message.tool_calls:
            return ""  # the last word is the bot's: no question to answer
    return ""
