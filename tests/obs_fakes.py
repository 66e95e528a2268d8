"""A scripted faked call for the observability tests.

Four stand-ins that behave, at the frame level, like the product's services
(same frames, same MetricsFrames with the same names and service labels),
driven by a script instead of sockets:

- ``ScriptedSTT`` ("deepgram"): each InputAudioRawFrame is one user turn:
  ``usage.stt_seconds`` = the audio's duration, a TranscriptionFrame and an
  EndOfTurnFrame; an utterance marked as a barge-in interrupts first.
- ``ScriptedLLM`` ("openai"): each EndOfTurnFrame gets the next scripted reply
  (LLMFullResponseStart, one LLMTextFrame per word, End) and the scripted
  token usage. Like the user aggregator, it swallows the user's transcripts.
- ``SentenceSplitter``: LLMTextFrames → one TextFrame per sentence.
- ``ScriptedTTS`` ("cartesia"): each TextFrame / TTSSpeakFrame → a context:
  TTSStarted, audio, word timestamps, TTSStopped; ``usage.tts_characters``.
- ``ScriptedOutput`` ("twilio"): plays contexts word by word (HeardTextFrame,
  cumulative), Bot{Started,Stopped}SpeakingFrame both ways, can stall a turn
  after some words (so a test can barge in at a known point), and reports
  ``usage.call_seconds`` at the End after finishing what it was playing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from vantum_pipeline import FrameDirection, FrameProcessor
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    HeardTextFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)

DOWN, UP = FrameDirection.DOWNSTREAM, FrameDirection.UPSTREAM


def speech(seconds: float) -> InputAudioRawFrame:
    """``seconds`` of 8 kHz mu-law silence (one byte per sample)."""
    return InputAudioRawFrame(b"\xff" * round(seconds * 8000), 8000, encoding="mulaw")


class _Service(FrameProcessor):
    service = ""

    async def metric(self, name: str, value: float, unit: str = "") -> None:
        await self.push_frame(
            MetricsFrame(metric=name, value=value, unit=unit, processor=self.name, labels={"service": self.service})
        )


class ScriptedSTT(_Service):
    service = "deepgram"

    def __init__(self, utterances: list[str], *, barge_in: frozenset[int] = frozenset()) -> None:
        super().__init__(name="stt")
        self.utterances = list(utterances)
        self.barge_in = barge_in
        self.turns = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if not (isinstance(frame, InputAudioRawFrame) and direction is DOWN):
            await self.push_frame(frame, direction)
            return
        index, self.turns = self.turns, self.turns + 1
        text = self.utterances[index]
        if index in self.barge_in:
            await self.push_interruption()
        await self.metric("service.request", 1)
        await self.metric("usage.stt_seconds", frame.duration, "s")
        await self.metric("latency.stt_final", 0.2 + index / 100, "s")
        # A new transcript belongs to the current epoch, not to the audio's.
        for out in (TranscriptionFrame(text, confidence=0.95), EndOfTurnFrame(text, confidence=0.95)):
            out.epoch = self.epoch
            await self.push_frame(out)


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class ScriptedLLM(_Service):
    service = "openai"

    def __init__(self, replies: list[Reply], *, fail_turns: frozenset[int] = frozenset()) -> None:
        super().__init__(name="llm")
        self.replies = list(replies)
        self.fail_turns = fail_turns
        self.turns = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TranscriptionFrame):
            return
        if not isinstance(frame, EndOfTurnFrame):
            await self.push_frame(frame, direction)
            return
        index, self.turns = self.turns, self.turns + 1
        await self.metric("service.request", 1)
        if index in self.fail_turns:
            await self.metric("service.error", 1)
            await self.push_error("openai: 500 Internal Server Error")
            return
        reply = self.replies[index]
        await self.metric("latency.llm_ttft", 0.3 + index / 100, "s")
        await self.push_frame(LLMFullResponseStartFrame())
        words = reply.text.split(" ")
        for n, word in enumerate(words):
            await self.push_frame(LLMTextFrame(word if n == len(words) - 1 else word + " "))
        await self.push_frame(LLMFullResponseEndFrame())
        await self.metric("usage.llm_prompt_tokens", reply.prompt_tokens)
        await self.metric("usage.llm_completion_tokens", reply.completion_tokens)


class SentenceSplitter(FrameProcessor):
    def __init__(self) -> None:
        super().__init__(name="sentences")
        self._buffer = ""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, LLMTextFrame):
            self._buffer += frame.text
            if self._buffer.rstrip().endswith((".", "?", "!")):
                await self._emit_sentence()
            return
        if isinstance(frame, LLMFullResponseEndFrame):
            await self._emit_sentence()
        elif isinstance(frame, InterruptionFrame):
            self._buffer = ""
        await self.push_frame(frame, direction)

    async def _emit_sentence(self) -> None:
        text, self._buffer = self._buffer.strip(), ""
        if text:
            await self.push_frame(TextFrame(text))


class ScriptedTTS(_Service):
    service = "cartesia"

    def __init__(self) -> None:
        super().__init__(name="tts")
        self.spoken: list[str] = []
        self._contexts = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if not (isinstance(frame, TextFrame | TTSSpeakFrame) and direction is DOWN):
            await self.push_frame(frame, direction)
            return
        self._contexts += 1
        context = f"ctx-{self._contexts}"
        self.spoken.append(frame.text)
        await self.metric("service.request", 1)
        await self.metric("usage.tts_characters", len(frame.text))
        await self.metric("latency.tts_ttfb", 0.15, "s")
        words = frame.text.split()
        await self.push_frame(TTSStartedFrame(context_id=context))
        if isinstance(frame, TextFrame):
            await self.push_frame(frame)
        await self.push_frame(TTSAudioRawFrame(b"\x00\x00" * 160 * len(words), 16000, context_id=context))
        timings = tuple((word, 0.3 * n, 0.3 * n + 0.25) for n, word in enumerate(words))
        await self.push_frame(TTSWordTimestampsFrame(words=timings, context_id=context))
        await self.push_frame(TTSStoppedFrame(context_id=context))


class ScriptedOutput(_Service):
    service = "twilio"

    def __init__(
        self, *, call_seconds: float, stall: dict[int, int] | None = None, word_seconds: float = 0.001
    ) -> None:
        """``stall``: context number (1-based) → words after which playback stops until interrupted."""
        super().__init__(name="output")
        self.call_seconds = call_seconds
        self.stall = stall or {}
        self.word_seconds = word_seconds
        self.heard: dict[str, str] = {}
        self._words: dict[str, list[str]] = {}
        self._queue: deque[str] = deque()
        self._player: asyncio.Task[None] | None = None
        self._playing: str | None = None
        self._speaking = False
        self._contexts = 0
        self._numbers: dict[str, int] = {}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TTSStartedFrame) and frame.context_id:
            self._contexts += 1
            self._numbers[frame.context_id] = self._contexts
        elif isinstance(frame, TTSWordTimestampsFrame) and frame.context_id:
            self._words.setdefault(frame.context_id, []).extend(w for w, _, _ in frame.words)
        elif isinstance(frame, TTSStoppedFrame) and frame.context_id:
            self._queue.append(frame.context_id)
            if self._player is None or self._player.done():
                self._player = self.create_turn_task(self._play(), "play")
        elif isinstance(frame, TTSAudioRawFrame):
            return
        elif isinstance(frame, InterruptionFrame):
            await self._cut()
        elif isinstance(frame, EndFrame) and direction is DOWN:
            if self._player is not None and not self._player.done():
                await asyncio.wait({self._player}, timeout=2.0)
            await self.metric("usage.call_seconds", self.call_seconds, "s")
        await self.push_frame(frame, direction)

    async def _play(self) -> None:
        while self._queue:
            context = self._playing = self._queue.popleft()
            if not self._speaking:
                self._speaking = True
                await self.push_frame(BotStartedSpeakingFrame())
                await self.push_frame(BotStartedSpeakingFrame(), UP)
                await self.metric("latency.voice_to_voice", 0.9, "s")
            words = self._words.get(context, [])
            stall_at = self.stall.get(self._numbers.get(context, 0))
            for n in range(len(words)):
                if stall_at is not None and n == stall_at:
                    await asyncio.Event().wait()  # until the interruption cancels this turn
                await asyncio.sleep(self.word_seconds)
                self.heard[context] = " ".join(words[: n + 1])
                await self.push_frame(HeardTextFrame(self.heard[context], context_id=context))
            self._playing = None
        await self._stop_speaking()

    async def _cut(self) -> None:
        # The interruption cancels the playing turn task; the next context gets a new one.
        self._player = None
        self._queue.clear()
        context, self._playing = self._playing, None
        if context is not None:
            await self.push_frame(HeardTextFrame(self.heard.get(context, ""), context_id=context))
        await self._stop_speaking()

    async def _stop_speaking(self) -> None:
        if self._speaking:
            self._speaking = False
            await self.push_frame(BotStoppedSpeakingFrame())
            await self.push_frame(BotStoppedSpeakingFrame(), UP)
