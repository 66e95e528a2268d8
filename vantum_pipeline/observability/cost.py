"""What a call costs, live and at the end, per service.

The services report what they consume as ``usage.*`` MetricsFrames
(``MetricsCollector`` feeds them here); ``Prices`` turns usage into dollars:

    ===========================  ========  ==================================
    usage metric                 service   price (product defaults)
    ===========================  ========  ==================================
    ``usage.stt_seconds``        deepgram  $0.0043 per minute of audio
    ``usage.llm_prompt_tokens``  openai    $2.50 per 1M input tokens
    ``usage.llm_completion_…``   openai    $10.00 per 1M output tokens
    ``usage.tts_characters``     cartesia  $0.10 per 1,000 characters
    ``usage.call_seconds``       twilio    $0.014 per minute of call
    ===========================  ========  ==================================

The local engines (pocketsphinx, espeak, scripted, local audio) are free.
Usage of a service with no price is kept (it shows in the usage figures)
and costs nothing; it is logged once so that a missing price gets noticed.
Twilio bills whole minutes; like the product's estimates, the figure here is
linear in seconds (the bill may round up).

Live figures: ``total``, ``cost_by_service()``, ``cost_per_minute()`` (total
over the minutes of call so far). ``finish()`` freezes the call's duration
and returns the final ``CostSnapshot``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.metrics import (
    USAGE_CALL_SECONDS,
    USAGE_LLM_COMPLETION_TOKENS,
    USAGE_LLM_PROMPT_TOKENS,
    USAGE_STT_SECONDS,
    USAGE_TTS_CHARACTERS,
)
from vantum_pipeline.settings import env_float, load_env

__all__ = ["CostSnapshot", "CostTracker", "Prices"]

FREE_SERVICES: Final = frozenset({"pocketsphinx", "espeak", "scripted", "local", "offline"})

CostListener = Callable[["CostTracker", float], None]


@dataclass(frozen=True, slots=True)
class Prices:
    """The product's prices in US dollars; override any from the environment
    (``PRICE_DEEPGRAM_PER_MINUTE``, ``PRICE_OPENAI_INPUT_PER_1M_TOKENS``,
    ``PRICE_OPENAI_OUTPUT_PER_1M_TOKENS``, ``PRICE_CARTESIA_PER_1K_CHARACTERS``,
    ``PRICE_TWILIO_PER_MINUTE``, and for the backup voices
    ``PRICE_DEEPGRAM_TTS_PER_1K_CHARACTERS``, ``PRICE_OPENAI_TTS_PER_1M_CHARACTERS``).

    ``extra``: unit prices of other providers, by (service label, usage
    metric), e.g. a second LLM endpoint labelled ``groq``:
    ``{("groq", "usage.llm_prompt_tokens"): 0.59e-6, ...}``.
    """

    deepgram_per_minute: float = 0.0043
    openai_input_per_million_tokens: float = 2.50
    openai_output_per_million_tokens: float = 10.00
    cartesia_per_thousand_characters: float = 0.10
    twilio_per_minute: float = 0.014
    deepgram_tts_per_thousand_characters: float = 0.030
    openai_tts_per_million_characters: float = 15.0
    extra: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if name == "extra":
                continue
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigurationError(f"price {name} must be >= 0, got {value}")
        for key, value in self.extra.items():
            if not value >= 0:
                raise ConfigurationError(f"price of {key} must be >= 0, got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Prices:
        env = load_env(env)
        default = cls()

        def price(name: str, fallback: float) -> float:
            value = env_float(env, name, fallback, minimum=0.0)
            assert value is not None
            return value

        return cls(
            deepgram_per_minute=price("PRICE_DEEPGRAM_PER_MINUTE", default.deepgram_per_minute),
            openai_input_per_million_tokens=price(
                "PRICE_OPENAI_INPUT_PER_1M_TOKENS", default.openai_input_per_million_tokens
            ),
            openai_output_per_million_tokens=price(
                "PRICE_OPENAI_OUTPUT_PER_1M_TOKENS", default.openai_output_per_million_tokens
            ),
            cartesia_per_thousand_characters=price(
                "PRICE_CARTESIA_PER_1K_CHARACTERS", default.cartesia_per_thousand_characters
            ),
            twilio_per_minute=price("PRICE_TWILIO_PER_MINUTE", default.twilio_per_minute),
            deepgram_tts_per_thousand_characters=price(
                "PRICE_DEEPGRAM_TTS_PER_1K_CHARACTERS", default.deepgram_tts_per_thousand_characters
            ),
            openai_tts_per_million_characters=price(
                "PRICE_OPENAI_TTS_PER_1M_CHARACTERS", default.openai_tts_per_million_characters
            ),
        )

    def unit_prices(self) -> dict[tuple[str, str], float]:
        """Dollars per unit of each (service, usage metric)."""
        return {
            ("deepgram", USAGE_STT_SECONDS): self.deepgram_per_minute / 60.0,
            ("openai", USAGE_LLM_PROMPT_TOKENS): self.openai_input_per_million_tokens / 1_000_000,
            ("openai", USAGE_LLM_COMPLETION_TOKENS): self.openai_output_per_million_tokens / 1_000_000,
            ("cartesia", USAGE_TTS_CHARACTERS): self.cartesia_per_thousand_characters / 1_000,
            ("twilio", USAGE_CALL_SECONDS): self.twilio_per_minute / 60.0,
            ("deepgram-tts", USAGE_TTS_CHARACTERS): self.deepgram_tts_per_thousand_characters / 1_000,
            ("openai-tts", USAGE_TTS_CHARACTERS): self.openai_tts_per_million_characters / 1_000_000,
            **self.extra,
        }


@dataclass(frozen=True, slots=True)
class CostSnapshot:
    """Cost figures at one moment (or final, when ``final``)."""

    total: float
    by_service: dict[str, float]
    usage: dict[str, dict[str, float]]
    duration_seconds: float
    per_minute: float | None
    final: bool = False
    currency: str = "USD"

    def as_dict(self) -> dict[str, Any]:
        """JSON-serializable; dollars rounded to micro-dollars."""
        return {
            "currency": self.currency,
            "total": round(self.total, 6),
            "by_service": {service: round(cost, 6) for service, cost in sorted(self.by_service.items())},
            "usage": {service: dict(sorted(usage.items())) for service, usage in sorted(self.usage.items())},
            "duration_seconds": round(self.duration_seconds, 3),
            "per_minute": None if self.per_minute is None else round(self.per_minute, 6),
            "final": self.final,
        }


class CostTracker:
    """Usage and cost of one call, per service.

    ``clock`` measures the call's duration (from ``start()``, called by the
    collector at StartFrame, or at the first usage). Not thread-safe: feed it
    from the event loop.
    """

    def __init__(self, prices: Prices | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.prices = prices or Prices()
        self._unit_prices = self.prices.unit_prices()
        self._clock = clock
        self._usage: dict[str, dict[str, float]] = {}
        self._cost: dict[str, float] = {}
        self._total = 0.0
        self._started: float | None = None
        self._finished: float | None = None
        self._unpriced_warned: set[tuple[str, str]] = set()
        self._listeners: list[CostListener] = []

    # ------------------------------------------------------------- feeding

    def start(self) -> None:
        """Start the call's clock (once; later calls do nothing)."""
        if self._started is None:
            self._started = self._clock()

    def add_usage(self, service: str, metric: str, amount: float) -> float:
        """Count ``amount`` of ``metric`` for ``service``; return its cost in dollars."""
        if not amount >= 0:
            logger.warning("cost: ignoring a usage of {!r} for {} of {}", amount, service, metric)
            return 0.0
        self.start()
        usage = self._usage.setdefault(service, {})
        usage[metric] = usage.get(metric, 0.0) + amount
        price = self._unit_prices.get((service, metric))
        if price is None:
            if service not in FREE_SERVICES and (service, metric) not in self._unpriced_warned:
                self._unpriced_warned.add((service, metric))
                logger.info("cost: no price for {} of {}; counted as free", metric, service or "<no service>")
            price = 0.0
        cost = amount * price
        self._cost[service] = self._cost.get(service, 0.0) + cost
        self._total += cost
        for listener in list(self._listeners):
            listener(self, cost)
        return cost

    def add_listener(self, listener: CostListener) -> None:
        """Call ``listener(tracker, cost_added)`` after every usage added."""
        self._listeners.append(listener)

    def remove_listener(self, listener: CostListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def finish(self) -> CostSnapshot:
        """Freeze the call's duration; the final figures."""
        if self._finished is None:
            self.start()
            self._finished = self._clock()
        return self.snapshot()

    # ------------------------------------------------------------- figures

    @property
    def total(self) -> float:
        """Dollars so far."""
        return self._total

    @property
    def finished(self) -> bool:
        return self._finished is not None

    def cost_by_service(self) -> dict[str, float]:
        return dict(self._cost)

    def usage_by_service(self) -> dict[str, dict[str, float]]:
        return {service: dict(usage) for service, usage in self._usage.items()}

    def duration_seconds(self) -> float:
        """The call's length: the billed call seconds once final (when a
        transport reported them), else the clock since ``start()``."""
        if self._finished is not None:
            reported = sum(u.get(USAGE_CALL_SECONDS, 0.0) for u in self._usage.values())
            if reported > 0:
                return reported
        if self._started is None:
            return 0.0
        end = self._finished if self._finished is not None else self._clock()
        return max(0.0, end - self._started)

    def cost_per_minute(self) -> float | None:
        """Dollars per minute of call (None before the call has lasted a moment)."""
        seconds = self.duration_seconds()
        return None if seconds <= 0 else self._total / (seconds / 60.0)

    def snapshot(self) -> CostSnapshot:
        return CostSnapshot(
            total=self._total,
            by_service=self.cost_by_service(),
            usage=self.usage_by_service(),
            duration_seconds=self.duration_seconds(),
            per_minute=self.cost_per_minute(),
            final=self._finished is not None,
        )
