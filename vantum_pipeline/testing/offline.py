"""The offline engines behind the fake servers: real speech and a real conversation, no network.

- ``PocketsphinxFakeRecognizer``: what ``FakeDeepgram`` hears, recognized by
  pocketsphinx (a ``testing.recognizer.Recognizer``);
- ``EspeakFakeSynthesizer``: what ``FakeCartesia`` says, spoken by espeak-ng
  (a ``testing.cartesia.Synthesizer``);
- ``ScriptedResponder``: what ``FakeOpenAI`` answers, chosen by the scripted
  sales agent, with the ``record_outcome`` and ``end_call`` tool calls a model
  makes when the conversation is over (a ``testing.openai.Responder``).

So the cloud services run on their official SDKs, over their real wire
protocols, against stand-ins that understand and produce speech::

    FakeDeepgram(recognizer=PocketsphinxFakeRecognizer())
    FakeCartesia(synthesizer=EspeakFakeSynthesizer())
    FakeOpenAI(responder=ScriptedResponder())
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.services.offline.agent import AgentReply, SalesScript, ScriptedSalesAgent
from vantum_pipeline.services.offline.espeak import BOT_VOICE, EspeakSynthesizer, EspeakVoice
from vantum_pipeline.services.offline.language_model import DomainLanguageModel
from vantum_pipeline.services.offline.recognizer import SAMPLE_RATE, FinalTranscript, PocketsphinxRecognizer
from vantum_pipeline.testing.cartesia import Synthesis
from vantum_pipeline.testing.openai_wire import Reply, ToolCall
from vantum_pipeline.testing.recognizer import Recognition, Word

__all__ = ["EspeakFakeSynthesizer", "PocketsphinxFakeRecognizer", "ScriptedResponder"]

#: Bytes compared to tell whether a call continues the utterance of the previous one.
_HEAD_BYTES = 320


class PocketsphinxFakeRecognizer:
    """Recognizes each utterance the fake server delimits, with a domain model.

    The server calls ``transcribe`` with the utterance's audio so far (it
    grows between interim calls); only the new audio is decoded each time.
    ``finals`` lists every final transcript, in order. Thread-safe (the
    server calls it from worker threads).
    """

    def __init__(
        self,
        phrases: Iterable[str] | None = None,
        *,
        model: DomainLanguageModel | None = None,
        pronunciations: Mapping[str, str] | None = None,
    ) -> None:
        script = SalesScript()
        if model is None:
            model = DomainLanguageModel.from_phrases(
                script.callee_phrases if phrases is None else phrases,
                pronunciations=script.pronunciations if pronunciations is None else pronunciations,
            )
        self._recognizer = PocketsphinxRecognizer(model)
        self._lock = threading.Lock()
        self._head = b""
        self._consumed = 0  # bytes of the current utterance already decoded (input rate)
        self._rate: int | None = None
        self._resampler: StreamResampler | None = None
        self.finals: list[FinalTranscript] = []

    def transcribe(self, pcm16: bytes, sample_rate: int, *, final: bool) -> Recognition:
        with self._lock:
            if not self._continues(pcm16, sample_rate):
                self._restart(pcm16, sample_rate)
            new = pcm16[self._consumed :]
            self._consumed = len(pcm16)
            assert self._resampler is not None
            audio = self._resampler.resample(new)
            if final:
                audio += self._resampler.flush()
            partial = self._recognizer.continue_utterance(audio)
            if not final:
                # Partials carry no posterior: a nominal confidence, as interim results have.
                words = tuple(Word(word, start, end, 0.5) for word, start, end in partial.words)
                return Recognition(partial.text, 0.5, words) if words else Recognition.EMPTY
            result = self._recognizer.end_utterance()
            self._head = b""
            self._consumed = 0
            self.finals.append(result)
        if not result.text:
            return Recognition.EMPTY
        words = tuple(Word(word, start, end, result.confidence) for word, start, end in result.words)
        return Recognition(result.text, result.confidence, words)

    def _continues(self, pcm16: bytes, sample_rate: int) -> bool:
        return (
            bool(self._head)
            and sample_rate == self._rate
            and len(pcm16) >= self._consumed
            and pcm16[: len(self._head)] == self._head
        )

    def _restart(self, pcm16: bytes, sample_rate: int) -> None:
        if self._recognizer.in_speech:
            self._recognizer.end_utterance()  # an utterance the server abandoned
        if sample_rate != self._rate or self._resampler is None:
            self._rate = sample_rate
            self._resampler = StreamResampler(sample_rate, SAMPLE_RATE)
        else:
            self._resampler.reset()
        self._head = pcm16[:_HEAD_BYTES]
        self._consumed = 0
        self._recognizer.begin_utterance()


class EspeakFakeSynthesizer:
    """Speaks with espeak-ng in ``voice``, at the rate the request asks for."""

    def __init__(self, voice: EspeakVoice = BOT_VOICE) -> None:
        self._synthesizer = EspeakSynthesizer(voice)

    def synthesize(self, text: str, sample_rate: int) -> Synthesis:
        result = self._synthesizer.synthesize(text)
        audio = result.audio
        if sample_rate != result.sample_rate and audio:
            resampler = StreamResampler(result.sample_rate, sample_rate)
            audio = resampler.resample(audio) + resampler.flush()
        return Synthesis(audio, result.words)


class ScriptedResponder:
    """Answers chat requests as the scripted sales agent would.

    The reply is the agent's line; when the agent ends the call, the reply
    also calls ``record_outcome`` (the outcome) and ``end_call``, each only
    if the request offers that tool. ``replies`` lists the agent's choices.
    """

    def __init__(self, script: SalesScript | None = None, *, agent: ScriptedSalesAgent | None = None) -> None:
        self.agent = agent or ScriptedSalesAgent(script)
        self.replies: list[AgentReply] = []

    def __call__(self, request: dict[str, Any]) -> Reply:
        messages = [m for m in request.get("messages", []) if isinstance(m, dict)]
        if messages and messages[-1].get("role") == "tool":
            # Asked to go on after a tool result: the agent has nothing to add.
            return Reply("")
        reply = self.agent.reply(messages)
        self.replies.append(reply)
        offered = {
            tool.get("function", {}).get("name")
            for tool in request.get("tools", []) or []
            if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
        }
        calls = []
        if reply.end_call is not None:
            if "record_outcome" in offered:
                calls.append(ToolCall("record_outcome", {"outcome": reply.end_call, "notes": reply.intent}))
            if "end_call" in offered:
                calls.append(ToolCall("end_call", {"reason": reply.end_call}))
        return Reply(reply.text, tool_calls=calls)
