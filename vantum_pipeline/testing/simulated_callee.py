"""A simulated prospect for FakeTwilio: hears the bot with pocketsphinx, answers with espeak-ng.

``SimulatedCallee`` is a callee script (``CalleeBehaviour(script=...)``): on
the media stream of a fake call it

- listens to each bot turn until the bot has been quiet for ``listen_quiet``
  seconds, then recognizes what it heard (the μ-law the fake played, back to
  16 kHz) with a domain model of the bot's lines, and records it in
  ``heard``;
- answers with the next ``CalleeLine``, spoken by espeak-ng in a voice of
  its own (``CALLEE_VOICE``), recorded in ``said``;
- for a line with ``barge_in_after``, does not wait for the bot to finish:
  it starts talking that many seconds into the bot's next turn (the bot
  should stop: the fake's ``clear``), and still recognizes the part of the
  bot's turn it heard;
- after its last line, listens to the bot's goodbye, then waits for the call
  to end (the bot hangs up), at most ``hangup_timeout`` seconds.

``on_event(kind, text, at)`` (optional) is told as things happen, for a
live transcript: ``"bot"`` (what the callee heard, recognized), ``"callee"``
(what it says), ``"barge_in"``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from loguru import logger

from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.services.offline.agent import SalesScript
from vantum_pipeline.services.offline.espeak import CALLEE_VOICE, EspeakSynthesizer, EspeakVoice, Synthesis
from vantum_pipeline.services.offline.language_model import DomainLanguageModel
from vantum_pipeline.services.offline.recognizer import SAMPLE_RATE, PocketsphinxRecognizer
from vantum_pipeline.testing.callee import Callee, load_speech

__all__ = ["DEMO_LINES", "CalleeLine", "HeardTurn", "SaidLine", "SimulatedCallee"]

EventCallback = Callable[[str, str, float], None]


@dataclass(frozen=True, slots=True)
class CalleeLine:
    """Something the callee says: after the bot's turn, or over it (``barge_in_after`` seconds in)."""

    text: str
    barge_in_after: float | None = None


#: The demo's prospect: agrees to talk, cuts the pitch short to ask the price, books a meeting.
DEMO_LINES: tuple[CalleeLine, ...] = (
    CalleeLine("Yes, I have a minute."),
    CalleeLine("What is the price?", barge_in_after=1.6),
    CalleeLine("Yes, let's book a meeting."),
    CalleeLine("Thursday at ten works for me."),
)


@dataclass(frozen=True, slots=True)
class HeardTurn:
    """One bot turn as the callee heard it: stream times and the recognized words."""

    start: float
    end: float
    text: str
    confidence: float
    #: The callee talked over this turn.
    barged_in: bool = False


@dataclass(frozen=True, slots=True)
class SaidLine:
    """One line the callee said, with its stream times."""

    text: str
    start: float
    end: float
    barge_in: bool = False


@dataclass
class SimulatedCallee:
    """A callee script for FakeTwilio; see the module docstring."""

    lines: Sequence[CalleeLine] = DEMO_LINES
    voice: EspeakVoice = CALLEE_VOICE
    #: What the bot may say (for the callee's recognizer).
    bot_phrases: Sequence[str] = field(default_factory=lambda: SalesScript().bot_lines())
    pronunciations: Mapping[str, str] = field(default_factory=lambda: dict(SalesScript().pronunciations))
    listen_quiet: float = 0.6
    turn_timeout: float = 30.0
    hangup_timeout: float = 15.0
    on_event: EventCallback | None = None
    heard: list[HeardTurn] = field(default_factory=list)
    said: list[SaidLine] = field(default_factory=list)
    #: (stream time, μ-law) of everything the callee said, as sent on the line.
    recordings: list[tuple[float, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._synthesizer = EspeakSynthesizer(self.voice)
        self._recognizer: PocketsphinxRecognizer | None = None
        self._speech: dict[str, Synthesis] = {}

    def prepare(self) -> None:
        """Build the recognizer and say every line once now (a second or so), rather than on the call.

        Lines said ahead sound the same on every run: espeak-ng keeps state in
        the process from one synthesis to the next (the bot's included), so a
        line synthesized when it is due would depend on how much the bot had
        said by then, and a barge-in line on when the bot was cut.
        """
        if self._recognizer is None:
            model = DomainLanguageModel.from_phrases(self.bot_phrases, pronunciations=self.pronunciations)
            self._recognizer = PocketsphinxRecognizer(model)
        for line in self.lines:
            if line.text not in self._speech:
                self._speech[line.text] = self._synthesizer.synthesize(line.text)

    async def __call__(self, callee: Callee) -> None:
        await asyncio.to_thread(self.prepare)
        for line in self.lines:
            if callee.ended.is_set():
                return
            if line.barge_in_after is None:
                start = await self._listen(callee)
                await self._recognize(callee, start, callee.now())
                await self._say(callee, line)
            else:
                await callee.wait_for_bot_speech(max_wait=self.turn_timeout)
                start = callee.now()
                await asyncio.sleep(line.barge_in_after)
                if self.on_event is not None:
                    self.on_event("barge_in", line.text, callee.now())
                await self._say(callee, line, barge_in=True)
                # What was heard of the cut turn: up to when the callee stopped talking.
                await self._recognize(callee, start, self.said[-1].end, barged_in=True)
        start = await self._listen(callee)
        await self._recognize(callee, start, callee.now())
        try:
            async with asyncio.timeout(self.hangup_timeout):
                await callee.ended.wait()
        except TimeoutError:
            logger.warning("simulated callee: the bot did not hang up within {:.0f}s", self.hangup_timeout)
            await callee.hang_up()

    async def _listen(self, callee: Callee) -> float:
        """Wait for the bot's turn and its end; return when it started."""
        await callee.wait_for_bot_speech(max_wait=self.turn_timeout)
        start = callee.now()
        await callee.listen(quiet=self.listen_quiet, max_wait=self.turn_timeout)
        return start - 0.05  # the first 20 ms frames came before bot_speaking said so

    async def _say(self, callee: Callee, line: CalleeLine, *, barge_in: bool = False) -> None:
        speech = self._speech.get(line.text)
        if speech is None:  # not prepared: said now
            speech = await asyncio.to_thread(self._synthesizer.synthesize, line.text)
        if self.on_event is not None and not barge_in:
            self.on_event("callee", line.text, callee.now())
        start = callee.now()
        self.recordings.append((start, load_speech(speech.audio, speech.sample_rate)))
        await callee.say(speech.audio, speech.sample_rate)
        self.said.append(SaidLine(line.text, start, callee.now(), barge_in))

    async def _recognize(self, callee: Callee, start: float, end: float, *, barged_in: bool = False) -> None:
        mulaw = callee.heard_audio(max(0.0, start), end)
        if not mulaw:
            return
        text, confidence = await asyncio.to_thread(self._transcribe, mulaw)
        self.heard.append(HeardTurn(start, end, text, confidence, barged_in))
        if self.on_event is not None:
            self.on_event("bot", text, end)

    def _transcribe(self, mulaw: bytes) -> tuple[str, float]:
        self.prepare()
        assert self._recognizer is not None
        resampler = StreamResampler(8000, SAMPLE_RATE)
        pcm = resampler.resample(ulaw2lin(mulaw)) + resampler.flush()
        result = self._recognizer.recognize(pcm)
        return result.text, result.confidence
