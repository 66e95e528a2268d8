"""RateLimiter on virtual time: nothing here sleeps for real, except the test of the default sleep."""

import asyncio
import heapq
import itertools
import time

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.metrics import MetricsRegistry
from vantum_pipeline.observability.ratelimit import (
    RateLimiter,
    RateLimitSettings,
    RateLimitTimeout,
    TokenBucket,
    parse_duration,
)


class VirtualTime:
    """A clock and a sleep that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), future))
        await future

    async def settle(self) -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in order at their exact times."""
        target = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            if not future.done():
                future.set_result(None)
            await self.settle()
        self.now = target

    async def run(self, coro, limit: float = 3600.0):
        """Run ``coro`` to completion, jumping from one wake-up to the next."""
        task = asyncio.ensure_future(coro)
        await self.settle()
        while not task.done():
            if not self._sleepers:
                await self.settle()
                if task.done():
                    break
                raise AssertionError("stuck: nothing sleeping and the task is not done")
            assert self._sleepers[0][0] <= limit, "virtual time ran past the limit"
            await self.advance(self._sleepers[0][0] - self.now)
        return task.result()


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


def limiter(vt: VirtualTime, **kwargs) -> RateLimiter:
    return RateLimiter("openai", clock=vt.clock, sleep=vt.sleep, **kwargs)


async def test_requests_per_minute_burst_then_one_slot_per_interval(vt):
    rl = limiter(vt, requests_per_minute=60)  # burst 60, then one per second
    for _ in range(60):
        assert await rl.acquire() == 0.0
    assert rl.stats.waits == 0

    async def three_more() -> list[tuple[float, float]]:
        async def one() -> tuple[float, float]:
            waited = await rl.acquire()
            return waited, vt.now

        return await asyncio.gather(one(), one(), one())

    results = await vt.run(three_more())
    assert results == [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]  # first come, first served
    assert rl.stats.waits == 3
    assert rl.stats.acquired == 63
    assert rl.stats.waited_seconds == pytest.approx(6.0)


async def test_tokens_per_minute_limits_big_requests(vt):
    rl = limiter(vt, tokens_per_minute=6000)  # 100 tokens per second
    assert await rl.acquire(5000) == 0.0
    # 1000 left; 3000 more needs 2000 refilled: 20 s.
    assert await vt.run(rl.acquire(3000)) == pytest.approx(20.0)
    assert vt.now == pytest.approx(20.0)
    # The bucket is empty now: 100 tokens take 1 s.
    assert await vt.run(rl.acquire(100)) == pytest.approx(1.0)


async def test_both_limits_apply_and_the_slower_one_decides(vt):
    rl = limiter(vt, requests_per_minute=600, tokens_per_minute=600)  # 10 req/s, 10 tok/s
    await rl.acquire(600)
    assert await vt.run(rl.acquire(50)) == pytest.approx(5.0)  # tokens, not requests, hold it back


async def test_timeout_is_refused_at_once_with_a_clear_error_and_takes_nothing(vt):
    rl = limiter(vt, requests_per_minute=6)  # one per 10 s after the burst
    for _ in range(6):
        await rl.acquire()
    with pytest.raises(RateLimitTimeout) as caught:
        await rl.acquire(timeout=5.0)
    error = caught.value
    assert vt.now == 0.0  # refused without sleeping
    assert error.service == "openai" and error.retryable and error.retry_after == pytest.approx(10.0)
    assert "no slot within 5.00s" in str(error) and "next in 10.00s" in str(error)
    assert rl.stats.timeouts == 1 and rl.stats.local_hits == 1
    # Nothing was taken: a caller willing to wait 10 s gets the slot at exactly 10 s.
    assert await vt.run(rl.acquire(timeout=10.0)) == pytest.approx(10.0)


async def test_a_cancelled_wait_gives_its_slot_back(vt):
    rl = limiter(vt, requests_per_minute=60)
    for _ in range(60):
        await rl.acquire()
    waiter = asyncio.ensure_future(rl.acquire())
    await vt.advance(0.5)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # The slot the cancelled caller reserved (due at 1 s) is free again.
    assert await vt.run(rl.acquire()) == pytest.approx(0.5)
    assert vt.now == pytest.approx(1.0)


async def test_service_429_with_retry_after_pauses_every_caller(vt):
    rl = limiter(vt, requests_per_minute=600)
    rl.report_rate_limited(retry_after=7.0)
    assert rl.stats.service_hits == 1
    results = await vt.run(asyncio.gather(rl.acquire(), rl.acquire()))
    assert results == [pytest.approx(7.0), pytest.approx(7.0)]
    with pytest.raises(RateLimitTimeout):
        rl.report_rate_limited(retry_after=3.0)
        await rl.acquire(timeout=1.0)
    assert rl.stats.service_hits == 2


async def test_a_429_reported_while_a_caller_sleeps_holds_it_longer(vt):
    rl = limiter(vt, requests_per_minute=60)
    for _ in range(60):
        await rl.acquire()
    waiter = asyncio.ensure_future(rl.acquire())
    await vt.advance(0.5)
    rl.report_rate_limited(retry_after=4.0)  # until 4.5 s
    await vt.run(waiter)
    assert vt.now == pytest.approx(4.5)


async def test_learns_limits_and_remaining_from_openai_headers(vt):
    rl = limiter(vt)  # no limits configured
    assert rl.requests_per_minute is None
    rl.update_from_headers(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "2s",
        }
    )
    assert rl.requests_per_minute == 500 and rl.tokens_per_minute == 30000
    requests, tokens = rl.available()
    assert requests == 499 and tokens == 29000
    # Another process used the key: the service reports less than we think.
    rl.update_from_headers({"X-RateLimit-Remaining-Tokens": "1000"})
    assert rl.available()[1] == 1000
    # 1500 tokens: 500 missing at 500 tokens/s.
    assert await vt.run(rl.acquire(1500)) == pytest.approx(1.0)


async def test_exhausted_headers_pause_until_the_reset(vt):
    rl = limiter(vt, requests_per_minute=10_000)
    rl.update_from_headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"})
    assert await vt.run(rl.acquire()) == pytest.approx(360.0)


async def test_configured_limits_are_not_replaced_by_headers(vt):
    rl = limiter(vt, requests_per_minute=60)
    rl.update_from_headers({"x-ratelimit-limit-requests": "5000"})
    assert rl.requests_per_minute == 60


async def test_malformed_headers_are_ignored(vt):
    rl = limiter(vt, requests_per_minute=60)
    rl.update_from_headers(
        {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "soon", "x-ratelimit-limit-tokens": ""}
    )
    assert rl.available() == (60, None)


async def test_local_hits_are_counted_in_the_registry(vt):
    registry = MetricsRegistry()
    rl = limiter(vt, requests_per_minute=1, metrics=registry)
    await rl.acquire()
    with pytest.raises(RateLimitTimeout):
        await rl.acquire(timeout=0)
    await vt.run(rl.acquire())
    assert registry.value("ratelimit.local_hit", "openai") == 2


async def test_impossible_requests_are_configuration_errors(vt):
    rl = limiter(vt, tokens_per_minute=1000)
    with pytest.raises(ConfigurationError, match="1500 tokens can never fit"):
        await rl.acquire(1500)
    with pytest.raises(ConfigurationError):
        await rl.acquire(-1)
    with pytest.raises(ConfigurationError):
        TokenBucket(0, 1, 0.0)


async def test_unlimited_limiter_never_waits(vt):
    rl = limiter(vt)
    for _ in range(1000):
        assert await rl.acquire(10_000) == 0.0


async def test_real_sleep_is_the_default(vt):
    rl = RateLimiter("cartesia", tokens_per_minute=60)  # one token per second
    await rl.acquire(60, timeout=0)
    started = time.monotonic()
    # 0.2 s, for real: long enough that a pause of the machine between the two calls cannot refill it.
    waited = await rl.acquire(0.2, timeout=1.0)
    assert 0 < waited <= 0.2
    assert time.monotonic() - started >= waited - 0.01


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("59.9s", 59.9)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s2", "-1s"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_settings_from_env():
    settings = RateLimitSettings.from_env("openai", {"OPENAI_RPM": "500", "OPENAI_TPM": "30000"})
    assert settings == RateLimitSettings(500, 30000)
    assert RateLimitSettings.from_env("deepgram", {}) == RateLimitSettings()
    with pytest.raises(ConfigurationError, match="OPENAI_RPM"):
        RateLimitSettings.from_env("openai", {"OPENAI_RPM": "many"})
    rl = RateLimiter.from_settings("openai", settings)
    assert rl.requests_per_minute == 500 and rl.tokens_per_minute == 30000
