"""Place one AI outbound call: Twilio → Deepgram → OpenAI → Cartesia → Twilio.

    python examples/twilio_outbound.py --to +14155550123      # a real call
    python examples/twilio_outbound.py --fake                 # the same call against local fakes

A real call reads the keys and numbers from the environment or ``.env``
(see ``.env.example`` and the README's "Phone calls with Twilio"): the
server listens on ``--host``/``--port``, which ``PUBLIC_BASE_URL`` must reach
from the internet (a reverse proxy or a tunnel). The bot greets, listens,
answers, yields when the callee talks over it (barge-in), and hangs up when
the model calls ``end_call``. The sales-call features come from the
environment (``CallFeatureSettings.from_env()``: answering-machine detection
and voicemail, transfer to a rep, opt-out, keypad; see the README); the
do-not-call list of this example lives in memory only. The live transcript is printed as the call
goes, then the conversation as the model will remember it (interrupted
replies hold only what the callee heard) and the call's outcome.

``--fake`` runs the very same code with no keys and no network: FakeTwilio
places the call and plays a scripted callee (who answers, then interrupts
the pitch), and FakeDeepgram, FakeOpenAI and FakeCartesia stand in for the
services, all on 127.0.0.1. The exit status is 0 when the call completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vantum_pipeline import FrameDirection, Pipeline, PipelineTask
from vantum_pipeline.frames import EndOfTurnFrame, Frame, HeardTextFrame, TextFrame, TTSSpeakFrame
from vantum_pipeline.observability.redact import install_log_redaction
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.task import FrameObserver
from vantum_pipeline.telephony.actions import CallActions
from vantum_pipeline.telephony.dnc import InMemoryDncList
from vantum_pipeline.telephony.keypad import KeypadProcessor, keypad_bindings
from vantum_pipeline.telephony.outcome import CallOutcome, CallRecord
from vantum_pipeline.telephony.settings import CallFeatureSettings, TwilioSettings
from vantum_pipeline.telephony.voicemail import MachineDetectionGate
from vantum_pipeline.transports.twilio.server import TwilioCall, TwilioServer

SYSTEM_PROMPT = (
    "You are Sarah, a friendly sales representative for Vantum, calling a small business owner. "
    "Be concise: one or two short sentences, one question at a time. If they are busy or not "
    "interested, thank them and end the call with the end_call function. If they ask to be removed "
    "from your list or not to be called again, call do_not_call at once. If they ask to speak to a "
    "person and you have the transfer_call function, call it."
)
GREETING = "Hi! This is Sarah from Vantum. Do you have a minute?"


@dataclass
class Services:
    deepgram: DeepgramSettings
    openai: OpenAISettings
    cartesia: CartesiaSettings


class Transcript:
    """Prints the conversation as it happens (frames leaving the pipeline's tail)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def observe(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is not FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, EndOfTurnFrame) and frame.text.strip():
            # A backchannel ("mm-hmm" over the bot) is shown, marked: it is not a turn.
            self.say(f"callee: {frame.text}" + ("  (backchannel: not answered)" if frame.backchannel else ""))
        elif isinstance(frame, TextFrame | TTSSpeakFrame) and not isinstance(frame, HeardTextFrame):
            self.say(f"bot:    {frame.text}")


def build_pipeline(
    call: TwilioCall,
    services: Services,
    transcript: Transcript,
    features: CallFeatureSettings | None = None,
    dnc: InMemoryDncList | None = None,
) -> tuple[PipelineTask, LLMContext]:
    """The call's pipeline: one per call, built when its media stream starts."""
    features = features or CallFeatureSettings()
    context = LLMContext(SYSTEM_PROMPT)
    transport = call.transport
    actions = CallActions(call.call, features, dnc=dnc, from_number=call.server.settings.from_number)
    gate = MachineDetectionGate(call.call, features.amd, variables={"name": "there"})
    task = PipelineTask(
        Pipeline(
            [
                transport.input(),
                KeypadProcessor(keypad_bindings(features.keypad_bindings(), actions)),
                DeepgramSTTService(services.deepgram),
                gate.turn_guard(),
                UserAggregator(context),
                OpenAILLMService(services.openai, tools=actions.tools()),
                SentenceAggregator(),
                actions,
                gate,
                CartesiaTTSService(services.cartesia),
                transport.output(),
                AssistantAggregator(context),
            ]
        ),
        audio_in_sample_rate=services.deepgram.sample_rate,
        audio_out_sample_rate=services.cartesia.sample_rate,
        idle_timeout=120.0,
        metadata={"call_sid": call.call_sid},
    )
    task.add_observer(transcript.observe)
    transcript.say(f"-- call {call.call_sid} answered ({call.answered_by or 'human'}); streaming")
    return task, context


async def run_call(
    twilio: TwilioSettings,
    services: Services,
    to: str,
    *,
    host: str,
    port: int,
    public_base_url: str | None = None,
    max_call_seconds: float = 600.0,
    observer: FrameObserver | None = None,
    features: CallFeatureSettings | None = None,
    dnc: InMemoryDncList | None = None,
) -> tuple[CallRecord, list[LLMContext]]:
    """Serve one outbound call to ``to`` and return its record and conversation.

    ``observer(frame, direction)`` also sees every frame leaving the call's pipeline.
    ``features`` None: no answering-machine detection and no transfers.
    """
    transcript = Transcript()
    contexts: list[LLMContext] = []

    async def factory(call: TwilioCall) -> PipelineTask:
        task, context = build_pipeline(call, services, transcript, features, dnc)
        if observer is not None:
            task.add_observer(observer)
        contexts.append(context)
        if call.call.resumed_after is None:
            await task.queue_frame(TTSSpeakFrame(GREETING, category="greeting"))
        return task

    async with TwilioServer(twilio, factory, host=host, port=port, features=features, dnc=dnc) as server:
        if public_base_url is not None:
            server.public_base_url = public_base_url
        elif "127.0.0.1" in twilio.public_base_url or "localhost" in twilio.public_base_url:
            server.public_base_url = server.local_url
        call = await server.place_call(to)
        transcript.say(f"-- calling {to} ({call.sid or 'not placed'})")
        async with asyncio.timeout(max_call_seconds):
            record = await call.wait()
            await server.wait_idle()
    return record, contexts


def print_summary(record: CallRecord, contexts: list[LLMContext]) -> None:
    for context in contexts:
        print("-- conversation as remembered:")
        for message in context.messages[1:]:
            flag = " (interrupted: only what was heard)" if message.interrupted else ""
            content = message.content
            if content is None and message.tool_calls:
                content = "[calls " + ", ".join(call.name for call in message.tool_calls) + "]"
            print(f"   {message.role}: {content}{flag}")
    print(
        f"-- outcome: {record.outcome.value} (status {record.status}), {record.duration:.0f}s, "
        f"${record.cost:.4f}, call {record.call_sid}"
    )


# ----------------------------------------------------------------- real call


async def real_call(args: argparse.Namespace) -> int:
    twilio = TwilioSettings.from_env()
    services = Services(
        deepgram=DeepgramSettings.from_env(),
        openai=OpenAISettings.from_env(),
        cartesia=CartesiaSettings.from_env(),
    )
    features = CallFeatureSettings.from_env()
    record, contexts = await run_call(
        twilio, services, args.to, host=args.host, port=args.port, features=features, dnc=InMemoryDncList()
    )
    print_summary(record, contexts)
    return 0 if record.outcome is not CallOutcome.ERROR else 1


# ------------------------------------------------------------- against fakes


@contextlib.asynccontextmanager
async def fakes() -> AsyncIterator[tuple[TwilioSettings, Services, dict[str, Any]]]:
    """The four stand-ins, scripted for one call, and settings pointing at them.

    Yields the Twilio settings, the services' settings, and the stand-ins by
    name ("twilio", "deepgram", "openai", "cartesia")."""
    from vantum_pipeline.testing.callee import BargeIn, Listen, Say
    from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
    from vantum_pipeline.testing.deepgram import FakeDeepgram, ScriptedRecognizer
    from vantum_pipeline.testing.openai import FakeOpenAI
    from vantum_pipeline.testing.openai_wire import Reply, ToolCall
    from vantum_pipeline.testing.signals import speech
    from vantum_pipeline.testing.twilio import CalleeBehaviour, FakeTwilio

    recognizer = ScriptedRecognizer(["Yes, who is this?", "Sorry, I'm really busy right now."])
    async with (
        FakeTwilio() as twilio_fake,
        FakeDeepgram(api_key="dg-fake-key", recognizer=recognizer) as deepgram_fake,
        FakeOpenAI(api_key="sk-fake-key") as openai_fake,
        # A brisk voice (25 characters a second) keeps the demo call short.
        FakeCartesia(
            api_key="sk_car_fake", synthesizer=ToneSynthesizer(seconds_per_char=0.04, word_gap=0.05, sentence_gap=0.15)
        ) as cartesia_fake,
    ):
        openai_fake.script(
            Reply("Great! Vantum answers every call your team misses, day and night, and books the meetings for you."),
            Reply("No problem at all, thanks for your time. Goodbye!", tool_calls=[ToolCall("end_call", {})]),
        )
        # The callee answers the greeting, then talks over the pitch.
        twilio_fake.default = CalleeBehaviour(
            script=[
                Listen(quiet=0.5),
                Say(speech(0.8, seed=1), sample_rate=16000),
                BargeIn(speech(0.8, seed=2), after=1.2, sample_rate=16000),
                Listen(quiet=3.0),
            ]
        )
        twilio = TwilioSettings(
            account_sid=twilio_fake.account_sid,
            auth_token=Secret(twilio_fake.auth_token),
            from_number="+15005550006",
            public_base_url="http://127.0.0.1",  # replaced by the server's own URL once it listens
            api_base_url=twilio_fake.base_url,
        )
        services = Services(
            deepgram=DeepgramSettings(api_key=Secret("dg-fake-key"), url=deepgram_fake.ws_url),
            openai=OpenAISettings(
                api_key=Secret("sk-fake-key"), base_url=openai_fake.base_url, retry=RetryPolicy(base_delay=0.1)
            ),
            cartesia=CartesiaSettings(
                api_key=Secret("sk_car_fake"),
                base_url=cartesia_fake.http_url,
                websocket_base_url=cartesia_fake.ws_url,
            ),
        )
        stand_ins = {"twilio": twilio_fake, "deepgram": deepgram_fake, "openai": openai_fake, "cartesia": cartesia_fake}
        yield twilio, services, stand_ins


async def fake_call(args: argparse.Namespace) -> int:
    async with fakes() as (twilio, services, stand_ins):
        record, contexts = await run_call(twilio, services, "+14155550123", host="127.0.0.1", port=0)
        callee = next(iter(stand_ins["twilio"].calls.values())).callee
        if callee is not None:
            print(f"-- the callee heard {callee.heard_seconds():.1f}s of bot audio; {len(callee.clears)} clear(s)")
    print_summary(record, contexts)
    return 0 if record.outcome is CallOutcome.COMPLETED else 1


def main(argv: list[str] | None = None, *, configure_logging: bool = True) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", help="the number to call, E.164 (+14155550123)")
    parser.add_argument("--fake", action="store_true", help="run against local fakes: no keys, no network")
    parser.add_argument("--host", default="0.0.0.0", help="address the server listens on")
    parser.add_argument("--port", type=int, default=8080, help="port the server listens on")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    if configure_logging:
        # Every log line is redacted: the keys come from .env and the SDKs log headers at DEBUG.
        install_log_redaction(sys.stderr, level="DEBUG" if args.verbose else "WARNING")
    if not args.fake and not args.to:
        parser.error("--to is required (or --fake)")
    return asyncio.run(fake_call(args) if args.fake else real_call(args))


if __name__ == "__main__":
    sys.exit(main())
