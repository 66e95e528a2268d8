"""Call density: K concurrent whole phone calls, vantum_pipeline beside pipecat-ai, one run.

    pip install -e ".[bench]"
    python benchmarks/call_density.py                       # K = 10, 50, 100, 200 (~6 minutes)
    python benchmarks/call_density.py --ks 50 --repeat 3    # one K, three alternating rounds
    python benchmarks/call_density.py --only vantum --profile /tmp/prof   # py-spy the library
    python benchmarks/call_density.py --only vantum --workers 2   # TwilioWorkerPool: 2 processes, one port

Each call is a whole faked phone call through the production path: FakeTwilio
places it and plays a scripted callee (about 20 s: it answers the greeting,
talks three times, barges in once, hangs up), and the bot is

- **vantum**: ``TwilioServer`` with the Deepgram, OpenAI and Cartesia services
  on their SDKs;
- **pipecat**: pipecat-ai's Twilio serializer behind its FastAPI websocket
  transport (uvicorn), its Deepgram, OpenAI and Cartesia services, run lean
  (no metrics, no VAD model, no smart-turn model: the turn ends on Deepgram's
  final transcript), wired like its Twilio example.

Both talk to the same stand-ins (Deepgram, OpenAI, Cartesia at zero latency;
FakeTwilio and the callees), which run in two other processes so that their
CPU is not counted. Both use 16 kHz linear PCM with the services (``--audio
phone``: 8 kHz, vantum passing μ-law through untouched) and the same Deepgram
endpointing. Rounds alternate between the two libraries, each in a
fresh process. Per K and library:

- **CPU/call**: the library process's CPU time (all its threads and worker
  processes) over the calls, divided by the calls' total duration: the share
  of one core a call costs;
- **late %**: 20 ms chunks of bot audio that reached the callee after their
  play time (the callee's buffer had run dry: an audible gap), measured by the
  callee from the message's arrival; **eroded %**: chunks that arrived with
  less than the transport's lead (minus one tick) still buffered: vantum
  writes 100 ms ahead, pipecat paces one chunk at a time, so for pipecat this
  is every chunk not already late;
- **turn p50/p99**: the turn latency the library adds: the callee's last
  speech chunk sent → the first chunk of the bot's answer received, minus the
  endpointing silence Deepgram waits for by protocol (the stand-ins answer at
  once; loopback and their own processing are included);
- **added / react p50/p99** (vantum): measured inside the library process
  (with ``--workers``, inside each worker, pooled by the parent; the workers
  print their warnings instead of counting them) (see :class:`TurnTimes`): *react* is the final transcript
  received -> the answer's first μ-law chunk written; *added* is react minus
  the LLM's time to first token and the TTS's time to first audio (the
  waits on the stand-ins): the turn latency the library itself adds;
- **loop lag p50/p99** (vantum): how late the server's event loop ran during
  the round, from its ``loop.lag`` metric (see
  ``vantum_pipeline.observability.loop``; the bucket's upper bound, as an
  operator reads it; with ``--workers``, every worker's measurements
  together). A loop on time lags under a millisecond; a saturated one by tens
  of milliseconds, and every call's waits with it. The server places the K
  calls whatever the lag (``overload_lag=None``);
- **kernel %**: the share of the library process's CPU time spent in the
  kernel (system time: socket reads and writes, epoll, the wake-ups of the
  processes it writes to over loopback);
- **MiB/call**: peak resident memory growth of the library process over the
  calls, divided by K;
- **done**: calls the callee completed (hung up after its script), and
  warnings the library logged (shutdown deadlines, errors).

The machine may be shared: every ratio comes from rounds of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import multiprocessing as mp
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import density_standins as standins

#: How long to spread the calls' start over (seconds per call), like a dialer does.
STAGGER = 0.02
#: What differs between two calls' copies of one warning: a processor's or call's id, a figure.
_VARYING = re.compile(r"#[0-9a-f]+|\b[A-Z]{2}[0-9a-f]{32}\b|\d+(?:\.\d+)?")
ROUND_TIMEOUT = 150.0
#: What each round prints as it ends.
ROUND_KEYS = (
    "cpu",
    "cpu_system",
    "late",
    "chunks",
    "added_p99",
    "loop_lag_p99",
    "completed",
    "error",
    "end_reasons",
    "outcomes",
    "warning_count",
    "wall",
    "gc_counts",
    "gc_collected",
    "gc_seconds",
    "gc_longest_ms",
    "root",
)


# ------------------------------------------------------------------ library side


class GcPauses:
    """Python's garbage collections in this process: how many, their CPU, the longest pause."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.collected = [0, 0, 0]
        self.total = 0.0
        self.longest = 0.0
        self._started = 0.0

    def install(self) -> None:
        import gc

        gc.callbacks.append(self._callback)

    def remove(self) -> None:
        import gc

        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.count[info["generation"]] += 1
        self.collected[info["generation"]] += info["collected"]
        self.total += pause
        self.longest = max(self.longest, pause)

    def figures(self) -> dict[str, Any]:
        longest = round(self.longest * 1e3, 1)
        return {
            "gc_counts": list(self.count),
            "gc_collected": list(self.collected),
            "gc_seconds": round(self.total, 3),
            "gc_longest_ms": longest,
        }


class Usage:
    """CPU and peak RSS of this process (and its children) over a window."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = 0
        self.base_rss = 0
        self.cpu0 = 0.0
        self.system0 = 0.0
        self._task: asyncio.Task[None] | None = None
        self.collections = GcPauses()

    def _rss(self, children: list[Any] | None = None) -> int:
        total = self._process.memory_info().rss
        for child in self._process.children(recursive=True) if children is None else children:
            with contextlib.suppress(Exception):
                total += child.memory_info().rss
        return total

    def _cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of this process and its children, the ended ones included."""
        times = self._process.cpu_times()
        user, system = times.user + times.children_user, times.system + times.children_system
        for child in self._process.children(recursive=True):
            with contextlib.suppress(Exception):
                t = child.cpu_times()
                user += t.user
                system += t.system
        return user, system

    def start(self) -> None:
        self.collections.install()
        self.base_rss = self.peak = self._rss()
        user, self.system0 = self._cpu_split()
        self.cpu0 = user + self.system0
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        # Finding the children reads every process's /proc entry: 2-3 ms of this process's CPU,
        # which at 4 samples a second was about 1 % of a core charged to the library measured.
        # The list is refreshed every 2 s; the RSS of the known ones is read every 0.25 s.
        children: list[Any] = []
        for n in itertools.count():
            await asyncio.sleep(0.25)
            if n % 8 == 0:
                children = self._process.children(recursive=True)
            self.peak = max(self.peak, self._rss(children))

    def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
        self.collections.remove()
        user, system = self._cpu_split()
        return {
            "cpu": user + system - self.cpu0,
            "cpu_system": system - self.system0,
            "rss_growth": max(0, self.peak - self.base_rss),
            **self.collections.figures(),
        }


class WarningCount:
    """Counts the WARNING+ lines a library logs (loguru or logging), by their first words."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def install(self) -> None:
        from loguru import logger

        logger.remove()
        logger.add(self._loguru, level="WARNING", format="{message}")

    def _loguru(self, message: Any) -> None:
        text = str(message.record["message"])
        # One key per kind of warning: without the processor's id and the figures, which differ per call.
        key = " ".join(_VARYING.sub("…", text).split()[:6])[:70]
        self.counts[key] += 1
        if os.environ.get("DENSITY_DEBUG") and self.counts[key] == 1:
            print(f"[{os.getpid()}] {text[:2000]}", file=sys.stderr, flush=True)


class TurnTimes:
    """What the library adds to each turn, measured inside the library process.

    An observer on each call's task sees, at the pipeline's ends: the STT's
    ``latency.stt_final`` metric (the final transcript has arrived: the
    turn's clock starts), the LLM's ``latency.llm_ttft`` and the TTS's
    ``latency.tts_ttfb`` (the time spent waiting on the stand-ins, as the
    services measure it: request sent -> first token / first audio), and the
    ``BotStartedSpeakingFrame`` the output pushes once the answer's first
    μ-law chunk is written to the Twilio socket. Per turn:

    - *react*: final transcript received -> first answer byte written;
    - *added*: react minus the LLM's TTFT and the TTS's TTFB: the library's
      own work on the turn's path (aggregators, sentence splitting, the SDKs'
      request building and parsing, queues, the event loop's delays).

    Not included: the callee's audio from the Twilio socket to the STT's
    socket before the final (per 20 ms frame, measured by the input's lag
    elsewhere) and Deepgram's endpointing wait (a protocol wait)."""

    def __init__(self) -> None:
        self.react: list[float] = []
        self.added: list[float] = []
        #: A worker of ``--workers`` also appends each turn here (``monotonic react added``), for the parent.
        self.sink: Path | None = None

    def observer(self) -> Callable[[Any, Any], None]:
        from vantum_pipeline.frames import BotStartedSpeakingFrame, MetricsFrame

        turn: dict[str, float] = {}

        def observe(frame: Any, _direction: Any) -> None:
            if isinstance(frame, MetricsFrame):
                if frame.metric == "latency.stt_final":
                    turn.clear()
                    turn["final"] = time.monotonic()
                elif "final" in turn and frame.metric in ("latency.llm_ttft", "latency.tts_ttfb"):
                    turn.setdefault(frame.metric, frame.value)
            elif isinstance(frame, BotStartedSpeakingFrame) and len(turn) == 3:
                now = time.monotonic()
                react = now - turn["final"]
                added = react - turn["latency.llm_ttft"] - turn["latency.tts_ttfb"]
                self.react.append(react)
                self.added.append(added)
                turn.clear()
                if self.sink is not None:
                    with self.sink.open("a") as sink:
                        sink.write(f"{now} {react} {added}\n")

        return observe

    def read_sinks(self, directory: Path, since: float) -> None:
        """Take the turns the workers wrote to ``directory`` (one file each) that ended after ``since``."""
        for path in sorted(directory.glob("*.turns")):
            for line in path.read_text().splitlines():
                at, react, added = (float(x) for x in line.split())
                if at >= since:
                    self.react.append(react)
                    self.added.append(added)

    def figures(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None

        return {
            "turns_measured": len(self.added),
            "react_p50": pct(self.react, 0.5),
            "react_p99": pct(self.react, 0.99),
            "added_p50": pct(self.added, 0.5),
            "added_p99": pct(self.added, 0.99),
        }


#: The library process's turn clock (one per process; each of ``--workers`` has its own, written to a file).
TURNS = TurnTimes()


def _twilio_settings(urls: dict[str, str]) -> Any:
    from vantum_pipeline.settings import Secret
    from vantum_pipeline.telephony.settings import TwilioSettings

    return TwilioSettings(
        account_sid=standins.TWILIO_ACCOUNT,
        auth_token=Secret(standins.TWILIO_TOKEN),
        from_number="+15005550006",
        public_base_url="http://127.0.0.1",
        api_base_url=urls["twilio_api"],
    )


def _transport_params(options: dict[str, Any]) -> Any:
    from vantum_pipeline.transports.twilio.transport import TwilioTransportParams

    # Phone audio: μ-law from Twilio straight to Deepgram, and from Cartesia straight back.
    params = TwilioTransportParams(passthrough_input=options.get("audio") == "phone")
    if options.get("chunk_ms"):
        params.chunk_duration = options["chunk_ms"] / 1000
    if options.get("lead_ms"):
        params.lead = options["lead_ms"] / 1000
    return params


def vantum_factory(urls: dict[str, str], options: dict[str, Any]) -> Callable[[Any], Any]:
    """The production pipeline of examples/twilio_outbound.py, pointed at the stand-ins."""
    from vantum_pipeline import Pipeline, PipelineTask
    from vantum_pipeline.frames import TTSSpeakFrame
    from vantum_pipeline.observability.retry import RetryPolicy
    from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
    from vantum_pipeline.processors.context import LLMContext
    from vantum_pipeline.processors.sentence import SentenceAggregator
    from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
    from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
    from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
    from vantum_pipeline.settings import Secret

    phone = options.get("audio") == "phone"
    deepgram = DeepgramSettings(
        api_key=Secret(standins.API_KEYS["deepgram"]),
        url=urls["deepgram_ws"],
        endpointing=standins.ENDPOINTING_MS,
        **({"encoding": "mulaw", "sample_rate": 8000} if phone else {}),
    )
    openai = OpenAISettings(
        api_key=Secret(standins.API_KEYS["openai"]), base_url=urls["openai"], retry=RetryPolicy(base_delay=0.1)
    )
    cartesia = CartesiaSettings(
        api_key=Secret(standins.API_KEYS["cartesia"]),
        base_url=urls["cartesia_http"],
        websocket_base_url=urls["cartesia_ws"],
        **({"encoding": "pcm_mulaw", "sample_rate": 8000} if phone else {}),
    )

    async def factory(call: Any) -> Any:
        context = LLMContext("You are Sarah, a friendly sales representative for Vantum.")
        transport = call.transport
        task = PipelineTask(
            Pipeline(
                [
                    transport.input(),
                    DeepgramSTTService(deepgram),
                    UserAggregator(context),
                    OpenAILLMService(openai),
                    SentenceAggregator(),
                    CartesiaTTSService(cartesia),
                    transport.output(),
                    AssistantAggregator(context),
                ]
            ),
            audio_in_sample_rate=deepgram.sample_rate,
            audio_out_sample_rate=cartesia.sample_rate,
            idle_timeout=120.0,
            metadata={"call_sid": call.call_sid},
        )
        task.add_observer(TURNS.observer())
        await task.queue_frame(TTSSpeakFrame(standins.GREETING, category="greeting"))
        return task

    return factory


class VantumFactory:
    """``vantum_factory`` as a picklable object, for the worker processes of ``--workers``."""

    def __init__(self, urls: dict[str, str], options: dict[str, Any]) -> None:
        self.urls = urls
        self.options = options
        self._factory: Callable[[Any], Any] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_in_worker, (self.urls, self.options))

    def __call__(self, call: Any) -> Any:
        if self._factory is None:
            self._factory = vantum_factory(self.urls, self.options)
        return self._factory(call)


def _in_worker(urls: dict[str, str], options: dict[str, Any]) -> VantumFactory:
    """The factory as a pool worker unpickles it: the worker logs warnings only, as the library process does
    (loguru's default, every INFO and DEBUG line of every call to stderr, would cost the workers more than the calls).
    Their warnings are printed, not counted."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="worker {process}: {message}")
    if options.get("turns_dir"):
        TURNS.sink = Path(options["turns_dir"]) / f"{os.getpid()}.turns"
    return VantumFactory(urls, options)


async def _warm_up(server: Any, calls: int) -> None:
    """Calls placed and finished before the measured ones (one per server process), their turns
    forgotten and their figures left out by the Twilio stand-in: what a long-lived server does once
    (first imports inside the SDKs, their shared clients, caches) is not spread over the K calls."""

    async def one(i: int) -> None:
        call = await server.place_call(f"{standins.WARMUP_PREFIX}{i:04d}")
        await call.wait()

    async with asyncio.timeout(ROUND_TIMEOUT):
        await asyncio.gather(*(one(i) for i in range(calls)))
    if hasattr(server, "wait_idle"):
        await server.wait_idle()
    TURNS.react.clear()
    TURNS.added.clear()


def _server_options() -> dict[str, Any]:
    """K calls are the workload: placed whatever the load (``overload_lag=None``; a ``--baseline``
    checkout older than the option has no admission check to turn off)."""
    import inspect

    from vantum_pipeline.transports.twilio.server import TwilioServer

    return {"overload_lag": None} if "overload_lag" in inspect.signature(TwilioServer).parameters else {}


def _registry_state() -> dict[str, Any] | None:
    """This process's metrics (where the server's loop monitor observes ``loop.lag``), as plain data."""
    from vantum_pipeline.observability.metrics import process_registry

    return process_registry().export()


def loop_lag(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """The p50 and p99 of the server's ``loop.lag`` over the round, from the histogram's buckets (the
    bucket's upper bound: how an operator reads it from the metrics); none from a library without it."""
    found = (after or {}).get("histograms", {}).get(("loop.lag", ""))
    if found is None:
        return {}
    earlier = (before or {}).get("histograms", {}).get(("loop.lag", ""))
    counts = [n - (earlier["counts"][i] if earlier else 0) for i, n in enumerate(found["counts"])]
    total = sum(counts)
    if not total:
        return {}
    figures: dict[str, Any] = {"loop_lag_n": total}
    for name, q in (("loop_lag_p50", 0.5), ("loop_lag_p99", 0.99)):
        rank, running = math.ceil(q * total), 0
        for bound, n in zip((*found["bounds"], math.inf), counts, strict=True):
            running += n
            if running >= rank:
                figures[name] = bound
                break
    return figures


async def run_vantum_pool(urls: dict[str, str], k: int, options: dict[str, Any]) -> dict[str, Any]:
    """The same calls through ``TwilioWorkerPool``: ``options["workers"]`` server processes behind one port."""
    import socket

    from vantum_pipeline.transports.twilio.workers import TwilioWorkerPool

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    params = _transport_params(options)
    turns_dir = Path(tempfile.mkdtemp(prefix="density-turns-"))
    options = {**options, "turns_dir": str(turns_dir)}
    pool = TwilioWorkerPool(
        _twilio_settings(urls),
        VantumFactory(urls, options),
        workers=options["workers"],
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        max_calls=k + 10,
        server_options={"transport_params": params, **_server_options()},
        stop_timeout=30.0,
    )
    usage = Usage()
    async with pool:
        if options.get("warmup"):
            await _warm_up(pool, options["workers"])
        lag0 = (await pool.metrics()).export()
        usage.start()  # after the workers are up: their start-up is not the calls' cost
        t0 = time.monotonic()

        async def one(i: int) -> Any:
            await asyncio.sleep(i * STAGGER)
            call = await pool.place_call(f"+1415555{i:04d}")
            return await call.wait()

        async with asyncio.timeout(ROUND_TIMEOUT):
            records = await asyncio.gather(*(one(i) for i in range(k)))
        wall = time.monotonic() - t0
        figures = usage.stop()
        figures.update(loop_lag(lag0, (await pool.metrics()).export()))
    for key in ("gc_counts", "gc_collected", "gc_seconds", "gc_longest_ms"):
        figures.pop(key, None)  # this process's collector, not the workers': not the calls' figure
    turns = TurnTimes()
    turns.read_sinks(turns_dir, since=t0)  # the measured calls' turns (the warm-up's ended before t0)
    shutil.rmtree(turns_dir, ignore_errors=True)
    outcomes = Counter(r.outcome.value for r in records)
    return {**figures, **turns.figures(), "wall": wall, "outcomes": dict(outcomes), "rss_base": usage.base_rss}


async def run_vantum(urls: dict[str, str], k: int, options: dict[str, Any]) -> dict[str, Any]:
    from vantum_pipeline.transports.twilio.server import TwilioServer

    if options.get("workers"):
        return await run_vantum_pool(urls, k, options)
    usage = Usage()
    params = _transport_params(options)
    server = TwilioServer(
        _twilio_settings(urls),
        vantum_factory(urls, options),
        host="127.0.0.1",
        port=0,
        max_calls=k + 10,
        transport_params=params,
        **_server_options(),
    )
    async with server:
        server.public_base_url = server.local_url
        if options.get("warmup"):
            await _warm_up(server, 1)
        lag0 = _registry_state()
        usage.start()
        t0 = time.monotonic()

        async def one(i: int) -> Any:
            await asyncio.sleep(i * STAGGER)
            call = await server.place_call(f"+1415555{i:04d}")
            return await call.wait()

        async with asyncio.timeout(ROUND_TIMEOUT):
            records = await asyncio.gather(*(one(i) for i in range(k)))
            await server.wait_idle()
        wall = time.monotonic() - t0
        figures = usage.stop()
        figures.update(loop_lag(lag0, _registry_state()))
    outcomes = Counter(r.outcome.value for r in records)
    return {**figures, **TURNS.figures(), "wall": wall, "outcomes": dict(outcomes), "rss_base": usage.base_rss}


def library_main(library: str, urls: dict[str, str], k: int, options: dict[str, Any], pipe: Connection) -> None:
    """Entry point of a library process: serve K calls, send the figures back."""
    import warnings

    warnings.filterwarnings("ignore")
    logs = WarningCount()
    logs.install()
    if library in ("vantum", "base"):
        if library == "base":  # the same program on an older checkout of the library
            sys.path.insert(0, options["baseline"])
        import vantum_pipeline

        result_root = str(Path(vantum_pipeline.__file__).parent.parent)
        runner = run_vantum
    else:
        import density_pipecat

        runner = density_pipecat.run_pipecat
        density_pipecat.quiet_logs(logs)
    try:
        factory = None
        if options.get("loop") == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            result = loop_runner.run(runner(urls, k, options))
        if library != "pipecat":
            result["root"] = result_root
    except BaseException as exc:  # report, never hang the orchestrator
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["warnings"] = dict(logs.counts.most_common(4))
    result["warning_count"] = sum(logs.counts.values())
    pipe.send(result)


# ------------------------------------------------------------------- orchestrator


def _spawn(target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(*args, child), daemon=False)
    process.start()
    return process, parent


def _recv(pipe: Connection, timeout: float) -> Any:
    if not pipe.poll(timeout):
        raise TimeoutError(f"no answer within {timeout:.0f}s")
    return pipe.recv()


def one_round(library: str, k: int, options: dict[str, Any]) -> dict[str, Any]:
    services, services_pipe = _spawn(standins.serve, "services")
    twilio, twilio_pipe = _spawn(standins.serve, "twilio")
    profiler = None
    try:
        urls = {**_recv(services_pipe, 60), **_recv(twilio_pipe, 60)}
        services_pipe.send("cpu")
        twilio_pipe.send("cpu")
        services_cpu0, twilio_cpu0 = _recv(services_pipe, 10), _recv(twilio_pipe, 10)
        process, pipe = _spawn(library_main, library, urls, k, options)
        if options.get("profile"):
            profiler = _py_spy(
                process.pid, f"{options['profile']}-{library}-k{k}", gil=options.get("profile_gil", False)
            )
        result = _recv(pipe, ROUND_TIMEOUT + 60)
        process.join(30)
        lead = 0.04 if library == "pipecat" else (options.get("lead_ms") or 100) / 1000
        twilio_pipe.send(("collect", lead))
        result.update(_recv(twilio_pipe, 60))
        services_pipe.send("cpu")
        twilio_pipe.send("cpu")
        result["services_cpu"] = _recv(services_pipe, 10) - services_cpu0
        result["callees_cpu"] = _recv(twilio_pipe, 10) - twilio_cpu0
        result["stand_in_cpu"] = result["services_cpu"] + result["callees_cpu"]
    finally:
        for proc, pipe in ((services, services_pipe), (twilio, twilio_pipe)):
            with contextlib.suppress(Exception):
                pipe.send("stop")
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        if profiler is not None:
            with contextlib.suppress(Exception):
                profiler.wait(30)
    result.update(library=library, k=k)
    return result


def _py_spy(pid: int, out: str, *, gil: bool = False) -> Any:
    """py-spy on the library process. ``gil``: only samples where a thread holds the GIL,
    i.e. Python's own work, without the time in socket calls and epoll (which release it)."""
    import shutil
    import subprocess

    # On PATH, or installed beside this Python (a venv not activated).
    program = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [
            program,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--subprocesses",
            "--format",
            "raw",
            "--output",
            f"{out}.txt",
            "--nonblocking",
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _measured(result: dict[str, Any]) -> bool:
    return "cpu" in result and result.get("call_seconds", 0.0) > 0 and result.get("chunks", 0) > 0


def _per_call(result: dict[str, Any]) -> dict[str, float]:
    seconds = max(result.get("call_seconds", 0.0), 1e-9)
    chunks = max(result.get("chunks", 0), 1)
    return {
        "cpu_pct": 100 * result["cpu"] / seconds,
        "late_pct": 100 * result["late"] / chunks,
        "eroded_pct": 100 * result["eroded"] / chunks,
        "mib": result["rss_growth"] / result["k"] / 2**20,
    }


def _fmt_ms(value: float | None, decimals: int = 0) -> str:
    return "-" if value is None else f"{1000 * value:.{decimals}f}"


def _fmt_lag(bound: float | None) -> str:
    """A loop lag bucket's upper bound, in ms (``≤ 5``), or ``> 2000`` past the last bucket."""
    if bound is None:
        return "-"
    return "> 2000" if math.isinf(bound) else f"≤ {1000 * bound:g}"


def _gc(row: dict[str, Any]) -> str:
    if "gc_seconds" not in row or not row.get("cpu"):
        return "-"
    return f"{100 * row['gc_seconds'] / row['cpu']:.1f} / {row['gc_longest_ms']:.0f}"


def _kernel(row: dict[str, Any]) -> str:
    """The share of the library's CPU time spent in the kernel (socket calls, epoll, wake-ups)."""
    if "cpu_system" not in row or not row.get("cpu"):
        return "-"
    return f"{100 * row['cpu_system'] / row['cpu']:.0f}"


def report(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| K | library | CPU/call (% core) | late % | eroded % | worst late ms | turn p50 ms | turn p99 ms "
        "| added p50 / p99 ms | react p50 / p99 ms | loop lag p50 / p99 ms | MiB/call | GC % of CPU / longest ms "
        "| kernel % of CPU | done | warnings | stand-ins CPU s (services + callees) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r and "cpu" not in r:
            print(f"| {r['k']} | {r['library']} | error: {r['error']} |")
            continue
        if not _measured(r):
            print(f"| {r['k']} | {r['library']} | no call got through: {r.get('end_reasons')} |")
            continue
        p = _per_call(r)
        print(
            f"| {r['k']} | {r['library']} | {p['cpu_pct']:.2f} | {p['late_pct']:.2f} | {p['eroded_pct']:.2f} "
            f"| {1000 * r['worst_late']:.0f} | {_fmt_ms(r['latency_p50'])} | {_fmt_ms(r['latency_p99'])} "
            f"| {_fmt_ms(r.get('added_p50'), 1)} / {_fmt_ms(r.get('added_p99'), 1)} "
            f"| {_fmt_ms(r.get('react_p50'))} / {_fmt_ms(r.get('react_p99'))} "
            f"| {_fmt_lag(r.get('loop_lag_p50'))} / {_fmt_lag(r.get('loop_lag_p99'))} "
            f"| {p['mib']:.2f} | {_gc(r)} | {_kernel(r)} | {r['completed']}/{r['k']} | {r['warning_count']} "
            f"| {r['stand_in_cpu']:.1f} ({r['services_cpu']:.1f} + {r['callees_cpu']:.1f}) |"
        )
    by_k: dict[int, dict[str, list[dict[str, float]]]] = {}
    for r in rows:
        if _measured(r):
            by_k.setdefault(r["k"], {}).setdefault(r["library"], []).append(_per_call(r))
    print()
    for k, libs in sorted(by_k.items()):
        if "vantum" in libs and "base" in libs:
            ours = statistics.median(p["cpu_pct"] for p in libs["vantum"])
            base = statistics.median(p["cpu_pct"] for p in libs["base"])
            print(f"K={k}: base CPU per call / vantum's = {base / ours:.2f}x")
        if "vantum" in libs and "pipecat" in libs:
            ours = statistics.median(p["cpu_pct"] for p in libs["vantum"])
            theirs = statistics.median(p["cpu_pct"] for p in libs["pipecat"])
            mem = statistics.median(p["mib"] for p in libs["pipecat"]) / max(
                statistics.median(p["mib"] for p in libs["vantum"]), 1e-9
            )
            print(f"K={k}: pipecat CPU per call / vantum's = {theirs / ours:.2f}x; memory per call {mem:.2f}x")
    for r in rows:
        if r.get("warnings"):
            print(f"K={r['k']} {r['library']} warnings: {r['warnings']}")
        if r.get("outcomes") and set(r["outcomes"]) - {"completed"}:
            print(f"K={r['k']} {r['library']} outcomes: {r['outcomes']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="10,50,100,200", help="concurrent calls per round, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per K and library (alternating)")
    parser.add_argument("--only", choices=("vantum", "pipecat"), help="run one library only")
    parser.add_argument(
        "--baseline", help="also run 'base': vantum from this directory (e.g. a `git archive` of an older commit)"
    )
    parser.add_argument(
        "--audio",
        choices=("wideband", "phone"),
        default="wideband",
        help="wideband: 16 kHz PCM with the services (both libraries); phone: 8 kHz "
        "(vantum: μ-law end to end, no conversion; pipecat: 8 kHz PCM, as its Twilio example)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of the library processes, both libraries alike (uvloop: pip install uvloop)",
    )
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="each library process first makes one call per server process, not counted: the steady "
        "state of a long-lived server (first-use imports and clients left out)",
    )
    parser.add_argument("--profile", help="py-spy raw output prefix (one file per round)")
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only while the GIL is held (Python's own CPU, not syscalls and waits)",
    )
    parser.add_argument(
        "--chunk-ms", type=int, default=0, help="vantum: audio per Twilio media message (0: the transport's default)"
    )
    parser.add_argument(
        "--lead-ms", type=int, default=0, help="vantum: audio sent ahead of real time (0: the transport's default)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="vantum as a TwilioWorkerPool of this many server processes behind one port (0: one TwilioServer)",
    )
    args = parser.parse_args()
    libraries = [args.only] if args.only else ["vantum", "pipecat"]
    if args.baseline:
        libraries.insert(1, "base")
    options = {
        "audio": args.audio,
        "loop": args.loop,
        "warmup": args.warmup,
        "profile": args.profile,
        "profile_gil": args.profile_gil,
        "workers": args.workers,
        "chunk_ms": args.chunk_ms,
        "lead_ms": args.lead_ms,
        "baseline": str(Path(args.baseline).resolve()) if args.baseline else None,
    }
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        for i in range(args.repeat):
            order = libraries if i % 2 == 0 else libraries[::-1]
            for library in order:
                started = time.monotonic()
                try:
                    row = one_round(library, k, options)
                except Exception as exc:  # one failed round must not lose the others
                    row = {"library": library, "k": k, "error": f"{type(exc).__name__}: {exc}"}
                shown = {key: row.get(key) for key in ROUND_KEYS}
                print(f"round {library} K={k}: {time.monotonic() - started:.0f}s {shown}", flush=True)
                rows.append(row)
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
