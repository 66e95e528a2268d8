"""Provider health across calls (BreakerBoard) and the provider-open alert."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MetricsFrame, TextFrame, TTSStoppedFrame
from vantum_pipeline.observability.alerts import PROVIDER_OPEN, AlertMonitor, AlertSettings
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.metrics import MetricsRegistry
from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
from vantum_pipeline.services.circuit import BreakerSettings, BreakerState
from vantum_pipeline.services.failover import BreakerBoard, FailoverSettings
from vantum_pipeline.services.failover_tts import FailoverTTSService, FailoverTTSSettings
from vantum_pipeline.services.offline.tts import EspeakTTSService
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.cartesia import FakeCartesia

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeCartesia]:
    async with FakeCartesia() as server:
        yield server


def call_tts(fake: FakeCartesia, board: BreakerBoard) -> FailoverTTSService:
    """What each call builds: its own services, the process's board."""
    cartesia = CartesiaTTSService(
        CartesiaSettings(
            api_key=Secret("k"), base_url=fake.http_url, websocket_base_url=fake.ws_url, first_audio_timeout=1.0
        ),
        name="cartesia",
    )
    breaker = BreakerSettings(failure_threshold=1, open_seconds=60.0)
    settings = FailoverTTSSettings(failover=FailoverSettings(breaker=breaker, board=board))
    return FailoverTTSService([cartesia, EspeakTTSService(name="espeak")], settings)


async def test_a_provider_that_failed_in_one_call_is_skipped_by_the_next_calls(fake: FakeCartesia) -> None:
    clock = Clock()
    board = BreakerBoard(clock=clock)
    fake.faults.error_requests = 1
    async with PipelineHarness([call_tts(fake, board)], end_timeout=15) as first_call:
        await first_call.send(TextFrame("The first call hits the outage."))
        await first_call.wait_for(TTSStoppedFrame, timeout=10)
    assert board.states() == {"cartesia": BreakerState.OPEN, "espeak": BreakerState.CLOSED}
    contexts = len(fake.contexts)
    second = call_tts(fake, board)
    async with PipelineHarness([second], end_timeout=15) as second_call:
        await second_call.send(TextFrame("The second call goes straight to the backup."))
        await second_call.wait_for(TTSStoppedFrame, timeout=10)
    assert len(fake.contexts) == contexts and second.switches == 0
    clock.now += 61
    third = call_tts(fake, board)
    async with PipelineHarness([third], end_timeout=15) as third_call:
        await third_call.send(TextFrame("The third call probes the primary."))
        await third_call.wait_for(TTSStoppedFrame, timeout=10)
    assert board.states()["cartesia"] is BreakerState.CLOSED and len(fake.contexts) == contexts + 1
    states = [f.value for f in third_call.downstream if isinstance(f, MetricsFrame) and f.metric == "provider.state"]
    assert states == [BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_board_providers_need_distinct_names() -> None:
    board = BreakerBoard()
    with pytest.raises(ConfigurationError):
        FailoverTTSService(
            [EspeakTTSService(name="same"), EspeakTTSService(name="same")],
            FailoverTTSSettings(failover=FailoverSettings(board=board)),
        )


def state(value: BreakerState, provider: str = "cartesia") -> MetricsFrame:
    return MetricsFrame(
        "provider.state", float(value), "", "failover", {"service": "cartesia", "provider": provider, "kind": "tts"}
    )


async def test_a_provider_open_longer_than_the_threshold_fires_once_and_clears() -> None:
    clock = Clock()
    monitor = AlertMonitor(AlertSettings(provider_open_minutes=5), sinks=[], clock=clock)
    collector = MetricsCollector(MetricsRegistry(), alerts=monitor)
    collector.collect(state(BreakerState.OPEN))
    clock.now += 4 * 60
    collector.collect(state(BreakerState.HALF_OPEN))  # a probe failed...
    collector.collect(state(BreakerState.OPEN))  # ...it is still open
    monitor.evaluate()
    assert not monitor.active()
    clock.now += 61
    monitor.evaluate()
    monitor.evaluate()
    assert list(monitor.active()) == [f"{PROVIDER_OPEN}:cartesia"]
    assert len(monitor.history) == 1 and "5" in monitor.history[0].message
    collector.collect(state(BreakerState.CLOSED))
    assert not monitor.active()
    registry = collector.registry
    assert registry.snapshot() is not None


def test_the_threshold_comes_from_the_environment() -> None:
    assert AlertSettings.from_env({"ALERT_PROVIDER_OPEN_MINUTES": "2.5"}).provider_open_minutes == 2.5
    assert AlertSettings.from_env({}).provider_open_minutes == 5.0
    with pytest.raises(ConfigurationError):
        AlertSettings(provider_open_minutes=0)
