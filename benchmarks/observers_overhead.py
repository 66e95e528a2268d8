"""What watching a call costs: the tracer and the console beside a bare pipeline.

    PYTHONPATH=. python benchmarks/observers_overhead.py           # ~30 s
    PYTHONPATH=. python benchmarks/observers_overhead.py --quick

A call-like stream (per turn: 50 audio frames of 20 ms, a user speaking
start/stop, an LLM request with its metrics, 12 LLM tokens, TTS started,
40 audio chunks, TTS stopped, bot speaking start/stop) goes through 6
pass-through processors, as fast as the pipeline takes it, with:

- nothing attached (the baseline);
- tracing off: ``call_tracer(TracingSettings(enabled=False))`` attaches nothing;
- a ``CallTracer`` exporting to OpenTelemetry's in-memory exporter;
- a ``CallRecorder`` watched by a ``ConsoleHub`` with one viewer;

rounds interleaved; printed: µs per frame (median of the rounds) and the
ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

from vantum_pipeline import FrameProcessor, Pipeline, PipelineTask
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

AUDIO = bytes(640)


def call_frames(turns: int) -> list[Frame]:
    llm, tts = {"service": "openai"}, {"service": "cartesia"}
    frames: list[Frame] = []
    for turn in range(turns):
        frames.append(UserStartedSpeakingFrame())
        frames += [InputAudioRawFrame(AUDIO, 16000) for _ in range(50)]
        frames.append(UserStoppedSpeakingFrame())
        frames += [MetricsFrame("service.request", 1, labels=llm), MetricsFrame("latency.llm_ttft", 0.3, labels=llm)]
        frames.append(LLMFullResponseStartFrame())
        frames += [LLMTextFrame(f"word{n} ") for n in range(12)]
        frames.append(LLMFullResponseEndFrame())
        frames += [MetricsFrame("usage.llm_completion_tokens", 12, labels=llm)]
        frames += [MetricsFrame("service.request", 1, labels=tts), TTSStartedFrame(context_id=f"c{turn}")]
        frames.append(MetricsFrame("latency.tts_ttfb", 0.1, labels=tts))
        frames.append(BotStartedSpeakingFrame())
        frames += [TTSAudioRawFrame(AUDIO, 16000, context_id=f"c{turn}") for _ in range(40)]
        frames += [TTSStoppedFrame(context_id=f"c{turn}"), BotStoppedSpeakingFrame()]
    return frames


async def run_once(turns: int, attach: Callable[[PipelineTask], object]) -> float:
    frames = call_frames(turns)
    task = PipelineTask(Pipeline([FrameProcessor() for _ in range(6)]), queue_size=len(frames) + 2)
    attach(task)
    for frame in frames:
        await task.queue_frame(frame)
    await task.queue_frame(EndFrame())
    started = time.perf_counter()
    await task.run()
    return (time.perf_counter() - started) / (len(frames) + 2) * 1e6


def nothing(task: PipelineTask) -> None:
    return None


def tracing_off(task: PipelineTask) -> None:
    from vantum_pipeline.observability.tracing import TracingSettings, call_tracer

    tracer = call_tracer(TracingSettings(enabled=False))
    assert tracer is None


def make_tracer() -> Callable[[PipelineTask], object]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from vantum_pipeline.observability.tracing import CallTracer

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))

    def attach(task: PipelineTask) -> object:
        return CallTracer(call_id="CA1", to="+14155550123", tracer_provider=provider).attach(task)

    return attach


def make_console() -> Callable[[PipelineTask], object]:
    from vantum_pipeline.console import ConsoleHub
    from vantum_pipeline.observability.record import CallRecorder, MemorySink

    hub = ConsoleHub(flush_interval=0.2)
    hub.subscribe()  # one page open (its queue is bounded: a snapshot replaces what it did not read)

    def attach(task: PipelineTask) -> object:
        recorder = CallRecorder(sink=MemorySink(), call_id="CA1")
        return hub.watch(task, recorder, call_id="CA1", to="+14155550123", telephony=False)

    return attach


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds, turns = (3, 20) if args.quick else (9, 40)
    variants: dict[str, Callable[[PipelineTask], object]] = {
        "bare pipeline": nothing,
        "tracing off": tracing_off,
        "CallTracer (SDK, in-memory export)": make_tracer(),
        "CallRecorder + ConsoleHub, 1 viewer": make_console(),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    await run_once(2, nothing)  # warm-up
    for _ in range(rounds):
        for name, attach in variants.items():
            times[name].append(await run_once(turns, attach))
    frames = len(call_frames(turns)) + 2
    print(f"{frames} frames per run (a {turns}-turn call), 6 processors, {rounds} rounds interleaved")
    base = statistics.median(times["bare pipeline"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<38} {median:7.2f} µs/frame   ×{median / base:5.2f}")


if __name__ == "__main__":
    asyncio.run(main())
