"""FailoverTTSService: text-to-speech over an ordered list of providers.

    FailoverTTSService([CartesiaTTSService(...), DeepgramTTSService(...), EspeakTTSService()])

A ``TTSService`` whose engine is whichever member the turn is on. Each new
turn goes to the first provider whose circuit breaker lets it through
(``ProviderPool``); when the attempt fails (an error, a dropped socket, no
audio in time) the breaker counts the failure and the *same turn* moves to
the next provider that this turn has not tried, resuming at the first
sentence not fully spoken (word timestamps, or the engine's per-sentence
completions): nothing already spoken in full is said again, nothing is lost.
With ``retry_before_switch`` a retryable failure is first retried on the same
provider, as its own settings say.
The downstream frames are one turn, whatever the providers: one
``TTSStartedFrame(cid)`` … ``TTSStoppedFrame(cid)``, audio converted to one
output format (``sample_rate`` or the pipeline's output rate, and
``encoding``: μ-law 8 kHz for the phone with ``for_twilio()``). Only when
every provider has failed the turn does the pre-recorded fallback play.

The members are not linked into the pipeline: the failover starts their
engines (the first healthy one at the start of the call, the others when a
turn first needs them, unless ``start_backups_early``) and stops them, and
their metrics (labelled with their own service, so costs and latencies stay
per provider) go out through it. Slow first bytes
(``BreakerSettings.slow_first_byte``) count towards opening a breaker without
failing the turn. An open breaker is probed after ``open_seconds`` by the
next turn (half-open); a probe that succeeds brings the provider back.

Metrics: the members' own, plus ``provider.switch`` and ``provider.state``
(see ``services/failover.py``). ``switches`` counts the turns moved.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import MULAW, PCM16, StartFrame
from vantum_pipeline.services.circuit import BreakerState
from vantum_pipeline.services.failover import FailoverSettings, ProviderPool
from vantum_pipeline.services.tts import TTSService, TTSTiming, TTSTurn
from vantum_pipeline.services.tts_cache import TTSCacheKey

__all__ = ["FailoverTTSService", "FailoverTTSSettings"]


@dataclass(frozen=True, slots=True)
class FailoverTTSSettings:
    """``sample_rate`` None: the pipeline's output rate; ``encoding`` ``pcm16`` or ``mulaw``."""

    failover: FailoverSettings = field(default_factory=FailoverSettings)
    sample_rate: int | None = None
    encoding: str = PCM16
    cache_size: int = 32
    cache_max_bytes: int = 8_000_000
    drain_timeout: float = 10.0
    #: Retry a retryable failure on the same provider first (its own ``max_retries``
    #: and ``retry_delay``), unless that opened its breaker. Off: the backup is faster.
    retry_before_switch: bool = False
    #: Start every provider at the start of the call (clients built, sockets
    #: opened) rather than the first time a turn needs it: a faster first
    #: failover, at the cost of clients (TLS contexts, sockets) most calls never use.
    start_backups_early: bool = False

    def __post_init__(self) -> None:
        if self.encoding not in (PCM16, MULAW):
            raise ConfigurationError(f"FailoverTTSSettings.encoding must be pcm16 or mulaw, got {self.encoding!r}")
        if self.encoding == MULAW and self.sample_rate != 8000:
            raise ConfigurationError("mulaw output is for the phone: use sample_rate=8000")
        if self.sample_rate is not None and not 8000 <= self.sample_rate <= 48000:
            raise ConfigurationError(f"FailoverTTSSettings.sample_rate must be 8000..48000, got {self.sample_rate}")

    def for_twilio(self) -> FailoverTTSSettings:
        """The same settings with Twilio's format: μ-law at 8 kHz."""
        return dataclasses.replace(self, encoding=MULAW, sample_rate=8000)


class FailoverTTSService(TTSService):
    """TTS over ordered providers with a circuit breaker each; see the module docstring."""

    service: ClassVar[str] = "failover"

    def __init__(
        self,
        providers: Sequence[TTSService],
        settings: FailoverTTSSettings | None = None,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or FailoverTTSSettings()
        for provider in providers:
            if not isinstance(provider, TTSService):
                raise ConfigurationError(f"FailoverTTSService takes TTSService providers, got {provider!r}")
            if isinstance(provider, FailoverTTSService):
                raise ConfigurationError("a FailoverTTSService cannot contain another one: list its providers")
        limits = [p.timing.first_audio_timeout for p in providers if p.timing.first_audio_timeout is not None]
        stalls = [p.timing.stall_timeout for p in providers if p.timing.stall_timeout is not None]
        timing = TTSTiming(
            max_retries=0,
            first_audio_timeout=min(limits) if limits else None,
            stall_timeout=min(stalls) if stalls else None,
            drain_timeout=self.settings.drain_timeout,
        )
        super().__init__(
            timing=timing,
            cache_size=self.settings.cache_size,
            cache_max_bytes=self.settings.cache_max_bytes,
            name=name,
        )
        self.pool: ProviderPool[TTSService] = ProviderPool(
            providers,
            kind="tts",
            service_of=lambda p: p.service,
            settings=self.settings.failover,
            clock=clock,
            owner=self.name,
        )
        self._rate = self.settings.sample_rate or 16000
        self._start: StartFrame | None = None
        self._started: set[int] = set()  # providers whose engine runs

    @property
    def providers(self) -> list[TTSService]:
        return list(self.pool.providers)

    @property
    def switches(self) -> int:
        return self.pool.switches

    @property
    def cost_usd(self) -> float:
        return sum(p.cost_usd for p in self.pool.providers)

    def state_of(self, provider: TTSService) -> BreakerState:
        return self.pool.breaker(provider).state

    def output_format(self) -> tuple[int, str]:
        return self._rate, self.settings.encoding

    def cache_key(self, text: str) -> TTSCacheKey:
        # The voice a new turn would most likely get now; ``before_attempt``
        # corrects it to the voice it does get.
        provider = next(
            (p for p, b in zip(self.pool.providers, self.pool.breakers, strict=True) if b.state is BreakerState.CLOSED),
            self.pool.providers[-1],
        )
        return self._key_of(provider, text)

    def _key_of(self, provider: TTSService, text: str) -> TTSCacheKey:
        """``provider``'s key for ``text``, with our output format (the cached audio is ours)."""
        key = provider.cache_key(text)
        return dataclasses.replace(key, encoding=self.settings.encoding, sample_rate=self._rate)

    # ------------------------------------------------------------ engines

    async def on_start(self, frame: StartFrame) -> None:
        self._rate = self.settings.sample_rate or frame.audio_out_sample_rate
        self._start = frame
        healthy = [
            p for p, b in zip(self.pool.providers, self.pool.breakers, strict=True) if b.state is BreakerState.CLOSED
        ]
        for provider in self.pool.providers if self.settings.start_backups_early else healthy[:1]:
            await self._start_provider(provider)

    async def _start_provider(self, provider: TTSService) -> None:
        if id(provider) in self._started or self._start is None:
            return
        self._started.add(id(provider))
        provider.attach(self)
        await provider.on_start(self._start)

    async def engine_stop(self) -> None:
        for provider in self._members_started():
            provider.stopping = True
            await provider.engine_stop()

    async def engine_close(self) -> None:
        for provider in self._members_started():
            await provider.cancel_tasks(timeout=0.3)
            await provider.cleanup()

    def _members_started(self) -> list[TTSService]:
        return [p for p in self.pool.providers if id(p) in self._started]

    def first_provider(self) -> TTSService:
        return self.pool.choose()

    async def open_attempt(self, turn: TTSTurn) -> None:  # pragma: no cover - turns run on the members
        raise ServiceError("a failover has no engine of its own", service=self.service, retryable=False)

    def abandon_attempt(self, turn: TTSTurn, error: ServiceError | None) -> None:  # pragma: no cover
        """Turns run on the members: nothing of the failover's own to abandon."""

    # ------------------------------------------------------------ health

    def choose_retry(self, turn: TTSTurn, error: ServiceError) -> tuple[TTSService, float] | None:
        if turn.silent:
            return None
        current = turn.provider
        if self.settings.retry_before_switch and error.retryable:
            tries, timing = turn.tried.count(current), current.timing
            if (
                tries <= timing.max_retries
                and (error.retry_after is None or error.retry_after <= timing.max_retry_wait)
                and self.pool.breaker(current).state is not BreakerState.OPEN
            ):
                return current, min(current._policy.delay(tries, error.retry_after), timing.max_retry_wait)
        provider = self.pool.next_after(turn.tried)
        if provider is None:
            return None
        self.pool.switched(turn.provider, provider, str(error))
        turn.cache_key = None  # a phrase finished by another voice is not cached under the first one's
        return provider, 0.0

    async def before_attempt(self, turn: TTSTurn) -> None:
        await self._start_provider(turn.provider)
        if turn.attempt == 0 and turn.cache_key is not None:
            turn.cache_key = self._key_of(turn.provider, turn.cache_key.text)
        await self._flush_metrics()

    async def attempt_failed(self, turn: TTSTurn, error: ServiceError) -> None:
        self.pool.breaker(turn.provider).record_failure()
        await self._flush_metrics()

    async def attempt_succeeded(self, turn: TTSTurn) -> None:
        self.pool.breaker(turn.provider).record_success()
        await self._flush_metrics()

    async def first_audio(self, turn: TTSTurn, ttfb: float) -> None:
        self.pool.breaker(turn.provider).record_first_byte(ttfb)
        await self._flush_metrics()

    async def _flush_metrics(self) -> None:
        for frame in self.pool.metrics():
            await self.push_frame(frame)
