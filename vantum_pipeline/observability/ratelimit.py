"""Per-service rate limiting: requests per minute and tokens per minute.

A ``RateLimiter`` holds up to two token buckets (requests, tokens), each
refilled continuously at ``limit / 60`` per second up to a burst of
``limit`` (a full minute's worth, as the services count). It is shared by
every call of the process that uses the same API key.

``acquire`` works by reservation: it computes when the request's share will
be available, takes it at once (a bucket may go negative: later callers queue
behind, first come first served) and sleeps until then. A wait longer than the
caller's ``timeout`` is refused at once with ``RateLimitTimeout`` rather than
slept through and then refused. Time and sleep are injected, so tests run on
virtual time.

The limiter also learns from the service: ``report_rate_limited`` (a 429,
with its Retry-After) pauses every caller until the service's delay has
passed, and ``update_from_headers`` reads OpenAI's ``x-ratelimit-*`` headers:
it adopts the service's limits when none were configured, lowers its buckets
to the remaining counts the service reports (other processes may share the
key), and pauses until the reset when one of them is exhausted.

Hits are counted in ``stats``: ``waits`` (ours: a caller had to wait),
``timeouts`` (ours: a caller was refused) and ``service_hits`` (429s reported
by the service). With a ``MetricsRegistry`` the limiter also counts its own
hits there as ``ratelimit.local_hit``; the service's 429s reach the registry
as ``service.rate_limited`` MetricsFrames from the service itself.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.settings import env_float, load_env

if TYPE_CHECKING:
    from vantum_pipeline.observability.metrics import MetricsRegistry

__all__ = [
    "RateLimitSettings",
    "RateLimitStats",
    "RateLimitTimeout",
    "RateLimiter",
    "TokenBucket",
    "parse_duration",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]

LOCAL_HIT_METRIC: Final = "ratelimit.local_hit"


class RateLimitTimeout(ServiceError):
    """Our limiter could not grant a request within the caller's timeout.

    Retryable; ``retry_after`` is how long the caller would have had to wait.
    """


def parse_duration(text: str) -> float:
    """Seconds in an OpenAI reset header: ``"1s"``, ``"6m0s"``, ``"20ms"``,
    ``"1h2m3.5s"`` or a bare number of seconds. ValueError when malformed."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text[:40]!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class TokenBucket:
    """A bucket of ``capacity`` refilled at ``per_second``. ``level`` may go
    below zero: that is what is owed to callers already promised a slot."""

    __slots__ = ("_updated", "capacity", "level", "per_second")

    def __init__(self, capacity: float, per_second: float, now: float) -> None:
        if capacity <= 0 or per_second <= 0:
            raise ConfigurationError(f"a token bucket needs a positive capacity and rate, got {capacity}, {per_second}")
        self.capacity = capacity
        self.per_second = per_second
        self.level = capacity
        self._updated = now

    @classmethod
    def per_minute(cls, limit: float, now: float) -> TokenBucket:
        return cls(limit, limit / 60.0, now)

    def refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.per_second)
            self._updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (after ``refill``)."""
        return 0.0 if self.level >= amount else (amount - self.level) / self.per_second


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Limits of one service; None means unlimited (until the service's
    headers say otherwise). From ``<SERVICE>_RPM`` and ``<SERVICE>_TPM``."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> RateLimitSettings:
        env = load_env(env)
        prefix = service.upper()
        return cls(
            requests_per_minute=env_float(env, f"{prefix}_RPM", minimum=0.001),
            tokens_per_minute=env_float(env, f"{prefix}_TPM", minimum=0.001),
        )


@dataclass(slots=True)
class RateLimitStats:
    acquired: int = 0
    #: Our hits: a caller had to wait for a slot.
    waits: int = 0
    #: Our hits: a caller was refused (RateLimitTimeout).
    timeouts: int = 0
    #: The service's hits: 429s reported with ``report_rate_limited``.
    service_hits: int = 0
    waited_seconds: float = 0.0

    @property
    def local_hits(self) -> int:
        return self.waits + self.timeouts


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits of one service."""

    def __init__(
        self,
        service: str,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        self.service = service
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        now = clock()
        self._requests = None if requests_per_minute is None else TokenBucket.per_minute(requests_per_minute, now)
        self._tokens = None if tokens_per_minute is None else TokenBucket.per_minute(tokens_per_minute, now)
        # Limits learned from headers may be replaced by later headers;
        # configured ones are ours and stay.
        self._requests_learned = requests_per_minute is None
        self._tokens_learned = tokens_per_minute is None
        self._paused_until = now
        self.stats = RateLimitStats()

    @classmethod
    def from_settings(cls, service: str, settings: RateLimitSettings, **options: object) -> RateLimiter:
        return cls(
            service,
            requests_per_minute=settings.requests_per_minute,
            tokens_per_minute=settings.tokens_per_minute,
            **options,  # type: ignore[arg-type]
        )

    @property
    def requests_per_minute(self) -> float | None:
        return None if self._requests is None else self._requests.capacity

    @property
    def tokens_per_minute(self) -> float | None:
        return None if self._tokens is None else self._tokens.capacity

    def available(self) -> tuple[float | None, float | None]:
        """Requests and tokens available now (None: unlimited)."""
        now = self._clock()
        self._refill(now)
        return (
            None if self._requests is None else self._requests.level,
            None if self._tokens is None else self._tokens.level,
        )

    # ``timeout`` is a parameter, not the caller's asyncio.timeout: a wait that
    # cannot end in time is refused up front, without sleeping, on our clock.
    async def acquire(self, tokens: float = 1, *, timeout: float | None = None) -> float:
        """Wait for one request and ``tokens`` tokens; return the seconds waited.

        Raises ``RateLimitTimeout`` at once when the wait would exceed
        ``timeout`` (nothing is taken then). Cancel-safe: a cancelled wait
        gives its reservation back.
        """
        if tokens < 0:
            raise ConfigurationError(f"{self.service}: cannot acquire a negative number of tokens ({tokens})")
        if self._tokens is not None and tokens > self._tokens.capacity:
            raise ConfigurationError(
                f"{self.service}: a request of {tokens:g} tokens can never fit a limit of "
                f"{self._tokens.capacity:g} tokens per minute"
            )
        now = self._clock()
        deadline = None if timeout is None else now + timeout
        self._refill(now)
        wait = self._wait_needed(tokens, now)
        if deadline is not None and now + wait > deadline:
            self._refuse(wait, timeout)
        requests, token_bucket = self._requests, self._tokens
        if requests is not None:
            requests.level -= 1
        if token_bucket is not None:
            token_bucket.level -= tokens
        if wait > 0:
            self._count_wait()
        try:
            waited = 0.0
            while wait > 0:
                await self._sleep(wait)
                waited += wait
                # A 429 reported while we slept pauses us too.
                now = self._clock()
                wait = max(0.0, self._paused_until - now)
                if wait > 0 and deadline is not None and now + wait > deadline:
                    self._refuse(wait, timeout)
        except BaseException:
            # Cancelled (or refused): the slot goes back to the bucket.
            if requests is not None and requests is self._requests:
                requests.level += 1
            if token_bucket is not None and token_bucket is self._tokens:
                token_bucket.level += tokens
            raise
        self.stats.acquired += 1
        self.stats.waited_seconds += waited
        return waited

    def report_rate_limited(self, retry_after: float | None = None) -> None:
        """The service answered 429: count it, and when it said how long to
        wait, hold every caller until then."""
        self.stats.service_hits += 1
        if retry_after is not None and retry_after > 0:
            self._pause(retry_after)
        logger.warning(
            "{}: the service rate-limited us{}",
            self.service,
            f" (retry after {retry_after:.2f}s)" if retry_after else "",
        )

    def update_from_headers(self, headers: Mapping[str, str]) -> None:
        """Learn from ``x-ratelimit-*`` response headers (any case). Malformed
        values are logged and ignored."""
        lowered = {k.lower(): v for k, v in headers.items()}
        now = self._clock()
        self._refill(now)
        for kind in ("requests", "tokens"):
            limit = _number(lowered, f"x-ratelimit-limit-{kind}", self.service)
            remaining = _number(lowered, f"x-ratelimit-remaining-{kind}", self.service)
            reset_raw = lowered.get(f"x-ratelimit-reset-{kind}")
            bucket = self._requests if kind == "requests" else self._tokens
            learned = self._requests_learned if kind == "requests" else self._tokens_learned
            if limit is not None and limit > 0 and learned and (bucket is None or bucket.capacity != limit):
                fresh = TokenBucket.per_minute(limit, now)
                if bucket is not None:
                    fresh.level = min(bucket.level, limit)
                bucket = fresh
                if kind == "requests":
                    self._requests = bucket
                else:
                    self._tokens = bucket
            if remaining is None:
                continue
            if bucket is not None:
                bucket.level = min(bucket.level, remaining)
            if remaining < 1 and reset_raw is not None:
                try:
                    self._pause(parse_duration(reset_raw))
                except ValueError:
                    logger.warning(
                        "{}: ignoring malformed x-ratelimit-reset-{} {!r}", self.service, kind, reset_raw[:40]
                    )

    # ----------------------------------------------------------- internals

    def _refill(self, now: float) -> None:
        if self._requests is not None:
            self._requests.refill(now)
        if self._tokens is not None:
            self._tokens.refill(now)

    def _wait_needed(self, tokens: float, now: float) -> float:
        wait = max(0.0, self._paused_until - now)
        if self._requests is not None:
            wait = max(wait, self._requests.wait_for(1))
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait_for(tokens))
        return wait

    def _pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def _count_wait(self) -> None:
        self.stats.waits += 1
        if self._metrics is not None:
            self._metrics.counter(LOCAL_HIT_METRIC, self.service).inc()

    def _refuse(self, wait: float, timeout: float | None) -> None:
        self.stats.timeouts += 1
        if self._metrics is not None:
            self._metrics.counter(LOCAL_HIT_METRIC, self.service).inc()
        raise RateLimitTimeout(
            f"rate limit: no slot within {timeout:.2f}s (next in {wait:.2f}s)",
            service=self.service,
            retryable=True,
            retry_after=wait,
        )


def _number(headers: Mapping[str, str], name: str, service: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        logger.warning("{}: ignoring malformed {} {!r}", service, name, raw[:40])
        return None
