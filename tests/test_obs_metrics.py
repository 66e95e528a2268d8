"""Metrics registry, the collector on a task, and the Prometheus endpoint."""

import asyncio
import json
import math
import pickle
import threading
import urllib.request

import pytest
from obs_fakes import Reply, ScriptedLLM, ScriptedOutput, ScriptedSTT, ScriptedTTS, SentenceSplitter, speech

from vantum_pipeline.frames import HeardTextFrame, MetricsFrame
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.loop import LAG_BUCKETS, LOOP_LAG_METRIC
from vantum_pipeline.observability.metrics import Histogram, MetricsRegistry
from vantum_pipeline.observability.prometheus import PrometheusExporter, PrometheusSettings, metric_name
from vantum_pipeline.testing import PipelineHarness


def frame(metric: str, value: float, service: str = "openai") -> MetricsFrame:
    return MetricsFrame(metric=metric, value=value, labels={"service": service})


def test_counters_histograms_and_snapshot():
    registry = MetricsRegistry()
    for _ in range(19):
        registry.counter("service.request", "openai").inc()
    registry.counter("service.request", "openai").inc()
    registry.counter("service.error", "openai").inc()
    for value in (0.1, 0.2, 0.3, 0.4, 2.0):
        registry.histogram("latency.llm_ttft", "openai").observe(value)
    snapshot = registry.snapshot()
    assert snapshot["counters"]["service.request"] == {"openai": 20.0}
    assert snapshot["error_rate"] == {"openai": 0.05}
    ttft = snapshot["histograms"]["latency.llm_ttft"]["openai"]
    assert ttft["count"] == 5 and ttft["sum"] == pytest.approx(3.0) and ttft["mean"] == pytest.approx(0.6)
    assert ttft["min"] == 0.1 and ttft["max"] == 2.0 and ttft["p50"] == 0.3 and ttft["p95"] == 2.0
    json.dumps(snapshot)  # serializable
    summary = registry.histograms()[("latency.llm_ttft", "openai")]
    assert dict(summary.buckets)[0.1] == 1 and dict(summary.buckets)[0.5] == 4 and summary.buckets[-1][1] == 5
    assert registry.error_rate("deepgram") is None
    with pytest.raises(ValueError):
        registry.counter("service.request", "openai").inc(-1)


def test_series_are_bounded():
    registry = MetricsRegistry(max_series=3)
    for n in range(5):
        registry.counter("service.request", f"svc{n}").inc()
    assert registry.dropped_series == 2
    assert registry.value("service.request", "other") == 2
    assert len(registry.counters()) == 4  # three services and "other"


async def test_collector_on_a_faked_call_fills_the_registry_and_the_tracker():
    registry, tracker = MetricsRegistry(), CostTracker()
    processors = [
        ScriptedSTT(["Hello?", "Sure."]),
        ScriptedLLM([Reply("Hi there.", 100, 3), Reply("Great.", 120, 2)], fail_turns=frozenset()),
        SentenceSplitter(),
        ScriptedTTS(),
        ScriptedOutput(call_seconds=20.0),
    ]
    harness = PipelineHarness(processors)
    collector = MetricsCollector(registry, tracker).attach(harness.task)
    async with harness:
        await harness.send(speech(3.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text == "Hi there.")
        await harness.send(speech(2.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text == "Great.")
    snapshot = registry.snapshot()
    assert snapshot["counters"]["service.request"] == {"deepgram": 2.0, "openai": 2.0, "cartesia": 2.0}
    assert snapshot["counters"]["usage.llm_prompt_tokens"] == {"openai": 220.0}
    assert snapshot["counters"]["usage.stt_seconds"]["deepgram"] == pytest.approx(5.0)
    assert snapshot["histograms"]["latency.stt_final"]["deepgram"]["count"] == 2
    assert snapshot["histograms"]["latency.llm_ttft"]["openai"]["max"] == pytest.approx(0.31)
    assert snapshot["histograms"]["latency.tts_ttfb"]["cartesia"]["count"] == 2
    assert snapshot["histograms"]["latency.voice_to_voice"]["twilio"]["count"] == 2
    assert snapshot["error_rate"] == {"deepgram": 0.0, "openai": 0.0, "cartesia": 0.0}
    assert tracker.usage_by_service()["twilio"] == {"usage.call_seconds": 20.0}
    assert tracker.finished and collector.rejected == 0


def test_collector_rejects_bad_values():
    collector = MetricsCollector()
    collector.collect(frame("usage.llm_prompt_tokens", float("nan")))
    collector.collect(frame("usage.llm_prompt_tokens", -3))
    collector.collect(frame("service.request", -1))
    collector.collect(frame("latency.llm_ttft", float("inf")))
    assert collector.rejected == 4
    assert collector.registry.counters() == {} and collector.tracker.total == 0


def test_metric_names_for_prometheus():
    assert metric_name("latency.llm_ttft") == "vantum_latency_llm_ttft"
    assert metric_name("service.rate_limited", "") == "service_rate_limited"
    assert PrometheusSettings.from_env({"METRICS_PORT": "9464"}) == PrometheusSettings(9464, "127.0.0.1")
    assert PrometheusSettings.from_env({}).port is None


def test_render_uses_the_prometheus_exposition_format():
    registry = MetricsRegistry()
    registry.counter("service.request", "openai").inc(3)
    registry.histogram("latency.tts_ttfb", "cartesia").observe(0.12)
    body, content_type = PrometheusExporter(registry).render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert 'vantum_service_request_total{service="openai"} 3.0' in text
    assert 'vantum_latency_tts_ttfb_seconds_bucket{le="0.2",service="cartesia"} 1.0' in text
    assert 'vantum_latency_tts_ttfb_seconds_bucket{le="0.1",service="cartesia"} 0.0' in text
    assert 'vantum_latency_tts_ttfb_seconds_count{service="cartesia"} 1.0' in text


def test_the_loop_lag_is_exported_in_seconds_with_its_own_buckets():
    registry = MetricsRegistry()
    registry.histogram(LOOP_LAG_METRIC, bounds=LAG_BUCKETS).observe(0.003)
    text = PrometheusExporter(registry).render()[0].decode()
    assert 'vantum_loop_lag_seconds_bucket{le="0.002",service=""} 0.0' in text
    assert 'vantum_loop_lag_seconds_bucket{le="0.005",service=""} 1.0' in text


async def test_the_prometheus_endpoint_scrapes_over_loopback():
    registry = MetricsRegistry()
    collector = MetricsCollector(registry, CostTracker())
    collector.collect(frame("service.request", 1, "openai"))
    collector.collect(frame("service.error", 1, "openai"))
    collector.collect(frame("usage.llm_completion_tokens", 1000, "openai"))
    collector.collect(frame("latency.llm_ttft", 0.42, "openai"))
    exporter = PrometheusExporter(registry)
    threads_before = set(threading.enumerate())
    port = exporter.start_http_server(0, "127.0.0.1")
    assert set(threading.enumerate()) - threads_before  # serving from its own thread
    try:

        def scrape() -> tuple[int, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.status, response.read().decode()

        status, text = await asyncio.wait_for(asyncio.to_thread(scrape), 10)
        # Metrics keep changing between scrapes: the second one sees them.
        for _ in range(4):
            collector.collect(frame("service.request", 1, "openai"))
        _, again = await asyncio.wait_for(asyncio.to_thread(scrape), 10)
    finally:
        exporter.close()
    assert status == 200
    assert 'vantum_service_request_total{service="openai"} 1.0' in text
    assert 'vantum_service_error_total{service="openai"} 1.0' in text
    assert 'vantum_cost_usd_total{service="openai"} 0.01' in text
    assert 'vantum_latency_llm_ttft_seconds_sum{service="openai"} 0.42' in text
    assert 'vantum_service_request_total{service="openai"} 5.0' in again

    # The server thread has ended (the to_thread workers are the loop's), and so, within moments,
    # has the daemon thread that answered the last scrape (close() does not wait for it: a loaded
    # CI run once saw it still closing its connection).
    def left() -> list[threading.Thread]:
        return [t for t in set(threading.enumerate()) - threads_before if not t.name.startswith("asyncio_")]

    for _ in range(100):
        if not left():
            break
        await asyncio.sleep(0.05)
    assert not left()
    exporter.close()  # idempotent


def test_registries_of_several_processes_add_up():
    workers = [MetricsRegistry(), MetricsRegistry()]
    workers[0].counter("service.request", "openai").inc(3)
    workers[1].counter("service.request", "openai").inc(2)
    workers[1].counter("service.error", "deepgram").inc()
    for value in (0.1, 0.3):
        workers[0].histogram("latency.llm_ttft", "openai").observe(value)
    workers[1].histogram("latency.llm_ttft", "openai").observe(2.0)
    total = MetricsRegistry()
    for worker in workers:
        total.merge(pickle.loads(pickle.dumps(worker.export())))  # as it crosses the pool's socket
    assert total.value("service.request", "openai") == 5
    assert total.value("service.error", "deepgram") == 1
    summary = total.histograms()[("latency.llm_ttft", "openai")]
    assert (summary.count, summary.min, summary.max) == (3, 0.1, 2.0)
    assert summary.sum == pytest.approx(2.4) and summary.p50 == 0.3
    assert dict(summary.buckets)[0.5] == 2 and dict(summary.buckets)[math.inf] == 3
    assert total.snapshot()["error_rate"] == {"openai": 0.0}


def test_a_histogram_with_other_buckets_is_refused():
    mine = Histogram(threading.Lock(), bounds=(1.0, 2.0))
    other = Histogram(threading.Lock(), bounds=(1.0,))
    other.observe(0.5)
    with pytest.raises(ValueError, match="buckets"):
        mine.merge(other.export())
    assert mine.count == 0
