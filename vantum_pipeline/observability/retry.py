"""One retry policy for every service: exponential backoff with jitter,
bounded attempts, per-attempt and total deadlines, Retry-After honoured.

Which errors are retryable is the service's decision, passed as a predicate
(the default trusts ``ServiceError.retryable``). The product's schedule (the
default): up to 3 retries after 2 s, 4 s, 8 s. Services make the delays a
setting so that tests can shorten them.

    policy = RetryPolicy(attempt_timeout=10.0, total_timeout=30.0)
    reply = await policy.run(lambda: client.post(...), retryable=is_retryable, service="openai")

An attempt that outlives ``attempt_timeout`` counts as a retryable failure
(the service did not answer in time). A Retry-After longer than
``max_retry_after`` ends the retries at once: a caller on the phone cannot
wait that long, and retrying sooner than asked only earns another 429.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError

__all__ = ["RetryExhausted", "RetryPolicy", "is_retryable", "retry_after_of"]

T = TypeVar("T")

#: ``on_retry(retry_number, error, delay_s)``; may be a coroutine function.
RetryCallback = Callable[[int, BaseException, float], Awaitable[None] | None]


class RetryExhausted(ServiceError):
    """Every attempt failed (or the total deadline passed); ``__cause__`` is the last error.

    ``attempts`` is how many attempts were made.
    """

    def __init__(self, message: str, *, service: str, attempts: int = 0, status: int | None = None) -> None:
        super().__init__(message, service=service, retryable=False, status=status)
        self.attempts = attempts


def retry_after_of(exc: BaseException) -> float | None:
    """The delay a service asked for (``ServiceError.retry_after``), if any."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value >= 0 else None


def is_retryable(exc: BaseException) -> bool:
    """The default predicate: a ServiceError that says it is retryable."""
    return isinstance(exc, ServiceError) and exc.retryable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; the n-th retry waits
    ``base_delay * multiplier**(n-1)`` seconds (capped at ``max_delay``), times
    a random factor in ``[1 - jitter, 1 + jitter]``; a service's Retry-After
    replaces that delay (up to ``max_retry_after``; longer ends the retries).
    ``attempt_timeout`` bounds each attempt, ``total_timeout`` the whole,
    waits included.
    """

    max_retries: int = 3
    base_delay: float = 2.0
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.0
    attempt_timeout: float | None = None
    total_timeout: float | None = None
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.base_delay < 0 or self.multiplier < 1 or self.max_delay < 0:
            raise ConfigurationError(
                f"retry delays must be >= 0 and multiplier >= 1, got base_delay={self.base_delay}, "
                f"multiplier={self.multiplier}, max_delay={self.max_delay}"
            )
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"jitter must be in [0, 1), got {self.jitter}")
        for name in ("attempt_timeout", "total_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"{name} must be > 0 or None, got {value}")
        if self.max_retry_after < 0:
            raise ConfigurationError(f"max_retry_after must be >= 0, got {self.max_retry_after}")

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1-based), without jitter."""
        return min(self.max_delay, self.base_delay * self.multiplier ** (retry - 1))

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Delay before retry number ``retry``, with jitter, or the service's
        Retry-After when it gave one (Retry-After above ``max_retry_after`` is
        not a delay: ``run`` gives up on it)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        base = self.backoff(retry)
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return base

    def schedule(self) -> list[float]:
        """The delays of every retry, without jitter: ``[2.0, 4.0, 8.0]`` by default."""
        return [self.backoff(n) for n in range(1, self.max_retries + 1)]

    async def run(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        service: str,
        retryable: Callable[[BaseException], bool] = is_retryable,
        on_retry: RetryCallback | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> T:
        """Call ``attempt()`` until it succeeds, a non-retryable error is
        raised (re-raised as is), or retries/deadline run out
        (``RetryExhausted`` from the last error).

        ``on_retry`` is told of each retry before its wait (emit a
        ``service.retry`` metric there). ``sleep`` waits between attempts
        (tests pass one that records the delays). Cancel-safe: cancelling the
        caller cancels the attempt or the wait in progress, and nothing runs
        after.
        """
        loop = asyncio.get_running_loop()
        deadline = None if self.total_timeout is None else loop.time() + self.total_timeout
        attempts = 0
        while True:
            timeout = self.attempt_timeout
            if deadline is not None:
                left = deadline - loop.time()
                timeout = left if timeout is None else min(timeout, left)
            attempts += 1
            try:
                async with asyncio.timeout(timeout) as scope:
                    return await attempt()
            except Exception as exc:
                error: BaseException = exc
                if isinstance(exc, TimeoutError) and scope.expired():
                    if deadline is not None and loop.time() >= deadline:
                        raise RetryExhausted(
                            f"total deadline of {self.total_timeout:g}s reached during attempt {attempts}",
                            service=service,
                            attempts=attempts,
                        ) from exc
                    error = ServiceError(
                        f"attempt {attempts} timed out after {timeout:g}s", service=service, retryable=True
                    )
                    error.__cause__ = exc
                elif not retryable(exc):
                    raise
                if attempts > self.max_retries:
                    raise RetryExhausted(
                        f"gave up after {attempts} attempts: {error}",
                        service=service,
                        attempts=attempts,
                        status=getattr(error, "status", None),
                    ) from error
                retry_after = retry_after_of(error)
                if retry_after is not None and retry_after > self.max_retry_after:
                    raise RetryExhausted(
                        f"service asked to retry after {retry_after:.1f}s (more than {self.max_retry_after:.1f}s)",
                        service=service,
                        attempts=attempts,
                        status=getattr(error, "status", None),
                    ) from error
                wait = self.delay(attempts, retry_after, rng)
                if deadline is not None and loop.time() + wait >= deadline:
                    raise RetryExhausted(
                        f"total deadline of {self.total_timeout:g}s would pass before retry {attempts}: {error}",
                        service=service,
                        attempts=attempts,
                        status=getattr(error, "status", None),
                    ) from error
                logger.warning("{}: attempt {} failed ({}); retrying in {:.2f}s", service, attempts, error, wait)
                if on_retry is not None:
                    result = on_retry(attempts, error, wait)
                    if inspect.isawaitable(result):
                        await result
            await sleep(wait)
