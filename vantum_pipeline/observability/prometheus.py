"""Prometheus exporter for a ``MetricsRegistry`` (extra ``metrics``).

The registry is read at scrape time by a prometheus-client collector; the
exposition format is prometheus-client's own. Names: ``service.request`` →
``vantum_service_request_total``, ``cost.usd`` → ``vantum_cost_usd_total``,
``latency.llm_ttft`` → ``vantum_latency_llm_ttft_seconds`` (a histogram),
each with a ``service`` label.

    exporter = PrometheusExporter(registry)
    port = exporter.start_http_server(9464, "127.0.0.1")   # GET /metrics
    ...
    exporter.close()

Or serve ``exporter.render()`` (body, content type) from the app's own web
server. Settings: ``METRICS_PORT`` (unset: no exporter) and ``METRICS_ADDR``
(``127.0.0.1``).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.loop import LOOP_LAG_METRIC
from vantum_pipeline.observability.metrics import LATENCY_PREFIX, MetricsRegistry
from vantum_pipeline.settings import env_int, load_env, optional_env

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the Prometheus exporter needs prometheus-client: pip install 'vantum-pipeline[metrics]'"
    ) from exc

__all__ = ["PrometheusExporter", "PrometheusSettings"]

#: Histograms in seconds besides the ``latency.*`` ones.
_SECONDS = frozenset({LOOP_LAG_METRIC})

_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str, namespace: str = "vantum") -> str:
    """``latency.llm_ttft`` → ``vantum_latency_llm_ttft``."""
    base = _INVALID.sub("_", name).strip("_")
    return f"{namespace}_{base}" if namespace else base


def _bound(value: float) -> str:
    """A bucket's ``le`` label, spelled as Prometheus spells it."""
    return "+Inf" if value == math.inf else repr(float(value))


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    port: int | None = None
    addr: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PrometheusSettings:
        env = load_env(env)
        addr = optional_env(env, "METRICS_ADDR", "127.0.0.1")
        assert addr is not None
        return cls(port=env_int(env, "METRICS_PORT", minimum=0, maximum=65535), addr=addr)


class _RegistryCollector(Collector):
    def __init__(self, registry: MetricsRegistry, namespace: str) -> None:
        self._registry = registry
        self._namespace = namespace

    def collect(self) -> Iterator[Metric]:
        counters: dict[str, CounterMetricFamily] = {}
        for (name, service), value in sorted(self._registry.counters().items()):
            family = counters.get(name)
            if family is None:
                family = counters[name] = CounterMetricFamily(
                    metric_name(name, self._namespace), f"{name} per service", labels=["service"]
                )
            family.add_metric([service], value)
        yield from counters.values()
        histograms: dict[str, HistogramMetricFamily] = {}
        for (name, service), summary in sorted(self._registry.histograms().items()):
            family_h = histograms.get(name)
            if family_h is None:
                unit = "_seconds" if name.startswith(LATENCY_PREFIX) or name in _SECONDS else ""
                family_h = histograms[name] = HistogramMetricFamily(
                    metric_name(name, self._namespace) + unit, f"{name} per service", labels=["service"]
                )
            family_h.add_metric(
                [service],
                buckets=[(_bound(bound), count) for bound, count in summary.buckets],
                sum_value=summary.sum,
            )
        yield from histograms.values()


class PrometheusExporter:
    """Exposes ``registry`` to Prometheus; see the module docstring."""

    def __init__(self, registry: MetricsRegistry, *, namespace: str = "vantum") -> None:
        self.registry = registry
        self.prometheus_registry = CollectorRegistry(auto_describe=False)
        self.prometheus_registry.register(_RegistryCollector(registry, namespace))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def render(self) -> tuple[bytes, str]:
        """The current exposition and its content type."""
        return generate_latest(self.prometheus_registry), CONTENT_TYPE_LATEST

    def start_http_server(self, port: int = 9464, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` from a daemon thread (prometheus-client's server);
        returns the bound port (pass 0 for any free port)."""
        if self._server is not None:
            raise ConfigurationError("the Prometheus exporter is already serving")
        server, thread = start_http_server(port, addr=addr, registry=self.prometheus_registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout)
