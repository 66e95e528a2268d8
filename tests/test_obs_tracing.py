"""OpenTelemetry traces of calls: a whole faked phone call (FakeTwilio ⇄ our
server, Deepgram, OpenAI and Cartesia on their SDKs against the stand-ins)
traced into the SDK's in-memory exporter, its span tree and timings checked
against the call record of the same call; and tracing off costs nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the 'tracing' extra (opentelemetry-sdk) is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.twilio_scripted import load_example
from vantum_pipeline import FrameDirection, FrameProcessor, Pipeline, PipelineTask
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.observability.tracing import CallTracer, TracingSettings, call_tracer, safe_attribute
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.cartesia import CartesiaTTSService
from vantum_pipeline.services.deepgram import DeepgramSTTService
from vantum_pipeline.services.openai import OpenAILLMService
from vantum_pipeline.telephony.outcome import CallOutcome
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.transports.twilio.server import TwilioCall, TwilioServer

pytestmark = pytest.mark.timeout(90)

NUMBER = "+14155550123"
SECOND = 1e9


def exporter_and_provider() -> tuple[InMemorySpanExporter, TracerProvider]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, provider


def _iso_ns(text: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * SECOND


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_a_whole_faked_phone_call_is_traced_consistently_with_its_record():
    example = load_example()
    exporter, provider = exporter_and_provider()
    recorders: list[CallRecorder] = []
    tracers: list[CallTracer] = []

    async with example.fakes() as (twilio, services, stand_ins):

        async def factory(call: TwilioCall) -> PipelineTask:
            context = LLMContext(example.SYSTEM_PROMPT)
            tracker = CostTracker()
            recorder = CallRecorder(sink=MemorySink(), tracker=tracker, call_id=call.call_sid)
            task = PipelineTask(
                Pipeline(
                    [
                        call.transport.input(),
                        DeepgramSTTService(services.deepgram),
                        recorder.user_tap(),
                        UserAggregator(context),
                        OpenAILLMService(services.openai),
                        SentenceAggregator(),
                        CartesiaTTSService(services.cartesia),
                        call.transport.output(),
                        AssistantAggregator(context),
                    ]
                ),
                audio_in_sample_rate=services.deepgram.sample_rate,
                audio_out_sample_rate=services.cartesia.sample_rate,
            )
            MetricsCollector(tracker=tracker).attach(task)
            recorder.attach(task)
            tracer = call_tracer(
                TracingSettings(enabled=True),
                call_id=call.call_sid,
                to=call.call.to,
                tracer_provider=provider,
                hold_for_outcome=True,
            )
            assert tracer is not None
            tracer.attach(task)

            def freeze_record(frame: Frame, direction: FrameDirection) -> None:
                if isinstance(frame, EndFrame | CancelFrame) and direction is FrameDirection.DOWNSTREAM:
                    recorder.build(final=True)  # the record's end: when the pipeline ended

            task.add_observer(freeze_record)
            recorders.append(recorder)
            tracers.append(tracer)
            await task.queue_frame(TTSSpeakFrame(example.GREETING, category="greeting"))
            return task

        async with TwilioServer(twilio, factory, host="127.0.0.1", port=0) as server:
            server.public_base_url = server.local_url
            call = await server.place_call(NUMBER)
            async with asyncio.timeout(60):
                placed = await call.wait()
                await server.wait_idle()
    assert placed.outcome is CallOutcome.COMPLETED
    (recorder,), (tracer,) = recorders, tracers
    record = await recorder.finish()
    tracer.finish(outcome=placed.outcome.value)

    spans = list(exporter.get_finished_spans())
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)

    # The tree: one call span at the root, every other span below it, one trace.
    (root,) = by_name["call"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    ids = {s.context.span_id: s for s in spans}
    for span in spans:
        if span is not root:
            assert span.parent is not None and span.parent.span_id in ids, span.name
    assert {"turn", "stt.stream", "llm.request", "tts.context"} <= set(by_name)
    assert root.attributes["vantum.call.id"] == record["call_id"] == placed.call_sid
    assert root.attributes["vantum.call.to"] == "+141******23"
    assert root.attributes["vantum.call.outcome"] == "completed"

    # The call span covers the pipeline's life, as the record does.
    assert abs(root.start_time - _iso_ns(record["started_at"])) < 0.25 * SECOND
    assert abs(root.end_time - _iso_ns(record["ended_at"])) < 0.25 * SECOND
    for span in spans:
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, span.name

    # Turns: one per answered user turn, from the end of speech to the first
    # bot audio; the LLM request and the TTS context of the reply below it.
    user_turns = [t for t in record["turns"] if t["role"] == "user"]
    answered = [t for t in by_name["turn"] if t.attributes["vantum.turn.answered"]]
    assert len(answered) == len(user_turns) == 2
    assert root.attributes["vantum.call.turns"] == len(by_name["turn"])
    for turn in answered:
        llms = [s for s in _children(spans, turn) if s.name == "llm.request"]
        ttss = [s for s in _children(spans, turn) if s.name == "tts.context"]
        assert llms and ttss
        first_token = min(e.timestamp for s in llms for e in s.events if e.name == "first_token")
        first_byte = min(e.timestamp for s in ttss for e in s.events if e.name == "first_byte")
        # speech end → request → first token → text to the TTS → its first byte → audio on the line
        assert turn.start_time <= llms[0].start_time <= first_token <= ttss[0].start_time <= first_byte
        assert first_byte <= turn.end_time
    # The greeting's context belongs to the call, not to a turn.
    assert any(s.name == "tts.context" and s.parent.span_id == root.context.span_id for s in spans)

    # The services' latencies on the spans are the record's, to the value.
    def values(name: str, attribute: str) -> list[float]:
        return sorted(s.attributes[attribute] for s in by_name[name] if attribute in s.attributes)

    for metric, name, attribute in (
        ("latency.llm_ttft", "llm.request", "vantum.llm.ttft_s"),
        ("latency.tts_ttfb", "tts.context", "vantum.tts.ttfb_s"),
    ):
        traced = values(name, attribute)
        summary = record["latencies"][metric]
        assert len(traced) == summary["count"]
        assert round(max(traced), 4) == summary["max"]
        assert round(sum(traced) / len(traced), 4) == pytest.approx(summary["mean"], abs=1e-4)
    for span in by_name["llm.request"]:
        if "vantum.llm.ttft_s" in span.attributes:
            (event,) = [e for e in span.events if e.name == "first_token"]
            # the event sits where the service measured it, give or take scheduling
            measured = (event.timestamp - span.start_time) / SECOND
            assert measured == pytest.approx(span.attributes["vantum.llm.ttft_s"], abs=0.1)

    # Usage on the spans adds up to the record's.
    usage = record["cost"]["usage"]
    tokens = sum(s.attributes.get("gen_ai.usage.output_tokens", 0) for s in by_name["llm.request"])
    assert tokens == usage["openai"]["usage.llm_completion_tokens"] > 0
    characters = sum(s.attributes.get("vantum.tts.characters", 0) for s in by_name["tts.context"])
    assert characters == usage["cartesia"]["usage.tts_characters"]
    (stream,) = by_name["stt.stream"]
    assert stream.attributes["vantum.stt.finals"] == len(user_turns)
    assert stream.attributes["vantum.stt.audio_seconds"] == pytest.approx(usage["deepgram"]["usage.stt_seconds"])
    assert stream.parent.span_id == root.context.span_id

    # The barge-in: counted as the record counts it; the cut reply's spans say so.
    assert root.attributes["vantum.call.interruptions"] == record["counts"]["interruptions"] == 1
    (barge_in,) = [e for e in root.events if e.name == "interruption"]
    # between the first answered turn's first audio and the second turn's end of speech
    assert answered[0].end_time < barge_in.timestamp < answered[1].start_time

    # No key and no full number anywhere in what was exported.
    exported = json.dumps([json.loads(s.to_json()) for s in spans])
    assert NUMBER not in exported and NUMBER[1:] not in exported
    for secret in ("dg-fake-key", "sk-fake-key", "sk_car_fake", stand_ins["twilio"].auth_token):
        assert secret not in exported


def test_attributes_are_scrubbed():
    assert safe_attribute("to +14155550123 now") == "to +141******23 now"
    assert safe_attribute("call (415) 555-0123") == "call (4155****23"
    assert "sk-proj-abcdefghijklmnop1234" not in safe_attribute("key sk-proj-abcdefghijklmnop1234")
    assert safe_attribute("CA0123") == "CA0123"
    exporter, provider = exporter_and_provider()
    tracer = CallTracer(to="+14155550123", attributes={"note": "dial +442071838750"}, tracer_provider=provider)
    tracer(StartFrame(), FrameDirection.DOWNSTREAM)
    tracer.finish()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["vantum.call.to"] == "+141******23"
    assert span.attributes["note"] == "dial +442*******50"


def test_tracing_off_or_absent_attaches_nothing(monkeypatch):
    assert call_tracer(TracingSettings(enabled=False)) is None
    assert TracingSettings.from_env({}).enabled is False
    assert TracingSettings.from_env({"VANTUM_TRACING": "true"}).enabled is True
    # Without the extra: a warning and no tracer, never an ImportError.
    import builtins

    real_import = builtins.__import__

    def no_opentelemetry(name, *args, **kwargs):
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_opentelemetry)
    assert call_tracer(TracingSettings(enabled=True)) is None


def test_the_core_and_the_observability_package_do_not_import_opentelemetry():
    import subprocess
    import sys

    code = (
        "import sys, vantum_pipeline, vantum_pipeline.task, vantum_pipeline.observability.record,"
        " vantum_pipeline.observability.collector, vantum_pipeline.observability.tracing,"
        " vantum_pipeline.transports.twilio.server\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


async def test_turns_that_the_user_resumes_are_not_answered_and_spans_end_at_the_end():
    exporter, provider = exporter_and_provider()
    tracer = CallTracer(call_id="CA1", tracer_provider=provider)

    harness = PipelineHarness([FrameProcessor()])
    tracer.attach(harness.task)
    llm = {"service": "openai"}
    async with harness:
        for frame in (
            UserStartedSpeakingFrame(),
            UserStoppedSpeakingFrame(),
            UserStartedSpeakingFrame(),  # the user goes on: the first turn is not answered
            UserStoppedSpeakingFrame(),
            MetricsFrame("service.request", 1, labels=llm),
            MetricsFrame("latency.llm_ttft", 0.2, labels=llm),
            BotStartedSpeakingFrame(),
            TextFrame("left open"),
            MetricsFrame("service.request", 1, labels={"service": "acme-tts"}),
            MetricsFrame("latency.tts_ttfb", 0.1, labels={"service": "acme-tts"}),  # learned: acme-tts is a TTS
        ):
            await harness.send(frame)
    spans = {(s.name, i): s for i, s in enumerate(exporter.get_finished_spans())}
    names = sorted(name for name, _ in spans)
    assert names == ["call", "llm.request", "tts.context", "turn", "turn"]
    turns = [s for (name, _), s in spans.items() if name == "turn"]
    assert [t.attributes["vantum.turn.answered"] for t in turns] == [False, True]
    (tts,) = [s for (name, _), s in spans.items() if name == "tts.context"]
    assert tts.attributes["vantum.tts.ttfb_s"] == 0.1


async def test_a_failed_request_is_an_error_span_and_a_barge_in_cuts_the_open_ones():
    from opentelemetry.trace import StatusCode

    exporter, provider = exporter_and_provider()
    tracer = CallTracer(call_id="CA2", tracer_provider=provider)
    harness = PipelineHarness([FrameProcessor()])
    tracer.attach(harness.task)
    llm, tts = {"service": "openai"}, {"service": "cartesia"}
    async with harness:
        await harness.send(UserStoppedSpeakingFrame())
        await harness.send(MetricsFrame("service.request", 1, labels=llm))
        await harness.send(MetricsFrame("service.error", 1, labels=llm))  # a 500: the attempt failed
        await harness.send(MetricsFrame("service.request", 1, labels=llm))  # the retry
        await harness.send(MetricsFrame("latency.llm_ttft", 0.3, labels=llm))
        await harness.send(MetricsFrame("service.request", 1, labels=tts))
        await harness.send(BotStartedSpeakingFrame())
        await harness.task.queue_frame(InterruptionFrame())  # the callee talks over the reply
        await harness.send(BotStoppedSpeakingFrame())  # the output transport stops the audio
        await harness.wait_for(BotStoppedSpeakingFrame, timeout=2)
    spans = exporter.get_finished_spans()
    failed, retried = [s for s in spans if s.name == "llm.request"]
    assert failed.status.status_code is StatusCode.ERROR and "vantum.llm.ttft_s" not in failed.attributes
    assert retried.status.status_code is StatusCode.UNSET and retried.attributes["vantum.interrupted"] is True
    (context,) = [s for s in spans if s.name == "tts.context"]
    assert context.attributes["vantum.interrupted"] is True
    (call,) = [s for s in spans if s.name == "call"]
    assert [e.name for e in call.events] == ["interruption"]
