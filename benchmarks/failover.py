"""Failover: what the wrappers cost when nothing fails, and how fast a backup takes over.

    pip install -e ".[bench]"
    python benchmarks/failover.py            # ~1 minute
    python benchmarks/failover.py --quick

1. Added latency per turn when nothing fails. A turn is timed from the frame
   queued at the task to the end of its output at a sink, with a provider
   that costs nothing (canned audio, a scripted reply), alone and inside its
   failover wrapper; the difference is what the wrapper adds:
   - TTS: ``TextFrame`` → ``TTSStoppedFrame``; a null engine alone vs
     ``FailoverTTSService([null, null])``; beside it pipecat-ai's
     ``ServiceSwitcher`` (``ServiceSwitcherStrategyFailover``) around a null
     TTS processor vs that processor alone, same run;
   - LLM: ``LLMContextFrame`` → ``LLMFullResponseEndFrame``; the scripted LLM
     alone vs ``FailoverLLMService([scripted, scripted])``;
   - STT: per 20 ms audio frame, a null STT alone vs ``FailoverSTTService``
     (pipecat: ``ServiceSwitcher`` around a pass-through).
2. From a provider failure to the backup's first audio: Cartesia (FakeCartesia,
   real SDK, streaming at real time) loses its socket after the first
   sentence of a reply; the failover moves the rest of the turn to espeak,
   Deepgram Aura (FakeDeepgramSpeak) or OpenAI speech (FakeOpenAI). Timed from
   the moment the failure is detected to the backup's first audio frame at
   the sink, and the longest silence a real-time listener would hear
   (``PlayoutMeter``); with the backup started when first needed (the
   default: its client and connection are made then) and started early.
3. Hedged LLM: the primary stalls; time to the first token with a hedge after
   0.3 s, and without (the primary's first-token timeout, 2 s here, then the
   backup).

Rounds alternate between the variants in one run; medians are printed. The
machine is shared: compare the differences and ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

warnings.filterwarnings("ignore", category=DeprecationWarning)

AUDIO = b"\xff" * 800  # 100 ms of μ-law silence


def _quiet_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="CRITICAL")


# ------------------------------------------------------------- vantum turns


def _null_tts(name: str) -> Any:
    from vantum_pipeline.frames import MULAW
    from vantum_pipeline.services.tts import TTSService, TTSTiming, TTSTurn
    from vantum_pipeline.services.tts_cache import TTSCacheKey

    class NullTTS(TTSService):
        service = "null"

        def __init__(self) -> None:
            timing = TTSTiming(max_retries=0, first_audio_timeout=None, stall_timeout=None)
            super().__init__(timing=timing, cache_size=0, name=name)

        def output_format(self) -> tuple[int, str]:
            return 8000, MULAW

        def cache_key(self, text: str) -> TTSCacheKey:
            return TTSCacheKey(text, "v", "m", MULAW, 8000, 1.0)

        async def open_attempt(self, turn: TTSTurn) -> None:
            return None

        async def send_text(self, turn: TTSTurn, transcript: str) -> None:
            await turn.host.tts_audio(turn, AUDIO, 8000, MULAW)
            turn.host.tts_sentence_done(turn)

        async def send_end(self, turn: TTSTurn) -> None:
            await turn.host.tts_done(turn)

        def abandon_attempt(self, turn: TTSTurn, error: Any) -> None:
            return None

    return NullTTS()


class VantumTurns:
    """A task around ``service``; ``turn()`` sends one input and waits for the end of its output."""

    def __init__(self, service: Any, make_input: Callable[[], Any], done_type: type[Any]) -> None:
        from vantum_pipeline import FrameProcessor, Pipeline, PipelineTask

        self.done = asyncio.Event()

        outer = self

        class Sink(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                if isinstance(frame, done_type):
                    outer.done.set()
                await self.push_frame(frame, direction)

        self.task = PipelineTask(Pipeline([service, Sink()]), end_timeout=5)
        self.make_input = make_input
        self.runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.runner = asyncio.get_running_loop().create_task(self.task.run())
        await asyncio.sleep(0.05)

    async def turn(self) -> None:
        self.done.clear()
        await self.task.queue_frame(self.make_input())
        await self.done.wait()

    async def stop(self) -> None:
        from vantum_pipeline.frames import EndFrame

        await self.task.queue_frame(EndFrame())
        assert self.runner is not None
        await asyncio.wait_for(self.runner, 10)


class PipecatTurns:
    def __init__(self, switcher: bool) -> None:
        from pipecat.frames import frames as F
        from pipecat.pipeline.service_switcher import ServiceSwitcher, ServiceSwitcherStrategyFailover
        from pipecat.processors.frame_processor import FrameProcessor
        from pipecat_harness import lean_worker

        self.F = F
        self.done = asyncio.Event()
        outer = self

        class NullTTS(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, F.TextFrame):
                    await self.push_frame(F.TTSStartedFrame())
                    await self.push_frame(F.TTSAudioRawFrame(audio=AUDIO, sample_rate=8000, num_channels=1))
                    await self.push_frame(F.TTSStoppedFrame())
                    return
                await self.push_frame(frame, direction)

        class Sink(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, F.TTSStoppedFrame):
                    outer.done.set()
                await self.push_frame(frame, direction)

        service: Any = NullTTS()
        if switcher:
            service = ServiceSwitcher([service, NullTTS()], ServiceSwitcherStrategyFailover)
        self.task = lean_worker([service, Sink()])

    async def start(self) -> None:
        from pipecat.workers.runner import WorkerRunner

        self.runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        await self.runner.add_workers(self.task)
        self.runner_task = asyncio.get_running_loop().create_task(self.runner.run())
        await asyncio.sleep(0.1)

    async def turn(self) -> None:
        self.done.clear()
        await self.task.queue_frame(self.F.TextFrame(text="Hello there."))
        await self.done.wait()

    async def stop(self) -> None:
        await self.task.queue_frame(self.F.EndFrame())
        await asyncio.wait_for(self.runner_task, 10)


async def paired(
    make_alone: Callable[[], Any], make_wrapped: Callable[[], Any], batches: int, size: int
) -> tuple[float, float, float]:
    """Median seconds per turn alone, wrapped, and the median of the paired
    differences: both run at once, short batches alternate (A B B A ...), so a
    burst of load from elsewhere hits both sides of a pair alike."""
    alone, wrapped = make_alone(), make_wrapped()
    await alone.start()
    await wrapped.start()
    for runner in (alone, wrapped):
        for _ in range(50):
            await runner.turn()

    async def batch(runner: Any) -> float:
        start = time.perf_counter()
        for _ in range(size):
            await runner.turn()
        return (time.perf_counter() - start) / size

    times_a, times_w, differences = [], [], []
    gc.collect()
    gc.disable()
    try:
        for index in range(batches):
            if index % 2:
                w = await batch(wrapped)
                a = await batch(alone)
            else:
                a = await batch(alone)
                w = await batch(wrapped)
            times_a.append(a)
            times_w.append(w)
            differences.append(w - a)
    finally:
        gc.enable()
    await alone.stop()
    await wrapped.stop()
    return statistics.median(times_a), statistics.median(times_w), statistics.median(differences)


async def overhead(rounds: int, turns: int) -> None:
    """``rounds`` pairs of batches of ``turns`` turns per variant."""
    from vantum_pipeline.frames import (
        InputAudioRawFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        TextFrame,
        TTSStoppedFrame,
    )
    from vantum_pipeline.processors.context import LLMContext
    from vantum_pipeline.services.failover_llm import FailoverLLMService
    from vantum_pipeline.services.failover_stt import FailoverSTTService
    from vantum_pipeline.services.failover_tts import FailoverTTSService, FailoverTTSSettings
    from vantum_pipeline.services.offline.llm import ScriptedLLMService
    from vantum_pipeline.services.stt import STTService

    class NullSTT(STTService):
        service = "null"

        def __init__(self, name: str) -> None:
            super().__init__(bytes_per_second=16000, name=name)

        async def process_frame(self, frame: Any, direction: Any) -> None:
            if isinstance(frame, InputAudioRawFrame):
                await self.push_frame(frame, direction)  # a transcript's worth of work: none
                return
            await self.push_frame(frame, direction)

    tts_settings = FailoverTTSSettings().for_twilio()
    variants: dict[str, Callable[[], Any]] = {
        "tts alone": lambda: VantumTurns(_null_tts("a"), lambda: TextFrame("Hello there."), TTSStoppedFrame),
        "tts failover": lambda: VantumTurns(
            FailoverTTSService([_null_tts("a"), _null_tts("b")], tts_settings),
            lambda: TextFrame("Hello there."),
            TTSStoppedFrame,
        ),
        "llm alone": lambda: VantumTurns(
            ScriptedLLMService(), lambda: LLMContextFrame(LLMContext("Be brief.")), LLMFullResponseEndFrame
        ),
        "llm failover": lambda: VantumTurns(
            FailoverLLMService([ScriptedLLMService(name="a"), ScriptedLLMService(name="b")]),
            lambda: LLMContextFrame(LLMContext("Be brief.")),
            LLMFullResponseEndFrame,
        ),
        "stt alone": lambda: VantumTurns(
            NullSTT("a"), lambda: InputAudioRawFrame(b"\0" * 640, 16000), InputAudioRawFrame
        ),
        "stt failover": lambda: VantumTurns(
            FailoverSTTService([NullSTT("a"), NullSTT("b")]),
            lambda: InputAudioRawFrame(b"\0" * 640, 16000),
            InputAudioRawFrame,
        ),
        "pipecat tts alone": lambda: PipecatTurns(switcher=False),
        "pipecat tts switcher": lambda: PipecatTurns(switcher=True),
    }
    print("\n1. Added latency per turn when nothing fails (medians; 'added' is the median paired difference)")
    print(f"   {'':28} {'alone':>10} {'wrapped':>10} {'added':>10}")
    added: dict[str, float] = {}
    for label, alone, wrapped in (
        ("TTS turn (vantum)", "tts alone", "tts failover"),
        ("LLM turn (vantum)", "llm alone", "llm failover"),
        ("STT audio frame (vantum)", "stt alone", "stt failover"),
        ("TTS turn (pipecat switcher)", "pipecat tts alone", "pipecat tts switcher"),
    ):
        a, w, d = await paired(variants[alone], variants[wrapped], batches=rounds, size=turns)
        added[label] = d
        print(f"   {label:28} {a * 1e6:8.1f}µs {w * 1e6:8.1f}µs {d * 1e6:8.1f}µs")
    ours, theirs = added["TTS turn (vantum)"], added["TTS turn (pipecat switcher)"]
    if ours > 0:
        print(f"   pipecat's switcher adds {theirs / ours:.1f}x what FailoverTTSService adds per turn")


# ------------------------------------------------------------ take-over time


async def takeover(backup: str, runs: int, early: bool) -> tuple[float, float, float]:
    """(detection → backup first audio, last primary audio → backup first audio, longest gap), medians."""
    import math

    from vantum_pipeline.frames import (
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        TextFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
    from vantum_pipeline.services.circuit import BreakerSettings
    from vantum_pipeline.services.deepgram_tts import DeepgramTTSService, DeepgramTTSSettings
    from vantum_pipeline.services.failover import FailoverSettings
    from vantum_pipeline.services.failover_tts import FailoverTTSService, FailoverTTSSettings
    from vantum_pipeline.services.offline.tts import EspeakTTSService
    from vantum_pipeline.services.openai_tts import OpenAITTSService, OpenAITTSSettings
    from vantum_pipeline.settings import Secret
    from vantum_pipeline.testing import PipelineHarness
    from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
    from vantum_pipeline.testing.deepgram_speak import FakeDeepgramSpeak
    from vantum_pipeline.testing.openai import FakeOpenAI
    from vantum_pipeline.testing.playout import PlayoutMeter

    sentences = ["Hi, this is Alex from Vantum.", "We help sales teams call more people.", "Is now a good time?"]
    first = ToneSynthesizer().synthesize(sentences[0] + " ", 8000).audio
    detected: list[float] = []

    class Timed(FailoverTTSService):
        async def attempt_failed(self, turn: Any, error: Any) -> None:
            detected.append(time.perf_counter())
            await super().attempt_failed(turn, error)

    to_first, from_last, gaps = [], [], []
    async with FakeCartesia(chunk_ms=20) as cartesia, FakeDeepgramSpeak() as aura, FakeOpenAI() as oai:
        cartesia.faults.chunk_delay = 0.02
        for _ in range(runs):
            cartesia.faults.drop_after_chunks = math.ceil(len(first) / 160)
            cartesia.faults.drop_close_code = None
            primary = CartesiaTTSService(
                CartesiaSettings(
                    api_key=Secret("k"), base_url=cartesia.http_url, websocket_base_url=cartesia.ws_url
                ).for_twilio(),
                name="cartesia",
            )
            second: Any = {
                "espeak": lambda: EspeakTTSService(name="espeak"),
                "aura": lambda: DeepgramTTSService(
                    DeepgramTTSSettings(api_key=Secret("k"), url=aura.ws_url).for_twilio(), name="aura"
                ),
                "openai": lambda: OpenAITTSService(
                    OpenAITTSSettings(api_key=Secret("k"), base_url=oai.base_url), name="openai-tts"
                ),
            }[backup]()
            tts = Timed(
                [primary, second],
                FailoverTTSSettings(
                    failover=FailoverSettings(breaker=BreakerSettings(failure_threshold=1))
                ).for_twilio(),
            )
            meter = PlayoutMeter()
            detected.clear()
            async with PipelineHarness([tts, meter], end_timeout=15) as harness:
                await asyncio.sleep(0.2)  # the primary's socket is open, as it is by the time a call speaks
                await harness.send(LLMFullResponseStartFrame())
                for sentence in sentences:
                    await harness.send(TextFrame(sentence))
                await harness.send(LLMFullResponseEndFrame())
                await harness.wait_for(TTSStoppedFrame, timeout=15)
            assert tts.switches == 1 and detected, "the failure did not happen as planned"
            arrivals = meter.arrivals
            audio = [f for f in harness.downstream if isinstance(f, TTSAudioRawFrame)]
            assert len(audio) == len(arrivals)
            # The backup's first frame: the first frame after the failure was detected.
            after = [t for _, t in arrivals if t >= detected[0]]
            before = [t for _, t in arrivals if t < detected[0]]
            to_first.append(after[0] - detected[0])
            from_last.append(after[0] - before[-1])
            gaps.append(meter.longest_gap())
    return statistics.median(to_first), statistics.median(from_last), statistics.median(gaps)


async def hedging(runs: int) -> tuple[float, float]:
    from vantum_pipeline.frames import LLMContextFrame, LLMTextFrame
    from vantum_pipeline.observability.retry import RetryPolicy
    from vantum_pipeline.processors.context import LLMContext
    from vantum_pipeline.services.failover_llm import FailoverLLMService, FailoverLLMSettings
    from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
    from vantum_pipeline.settings import Secret
    from vantum_pipeline.testing import PipelineHarness
    from vantum_pipeline.testing.openai import FakeOpenAI, Fault

    async def ttft(hedge: float | None) -> float:
        async with FakeOpenAI(time_to_first_token=0.15) as primary, FakeOpenAI(time_to_first_token=0.15) as backup:
            primary.fail_next(Fault.stall_before_first_token())

            def llm(fake: FakeOpenAI, name: str) -> OpenAILLMService:
                settings = OpenAISettings(
                    api_key=Secret("k"),
                    base_url=fake.base_url,
                    retry=RetryPolicy(max_retries=0),
                    first_token_timeout=2.0,
                    thinking_after=None,
                )
                return OpenAILLMService(settings, call_tools=False, name=name)

            service = FailoverLLMService(
                [llm(primary, "a"), llm(backup, "b")], FailoverLLMSettings(hedge_after=hedge, thinking_after=None)
            )
            async with PipelineHarness([service], end_timeout=10) as harness:
                context = LLMContext("Be brief.")
                context.add_user("Hello?")
                start = time.perf_counter()
                await harness.send(LLMContextFrame(context))
                await harness.wait_for(LLMTextFrame, timeout=10)
                return time.perf_counter() - start

    hedged = [await ttft(0.3) for _ in range(runs)]
    plain = [await ttft(None) for _ in range(max(1, runs // 2))]
    return statistics.median(hedged), statistics.median(plain)


async def main(quick: bool, part: str) -> None:
    _quiet_logs()
    if part in ("all", "overhead"):
        await overhead(rounds=20 if quick else 60, turns=100)
    if part in ("all", "takeover"):
        await takeovers(quick)
    if part in ("all", "hedge"):
        await hedges(quick)


async def takeovers(quick: bool) -> None:
    print("\n2. From a provider failure (Cartesia's socket drops after sentence 1) to the backup's first audio")
    print(f"   {'backup':24} {'detected→audio':>15} {'last→first audio':>17} {'longest gap heard':>18}")
    for backup in ("espeak", "aura", "openai"):
        for early in (False, True):
            detect, last, gap = await takeover(backup, runs=3 if quick else 7, early=early)
            label = f"{backup} ({'started early' if early else 'on demand'})"
            print(f"   {label:24} {detect * 1e3:13.1f}ms {last * 1e3:15.1f}ms {gap * 1e3:16.1f}ms")


async def hedges(quick: bool) -> None:
    hedged, plain = await hedging(runs=3 if quick else 5)
    print("\n3. Hedged LLM, primary stalled: time to first token")
    print(
        f"   hedge after 0.3 s: {hedged * 1e3:.0f} ms; without hedging (2 s first-token timeout): {plain * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=("all", "overhead", "takeover", "hedge"), default="all")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.part))
