"""A simulated world for campaigns: every service and every prospect, on 127.0.0.1.

``SimulatedWorld`` runs the four stand-ins (FakeTwilio, FakeDeepgram,
FakeOpenAI, FakeCartesia) and gives the campaign the settings that point the
official SDKs at them. Each prospect's phone behaves as its ``Persona`` says,
attempt by attempt: busy, no answer, failed, or answered by a scripted
callee. The callee speaks pre-rendered lines (espeak-ng when the offline
extra is installed, else word tones), so a large campaign needs no speech
recognizer per call:

- each line starts with a short marker tone whose pitch names the line, and
  the bot's speech-to-text stand-in (``MarkedLineRecognizer``) reads the
  marker back: the bot "hears" exactly the scripted text;
- the bot's language model is the scripted sales agent, which records the
  result (``record_outcome``), schedules the callback a prospect asks for
  (``schedule_callback``, with the local date the tool's description gives)
  and records ``do_not_call`` when asked to be removed.

Used by ``vantum campaign demo``, ``vantum campaign run --fake`` and the tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from vantum_pipeline.campaign.dispatch import CallJob, CallStatus, PlacedCallback
from vantum_pipeline.campaign.phone import PhoneDialer, ServiceSettings
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.services.offline.word_accuracy import normalize_words
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.testing.callee import BargeIn, HangUp, Listen, Pause, Say
from vantum_pipeline.testing.offline import ScriptedResponder
from vantum_pipeline.testing.openai_wire import Reply, ToolCall
from vantum_pipeline.testing.recognizer import Recognition, Word, speech_span

__all__ = [
    "PERSONAS",
    "CampaignResponder",
    "LineCatalog",
    "MarkedLineRecognizer",
    "Persona",
    "SimulatedWorld",
    "WorldDialer",
]

RATE = 8000
MARKER_SECONDS = 0.12
_MARKER_BASE, _MARKER_STEP, _MARKER_SLOTS = 500.0, 100.0, 26


@dataclass(frozen=True, slots=True)
class Line:
    """Something a simulated prospect says; ``over_bot`` seconds into the bot's turn when it talks over it."""

    text: str
    over_bot: float | None = None


@dataclass(frozen=True, slots=True)
class Persona:
    """How a prospect's phone behaves on each attempt (the last entry repeats):
    ``"busy"``, ``"no-answer"``, ``"failed"``, or None (answered: ``lines``)."""

    name: str
    description: str
    lines: tuple[Line, ...] = ()
    phone: tuple[str | None, ...] = (None,)

    def phone_on(self, attempt: int) -> str | None:
        return self.phone[min(attempt, len(self.phone)) - 1]


_MEETING = (Line("Yes, I have a minute."), Line("Yes, let's book a meeting."), Line("Thursday at ten works for me."))
PERSONAS: Mapping[str, Persona] = {
    p.name: p
    for p in (
        Persona("books_meeting", "answers and books a meeting", _MEETING),
        Persona(
            "talks_over",
            "talks over the bot, then books a meeting",
            (
                Line("Yes, I have a minute."),
                Line("What is the price?", over_bot=1.2),
                Line("Yes, let's book a meeting."),
                Line("Tuesday afternoon."),
            ),
        ),
        Persona("not_interested", "answers, not interested", (Line("No thanks, I'm not interested."),)),
        Persona(
            "callback",
            "busy now, asks for a call back tomorrow after three",
            (Line("Sorry, I'm busy right now."), Line("Call me tomorrow after three.")),
        ),
        Persona("remove_me", "asks to be removed from the list", (Line("Please remove me from your list."),)),
        Persona("busy_then_meeting", "busy, then answers the retry and books", _MEETING, ("busy", None)),
        Persona("always_busy", "busy on every attempt", phone=("busy",)),
        Persona("no_answer", "never answers", phone=("no-answer",)),
        Persona(
            "no_answer_then_not_interested",
            "no answer, then answers the retry: not interested",
            (Line("No thanks, I'm not interested."),),
            ("no-answer", None),
        ),
        Persona("failed", "number not in service (Twilio: failed)", phone=("failed",)),
    )
}


# ------------------------------------------------------------- the lines


class LineCatalog:
    """Pre-rendered callee lines (8 kHz pcm16), each opened by its marker tone."""

    def __init__(self, texts: Sequence[str], *, voice: bool = True) -> None:
        unique = list(dict.fromkeys(texts))
        if len(unique) > _MARKER_SLOTS:
            raise ValueError(f"at most {_MARKER_SLOTS} distinct lines, got {len(unique)}")
        self.texts = unique
        self.audio: dict[str, bytes] = {}
        render = _espeak_renderer() if voice else None
        for slot, text in enumerate(unique):
            speech = render(text) if render is not None else _word_tones(text)
            marker = _tone(_MARKER_BASE + slot * _MARKER_STEP, MARKER_SECONDS)
            self.audio[text] = (np.concatenate([marker, speech]) * 32767).astype("<i2").tobytes()
        self.voiced = render is not None

    def slot_text(self, frequency: float) -> str | None:
        slot = round((frequency - _MARKER_BASE) / _MARKER_STEP)
        return self.texts[slot] if 0 <= slot < len(self.texts) else None


def _tone(frequency: float, seconds: float, amplitude: float = 0.35) -> np.ndarray:
    x = np.arange(round(seconds * RATE)) / RATE
    envelope = np.minimum(1.0, np.minimum(x, seconds - x) / 0.01)
    return np.asarray(amplitude * envelope * np.sin(2 * math.pi * frequency * x))


def _word_tones(text: str) -> np.ndarray:
    pieces = [np.zeros(round(0.05 * RATE))]
    for word in text.split():
        seed = zlib.crc32(word.encode())
        duration = max(0.12, 0.06 * len(word))
        x = np.arange(round(duration * RATE)) / RATE
        freq = 120.0 + seed % 120
        envelope = np.minimum(1.0, np.minimum(x, duration - x) / 0.015)
        pieces.append(0.3 * envelope * (np.sin(2 * math.pi * freq * x) + 0.4 * np.sin(4 * math.pi * freq * x)) / 1.4)
        pieces.append(np.zeros(round(0.07 * RATE)))
    return np.concatenate(pieces)


def _espeak_renderer() -> Callable[[str], np.ndarray] | None:
    try:
        from vantum_pipeline.audio.resample import StreamResampler
        from vantum_pipeline.services.offline.espeak import CALLEE_VOICE, EspeakSynthesizer

        synthesizer = EspeakSynthesizer(CALLEE_VOICE)
    except Exception as exc:  # the offline extra is optional: fall back to tones
        logger.info("espeak-ng unavailable ({}): simulated prospects speak in tones", exc)
        return None

    def render(text: str) -> np.ndarray:
        speech = synthesizer.synthesize(text)
        pcm = speech.audio
        if speech.sample_rate != RATE:
            resampler = StreamResampler(speech.sample_rate, RATE)
            pcm = resampler.resample(pcm) + resampler.flush()
        return np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0

    return render


class MarkedLineRecognizer:
    """The bot's ears in the simulation: reads the marker tone that opens each line."""

    runs_inline = True

    def __init__(self, catalog: LineCatalog) -> None:
        self.catalog = catalog

    def transcribe(self, pcm16: bytes, sample_rate: int, *, final: bool = True) -> Recognition:
        span = speech_span(pcm16, sample_rate)
        if span is None:
            return Recognition.EMPTY
        start = round(span[0] * sample_rate)
        window = np.frombuffer(pcm16, dtype="<i2")[start + round(0.02 * sample_rate) : start + round(0.1 * sample_rate)]
        if window.size < 64:
            return Recognition.EMPTY
        spectrum = np.abs(np.fft.rfft(window.astype(np.float64) * np.hanning(window.size)))
        frequency = float(np.argmax(spectrum[1:]) + 1) * sample_rate / window.size
        text = self.catalog.slot_text(frequency)
        if text is None:
            return Recognition.EMPTY
        words_text = text.split()
        begin, end = span[0] + MARKER_SECONDS, max(span[1], span[0] + MARKER_SECONDS + 0.1)
        step = (end - begin) / len(words_text)
        words = tuple(
            Word(normalize_words(w)[0] if normalize_words(w) else w, begin + i * step, begin + (i + 1) * step, 0.98, w)
            for i, w in enumerate(words_text)
        )
        return Recognition(text, 0.98, words)


# ------------------------------------------------------------- the model


_OPT_OUT = ("remove me", "take me off", "do not call", "don't call", "stop calling")
_NOW = re.compile(r"local time now is \w+ (\d{4}-\d{2}-\d{2}) (\d{2}):(\d{2})")
_HOURS = {"one": 13, "two": 14, "three": 15, "four": 16, "five": 17, "ten": 10, "eleven": 11, "nine": 9, "noon": 12}


class CampaignResponder(ScriptedResponder):
    """The scripted sales agent with the campaign's tools: it schedules the
    callback the prospect asked for and records an opt-out as ``do_not_call``."""

    def __call__(self, request: dict[str, Any]) -> Reply:
        reply = super().__call__(request)
        if not reply.tool_calls:
            return reply
        messages = [m for m in request.get("messages", []) if isinstance(m, dict)]
        said = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        words = " ".join(normalize_words(said))
        tools = {
            t["function"]["name"]: t["function"].get("description", "")
            for t in request.get("tools", []) or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        }
        calls: list[ToolCall] = []
        for call in reply.tool_calls:
            arguments = dict(call.arguments) if isinstance(call.arguments, Mapping) else {}
            if call.name == "record_outcome" and any(phrase in words for phrase in _OPT_OUT):
                arguments["outcome"] = "do_not_call"
                call = ToolCall(call.name, arguments)
            calls.append(call)
            if call.name == "record_outcome" and arguments.get("outcome") == "callback_requested":
                when = _callback_time(words, tools.get("schedule_callback", ""))
                if when is not None:
                    calls.insert(0, ToolCall("schedule_callback", {"when": when, "notes": said}))
        return Reply(reply.text, tool_calls=calls)


def _callback_time(words: str, description: str) -> str | None:
    match = _NOW.search(description)
    if match is None:
        return None
    today = dt.date.fromisoformat(match.group(1))
    day = today + dt.timedelta(days=1) if "tomorrow" in words else today
    hour = next((h for name, h in _HOURS.items() if re.search(rf"\b{name}\b", words)), 15)
    return f"{day.isoformat()} {hour:02d}:00"


# ------------------------------------------------------------- the world


class SimulatedWorld:
    """The stand-ins and the prospects' phones; ``async with``.

    With ``shared_twilio`` (the settings of a FakeTwilio that several
    machines share, as the workers of a campaign on many machines do), no
    FakeTwilio is started here and the phones behave as that one was told;
    the callee lines' marker tones are the same in every process (the
    catalog holds every persona's lines, in ``PERSONAS`` order).
    """

    def __init__(
        self,
        personas: Mapping[str, Persona],
        *,
        voices: bool = True,
        ring_seconds: float = 1.0,
        shared_twilio: TwilioSettings | None = None,
        linger: float = 8.0,
        speech_rate: float = 1.0,
    ) -> None:
        if speech_rate <= 0:
            raise ValueError(f"speech_rate must be > 0, got {speech_rate}")
        self.personas = dict(personas)
        self.voices = voices
        self.ring_seconds = ring_seconds
        #: Seconds an answered prospect stays on the line after its last words (unless the bot hangs up first).
        self.linger = linger
        #: How much faster than the tones' natural pace the bot speaks (tones only, not espeak-ng voices).
        self.speech_rate = speech_rate
        self.shared_twilio = shared_twilio
        everyone = [*PERSONAS.values(), *self.personas.values()]
        texts = [line.text for p in everyone for line in p.lines]
        self.catalog: LineCatalog | None = None
        self._texts = texts
        self._stack: list[Any] = []
        self.twilio: Any = None
        self.deepgram: Any = None
        self.openai: Any = None
        self.cartesia: Any = None

    async def __aenter__(self) -> SimulatedWorld:
        from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer
        from vantum_pipeline.testing.deepgram import FakeDeepgram
        from vantum_pipeline.testing.openai import FakeOpenAI
        from vantum_pipeline.testing.twilio import CalleeBehaviour, FakeTwilio

        self.catalog = await asyncio.to_thread(LineCatalog, self._texts, voice=self.voices)
        synthesizer = await asyncio.to_thread(_bot_synthesizer, self.voices)
        self.deepgram = FakeDeepgram(recognizer=MarkedLineRecognizer(self.catalog))
        self.openai = FakeOpenAI(responder=CampaignResponder())
        if synthesizer is None:
            rate = self.speech_rate
            synthesizer = ToneSynthesizer(seconds_per_char=0.065 / rate, word_gap=0.08 / rate, sentence_gap=0.25 / rate)
        self.cartesia = FakeCartesia(synthesizer=synthesizer)
        fakes = [self.deepgram, self.openai, self.cartesia]
        if self.shared_twilio is None:
            self.twilio = FakeTwilio(default=CalleeBehaviour(outcome="no-answer", ring_seconds=self.ring_seconds))
            fakes.append(self.twilio)
        for fake in fakes:
            await fake.__aenter__()
            self._stack.append(fake)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        while self._stack:
            fake = self._stack.pop()
            try:
                await fake.__aexit__(None, None, None)
            except Exception as exc:
                logger.warning("stopping {} failed: {}", type(fake).__name__, exc)

    def services(self, caller_id: str) -> ServiceSettings:
        """Settings pointing the official SDKs at the stand-ins."""
        from vantum_pipeline.services.cartesia import CartesiaSettings
        from vantum_pipeline.services.deepgram import DeepgramSettings
        from vantum_pipeline.services.openai import OpenAISettings
        from vantum_pipeline.telephony.settings import TwilioSettings

        key = Secret("simulated")
        shared = self.shared_twilio
        return ServiceSettings(
            twilio=TwilioSettings(
                account_sid=shared.account_sid if shared is not None else self.twilio.account_sid,
                auth_token=shared.auth_token if shared is not None else Secret(self.twilio.auth_token),
                from_number=caller_id,
                public_base_url="http://127.0.0.1:1",  # set once the dialer's server has its port
                api_base_url=shared.api_base_url if shared is not None else self.twilio.base_url,
                ring_timeout=5,
            ),
            deepgram=DeepgramSettings(api_key=key, url=self.deepgram.ws_url).for_phone(),
            openai=OpenAISettings(api_key=key, base_url=self.openai.base_url),
            cartesia=CartesiaSettings(
                api_key=key, base_url=self.cartesia.http_url, websocket_base_url=self.cartesia.ws_url
            ).for_twilio(),
        )

    def prepare_phone(self, number: str, persona: Persona, attempt: int) -> None:
        """How ``number`` behaves for this attempt (with a shared Twilio: as that one was told)."""
        assert self.catalog is not None
        if self.shared_twilio is not None:
            return
        phone = persona.phone_on(attempt)
        if phone is not None:
            self.twilio.behave(number, outcome=phone, ring_seconds=self.ring_seconds, script=None)
            return
        steps: list[Any] = []
        for line in persona.lines:
            audio = self.catalog.audio[line.text]
            if line.over_bot is None:
                steps += [Listen(quiet=0.5, timeout=20.0), Say(audio)]
            else:
                steps.append(BargeIn(audio, after=line.over_bot, timeout=20.0))
        steps += [Listen(quiet=0.8, timeout=20.0), Pause(self.linger), HangUp()]
        self.twilio.behave(number, outcome=None, ring_seconds=self.ring_seconds, script=steps, max_seconds=90.0)


def _bot_synthesizer(voices: bool) -> Any:
    if not voices:
        return None
    try:
        from vantum_pipeline.testing.offline import EspeakFakeSynthesizer

        return EspeakFakeSynthesizer()
    except Exception as exc:
        logger.info("espeak-ng unavailable ({}): the bot speaks in tones", exc)
        return None


@dataclass
class WorldDialer:
    """The campaign's PhoneDialer, with each prospect's phone set up before it rings."""

    world: SimulatedWorld
    phone: PhoneDialer
    personas_by_number: dict[str, Persona]
    default: Persona = field(default_factory=lambda: PERSONAS["books_meeting"])

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        persona = self.personas_by_number.get(job.number, self.default)
        self.world.prepare_phone(job.number, persona, job.attempt.attempt)
        return await self.phone.call(job, placed)

    async def call_status(self, sid: str) -> CallStatus | None:
        return await self.phone.call_status(sid)

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        return await self.phone.find_calls(number, since)

    async def hang_up(self, sid: str) -> None:
        await self.phone.hang_up(sid)
