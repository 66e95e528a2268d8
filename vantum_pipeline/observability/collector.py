"""MetricsCollector: MetricsFrames → registry, cost tracker and alerts.

Services push ``MetricsFrame``s; they leave the pipeline at one of its ends,
where the collector, attached to the task as an observer, reads them:

- ``usage.*``: added to the call's ``CostTracker`` (per service); the
  registry counts the usage and ``cost.usd`` per service; the alert monitor
  adds the dollars to the day's total;
- ``latency.*``: a histogram per (name, service);
- ``provider.state`` (a failover's circuit breaker): fed to the alert
  monitor (a provider open too long), keyed by ``labels["provider"]``;
  not a counter;
- anything else (``service.request``, ``provider.switch``, ``service.error``,
  ``service.rate_limited``, ``service.retry``, ``stt.low_confidence``,
  ``protocol.malformed``, …): a counter per (name, service), incremented by
  the frame's value; requests, errors and 429s also feed the alert monitor.

The service is the frame's ``labels["service"]`` (empty when absent).

    registry, alerts = MetricsRegistry(), AlertMonitor(...)   # per process
    tracker = CostTracker(Prices.from_env())                   # per call
    task = PipelineTask(pipeline)
    MetricsCollector(registry, tracker, alerts=alerts).attach(task)
"""

from __future__ import annotations

from loguru import logger

from vantum_pipeline.frames import CancelFrame, EndFrame, Frame, MetricsFrame, StartFrame
from vantum_pipeline.observability.alerts import AlertMonitor
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.metrics import (
    COST_USD,
    LATENCY_PREFIX,
    PROVIDER_STATE,
    SERVICE_ERROR,
    SERVICE_RATE_LIMITED,
    SERVICE_REQUEST,
    USAGE_PREFIX,
    MetricsRegistry,
)
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.task import PipelineTask

__all__ = ["MetricsCollector"]


class MetricsCollector:
    """A task observer; see the module docstring. Synchronous and cheap:
    it runs inline where frames leave the pipeline."""

    def __init__(
        self,
        registry: MetricsRegistry | None = None,
        tracker: CostTracker | None = None,
        *,
        alerts: AlertMonitor | None = None,
    ) -> None:
        self.registry = registry if registry is not None else MetricsRegistry()
        self.tracker = tracker if tracker is not None else CostTracker()
        self.alerts = alerts
        #: MetricsFrames whose value was not a finite number.
        self.rejected = 0

    def attach(self, task: PipelineTask) -> MetricsCollector:
        task.add_observer(self)
        return self

    def __call__(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, MetricsFrame):
            self.collect(frame)
        elif isinstance(frame, StartFrame):
            self.tracker.start()
        elif isinstance(frame, EndFrame | CancelFrame) and direction is FrameDirection.DOWNSTREAM:
            self.tracker.finish()

    def collect(self, frame: MetricsFrame) -> None:
        """Account for one MetricsFrame."""
        name, value = frame.metric, frame.value
        if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
            self.rejected += 1
            logger.warning("metrics: ignoring {} from {} with value {!r}", name, frame.processor, value)
            return
        service = frame.labels.get("service", "")
        registry = self.registry
        if name.startswith(USAGE_PREFIX):
            if value < 0:
                self.rejected += 1
                logger.warning("metrics: ignoring negative usage {} = {} from {}", name, value, frame.processor)
                return
            cost = self.tracker.add_usage(service, name, value)
            registry.counter(name, service).inc(value)
            if cost > 0:
                registry.counter(COST_USD, service).inc(cost)
                if self.alerts is not None:
                    self.alerts.add_cost(cost)
        elif name.startswith(LATENCY_PREFIX):
            registry.histogram(name, service).observe(value)
        elif name == PROVIDER_STATE:
            if self.alerts is not None:
                self.alerts.record_provider_state(frame.labels.get("provider", service), round(value))
        else:
            if value < 0:
                self.rejected += 1
                logger.warning("metrics: ignoring negative count {} = {} from {}", name, value, frame.processor)
                return
            registry.counter(name, service).inc(value)
            alerts = self.alerts
            if alerts is not None:
                count = max(1, round(value))
                if name == SERVICE_REQUEST:
                    alerts.record_request(service, count)
                elif name == SERVICE_ERROR:
                    alerts.record_error(service, count)
                elif name == SERVICE_RATE_LIMITED:
                    alerts.record_rate_limited(service, count)
