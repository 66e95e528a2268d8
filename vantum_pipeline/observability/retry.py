"""One retry policy for every service: exponential backoff with jitter,
bounded attempts, per-attempt and total deadlines, Retry-After honoured.

Which errors are retryable is the service's decision, passed as a predicate.
The product's schedule (the default): up to 3 retries after 2 s, 4 s, 8 s.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, ServiceError

__all__ = ["RetryExhausted", "RetryPolicy", "retry_after_of"]

T = TypeVar("T")


class RetryExhausted(ServiceError):
    """Every attempt failed (or the total deadline passed); ``__cause__`` is the last error."""


def retry_after_of(exc: BaseException) -> float | None:
    """The delay a service asked for (``ServiceError.retry_after``), if any."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; the n-th retry waits
    ``base_delay * multiplier**(n-1)`` seconds (capped at ``max_delay``), times
    a random factor in ``[1 - jitter, 1 + jitter]``; a service's Retry-After,
    when given and not above ``max_retry_after``, replaces that delay.
    ``attempt_timeout`` bounds each attempt, ``total_timeout`` the whole.
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
            raise ConfigurationError("retry delays must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"jitter must be in [0, 1), got {self.jitter}")

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1-based), without jitter."""
        return min(self.max_delay, self.base_delay * self.multiplier ** (retry - 1))

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Delay before retry number ``retry``, with jitter and Retry-After."""
        if retry_after is not None and retry_after <= self.max_retry_after:
            return retry_after
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
        retryable: Callable[[BaseException], bool],
        service: str,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> T:
        """Call ``attempt()`` until it succeeds, a non-retryable error is
        raised (re-raised as is), or retries/deadline run out
        (``RetryExhausted`` from the last error). Cancel-safe."""
        loop = asyncio.get_running_loop()
        deadline = None if self.total_timeout is None else loop.time() + self.total_timeout
        retry = 0
        while True:
            try:
                timeout = self.attempt_timeout
                if deadline is not None:
                    left = deadline - loop.time()
                    timeout = left if timeout is None else min(timeout, left)
                async with asyncio.timeout(timeout):
                    return await attempt()
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    exc = ServiceError(f"attempt timed out after {timeout:.1f}s", service=service, retryable=True)
                if not retryable(exc):
                    raise
                retry += 1
                if retry > self.max_retries:
                    raise RetryExhausted(
                        f"gave up after {retry} attempts: {exc}", service=service, retryable=False
                    ) from exc
                wait = self.delay(retry, retry_after_of(exc))
                if deadline is not None and loop.time() + wait >= deadline:
                    raise RetryExhausted(
                        f"total deadline of {self.total_timeout:.1f}s reached: {exc}", service=service, retryable=False
                    ) from exc
                logger.warning("{}: attempt {} failed ({}); retrying in {:.2f}s", service, retry, exc, wait)
                if on_retry is not None:
                    on_retry(retry, exc, wait)
                await asyncio.sleep(wait)
