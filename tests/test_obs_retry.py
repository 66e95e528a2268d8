"""RetryPolicy: the product's 2/4/8 schedule, Retry-After, deadlines, cancel-safety."""

import asyncio
import random

import pytest

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.observability.retry import RetryExhausted, RetryPolicy, is_retryable, retry_after_of


class Flaky:
    """Fails with the given errors, one per attempt, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def unavailable(retry_after: float | None = None) -> ServiceError:
    return ServiceError("503 unavailable", service="openai", retryable=True, status=503, retry_after=retry_after)


class RecordedSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def test_the_product_schedule_is_2_4_8_seconds():
    assert RetryPolicy().schedule() == [2.0, 4.0, 8.0]
    sleep = RecordedSleep()
    attempt = Flaky(unavailable(), unavailable(), unavailable())
    assert await RetryPolicy().run(attempt, service="openai", sleep=sleep) == "ok"
    assert attempt.attempts == 4
    assert sleep.delays == [2.0, 4.0, 8.0]


async def test_gives_up_after_three_retries_with_the_last_error_as_cause():
    sleep = RecordedSleep()
    errors = [unavailable() for _ in range(4)]
    attempt = Flaky(*errors)
    with pytest.raises(RetryExhausted) as caught:
        await RetryPolicy().run(attempt, service="openai", sleep=sleep)
    assert attempt.attempts == 4 and sleep.delays == [2.0, 4.0, 8.0]
    assert caught.value.__cause__ is errors[-1]
    assert caught.value.attempts == 4 and caught.value.status == 503 and not caught.value.retryable
    assert "gave up after 4 attempts" in str(caught.value)


async def test_retry_after_replaces_the_backoff():
    sleep = RecordedSleep()
    attempt = Flaky(unavailable(retry_after=5.0), unavailable(), unavailable(retry_after=0.5))
    await RetryPolicy().run(attempt, service="openai", sleep=sleep)
    assert sleep.delays == [5.0, 4.0, 0.5]


async def test_a_retry_after_too_long_for_a_phone_call_ends_the_retries():
    sleep = RecordedSleep()
    attempt = Flaky(unavailable(retry_after=120.0))
    with pytest.raises(RetryExhausted, match=r"retry after 120\.0s"):
        await RetryPolicy(max_retry_after=30.0).run(attempt, service="openai", sleep=sleep)
    assert attempt.attempts == 1 and sleep.delays == []


async def test_non_retryable_errors_are_re_raised_as_is():
    unauthorized = ServiceError("401 bad key", service="openai", retryable=False, status=401)
    attempt = Flaky(unauthorized)
    with pytest.raises(ServiceError) as caught:
        await RetryPolicy().run(attempt, service="openai", sleep=RecordedSleep())
    assert caught.value is unauthorized and attempt.attempts == 1
    # The service's own predicate decides: here a plain OSError is retryable.
    attempt = Flaky(OSError("reset by peer"), KeyError("bug"))
    with pytest.raises(KeyError):
        await RetryPolicy().run(
            attempt, service="deepgram", retryable=lambda e: isinstance(e, OSError), sleep=RecordedSleep()
        )
    assert attempt.attempts == 2


async def test_on_retry_is_told_and_may_be_async():
    seen: list[tuple[int, float]] = []

    async def on_retry(retry: int, error: BaseException, delay: float) -> None:
        await asyncio.sleep(0)
        seen.append((retry, delay))

    await RetryPolicy().run(Flaky(unavailable(), unavailable()), service="x", on_retry=on_retry, sleep=RecordedSleep())
    assert seen == [(1, 2.0), (2, 4.0)]


async def test_jitter_stays_within_its_bounds():
    policy = RetryPolicy(jitter=0.25)
    rng = random.Random(7)
    delays = [policy.delay(2, rng=rng) for _ in range(200)]
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # it does vary
    assert policy.schedule() == [2.0, 4.0, 8.0]
    assert RetryPolicy(base_delay=2, max_delay=5).schedule() == [2.0, 4.0, 5.0]


async def test_attempt_deadline_makes_a_stuck_attempt_a_retryable_failure():
    calls = 0

    async def stuck_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()
        return "ok"

    sleep = RecordedSleep()
    policy = RetryPolicy(attempt_timeout=0.02)
    # Even a predicate that retries nothing lets our own timeout be retried.
    assert await policy.run(stuck_once, service="openai", retryable=lambda e: False, sleep=sleep) == "ok"
    assert calls == 2 and sleep.delays == [2.0]


async def test_a_timeout_raised_by_the_attempt_itself_is_the_attempts_error():
    attempt = Flaky(TimeoutError("sdk read timeout"))
    with pytest.raises(TimeoutError, match="sdk read timeout"):
        await RetryPolicy().run(attempt, service="openai", sleep=RecordedSleep())


async def test_total_deadline_bounds_attempts_and_waits():
    policy = RetryPolicy(base_delay=0.01, total_timeout=0.05)

    async def hangs() -> None:
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(RetryExhausted, match=r"total deadline of 0\.05s reached during attempt 1"):
        await policy.run(hangs, service="cartesia")
    assert loop.time() - start < 2.0
    # A wait that would end past the deadline is not started.
    sleep = RecordedSleep()
    with pytest.raises(RetryExhausted, match="would pass before retry"):
        await RetryPolicy(total_timeout=1.0).run(Flaky(unavailable()), service="x", sleep=sleep)
    assert sleep.delays == []


async def test_cancelling_during_the_wait_stops_everything():
    attempt = Flaky(unavailable(), unavailable())
    run = asyncio.ensure_future(RetryPolicy(base_delay=30.0).run(attempt, service="openai"))
    await asyncio.sleep(0.01)
    assert attempt.attempts == 1
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await asyncio.sleep(0.01)
    assert attempt.attempts == 1  # no attempt after the cancellation


async def test_cancelling_during_an_attempt_cancels_the_attempt():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = asyncio.ensure_future(RetryPolicy(attempt_timeout=30.0).run(slow, service="openai"))
    await asyncio.wait_for(started.wait(), 1.0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert cancelled.is_set()


def test_helpers_and_validation():
    assert retry_after_of(unavailable(retry_after=3)) == 3.0
    assert retry_after_of(unavailable()) is None
    assert retry_after_of(ValueError()) is None
    assert is_retryable(unavailable()) and not is_retryable(ValueError())
    for bad in (
        {"max_retries": -1},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"attempt_timeout": 0},
        {"total_timeout": -1},
        {"max_retry_after": -1},
    ):
        with pytest.raises(ConfigurationError):
            RetryPolicy(**bad)
