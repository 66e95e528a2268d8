"""The product's cross-cutting rules: keys out of logs, rate limits, retries,
cost and budget, metrics, alerts and the call record. One concept per module:

``redact``      log redaction (``install_log_redaction()``, ``redact(text)``)
``ratelimit``   per-service requests/tokens per minute (``RateLimiter``)
``retry``       one retry policy for every service (``RetryPolicy``)
``cost``        prices and the per-call ``CostTracker``
``budget``      ``BudgetGuard``: past the per-call cap, wrap up and hang up
``metrics``     in-process counters and histograms (``MetricsRegistry``)
``collector``   ``MetricsCollector``: MetricsFrames → registry, cost, alerts
``alerts``      daily cost, error rate, rate limits (``AlertMonitor``)
``record``      the call record (``CallRecorder``, ``JsonLinesSink``)
``prometheus``  optional exporter (extra ``metrics``)
``tracing``     OpenTelemetry spans of a call (extra ``tracing``: ``CallTracer``)

Wiring for one call (the registry, alert monitor and limiters are shared by
the calls of a process; the tracker, guard and recorder belong to one call)::

    install_log_redaction()                                    # once, at start-up
    registry = MetricsRegistry()
    alerts = AlertMonitor(AlertSettings.from_env())
    ...
    tracker = CostTracker(Prices.from_env())
    guard = BudgetGuard(tracker, max_cost=0.50)                # just before the TTS
    recorder = CallRecorder(sink=JsonLinesSink("calls.jsonl"), tracker=tracker)
    task = PipelineTask(Pipeline([..., stt, recorder.user_tap(), ..., guard, tts, ...]))
    MetricsCollector(registry, tracker, alerts=alerts).attach(task)
    tracer = call_tracer(TracingSettings.from_env(), call_id=call_sid)   # None when off
    if tracer is not None:
        tracer.attach(task)
    record = await recorder.run(task)

Nothing is imported here: ``settings`` imports ``redact`` at start-up, and
the exporter and the tracer need optional dependencies.
"""
