"""CircuitBreaker: the state machine, driven by a hand-held clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.services.circuit import BreakerSettings, BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(**settings: float) -> tuple[CircuitBreaker, Clock, list[tuple[BreakerState, BreakerState]]]:
    clock = Clock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    b = CircuitBreaker(
        "p", BreakerSettings(**settings), clock=clock, on_change=lambda _, old, new: changes.append((old, new))
    )  # type: ignore[arg-type]
    return b, clock, changes


def test_consecutive_failures_open_and_a_success_in_between_resets_the_count() -> None:
    b, _, changes = breaker(failure_threshold=3)
    b.record_failure()
    b.record_failure()
    b.record_success()
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.allows()
    b.record_failure()
    assert b.state is BreakerState.OPEN and not b.allows()
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_open_then_one_probe_at_a_time_then_closed() -> None:
    b, clock, changes = breaker(failure_threshold=1, open_seconds=10.0, probe_timeout=5.0)
    b.record_failure()
    clock.now = 9.9
    assert not b.allows()
    clock.now = 10.0
    assert b.allows() and b.state is BreakerState.HALF_OPEN
    assert not b.allows()  # the probe is running
    clock.now = 15.0
    assert b.allows()  # the first probe never reported: another may go
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.open_for == 0.0
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_failed_probe_opens_again_for_the_full_time() -> None:
    b, clock, _ = breaker(failure_threshold=2, open_seconds=10.0)
    b.record_failure()
    b.record_failure()
    clock.now = 10.0
    assert b.allows()
    b.record_failure()  # one failure is enough in half-open
    assert b.state is BreakerState.OPEN and b.trips == 2
    clock.now = 19.0
    assert not b.allows() and b.open_for == pytest.approx(9.0)


def test_slow_first_bytes_open_only_when_consecutive() -> None:
    b, _, _ = breaker(slow_first_byte=0.5, slow_threshold=2)
    b.record_first_byte(0.9)
    b.record_first_byte(0.1)
    b.record_first_byte(0.9)
    assert b.state is BreakerState.CLOSED
    b.record_first_byte(0.9)
    assert b.state is BreakerState.OPEN


@given(st.lists(st.sampled_from(["fail", "ok", "slow", "fast", "tick", "ask"]), max_size=60))
def test_only_table_transitions_happen(events: list[str]) -> None:
    b, clock, changes = breaker(failure_threshold=2, slow_first_byte=0.5, slow_threshold=2, open_seconds=3.0)
    for event in events:
        {
            "fail": b.record_failure,
            "ok": b.record_success,
            "slow": lambda: b.record_first_byte(1.0),
            "fast": lambda: b.record_first_byte(0.1),
            "tick": lambda: setattr(clock, "now", clock.now + 1.0),
            "ask": b.allows,
        }[event]()
    allowed = {
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
    }
    assert set(changes) <= allowed
    for (_, new), (old, _) in itertools.pairwise(changes):
        assert new == old  # a chain: each change starts where the last ended
    if b.state is BreakerState.OPEN:
        assert b.opened_at is not None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ConfigurationError):
        BreakerSettings(slow_first_byte=0)
