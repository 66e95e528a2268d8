"""The ordered providers of a failover service, each behind its circuit breaker.

``ProviderPool`` is what ``FailoverTTSService``, ``FailoverLLMService`` and
``FailoverSTTService`` share: the providers in order of preference, a
``CircuitBreaker`` each, the choice of the provider for a new turn (the
first whose breaker lets it through; the last one when none does: the last
resort is tried rather than nothing), the choice of the next provider when a
turn's provider fails (the first, in order, that this turn has not tried and
whose breaker allows it), and the metrics of both:

- ``provider.state`` (value: 0 closed, 1 half-open, 2 open; labels
  ``service``, ``provider``, ``kind``) on every breaker transition;
- ``provider.switch`` (1; labels ``service`` = the provider switched to,
  ``from``, ``to``, ``kind``, ``reason``) whenever a turn changes provider.

Transitions happen in synchronous code (a failure being recorded); their
metric frames wait in a bounded queue (``max_events``, oldest dropped) until
the service flushes it with ``metrics()``.

Health is a property of the provider, not of one call: give every call's
failover the same ``BreakerBoard`` (``FailoverSettings(board=board)``) and a
provider that failed in one call is skipped by the next calls until its
probe succeeds. On a board, breakers are keyed by the provider's ``name``
(name them: ``CartesiaTTSService(settings, name="cartesia")``), and every
call's failover hears every transition.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MetricsFrame
from vantum_pipeline.observability.metrics import PROVIDER_STATE, PROVIDER_SWITCH
from vantum_pipeline.services.circuit import BreakerSettings, BreakerState, CircuitBreaker

__all__ = ["BreakerBoard", "FailoverSettings", "ProviderPool"]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


P = TypeVar("P", bound=_Named)


class BreakerBoard:
    """Circuit breakers shared by the calls of a process, keyed by provider name."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_breakers: int = 256) -> None:
        self._clock = clock
        self._max = max_breakers
        self._breakers: dict[str, CircuitBreaker] = {}
        self._pools: weakref.WeakSet[ProviderPool[Any]] = weakref.WeakSet()

    def breaker(self, name: str, settings: BreakerSettings) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            if len(self._breakers) >= self._max:
                raise ConfigurationError(
                    f"a BreakerBoard holds at most {self._max} providers; {name!r} is one too many"
                )
            breaker = CircuitBreaker(name, settings, clock=self._clock, on_change=self._changed)
            self._breakers[name] = breaker
        return breaker

    def states(self) -> dict[str, BreakerState]:
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def subscribe(self, pool: ProviderPool[Any]) -> None:
        self._pools.add(pool)

    def _changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        for pool in list(self._pools):
            pool._changed(breaker, old, new)


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """The breakers' thresholds (one ``BreakerSettings`` for every provider,
    or one per provider in ``per_provider``, by position), and the board that
    shares them across calls (None: this service's own breakers)."""

    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    per_provider: tuple[BreakerSettings | None, ...] = ()
    max_events: int = 64
    board: BreakerBoard | None = None

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ConfigurationError(f"max_events must be >= 1, got {self.max_events}")

    def for_provider(self, index: int) -> BreakerSettings:
        if index < len(self.per_provider):
            return self.per_provider[index] or self.breaker
        return self.breaker


class ProviderPool(Generic[P]):
    """Providers in order of preference with a breaker each; see the module docstring."""

    def __init__(
        self,
        providers: Sequence[P],
        *,
        kind: str,
        service_of: Callable[[P], str],
        settings: FailoverSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        owner: str = "failover",
    ) -> None:
        if len(providers) < 1:
            raise ConfigurationError(f"a failover {kind} service needs at least one provider")
        if len({id(p) for p in providers}) != len(providers):
            raise ConfigurationError(f"a {kind} provider appears twice in the failover list")
        self.providers = list(providers)
        self.kind = kind
        self.owner = owner
        self.settings = settings or FailoverSettings()
        self._service_of = service_of
        self._events: deque[MetricsFrame] = deque(maxlen=self.settings.max_events)
        board = self.settings.board
        if board is None:
            self.breakers = [
                CircuitBreaker(p.name, self.settings.for_provider(i), clock=clock, on_change=self._changed)
                for i, p in enumerate(self.providers)
            ]
        else:
            if len({p.name for p in self.providers}) != len(self.providers):
                raise ConfigurationError(f"{kind} providers on a BreakerBoard need distinct names")
            self.breakers = [board.breaker(p.name, self.settings.for_provider(i)) for i, p in enumerate(self.providers)]
            board.subscribe(self)
        self._index = {id(p): i for i, p in enumerate(self.providers)}
        #: Turns moved from one provider to another.
        self.switches = 0

    def breaker(self, provider: P) -> CircuitBreaker:
        return self.breakers[self._index[id(provider)]]

    def choose(self) -> P:
        """The provider for a new turn: the first whose breaker allows it, else the last."""
        for provider, breaker in zip(self.providers, self.breakers, strict=True):
            if breaker.allows():
                return provider
        return self.providers[-1]

    def next_after(self, tried: Sequence[P]) -> P | None:
        """The provider a failed turn moves to: the first not tried that is allowed."""
        tried_ids = {id(p) for p in tried}
        for provider, breaker in zip(self.providers, self.breakers, strict=True):
            if id(provider) not in tried_ids and breaker.allows():
                return provider
        return None

    def switched(self, old: P, new: P, reason: str) -> None:
        """Count and report that a turn moved from ``old`` to ``new``."""
        self.switches += 1
        logger.warning("{}: {} {} → {} ({})", self.owner, self.kind, old.name, new.name, reason)
        labels = {"service": self._service_of(new), "from": old.name, "to": new.name, "kind": self.kind}
        labels["reason"] = reason[:120]
        self._events.append(MetricsFrame(PROVIDER_SWITCH, 1.0, "", self.owner, labels))

    def metrics(self) -> list[MetricsFrame]:
        """The metric frames waiting to be pushed (and forget them)."""
        frames = list(self._events)
        self._events.clear()
        return frames

    def _changed(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        if breaker not in self.breakers:
            return  # a breaker of the board this call does not use
        provider = self.providers[self.breakers.index(breaker)]
        log = logger.warning if new is BreakerState.OPEN else logger.info
        log("{}: {} provider {} {} → {}", self.owner, self.kind, provider.name, old.name, new.name)
        labels = {"service": self._service_of(provider), "provider": provider.name, "kind": self.kind}
        self._events.append(MetricsFrame(PROVIDER_STATE, float(new.value), "", self.owner, labels))
