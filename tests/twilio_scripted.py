"""Small scripted stand-ins for STT, LLM and TTS, for the Twilio call tests.

They speak the pipeline's frame contract (see the brief) without any
service: an energy detector for speech, a table of replies, and a TTS that
renders each word as a tone with exact word timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import sys
import time
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.settings import Secret
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.testing import FrameRecorder
from vantum_pipeline.testing.grammar import GrammarChecker
from vantum_pipeline.testing.twilio import FakeTwilio
from vantum_pipeline.transports.twilio.server import PipelineFactory, TwilioCall, TwilioServer
from vantum_pipeline.transports.twilio.transport import TwilioTransportParams

RATE = 16000
WORD_SECONDS = 0.35
GAP_SECONDS = 0.15


def tone(seconds: float, rate: int = 8000, freq: float = 300.0, level: int = 9000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def word_timings(text: str) -> tuple[tuple[str, float, float], ...]:
    step = WORD_SECONDS + GAP_SECONDS
    return tuple((word, i * step, i * step + WORD_SECONDS) for i, word in enumerate(text.split()))


def words_heard(text: str, played: float) -> str:
    return " ".join(w for w, _s, e in word_timings(text) if e <= played)


class EnergySTT(FrameProcessor):
    """Speech = loud audio; a turn ends after ``quiet`` seconds of silence.

    Each turn's EndOfTurnFrame carries the next scripted transcript. Speech
    while the bot is speaking interrupts it.
    """

    def __init__(self, transcripts: list[str], *, threshold: float = 1500.0, quiet: float = 0.3) -> None:
        super().__init__()
        self.transcripts = list(transcripts)
        self.threshold = threshold
        self.quiet = quiet
        self.bot_speaking = False
        self.speaking = False
        self.loud_frames = 0
        self.silent_for = 0.0
        self.interruptions = 0
        self.closed = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, BotStartedSpeakingFrame):
            self.bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self.bot_speaking = False
        if isinstance(frame, InputAudioRawFrame):
            await self._audio(frame)
            return
        await self.push_frame(frame, direction)

    async def _audio(self, frame: InputAudioRawFrame) -> None:
        audio = ulaw2lin(frame.audio) if frame.encoding == MULAW else frame.audio
        samples = np.frombuffer(audio, dtype="<i2").astype(np.float64)
        rms = math.sqrt(float(np.mean(samples * samples))) if len(samples) else 0.0
        if rms >= self.threshold:
            self.loud_frames += 1
            self.silent_for = 0.0
            if not self.speaking and self.loud_frames >= 2:
                self.speaking = True
                await self.push_frame(UserStartedSpeakingFrame(source="energy"))
                if self.bot_speaking:
                    self.interruptions += 1
                    await self.push_interruption()
            return
        self.loud_frames = 0
        if self.speaking:
            self.silent_for += frame.duration
            if self.silent_for >= self.quiet:
                self.speaking = False
                await self.push_frame(UserStoppedSpeakingFrame(source="energy"))
                text = self.transcripts.pop(0) if self.transcripts else "..."
                await self.push_frame(EndOfTurnFrame(text, confidence=0.99))

    async def cleanup(self) -> None:
        self.closed = True


class ScriptedBrain(FrameProcessor):
    """Greets at the start; answers each end of turn from ``replies``.

    ``replies`` maps a transcript to (reply, end_call). Ending the call pushes
    an EndFrame upstream after the reply: the goodbye plays, then the call ends.
    """

    def __init__(self, greeting: str, replies: dict[str, tuple[str, bool]], default: str = "I see.") -> None:
        super().__init__()
        self.greeting = greeting
        self.replies = replies
        self.default = default
        self.turns: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame) and self.greeting:
            await self.push_frame(TTSSpeakFrame(self.greeting))
        elif isinstance(frame, EndOfTurnFrame):
            self.turns.append(frame.text)
            reply, end_call = self.replies.get(frame.text, (self.default, False))
            await self.push_frame(TextFrame(reply))
            if end_call:
                await self.push_frame(EndFrame(reason="goodbye"), FrameDirection.UPSTREAM)


class ToneTTS(FrameProcessor):
    """Each word is a 0.35 s tone then 0.15 s of silence, with exact timestamps.

    One context per TextFrame/TTSSpeakFrame, synthesized in order, audio in
    ``chunk`` second frames, faster than real time like a real service.
    """

    def __init__(
        self, *, chunk: float = 0.1, mulaw: bool = False, on_context: Callable[[str, str], None] | None = None
    ) -> None:
        super().__init__()
        self.chunk = chunk
        self.mulaw = mulaw
        self.on_context = on_context
        self.contexts: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._pending: list[asyncio.Task[None]] = []
        self.closed = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, TextFrame | TTSSpeakFrame):
            self._pending.append(self.create_turn_task(self._speak(frame.text)))
            return
        if isinstance(frame, EndFrame):
            pending = [t for t in self._pending if not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=10)
        if isinstance(frame, InterruptionFrame):
            self._pending.clear()
            return
        await self.push_frame(frame, direction)

    async def _speak(self, text: str) -> None:
        async with self._lock:
            context_id = f"ctx-{len(self.contexts) + 1}"
            self.contexts[context_id] = text
            if self.on_context is not None:
                self.on_context(context_id, text)
            await self.push_frame(TTSStartedFrame(context_id=context_id))
            await self.push_frame(TextFrame(text))
            timings = word_timings(text)
            await self.push_frame(TTSWordTimestampsFrame(timings, context_id=context_id))
            rate = 8000 if self.mulaw else RATE
            audio = b"".join(tone(WORD_SECONDS, rate) + bytes(int(GAP_SECONDS * rate) * 2) for _ in timings)
            encoding = PCM16
            if self.mulaw:  # like Cartesia's pcm_mulaw at 8 kHz: Twilio's own format
                audio, encoding = lin2ulaw(audio), MULAW
            step = int(self.chunk * rate) * (1 if self.mulaw else 2)
            for i in range(0, len(audio), step):
                chunk = TTSAudioRawFrame(audio[i : i + step], rate, encoding=encoding, context_id=context_id)
                await self.push_frame(chunk)
                await asyncio.sleep(0)
            await self.push_frame(TTSStoppedFrame(context_id=context_id))

    async def cleanup(self) -> None:
        self.closed = True


# ------------------------------------------------------------ the phone stack


@dataclass
class CallPipeline:
    """The processors of one call's pipeline, for assertions."""

    stt: EnergySTT
    brain: ScriptedBrain
    tts: ToneTTS
    sink: FrameRecorder
    task: PipelineTask
    checkers: list[GrammarChecker]

    @property
    def violations(self) -> list[str]:
        """Stream-grammar violations seen after the input and after the output."""
        return [v for checker in self.checkers for v in checker.violations]


class ScriptedAgent:
    """A pipeline factory: transport → energy STT → scripted replies → tone TTS → transport."""

    def __init__(
        self, greeting: str, replies: dict[str, tuple[str, bool]], transcripts: list[str], *, mulaw: bool = False
    ) -> None:
        self.mulaw = mulaw
        self.greeting = greeting
        self.replies = replies
        self.transcripts = transcripts
        self.calls: dict[str, CallPipeline] = {}

    def __call__(self, call: TwilioCall) -> PipelineTask:
        stt = EnergySTT(self.transcripts)
        brain = ScriptedBrain(self.greeting, self.replies)
        tts = ToneTTS(mulaw=self.mulaw)
        sink = FrameRecorder()
        checkers = [GrammarChecker(), GrammarChecker()]
        processors = [call.transport.input(), checkers[0], stt, brain, tts, call.transport.output(), checkers[1], sink]
        task = PipelineTask(
            Pipeline(processors),
            audio_in_sample_rate=RATE,
            audio_out_sample_rate=RATE,
        )
        self.calls[call.call_sid] = CallPipeline(stt, brain, tts, sink, task, checkers)
        return task


@contextlib.asynccontextmanager
async def phone_stack(
    factory: PipelineFactory,
    *,
    validate_signatures: bool = True,
    outcome_timeout: float = 5.0,
    max_calls: int = 100,
    transport_params: TwilioTransportParams | None = None,
    **server_options: Any,
) -> AsyncIterator[tuple[FakeTwilio, TwilioServer]]:
    """FakeTwilio plus our server wired to it, on loopback (``server_options``: more of TwilioServer's)."""
    async with FakeTwilio() as fake:
        settings = TwilioSettings(
            account_sid=fake.account_sid,
            auth_token=Secret(fake.auth_token),
            from_number="+15005550006",
            public_base_url="http://127.0.0.1:1",
            api_base_url=fake.base_url,
            validate_signatures=validate_signatures,
        )
        retry = RetryPolicy(max_retries=1, base_delay=0.01, attempt_timeout=5.0)
        async with TwilioRestClient(settings, retry=retry) as client:
            server = TwilioServer(
                settings,
                factory,
                port=0,
                client=client,
                outcome_timeout=outcome_timeout,
                max_calls=max_calls,
                transport_params=transport_params,
                **server_options,
            )
            async with server:
                server.public_base_url = server.local_url
                yield fake, server


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "twilio_outbound.py"


def load_example() -> types.ModuleType:
    """examples/twilio_outbound.py as a module (examples are not a package)."""
    spec = importlib.util.spec_from_file_location("twilio_outbound_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


async def hold_loop(hold: float = 0.1, seconds: float = math.inf) -> None:
    """Hold the running event loop ``hold`` seconds at a time, yielding in between, for ``seconds``
    (until cancelled by default): a process with more calls than its core can carry."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(hold)  # noqa: ASYNC251 - holding the loop is the point
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def held_loop(hold: float = 0.1) -> AsyncIterator[None]:
    """The running event loop held (see ``hold_loop``) while inside."""
    task = asyncio.get_running_loop().create_task(hold_loop(hold))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


def idle_server(**options: Any) -> Any:
    """A TwilioServer on a free port whose pipeline factory is never called (for lifecycle tests)."""
    from vantum_pipeline.settings import Secret
    from vantum_pipeline.telephony.settings import TwilioSettings
    from vantum_pipeline.transports.twilio.server import TwilioServer

    settings = TwilioSettings(
        account_sid="AC" + "0" * 32,
        auth_token=Secret("f" * 32),
        from_number="+15005550006",
        public_base_url="https://calls.example.com",
    )
    return TwilioServer(settings, lambda call: None, host="127.0.0.1", port=0, **options)  # type: ignore[arg-type]
