"""The event loop's lag: measured, reported, and an overloaded Twilio server places no new call.

A loop with too much work is simulated by a task that holds it for 100 ms at a
time (``time.sleep``), as a process serving more calls than its core can does
between two of its timers. Thresholds sit far above what an idle loop lags on
a slow or shared machine (a few ms), so only the simulated load crosses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from functools import partial

import pytest
from loguru import logger

from tests import waiting
from tests.twilio_scripted import held_loop, phone_stack
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.loop import LAG_BUCKETS, LOOP_LAG_METRIC, LoopMonitor
from vantum_pipeline.observability.metrics import MetricsRegistry
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.testing.twilio_calls import CalleeBehaviour

pytestmark = pytest.mark.timeout(60)

NUMBER = "+14155550123"


until = partial(waiting.until, timeout=10.0)  # the monitor's figures have no event to wait on


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["level"].name + " " + message.record["message"]))
    try:
        yield lines
    finally:
        logger.remove(sink)


async def test_a_held_loop_is_measured_late_and_observed_into_the_registry() -> None:
    registry = MetricsRegistry()
    async with LoopMonitor(interval=0.01, window=5.0, registry=registry, warn_at=None, min_samples=1) as monitor:
        await until(lambda: monitor.measured >= 3)
        seen = monitor.measured
        time.sleep(0.3)  # noqa: ASYNC251 - the loop held: the monitor's timer fires 0.3 s late
        await until(lambda: monitor.measured > seen)
        assert monitor.worst >= 0.25
        assert monitor.lag(1.0) >= 0.25
        assert monitor.lag(0.0) < 0.25  # the on-time measurements are there too
    summary = registry.histogram(LOOP_LAG_METRIC).summary()
    assert summary.count == monitor.measured and summary.max is not None and summary.max >= 0.25
    assert [bound for bound, _ in summary.buckets][:-1] == list(LAG_BUCKETS)  # milliseconds, not latency's
    merged = MetricsRegistry()  # as the worker pool merges its workers' registries
    merged.merge(registry.export())
    assert merged.histogram(LOOP_LAG_METRIC).summary().buckets == summary.buckets
    assert not monitor.running


async def test_the_window_forgets_old_lags() -> None:
    async with LoopMonitor(interval=0.01, window=0.3, warn_at=None, min_samples=1) as monitor:
        async with held_loop():
            await until(lambda: monitor.overloaded(0.05))
        await until(lambda: not monitor.overloaded(0.05))  # 0.3 s of on-time measurements
        assert monitor.worst >= 0.05  # kept since the start


async def test_a_loop_held_longer_than_the_window_reads_late_at_once() -> None:
    async with LoopMonitor(interval=0.01, window=0.05, warn_at=None, min_samples=1) as monitor:
        await until(lambda: monitor.measured >= 3)
        time.sleep(0.2)  # noqa: ASYNC251 - held: the measurement under way is overdue, none landed in the window
        assert monitor.lag(0.9) >= 0.15
        assert monitor.overloaded(0.1)


async def test_one_stall_on_a_window_of_few_measurements_is_not_a_trend() -> None:
    with captured_logs() as lines:
        # Thresholds of 0.25 s: a loaded machine's own hiccups (a collection, a busy neighbour) stay below.
        async with LoopMonitor(interval=0.01, window=5.0, warn_at=0.25, min_samples=10) as monitor:
            await until(lambda: monitor.measured >= 1)
            time.sleep(0.6)  # noqa: ASYNC251 - one stall, two measurements into the window
            await until(lambda: monitor.measured >= 2)
            assert monitor.lag(0.9) >= 0.5 and not monitor.overloaded(0.25)
            await until(lambda: monitor.measured >= 11)
            assert not monitor.overloaded(0.25)  # one late measurement of ten: p90 on time
    assert not any(line.startswith("WARNING") for line in lines)


async def test_a_stall_longer_than_the_window_is_one_measurement_not_a_trend_for_the_warning_either() -> None:
    # The measurements from before the stall leave the window with it: what is left is too few.
    with captured_logs() as lines:
        async with LoopMonitor(interval=0.01, window=0.3, warn_at=0.05, min_samples=10) as monitor:
            await until(lambda: monitor.measured >= 15)
            seen = monitor.measured
            time.sleep(0.5)  # noqa: ASYNC251 - one stall, longer than the window
            await until(lambda: monitor.measured >= seen + 2)
            assert not monitor.overloaded(0.05)
    assert not any(line.startswith("WARNING") for line in lines), lines


async def test_a_late_loop_is_warned_about_once_and_its_recovery_logged() -> None:
    with captured_logs() as lines:
        async with LoopMonitor(interval=0.01, window=0.3, warn_at=0.05, min_samples=1) as monitor:
            async with held_loop():
                await until(lambda: monitor.overloaded(0.05))
                held = monitor.measured
                await until(lambda: monitor.measured >= held + 3)  # still late: no second warning
            await until(lambda: any("on time again" in line for line in lines))
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1, warnings
    assert "event loop runs" in warnings[0] and "ms late" in warnings[0]


async def test_a_stopped_monitor_keeps_its_figures_and_starts_again_with_an_empty_window() -> None:
    monitor = LoopMonitor(interval=0.01, window=5.0, warn_at=None)
    assert monitor.lag() == 0.0 and not monitor.running
    monitor.start()
    monitor.start()  # already running: one task
    await until(lambda: monitor.measured >= 2)
    await monitor.stop()
    await monitor.stop()
    measured = monitor.measured
    await asyncio.sleep(0.05)
    assert monitor.measured == measured and not monitor.running
    monitor.start()
    assert monitor.lag() == 0.0
    await until(lambda: monitor.measured > measured)
    await monitor.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0.0}, "interval"),
        ({"interval": 20.0}, "interval"),
        ({"interval": 0.1, "window": 0.05}, "window"),
        ({"warn_at": 0.0}, "warn_at"),
        ({"interval": 0.1, "window": 0.5, "min_samples": 6}, "min_samples"),
        ({"min_samples": 0}, "min_samples"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LoopMonitor(**options)


def test_a_quantile_outside_0_to_1_is_refused() -> None:
    with pytest.raises(ValueError, match="quantile"):
        LoopMonitor().lag(1.5)


async def test_an_overloaded_server_places_no_call_until_its_loop_is_on_time_again() -> None:
    monitor = LoopMonitor(interval=0.01, window=0.3, warn_at=None, min_samples=1)
    async with phone_stack(lambda call: None, loop_monitor=monitor, overload_lag=0.05) as (fake, server):
        fake.default = CalleeBehaviour(outcome="busy")
        assert monitor.running
        async with held_loop():
            await until(lambda: monitor.overloaded(0.05))
            refused = await server.place_call(NUMBER)
        assert refused.record is not None and refused.ended
        assert refused.record.outcome is CallOutcome.RETRY_LATER and refused.record.status == "overloaded"
        assert refused.sid is None and not fake.requests, "an overloaded server asked Twilio for a call"
        assert server.refused_overloaded == 1

        await until(lambda: not monitor.overloaded(0.05))
        placed = await server.place_call(NUMBER)
        assert placed.sid is not None and len(fake.requests) == 1
        record = await placed.wait()
        assert record.outcome is CallOutcome.RETRY_LATER and record.status == "busy"  # Twilio's busy this time
    assert not monitor.running  # the server's stop stopped it


async def test_without_an_overload_lag_calls_are_placed_whatever_the_load() -> None:
    monitor = LoopMonitor(interval=0.01, window=0.3, warn_at=None, min_samples=1)
    async with phone_stack(lambda call: None, loop_monitor=monitor, overload_lag=None) as (fake, server):
        fake.default = CalleeBehaviour(outcome="busy")
        async with held_loop():
            await until(lambda: monitor.overloaded(0.05))
            placed = await server.place_call(NUMBER)
        assert placed.sid is not None and server.refused_overloaded == 0
        assert (await placed.wait()).status == "busy"


@pytest.mark.parametrize("lag", [0.0, -1.0])
def test_an_overload_lag_must_be_positive(lag: float) -> None:
    from tests.twilio_scripted import idle_server

    with pytest.raises(ConfigurationError, match="overload_lag"):
        idle_server(overload_lag=lag)
