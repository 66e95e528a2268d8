"""One simulated outbound sales call, through the production path, with no keys and no network.

What runs, all on 127.0.0.1::

    TwilioServer ── REST (twilio SDK) ──────────────▶ FakeTwilio ── media websocket ──▶ our server
        │                                                └─ SimulatedCallee: espeak-ng voice, pocketsphinx ears
        └─ per call: TwilioTransport.input()
             → DeepgramSTTService  (deepgram-sdk) ─▶ FakeDeepgram  + pocketsphinx
             → UserAggregator → OpenAILLMService (openai SDK) ─▶ FakeOpenAI + scripted sales agent
             → SentenceAggregator → CartesiaTTSService (cartesia SDK) ─▶ FakeCartesia + espeak-ng
             → TwilioTransport.output() → AssistantAggregator

The call is placed with ``TwilioServer.place_call``; the fake answers, fetches
the TwiML, opens the media stream, and the simulated callee talks with the
bot, barging in once. ``run_phone_demo`` returns the call record (the
observability ``CallRecorder``'s record plus a ``simulation`` section: what
each side heard, word accuracy both ways, per-turn latency, the barge-in) and
writes ``call.json`` and ``call.wav``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from vantum_pipeline.demo.console import CallConsole
from vantum_pipeline.demo.recording import stereo_line_recording
from vantum_pipeline.frames import LLMContextFrame
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker, Prices
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import SALES_PROMPT, LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.processors.tools import SalesOutcome
from vantum_pipeline.services.offline.agent import SalesScript
from vantum_pipeline.services.offline.espeak import BOT_VOICE, EspeakSynthesizer
from vantum_pipeline.services.offline.word_accuracy import WordErrors, normalize_words, word_errors
from vantum_pipeline.settings import Secret
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.testing.callee import FRAME_SECONDS, Callee
from vantum_pipeline.testing.offline import EspeakFakeSynthesizer, PocketsphinxFakeRecognizer, ScriptedResponder
from vantum_pipeline.testing.simulated_callee import DEMO_LINES, CalleeLine, SimulatedCallee

__all__ = ["DemoCall", "run_phone_demo"]

PROSPECT_NUMBER = "+14155550100"
FROM_NUMBER = "+15005550006"
PROSPECT = {
    "agent_name": "Alex",
    "company_name": "Vantum",
    "prospect_name": "Jordan",
    "prospect_company": "Acme Logistics",
    "product_name": "Vantum",
}


@dataclass
class DemoCall:
    """Everything one run produced."""

    record: dict[str, Any]
    wav_path: Path | None
    json_path: Path | None
    run_seconds: float
    console: CallConsole
    objects: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class _CallParts:
    """What the pipeline factory built, kept for the analysis."""

    context: LLMContext | None = None
    recorder: CallRecorder | None = None
    task: PipelineTask | None = None
    tracker: CostTracker | None = None
    outcomes: list[SalesOutcome] = field(default_factory=list)


async def run_phone_demo(
    out_dir: Path | None,
    console: CallConsole,
    *,
    lines: tuple[CalleeLine, ...] = DEMO_LINES,
    time_limit: float = 120.0,
) -> DemoCall:
    """Run the call; write ``call.json`` and ``call.wav`` into ``out_dir`` (None: write nothing)."""
    from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
    from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
    from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
    from vantum_pipeline.telephony.settings import TwilioSettings
    from vantum_pipeline.testing.cartesia import FakeCartesia
    from vantum_pipeline.testing.deepgram import FakeDeepgram
    from vantum_pipeline.testing.openai import FakeOpenAI
    from vantum_pipeline.testing.twilio import CalleeBehaviour, FakeTwilio
    from vantum_pipeline.transports.twilio.server import TwilioCall, TwilioServer
    from vantum_pipeline.transports.twilio.transport import TwilioTransportParams

    started = time.monotonic()
    script = SalesScript()
    console.note("loading the offline engines (pocketsphinx models, espeak-ng voices)")
    callee = SimulatedCallee(lines=lines, on_event=console.callee_event)
    recognizer, _, synthesizer = await asyncio.gather(
        asyncio.to_thread(PocketsphinxFakeRecognizer),
        asyncio.to_thread(callee.prepare),
        asyncio.to_thread(EspeakFakeSynthesizer, BOT_VOICE),
    )
    responder = ScriptedResponder(script)
    parts = _CallParts()

    async with (
        FakeDeepgram(recognizer=recognizer) as deepgram,
        FakeOpenAI(responder=responder) as openai_fake,
        FakeCartesia(synthesizer=synthesizer) as cartesia,
        FakeTwilio(default=CalleeBehaviour(script=callee)) as twilio,
    ):

        async def build_pipeline(call: TwilioCall) -> PipelineTask:
            key = Secret("offline-demo")
            stt = DeepgramSTTService(DeepgramSettings(api_key=key, url=deepgram.ws_url).for_phone())
            llm = OpenAILLMService(
                OpenAISettings(api_key=key, base_url=openai_fake.base_url),
                on_outcome=parts.outcomes.append,
            )
            tts = CartesiaTTSService(
                CartesiaSettings(
                    api_key=key, base_url=cartesia.http_url, websocket_base_url=cartesia.ws_url
                ).for_twilio()
            )
            context = LLMContext.from_template(SALES_PROMPT, PROSPECT)
            tracker = CostTracker(Prices())
            recorder = CallRecorder(sink=MemorySink(), tracker=tracker, call_id=call.call_sid)
            pipeline = Pipeline(
                [
                    call.transport.input(),
                    stt,
                    console.stt_tap(),
                    recorder.user_tap(),
                    UserAggregator(context),
                    llm,
                    SentenceAggregator(),
                    tts,
                    console.tts_tap(),
                    call.transport.output(),
                    AssistantAggregator(context),
                ]
            )
            task = PipelineTask(pipeline, audio_in_sample_rate=8000, audio_out_sample_rate=8000)
            MetricsCollector(tracker=tracker).attach(task)
            recorder.attach(task)
            parts.context, parts.recorder, parts.task, parts.tracker = context, recorder, task, tracker
            # Outbound: the bot speaks first.
            await task.queue_frame(LLMContextFrame(context))
            return task

        settings = TwilioSettings(
            account_sid=twilio.account_sid,
            auth_token=Secret(twilio.auth_token),
            from_number=FROM_NUMBER,
            public_base_url="http://127.0.0.1:1",  # set once the server has its port
            api_base_url=twilio.base_url,
        )
        server = TwilioServer(
            settings, build_pipeline, port=0, transport_params=TwilioTransportParams(passthrough_input=True)
        )
        async with server:
            server.public_base_url = server.local_url
            console.note(f"calling {PROSPECT_NUMBER} through Twilio (a local stand-in) ...")
            call = await server.place_call(PROSPECT_NUMBER)
            if call.ended:
                raise RuntimeError(f"the call could not be placed: {call.record}")
            watcher = asyncio.ensure_future(_watch_latencies(twilio, callee, console))
            try:
                await twilio.wait_ended(within=time_limit)
                await _wait_finished(parts, timeout=10.0)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            try:
                async with asyncio.timeout(10.0):
                    await call.wait()
            except TimeoutError:
                logger.warning("the call's final status did not arrive")
            fake_call = next(iter(twilio.calls.values()))
            line = fake_call.callee
            assert line is not None and parts.recorder is not None
            if parts.outcomes:
                parts.recorder.set_outcome(parts.outcomes[-1].outcome, parts.outcomes[-1].notes)
            record = await parts.recorder.finish()
            record["telephony"] = {
                "call_sid": fake_call.sid,
                "status": fake_call.status,
                "duration_seconds": fake_call.duration,
                "callbacks": [status for status, _ in fake_call.callbacks],
                "end_reason": line.end_reason,
            }
            record["simulation"] = _analyse(record, callee, line, parts, script)

    wav_path = json_path = None
    if out_dir is not None:
        wav_path, json_path = out_dir / "call.wav", out_dir / "call.json"
        seconds = await asyncio.to_thread(
            _write_recording, out_dir, wav_path, callee.recordings, [(c.at, c.audio) for c in line.heard]
        )
        record["simulation"]["recording_seconds"] = round(seconds, 2)
    run_seconds = time.monotonic() - started
    record["simulation"]["run_seconds"] = round(run_seconds, 2)
    if json_path is not None:
        text = json.dumps(record, indent=2, default=str) + "\n"
        await asyncio.to_thread(json_path.write_text, text, encoding="utf-8")
    objects = {"callee": callee, "line": line, "context": parts.context}
    return DemoCall(record, wav_path, json_path, run_seconds, console, objects)


def _write_recording(
    out_dir: Path, path: Path, callee: list[tuple[float, bytes]], bot: list[tuple[float, bytes]]
) -> float:
    out_dir.mkdir(parents=True, exist_ok=True)
    return stereo_line_recording(path, callee, bot)


async def _wait_finished(parts: _CallParts, *, timeout: float) -> None:
    """The server runs the pipeline; wait (bounded) until it has wound down."""
    async with asyncio.timeout(timeout):
        # PipelineTask offers no completion event to await, and the server owns the run.
        while parts.task is None or not parts.task.has_finished():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _watch_latencies(twilio: Any, callee: SimulatedCallee, console: CallConsole) -> None:
    """Print each turn's latency as soon as the bot's answer is heard."""
    reported = 0
    while True:
        await asyncio.sleep(FRAME_SECONDS)
        line = next((c.callee for c in twilio.calls.values() if c.callee is not None), None)
        if line is None or reported >= len(callee.said):
            continue
        said = callee.said[reported]
        latency = _first_heard_after(line, said.end)
        if latency is not None:
            reported += 1
            console.note(f"        turn latency {latency:.2f} s (end of callee speech -> first bot audio heard)")


def _first_heard_after(line: Callee, at: float) -> float | None:
    for chunk in line.heard:
        if chunk.at >= at:
            return chunk.at - at
    return None


def _analyse(
    record: dict[str, Any], callee: SimulatedCallee, line: Callee, parts: _CallParts, script: SalesScript
) -> dict[str, Any]:
    """What the call shows, measured from both ends."""
    turns = record["turns"]
    user_turns = [t for t in turns if t["role"] == "user"]
    bot_turns = [t for t in turns if t["role"] == "assistant"]
    # The bot's side: each callee line against what the bot transcribed.
    bot_side = WordErrors(0, 0, 0, 0)
    answers = []
    for said, heard in zip(callee.said, user_turns, strict=False):
        errors = word_errors(said.text, heard["text"])
        bot_side += errors
        answers.append({"said": said.text, "recognized": heard["text"], "accuracy": round(errors.accuracy, 3)})
    # The callee's side: what the bot's turns put on the line against what the callee recognized.
    callee_side = WordErrors(0, 0, 0, 0)
    greetings = []
    for heard, bot in zip(callee.heard, bot_turns, strict=False):
        spoken = bot.get("heard") if bot.get("heard") is not None else bot["text"]
        errors = word_errors(spoken, heard.text)
        callee_side += errors
        greetings.append({"spoken": spoken, "recognized": heard.text, "accuracy": round(errors.accuracy, 3)})
    latencies = [latency for said in callee.said if (latency := _first_heard_after(line, said.end)) is not None]
    return {
        "callee_lines": [
            {"text": s.text, "start": round(s.start, 3), "end": round(s.end, 3), "barge_in": s.barge_in}
            for s in callee.said
        ],
        "bot_side_recognition": {"word_accuracy": round(bot_side.accuracy, 3), "turns": answers},
        "callee_side_recognition": {"word_accuracy": round(callee_side.accuracy, 3), "turns": greetings},
        "greeting_recognized_by_callee": bool(
            callee.heard and word_errors(script.greeting, callee.heard[0].text).accuracy >= 0.7
        ),
        "turn_latencies": [round(x, 3) for x in latencies],
        "median_turn_latency": round(statistics.median(latencies), 3) if latencies else None,
        "barge_in": _barge_in(callee, line, parts),
        "outcomes": [o.outcome for o in parts.outcomes],
    }


def _barge_in(callee: SimulatedCallee, line: Callee, parts: _CallParts) -> dict[str, Any] | None:
    said = next((s for s in callee.said if s.barge_in), None)
    if said is None:
        return None
    cut_at = next((at for at in line.clears if at >= said.start), None)
    # The interrupted turn is the bot's answer to the callee's line before (or the greeting): it starts
    # with the first audio heard after that line. A gap inside the turn (a late sentence under load)
    # must not move its start.
    before = max((s.end for s in callee.said if s.end <= said.start), default=0.0)
    turn_start = min((c.at for c in line.heard if before <= c.at < said.start), default=None)
    played = [c for c in line.heard if turn_start is not None and turn_start <= c.at < said.end]
    after_cut = [c for c in played if cut_at is not None and c.at > cut_at]
    heard_seconds = sum(len(c.audio) for c in played if cut_at is None or c.at <= cut_at) / 8000
    message = None
    if parts.context is not None:
        message = next((m for m in parts.context.messages if m.role == "assistant" and m.interrupted), None)
    heard_text = message.content if message is not None else None
    spoken = _words_fully_played(heard_text, message, heard_seconds, parts)
    return {
        "callee_started": round(said.start, 3),
        "bot_cut_at": None if cut_at is None else round(cut_at, 3),
        "reaction_seconds": None if cut_at is None else round(cut_at - said.start, 3),
        "chunks_played_after_cut": len(after_cut),
        "chunk_seconds": FRAME_SECONDS,
        "bot_audio_heard_seconds": round(heard_seconds, 3),
        "context_message": heard_text,
        "context_message_interrupted": message is not None,
        "words_fully_played": spoken,
        "words_in_context": len(normalize_words(heard_text or "")),
    }


def _words_fully_played(heard_text: str | None, message: Any, seconds: float, parts: _CallParts) -> int | None:
    """How many words of the interrupted reply fit entirely in the audio the callee heard."""
    if heard_text is None:
        return None
    turns = (parts.recorder.record or {}).get("turns", []) if parts.recorder is not None else []
    replies = [t for t in turns if t.get("interrupted")]
    full = replies[0]["text"] if replies else heard_text
    words = EspeakSynthesizer(BOT_VOICE).synthesize(full).words
    return sum(1 for _, _, end in words if end <= seconds + FRAME_SECONDS)
