"""A cost cap per call: past it, the agent wraps up politely and hangs up.

``BudgetGuard`` sits just before the TTS. It watches the call's
``CostTracker``; when the running cost passes ``max_cost`` it

1. stops new bot text: TextFrames and TTSSpeakFrames arriving after that
   moment are dropped (what already passed it, the sentence being spoken,
   is finished);
2. sends the wrap-up phrase to the TTS (``TTSSpeakFrame``, category
   ``"budget"``) and a ``call.budget_exceeded`` MetricsFrame (the call
   record notes the outcome from it);
3. asks for a graceful end: an ``EndTaskFrame`` pushed upstream, with the
   reason; the task queues the ``EndFrame`` at the head, so the whole
   pipeline ends after the phrase has been spoken.

    tracker = CostTracker(prices)
    guard = BudgetGuard(tracker, max_cost=0.50)
    Pipeline([..., llm, sentences, guard, tts, transport.output(), ...])
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import EndTaskFrame, Frame, MetricsFrame, StartFrame, TextFrame, TTSSpeakFrame
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.settings import env_float, load_env, optional_env

__all__ = ["BUDGET_EXCEEDED", "BudgetExceeded", "BudgetGuard", "BudgetSettings"]

#: The MetricsFrame name, and the code in the EndFrame's reason.
BUDGET_EXCEEDED = "call.budget_exceeded"

DEFAULT_WRAP_UP_PHRASE = (
    "I'm sorry, I have to wrap up our call here. Thank you so much for your time, and have a great day. Goodbye!"
)


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """``CALL_BUDGET_USD`` (unset: no cap) and ``BUDGET_WRAP_UP_PHRASE``."""

    max_call_cost: float | None = None
    wrap_up_phrase: str = DEFAULT_WRAP_UP_PHRASE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BudgetSettings:
        env = load_env(env)
        phrase = optional_env(env, "BUDGET_WRAP_UP_PHRASE", DEFAULT_WRAP_UP_PHRASE)
        assert phrase is not None
        return cls(max_call_cost=env_float(env, "CALL_BUDGET_USD", minimum=0.0), wrap_up_phrase=phrase)


@dataclass(frozen=True, slots=True)
class BudgetExceeded:
    """Why the call was wrapped up."""

    cost: float
    max_cost: float

    @property
    def reason(self) -> str:
        return f"{BUDGET_EXCEEDED}: call cost ${self.cost:.4f} passed the ${self.max_cost:.4f} cap"


class BudgetGuard(FrameProcessor):
    """Ends the call politely once ``tracker.total`` passes ``max_cost``."""

    def __init__(
        self,
        tracker: CostTracker,
        max_cost: float,
        *,
        wrap_up_phrase: str = DEFAULT_WRAP_UP_PHRASE,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not max_cost >= 0:
            raise ConfigurationError(f"max_cost must be >= 0 dollars, got {max_cost}")
        if not wrap_up_phrase.strip():
            raise ConfigurationError("wrap_up_phrase must not be empty")
        self.tracker = tracker
        self.max_cost = max_cost
        self.wrap_up_phrase = wrap_up_phrase
        #: Set when the cap was passed; None while within budget.
        self.exceeded: BudgetExceeded | None = None
        #: Bot text dropped after the cap was passed.
        self.dropped_text = 0
        self._tripped = asyncio.Event()
        tracker.add_listener(self._on_cost)

    @classmethod
    def from_settings(cls, tracker: CostTracker, settings: BudgetSettings) -> BudgetGuard | None:
        """A guard for ``settings``, or None when no cap is set."""
        if settings.max_call_cost is None:
            return None
        return cls(tracker, settings.max_call_cost, wrap_up_phrase=settings.wrap_up_phrase)

    def _on_cost(self, tracker: CostTracker, added: float) -> None:
        if self.exceeded is None and tracker.total > self.max_cost:
            self.exceeded = BudgetExceeded(cost=tracker.total, max_cost=self.max_cost)
            self._tripped.set()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            self.create_task(self._wait_and_wrap_up(), "budget", essential=True)
        elif (
            self.exceeded is not None
            and direction is FrameDirection.DOWNSTREAM
            and isinstance(frame, TextFrame | TTSSpeakFrame)
        ):
            self.dropped_text += 1
            return
        await self.push_frame(frame, direction)

    async def _wait_and_wrap_up(self) -> None:
        await self._tripped.wait()
        exceeded = self.exceeded
        assert exceeded is not None
        logger.warning("{}: {}; wrapping up the call", self.name, exceeded.reason)
        # Pushed past this processor: its own drop rule does not apply.
        await self.push_frame(TTSSpeakFrame(self.wrap_up_phrase, category="budget"))
        await self.push_frame(
            MetricsFrame(
                metric=BUDGET_EXCEEDED,
                value=1.0,
                processor=self.name,
                labels={"cost": f"{exceeded.cost:.6f}", "max_cost": f"{exceeded.max_cost:.6f}"},
            )
        )
        await self.push_frame(EndTaskFrame(reason=exceeded.reason), FrameDirection.UPSTREAM)

    async def cleanup(self) -> None:
        self.tracker.remove_listener(self._on_cost)
