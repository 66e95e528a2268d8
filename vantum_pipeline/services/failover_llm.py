"""FailoverLLMService: replies from an ordered list of LLM providers, with hedging.

    FailoverLLMService([OpenAILLMService(openai), OpenAILLMService(groq)], FailoverLLMSettings(hedge_after=1.2))

An ``LLMService`` whose engine is whichever member answers. Each turn asks
the first provider whose circuit breaker lets it through (``ProviderPool``).
When the request fails (an error, a 429 its own retry policy gave up on, no
first token in time) the breaker counts it and the *same turn* re-asks the
next provider with the same context. When it fails after part of the reply
was already spoken, the next provider is asked to continue the reply where it
stopped (the context plus the spoken part as the assistant's message and an
instruction not to repeat it), so the callee hears one reply.

Hedging (``hedge_after`` seconds, e.g. the primary's p95 time to first
token): when the provider asked has not produced a first token by then, the
next allowed provider is asked too. Both replies are held; the first to
produce a token wins and is released, the other request is cancelled (its
stream closed at once) and charged (``abandoned``: the provider bills the
prompt of a cancelled request). A request that fails while the other runs
leaves the other to answer.

The downstream frames are one response bracket whoever answered; the
context's ``provider`` (and so the assistant message recorded next) names the
provider that did. Members are not linked into the pipeline: the failover
starts and stops them, and their metrics (labelled with their own service)
and phrases go out through it. ``provider.switch`` / ``provider.state``
metrics as in ``services/failover.py``, plus ``llm.hedge`` (a second request
went out) and ``llm.hedge_won`` (labels ``service`` = the winner).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import MetricsFrame
from vantum_pipeline.processors.context import LLMContext, Message
from vantum_pipeline.processors.phrases import FallbackPhrases
from vantum_pipeline.processors.tools import OutcomeCallback
from vantum_pipeline.services.answer_cache import AnswerCache
from vantum_pipeline.services.circuit import BreakerState
from vantum_pipeline.services.failover import FailoverSettings, ProviderPool
from vantum_pipeline.services.llm import LLMReply, LLMService

__all__ = ["FailoverLLMService", "FailoverLLMSettings"]

CONTINUE_INSTRUCTION = (
    "Your last reply was cut off after the words already spoken above. Continue it from exactly where it "
    "stopped, without repeating anything already said."
)


@dataclass(frozen=True, slots=True)
class FailoverLLMSettings:
    """``hedge_after`` None: no hedging. The fallback phrases, filler and turn
    bound are the failover's (the members' own are not used)."""

    failover: FailoverSettings = field(default_factory=FailoverSettings)
    hedge_after: float | None = None
    thinking_after: float | None = 4.0
    turn_timeout: float = 45.0
    fallback_phrases: FallbackPhrases = field(default_factory=FallbackPhrases)

    def __post_init__(self) -> None:
        if self.hedge_after is not None and self.hedge_after <= 0:
            raise ConfigurationError(f"FailoverLLMSettings.hedge_after must be > 0 or None, got {self.hedge_after}")


class FailoverLLMService(LLMService):
    """LLM over ordered providers with a circuit breaker each; see the module docstring."""

    service: ClassVar[str] = "failover"

    def __init__(
        self,
        providers: Sequence[LLMService],
        settings: FailoverLLMSettings | None = None,
        *,
        answer_cache: AnswerCache | None = None,
        on_outcome: OutcomeCallback | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or FailoverLLMSettings()
        super().__init__(
            fallback_phrases=self.settings.fallback_phrases,
            thinking_after=self.settings.thinking_after,
            turn_timeout=self.settings.turn_timeout,
            answer_cache=answer_cache,
            on_outcome=on_outcome,
            name=name,
        )
        for provider in providers:
            if not isinstance(provider, LLMService) or isinstance(provider, FailoverLLMService):
                raise ConfigurationError(f"FailoverLLMService takes LLM services (not failovers), got {provider!r}")
        self.pool: ProviderPool[LLMService] = ProviderPool(
            providers,
            kind="llm",
            service_of=_service_label,
            settings=self.settings.failover,
            clock=clock,
            owner=self.name,
        )
        self.hedges = 0

    @property
    def providers(self) -> list[LLMService]:
        return list(self.pool.providers)

    @property
    def switches(self) -> int:
        return self.pool.switches

    @property
    def cost(self) -> float:
        return sum(p.cost for p in self.pool.providers)

    def state_of(self, provider: LLMService) -> BreakerState:
        return self.pool.breaker(provider).state

    async def engine_start(self) -> None:
        for provider in self.pool.providers:
            provider.attach(self)
            await provider.engine_start()

    async def engine_close(self) -> None:
        for provider in self.pool.providers:
            await provider.cancel_tasks(timeout=0.3)
            await provider.cleanup()

    # ------------------------------------------------------------ turns

    async def respond(self, context: LLMContext, reply: LLMReply) -> None:
        tried: list[LLMService] = []
        provider = self.pool.choose()
        while True:
            tried.append(provider)
            asked = context if not reply.spoke else _continuation(context, reply.content)
            failed, error = await self._ask(provider, asked, reply, tried)
            await self._flush_metrics()
            if error is None:
                return
            following = self.pool.next_after(tried)
            if following is None:
                raise error
            self.pool.switched(failed, following, str(error))
            await self._flush_metrics()
            provider = following

    async def _ask(
        self, provider: LLMService, context: LLMContext, reply: LLMReply, tried: list[LLMService]
    ) -> tuple[LLMService, ServiceError | None]:
        """Ask ``provider`` (and, past ``hedge_after`` with no token, the next
        one too); the provider whose reply counted, and its error if it failed."""
        hedge_after = self.settings.hedge_after
        first = _Request(self, provider, context, reply, held=hedge_after is not None)
        if hedge_after is None:
            await first.run_inline()
            return provider, first.finish_inline()
        second: _Request | None = None
        try:
            await first.wait_first(hedge_after)
            winner = first
            following = None if first.has_output or first.done else self.pool.next_after(tried)
            if following is not None:
                tried.append(following)
                self.hedges += 1
                logger.info("{}: no token from {} after {:.2f}s: hedging with {}", self.name, provider.name,
                            hedge_after, following.name)  # fmt: skip
                await self.metric("llm.hedge", 1)
                second = _Request(self, following, context, reply, held=True)
                second.start()
                winner = await self._race(first, second)
            return winner.provider, await winner.finish()
        finally:
            await first.stop()
            if second is not None:
                await second.stop()

    async def _race(self, first: _Request, second: _Request) -> _Request:
        """The first request to produce output, or to end well; when both
        fail, the first (its error is the turn's)."""
        racers = [first, second]
        while True:
            for request in racers:
                if request.has_output or (request.done and request.error is None):
                    other = second if request is first else first
                    if not other.done:
                        await other.cancel_and_charge()
                    elif other is first and first.error is not None:
                        self.pool.breaker(first.provider).record_failure()
                    await self.push_frame(
                        MetricsFrame("llm.hedge_won", 1.0, "", self.name, {"service": _service_label(request.provider)})
                    )
                    return request
            if second.done and second in racers:
                racers.remove(second)  # it failed: the first may still answer
                self.pool.breaker(second.provider).record_failure()
            if first.done and first in racers and second in racers:
                racers.remove(first)  # it failed: the second may still answer
            if not racers or all(r.done for r in racers):
                if second in racers:
                    self.pool.breaker(second.provider).record_failure()
                return first  # both failed: the first's error stands for the turn
            waiters = [asyncio.ensure_future(r.reply.first_token.wait()) for r in racers]
            tasks = [r.task for r in racers if r.task is not None]
            try:
                await asyncio.wait([*waiters, *tasks], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _flush_metrics(self) -> None:
        for frame in self.pool.metrics():
            await self.push_frame(frame)

    async def metric(self, metric: str, value: float, unit: str = "") -> None:
        await self.push_frame(MetricsFrame(metric, float(value), unit, self.name, {"service": self.service}))


class _Request:
    """One provider's attempt at the turn's reply."""

    def __init__(
        self, owner: FailoverLLMService, provider: LLMService, context: LLMContext, parent: LLMReply, *, held: bool
    ) -> None:
        self.owner = owner
        self.provider = provider
        self.context = context
        self.reply = LLMReply(owner, context, held=held, parent=parent)
        self.task: asyncio.Task[Any] | None = None
        self.error: ServiceError | None = None
        self.charged = False

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    @property
    def has_output(self) -> bool:
        return self.reply.output_started

    async def run_inline(self) -> None:
        """Run in the caller's task (no hedge): an interruption cancels it there."""
        try:
            await self.provider.respond(self.context, self.reply)
        except ServiceError as exc:
            self.error = exc
        except Exception as exc:  # a member's bug must not end the turn: the next provider answers
            logger.opt(exception=exc).error("{}: {} failed: {}", self.owner.name, self.provider.name, exc)
            self.error = ServiceError(
                f"{type(exc).__name__}: {exc}", service=_service_label(self.provider), retryable=False
            )

    def start(self) -> None:
        """Run in a turn task of the failover (cancelled by an interruption)."""
        if self.task is None:
            self.task = self.owner.create_turn_task(self.run_inline(), f"ask:{self.provider.name}")

    async def wait_first(self, timeout: float) -> None:
        self.start()
        assert self.task is not None
        waiter = asyncio.ensure_future(self.reply.first_token.wait())
        try:
            await asyncio.wait({waiter, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    async def finish(self) -> ServiceError | None:
        """This request answers: release what it holds, wait for its end."""
        await self.reply.release()
        if self.task is not None:
            await self.task
        return self.finish_inline()

    def finish_inline(self) -> ServiceError | None:
        self.reply.merge_into_parent()
        breaker = self.owner.pool.breaker(self.provider)
        if self.error is None:
            breaker.record_success()
        else:
            breaker.record_failure()
        return self.error

    async def cancel_and_charge(self) -> None:
        """The other request won: cancel this one (its stream closes) and count its cost."""
        await self.stop()
        if not self.charged:
            self.charged = True
            await self.provider.abandoned(self.context, self.reply)

    async def stop(self) -> None:
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)


def _continuation(context: LLMContext, spoken: str) -> LLMContext:
    """The same conversation with the reply spoken so far and the instruction to go on."""
    messages = [*context.messages, Message("assistant", spoken), Message("system", CONTINUE_INSTRUCTION)]
    copy = LLMContext(messages=messages, tools=context.tools, max_messages=context.max_messages)
    copy.provider = context.provider
    return copy


def _service_label(provider: LLMService) -> str:
    labels = getattr(provider, "_labels", None)
    if isinstance(labels, dict) and isinstance(labels.get("service"), str):
        return str(labels["service"])
    return provider.service
