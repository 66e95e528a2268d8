"""The stand-ins of the call-density benchmark, and what the callees measured.

Two processes, so their CPU is neither the library's nor each other's:

- ``services``: FakeDeepgram, FakeOpenAI and FakeCartesia, at zero latency;
- ``twilio``: FakeTwilio and its scripted callees (about 20 s of conversation
  each: the callee answers the greeting, talks three times, barges in once,
  then hangs up).
  The barge-in talks over the second answer.

Each runs :func:`serve` in a child process and talks to the orchestrator over a
``multiprocessing`` pipe: it sends its URLs once, then answers ``"collect"``
(the callees' figures, see :func:`call_figures`) and ``"cpu"`` until ``"stop"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any

#: What the callee hears and says: times in seconds.
GREETING = "Hi! This is Sarah from Vantum. Do you have a minute?"
REPLY = "Sure. Vantum answers every call your team misses, day and night."
#: Deepgram's end of speech: this much silence after the last word (ms); both libraries ask for it.
ENDPOINTING_MS = 300
TWILIO_ACCOUNT = "AC" + "f" * 32
TWILIO_TOKEN = "fake-twilio-auth-token"
API_KEYS = {"deepgram": "dg-fake-key", "openai": "sk-fake-key", "cartesia": "sk_car_fake"}


def _quiet_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")


def callee_script() -> list[Any]:
    from vantum_pipeline.testing.callee import BargeIn, HangUp, Listen, Say
    from vantum_pipeline.testing.signals import speech

    return [
        Listen(quiet=0.6),
        Say(speech(1.0, seed=1), sample_rate=16000),
        Listen(quiet=0.6),
        Say(speech(1.0, seed=2), sample_rate=16000),
        BargeIn(speech(0.8, seed=3), after=1.0, sample_rate=16000),
        Listen(quiet=0.6),
        Say(speech(1.0, seed=4), sample_rate=16000),
        Listen(quiet=0.6),
        HangUp(),
    ]


@contextlib.asynccontextmanager
async def _services() -> AsyncIterator[dict[str, str]]:
    from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
    from vantum_pipeline.testing.deepgram import FakeDeepgram, ScriptedRecognizer
    from vantum_pipeline.testing.openai import FakeOpenAI

    recognizer = ScriptedRecognizer(default="yes tell me more")
    async with (
        FakeDeepgram(api_key=API_KEYS["deepgram"], recognizer=recognizer) as deepgram,
        FakeOpenAI(api_key=API_KEYS["openai"], default_reply=REPLY) as openai,
        FakeCartesia(
            api_key=API_KEYS["cartesia"],
            synthesizer=ToneSynthesizer(seconds_per_char=0.04, word_gap=0.05, sentence_gap=0.15),
        ) as cartesia,
    ):
        urls = {
            "deepgram_ws": deepgram.ws_url,
            "openai": openai.base_url,
            "cartesia_http": cartesia.http_url,
            "cartesia_ws": cartesia.ws_url,
        }
        fakes = (deepgram, openai, cartesia)

        async def forget() -> None:  # the fakes record every message: drop them as calls end
            while True:
                await asyncio.sleep(5.0)
                deepgram.connections[:] = [c for c in deepgram.connections if not c.is_closed]
                deepgram.attempts.clear()
                openai.requests.clear() if hasattr(openai, "requests") else None
                cartesia.messages.clear()
                cartesia.contexts.clear()

        task = asyncio.ensure_future(forget())
        try:
            yield urls
        finally:
            task.cancel()
            del fakes


@contextlib.asynccontextmanager
async def _twilio() -> AsyncIterator[Any]:
    from vantum_pipeline.testing.twilio import CalleeBehaviour, FakeTwilio

    async with FakeTwilio(account_sid=TWILIO_ACCOUNT, auth_token=TWILIO_TOKEN) as fake:
        fake.default = CalleeBehaviour(script=callee_script(), max_seconds=90.0)
        yield fake


def serve(role: str, pipe: Connection) -> None:
    """Entry point of a stand-in process."""
    _quiet_logs()
    asyncio.run(_serve(role, pipe))


async def _serve(role: str, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    messages: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)
    loop.add_reader(pipe.fileno(), lambda: messages.put_nowait(pipe.recv()))
    async with contextlib.AsyncExitStack() as stack:
        if role == "services":
            pipe.send(await stack.enter_async_context(_services()))
            fake = None
        else:
            fake = await stack.enter_async_context(_twilio())
            pipe.send({"twilio_api": fake.base_url})
        while True:
            request = await messages.get()
            if request == "stop":
                break
            if request == "cpu":
                pipe.send(time.process_time())
            elif isinstance(request, tuple) and request[0] == "collect" and fake is not None:
                pipe.send(call_figures(fake, lead=request[1]))
                fake.calls.clear()
    loop.remove_reader(pipe.fileno())


def _segments(callee: Any) -> list[list[tuple[float, int]]]:
    """Bot audio received, cut at every callee event (speech start or end, clear):
    within a segment the bot speaks one turn, whose audio should play gap-free."""
    cuts = sorted([t for span in callee.spoke for t in span] + list(callee.clears))
    media = [(r["at"], r["bytes"]) for r in callee.received if r["event"] == "media"]
    segments: list[list[tuple[float, int]]] = []
    current: list[tuple[float, int]] = []
    i = 0
    for at, size in media:
        while i < len(cuts) and cuts[i] <= at:
            i += 1
            if current:
                segments.append(current)
                current = []
        current.append((at, size))
    if current:
        segments.append(current)
    return segments


def _lateness(segment: list[tuple[float, int]], lead: float) -> tuple[int, int, int, float]:
    """(20 ms chunks, chunks that arrived after their play time, chunks that arrived
    with less than ``lead`` - 20 ms of audio still buffered ahead, worst lateness s).

    The callee starts playing a turn at the tick after its first audio arrives;
    a chunk late for its play time leaves a gap, after which playback resumes
    with it (the schedule shifts, as the callee's buffer does)."""
    tick = 0.02
    start = segment[0][0] + tick
    played = 0.0  # seconds of audio before this message
    chunks = late = eroded = 0
    worst = 0.0
    for at, size in segment:
        due = start + played
        n = max(1, round(size / 160))
        chunks += n
        if at > due:
            late += n
            worst = max(worst, at - due)
            start = at + tick - played
        elif due - at < lead - tick:
            eroded += n
        played += size / 8000
    return chunks, late, eroded, worst


#: Numbers of the warm-up calls each library process makes before the measured ones (not counted).
WARMUP_PREFIX = "+1415599"


def call_figures(fake: Any, *, lead: float) -> dict[str, Any]:
    """Every measured call's outcome and timing as the callee saw it (warm-up calls left out)."""
    chunks = late = eroded = 0
    worst = 0.0
    latencies: list[float] = []
    completed = 0
    ended = 0
    reasons: Counter[str] = Counter()
    durations: list[float] = []
    for call in fake.calls.values():
        if call.to.startswith(WARMUP_PREFIX):
            continue
        callee = call.callee
        if callee is None:
            reasons[f"no stream: status {call.stream_status}, error {call.error_code}"] += 1
            continue
        ended += callee.ended.is_set()
        completed += callee.end_reason == "callee hung up"
        reasons[str(callee.end_reason)] += 1
        durations.append(callee.now() if not callee.ended.is_set() else _last_event(callee))
        for segment in _segments(callee):
            c, lt, er, w = _lateness(segment, lead)
            chunks, late, eroded, worst = chunks + c, late + lt, eroded + er, max(worst, w)
        media_at = [r["at"] for r in callee.received if r["event"] == "media"]
        for _start, end in callee.spoke:
            after = [at for at in media_at if at > end]
            if after:
                latencies.append(after[0] - end - ENDPOINTING_MS / 1000)
    latencies.sort()

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return {
        "calls": sum(not call.to.startswith(WARMUP_PREFIX) for call in fake.calls.values()),
        "ended": ended,
        "completed": completed,
        "chunks": chunks,
        "late": late,
        "eroded": eroded,
        "worst_late": worst,
        "turns": len(latencies),
        "latency_p50": pct(0.5),
        "latency_p99": pct(0.99),
        "latency_mean": statistics.fmean(latencies) if latencies else None,
        "call_seconds": sum(durations),
        "end_reasons": dict(reasons),
    }


def _last_event(callee: Any) -> float:
    times = [r["at"] for r in callee.received] + [end for _s, end in callee.spoke]
    return max(times, default=0.0)
