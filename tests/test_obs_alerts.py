"""Alerts fire once per condition, re-arm when it clears, and reach their sinks."""

import asyncio

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MetricsFrame
from vantum_pipeline.observability.alerts import Alert, AlertMonitor, AlertSettings, CallbackAlertSink, LogAlertSink
from vantum_pipeline.observability.collector import MetricsCollector

DAY = 86_400.0


class Clocks:
    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class ListSink:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def notify(self, alert: Alert) -> None:
        self.alerts.append(alert)


def monitor(clocks: Clocks, **settings) -> tuple[AlertMonitor, ListSink]:
    sink = ListSink()
    return AlertMonitor(
        AlertSettings(**settings), sinks=[sink], clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall
    ), sink


def test_error_rate_alert_fires_once_while_the_condition_holds_and_re_arms():
    clocks = Clocks()
    alerts, sink = monitor(clocks)
    # 100 requests, 10 % failing, over 100 s: well above 5 %, one alert only.
    for n in range(100):
        alerts.record_request("openai")
        if n % 10 == 0:
            alerts.record_error("openai")
        clocks.advance(1.0)
    assert [a.key for a in sink.alerts] == ["error_rate:openai"]
    alert = sink.alerts[0]
    assert alert.kind == "error_rate" and alert.service == "openai" and alert.threshold == 0.05
    assert alert.value > 0.05 and "openai error rate" in alert.message
    assert "error_rate:openai" in alerts.active()
    # Healthy traffic dilutes the window: the condition clears (re-arms)...
    for _ in range(300):
        alerts.record_request("openai")
        clocks.advance(1.0)
    assert "error_rate:openai" not in alerts.active()
    assert alerts.error_rate("openai") == 0.0
    # ...and a new burst of errors fires a second alert.
    for _ in range(30):
        alerts.record_request("openai")
        alerts.record_error("openai")
    assert [a.key for a in sink.alerts] == ["error_rate:openai", "error_rate:openai"]


def test_error_rate_needs_enough_requests_and_is_per_service():
    clocks = Clocks()
    alerts, sink = monitor(clocks, error_rate_min_requests=20)
    for _ in range(19):
        alerts.record_request("deepgram")
        alerts.record_request("openai")
    alerts.record_error("deepgram", 2)
    assert sink.alerts == []  # 2 of 19 is 10.5 %, but 19 requests are too few to judge
    alerts.record_request("deepgram")
    assert [a.key for a in sink.alerts] == ["error_rate:deepgram"]
    assert sink.alerts[0].value == pytest.approx(0.1)
    assert alerts.error_rate("openai") == 0.0 and "error_rate:openai" not in alerts.active()


def test_exactly_five_percent_does_not_fire():
    clocks = Clocks()
    alerts, sink = monitor(clocks)
    for _ in range(100):
        alerts.record_request("cartesia")
    for _ in range(5):
        alerts.record_error("cartesia")
    assert sink.alerts == [] and alerts.error_rate("cartesia") == 0.05
    alerts.record_error("cartesia")
    assert [a.key for a in sink.alerts] == ["error_rate:cartesia"]


def test_the_window_slides():
    clocks = Clocks()
    alerts, sink = monitor(clocks, error_rate_window=60.0, error_rate_min_requests=5)
    for _ in range(10):
        alerts.record_request("twilio")
        alerts.record_error("twilio")
    assert len(sink.alerts) == 1
    clocks.advance(61.0)
    assert alerts.error_rate("twilio") is None  # everything slid out
    alerts.evaluate()
    assert alerts.active() == {}


def test_daily_cost_fires_once_per_day():
    clocks = Clocks()
    alerts, sink = monitor(clocks, daily_cost_threshold=10.0)
    for _ in range(30):
        alerts.add_cost(0.5)  # $15 in total
    assert [a.kind for a in sink.alerts] == ["daily_cost"]
    assert sink.alerts[0].value == pytest.approx(10.5)
    assert "above the $10.00 threshold" in sink.alerts[0].message and "2026-01-01" in sink.alerts[0].message
    assert alerts.daily_cost == pytest.approx(15.0)
    clocks.advance(DAY)  # a new day starts from zero and re-arms the alert
    alerts.evaluate()
    assert alerts.active() == {} and alerts.daily_cost == 0.0
    for _ in range(21):
        alerts.add_cost(0.5)
    assert [a.kind for a in sink.alerts] == ["daily_cost", "daily_cost"]


def test_rate_limited_alert():
    clocks = Clocks()
    alerts, sink = monitor(clocks, error_rate_window=60.0)
    alerts.record_rate_limited("openai")
    alerts.record_rate_limited("openai")
    assert [a.key for a in sink.alerts] == ["rate_limited:openai"]
    clocks.advance(120.0)
    alerts.evaluate()
    alerts.record_rate_limited("openai")
    assert len(sink.alerts) == 2
    quiet, quiet_sink = monitor(Clocks(), rate_limit_hits=0)
    quiet.record_rate_limited("openai")
    assert quiet_sink.alerts == []


def test_the_collector_feeds_the_monitor_from_metrics_frames():
    clocks = Clocks()
    alerts, sink = monitor(clocks, daily_cost_threshold=0.05)
    collector = MetricsCollector(alerts=alerts)

    def metric(name: str, value: float, service: str) -> None:
        collector.collect(MetricsFrame(metric=name, value=value, labels={"service": service}))

    for n in range(40):
        metric("service.request", 1, "openai")
        if n % 4 == 0:
            metric("service.error", 1, "openai")
    metric("service.rate_limited", 1, "openai")
    metric("usage.tts_characters", 600, "cartesia")  # $0.06
    assert sorted(a.key for a in sink.alerts) == ["daily_cost", "error_rate:openai", "rate_limited:openai"]


def test_a_broken_sink_does_not_silence_the_others():
    class Broken:
        def notify(self, alert: Alert) -> None:
            raise RuntimeError("sink down")

    clocks, good = Clocks(), ListSink()
    alerts = AlertMonitor(
        AlertSettings(daily_cost_threshold=1.0), sinks=[Broken(), good], wall_clock=lambda: clocks.wall
    )
    alerts.add_cost(2.0)
    assert len(good.alerts) == 1


def test_log_sink_is_the_default():
    from loguru import logger

    lines: list[str] = []
    handler = logger.add(lines.append, format="{level} {message}")
    try:
        AlertMonitor(AlertSettings(daily_cost_threshold=1.0)).add_cost(5.0)
    finally:
        logger.remove(handler)
    assert any(line.startswith("WARNING ALERT daily_cost: cost today") for line in lines)
    assert isinstance(AlertMonitor().sinks[0], LogAlertSink)


async def test_async_callback_receives_each_alert_once_without_blocking_the_caller():
    received: list[str] = []
    release = asyncio.Event()

    async def post(alert: Alert) -> None:
        await release.wait()  # a slow webhook
        received.append(alert.key)

    sink = CallbackAlertSink(post)
    clocks = Clocks()
    async with AlertMonitor(
        AlertSettings(daily_cost_threshold=1.0), sinks=[sink], clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall
    ) as alerts:
        for _ in range(50):
            alerts.add_cost(0.1)  # returns at once although the callback is stuck
            for _ in range(20):
                alerts.record_request("openai")
                alerts.record_error("openai")
        release.set()
    assert sorted(received) == ["daily_cost", "error_rate:openai"]
    assert sink.delivered == 2 and sink.dropped == 0


async def test_callback_failures_timeouts_and_overflow_are_counted():
    calls: list[str] = []

    async def flaky(alert: Alert) -> None:
        calls.append(alert.key)
        if alert.key == "a":
            raise RuntimeError("webhook 500")
        if alert.key == "b":
            await asyncio.Event().wait()

    sink = CallbackAlertSink(flaky, max_pending=2, callback_timeout=0.05, close_timeout=2.0)
    sink.notify(Alert("k", "z", "not started", 1, 1))  # dropped: not started
    await sink.start()
    for key in ("a", "b", "c"):
        sink.notify(Alert("test", key, key, 1.0, 1.0))  # "c" finds the queue (2) full: dropped
    await asyncio.sleep(0.01)  # the worker took "a" (failed) and now waits on "b"
    sink.notify(Alert("test", "d", "d", 1.0, 1.0))
    await sink.aclose()  # "b" times out, "d" is delivered
    assert calls == ["a", "b", "d"]
    assert sink.failed == 2 and sink.delivered == 1 and sink.dropped == 2
    await sink.aclose()  # idempotent


def test_settings_from_env_and_validation():
    settings = AlertSettings.from_env(
        {
            "ALERT_DAILY_COST_USD": "25",
            "ALERT_ERROR_RATE": "0.1",
            "ALERT_ERROR_RATE_WINDOW_S": "60",
            "ALERT_ERROR_RATE_MIN_REQUESTS": "5",
            "ALERT_RATE_LIMIT_HITS": "3",
        }
    )
    assert settings == AlertSettings(25.0, 0.1, 60.0, 5, 3)
    assert AlertSettings.from_env({}) == AlertSettings()
    with pytest.raises(ConfigurationError, match="ALERT_ERROR_RATE"):
        AlertSettings.from_env({"ALERT_ERROR_RATE": "5%"})
    with pytest.raises(ConfigurationError):
        AlertSettings(error_rate_threshold=1.5)
