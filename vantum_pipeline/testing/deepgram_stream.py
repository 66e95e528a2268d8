"""The heart of the fake Deepgram server, without sockets: one live
transcription stream, from received audio to the messages Deepgram sends.

:class:`ListenOptions` parses and validates the ``/v1/listen`` query
parameters. :class:`ListenStream` takes audio bytes and control messages and
returns the server's JSON messages with Deepgram's timing semantics:

- every time is in seconds of stream audio (samples received / sample rate),
  whatever the wall clock did;
- speech is detected per 20 ms frame by energy; its onset opens an utterance
  (``SpeechStarted`` with ``vad_events``);
- while it lasts, interim ``Results`` (``is_final: false``) every
  ``interim_interval`` seconds of audio (with ``interim_results``), and a
  final segment every ``max_segment`` seconds of uninterrupted speech;
- ``endpointing`` ms of silence end it with a final whose ``speech_final`` is
  true (with endpointing disabled, ``segment_gap`` of silence ends it with a
  plain final);
- ``utterance_end_ms`` after the last word, with no speech since,
  ``UtteranceEnd`` (needs ``interim_results``, as with the service);
- final results tile the timeline: each starts where the previous ended
  (silence gets empty finals every ``max_segment`` seconds);
- ``Finalize`` flushes: a final with ``from_finalize: true`` for what is
  pending (an empty one when nothing is) and ends the utterance (speech that
  goes on counts as a new one); ``CloseStream`` flushes and ends with
  ``Metadata``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vantum_pipeline.testing.recognizer import DEFAULT_THRESHOLD_DBFS, Recognition, Word, dbfs

__all__ = ["ListenOptions", "ListenStream", "StreamTiming", "TranscribeFn"]

#: ``await transcribe(pcm16, sample_rate, final)``
TranscribeFn = Callable[[bytes, int, bool], Awaitable[Recognition]]

SUPPORTED_ENCODINGS = ("linear16", "mulaw")
#: Model families; ``<family>-<variant>`` (``nova-2-phonecall``) is accepted too.
KNOWN_MODELS = ("nova-3", "nova-2", "nova", "enhanced", "base", "whisper")
_BOOLEANS = {"true": True, "false": False}
#: Deepgram's endpointing default when the parameter is absent.
DEFAULT_ENDPOINTING_MS = 10


def _is_model_of(model: str, family: str) -> bool:
    variant = model.removeprefix(family + "-")
    return model == family or (variant != model and variant[:1].isalpha())


class InvalidQuery(ValueError):
    """A query parameter Deepgram would refuse with HTTP 400; the message names it."""


def _boolean(query: Mapping[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() not in _BOOLEANS:
        raise InvalidQuery(f"{name}={value!r}: expected true or false")
    return _BOOLEANS[value.lower()]


def _integer(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidQuery(f"{name}={value!r}: expected an integer") from None
    if not low <= number <= high:
        raise InvalidQuery(f"{name}={number}: expected {low}..{high}")
    return number


@dataclass(frozen=True, slots=True)
class ListenOptions:
    """The validated query parameters of one stream."""

    model: str = "base"
    language: str = "en"
    encoding: str = "linear16"
    sample_rate: int = 16000
    channels: int = 1
    interim_results: bool = False
    punctuate: bool = False
    smart_format: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None
    #: None: endpointing disabled (``endpointing=false``).
    endpointing_ms: int | None = DEFAULT_ENDPOINTING_MS
    #: Other parameters, kept as sent.
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "linear16" else 1

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ListenOptions:
        """Validate ``query``; raises :class:`InvalidQuery` naming the bad parameter."""
        model = query.get("model", "base")
        if not any(_is_model_of(model, family) for family in KNOWN_MODELS):
            raise InvalidQuery(f"model={model!r}: no such model")
        encoding = query.get("encoding")
        if encoding is None:
            raise InvalidQuery("encoding is required by this fake (raw linear16 or mulaw audio, no containers)")
        if encoding not in SUPPORTED_ENCODINGS:
            raise InvalidQuery(f"encoding={encoding!r}: this fake accepts {' or '.join(SUPPORTED_ENCODINGS)}")
        sample_rate = _integer(query, "sample_rate", 8000, 48000)
        if sample_rate is None:
            raise InvalidQuery("sample_rate is required when encoding is given")
        channels = _integer(query, "channels", 1, 1) or 1
        language = query.get("language", "en")
        if not language:
            raise InvalidQuery("language is empty")
        endpointing: int | None
        raw_endpointing = query.get("endpointing")
        if raw_endpointing is None or raw_endpointing.lower() == "true":
            endpointing = DEFAULT_ENDPOINTING_MS
        elif raw_endpointing.lower() == "false":
            endpointing = None
        else:
            endpointing = _integer(query, "endpointing", 0, 60000)
        known = {
            "model", "encoding", "sample_rate", "channels", "language", "endpointing",
            "interim_results", "punctuate", "smart_format", "vad_events", "utterance_end_ms",
        }  # fmt: skip
        return cls(
            model=model,
            language=language,
            encoding=encoding,
            sample_rate=sample_rate,
            channels=channels,
            interim_results=_boolean(query, "interim_results", False),
            punctuate=_boolean(query, "punctuate", False),
            smart_format=_boolean(query, "smart_format", False),
            vad_events=_boolean(query, "vad_events", False),
            utterance_end_ms=_integer(query, "utterance_end_ms", 1, 60000),
            endpointing_ms=endpointing,
            extra={k: v for k, v in query.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """How the fake paces its results, in seconds of stream audio."""

    frame: float = 0.02
    interim_interval: float = 0.5
    max_segment: float = 5.0
    segment_gap: float = 0.5
    preroll: float = 0.1
    threshold_dbfs: float = DEFAULT_THRESHOLD_DBFS


@dataclass(slots=True)
class _Utterance:
    audio_start: float
    pcm: bytearray
    last_speech_end: float
    silence: float = 0.0
    last_interim: float = 0.0
    words_done: int = 0


def _model_info(model: str) -> dict[str, str]:
    arch = model if model.count("-") <= 1 else "-".join(model.split("-")[:2])
    name = f"{arch.split('-')[1]}-general-nova" if arch.startswith("nova-") else f"general-{arch}"
    return {"name": name, "version": "2024-01-09.29447", "arch": arch}


class ListenStream:
    """One stream's state machine; feed it, send what it returns, in order.

    Not thread-safe; one coroutine at a time (the connection's receive loop).
    """

    def __init__(
        self,
        options: ListenOptions,
        transcribe: TranscribeFn,
        *,
        timing: StreamTiming | None = None,
        request_id: str | None = None,
    ) -> None:
        self.options = options
        self.timing = timing or StreamTiming()
        self.request_id = request_id or str(uuid.uuid4())
        self._transcribe = transcribe
        self._rate = options.sample_rate
        self._frame_bytes = 2 * max(1, int(self._rate * self.timing.frame))
        self._preroll_bytes = 2 * int(self._rate * self.timing.preroll)
        self._carry = b""  # an odd trailing byte of linear16
        self._pending = bytearray()  # decoded PCM not yet analysed (< one frame)
        self._history = bytearray()  # the last ``preroll`` of PCM, for utterance starts
        self._samples = 0  # analysed samples: the stream clock
        self._utterance: _Utterance | None = None
        self._result_start = 0.0
        self._last_word_end: float | None = None
        self._utterance_end_sent_for: float | None = None
        self._sha256 = hashlib.sha256()
        self._received_bytes = 0
        self._model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-deepgram/{options.model}"))
        self.closed = False

    # ----------------------------------------------------------------- input

    @property
    def now(self) -> float:
        """Seconds of audio analysed so far."""
        return self._samples / self._rate

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received so far."""
        return self._received_bytes / self.options.bytes_per_sample / self._rate

    async def feed_audio(self, data: bytes) -> list[dict[str, Any]]:
        """Audio in the stream's encoding; returns the messages it triggers."""
        self._sha256.update(data)
        self._received_bytes += len(data)
        if self.options.encoding == "mulaw":
            from vantum_pipeline.audio.mulaw import ulaw2lin

            self._pending += ulaw2lin(data)
        else:
            data = self._carry + data
            cut = len(data) - len(data) % 2
            self._pending += data[:cut]
            self._carry = data[cut:]
        out: list[dict[str, Any]] = []
        step = self._frame_bytes
        while len(self._pending) >= step:
            frame = bytes(self._pending[:step])
            del self._pending[:step]
            await self._analyse(frame, out)
        return out

    async def finalize(self) -> list[dict[str, Any]]:
        """``Finalize``: a final with ``from_finalize`` for everything pending."""
        out: list[dict[str, Any]] = []
        self._absorb_pending()
        if self._utterance is not None:
            await self._end_utterance(out, speech_final=False, from_finalize=True)
        else:
            out.append(self._results((), 0.0, is_final=True, from_finalize=True))
            self._result_start = self.now
        return out

    async def close(self) -> list[dict[str, Any]]:
        """``CloseStream``: the remaining results, then ``Metadata``."""
        out: list[dict[str, Any]] = []
        if self.closed:
            return out
        self.closed = True
        self._absorb_pending()
        if self._utterance is not None:
            await self._end_utterance(out, speech_final=False)
        out.append(
            {
                "type": "Metadata",
                "transaction_key": "deprecated",
                "request_id": self.request_id,
                "sha256": self._sha256.hexdigest(),
                "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "duration": round(self.audio_seconds, 6),
                "channels": self.options.channels,
                "models": [self._model_uuid],
                "model_info": {self._model_uuid: _model_info(self.options.model)},
            }
        )
        return out

    # -------------------------------------------------------------- analysis

    def _absorb_pending(self) -> None:
        """Count a partial frame at a flush, so results cover all audio received."""
        if self._pending:
            if self._utterance is not None:
                self._utterance.pcm += self._pending
            self._samples += len(self._pending) // 2
            self._pending.clear()

    async def _analyse(self, frame: bytes, out: list[dict[str, Any]]) -> None:
        timing = self.timing
        start = self.now
        self._samples += len(frame) // 2
        end = self.now
        speech = dbfs(frame) > timing.threshold_dbfs
        utterance = self._utterance
        if speech:
            if utterance is None:
                preroll = bytes(self._history)
                utterance = _Utterance(start - len(preroll) / 2 / self._rate, bytearray(preroll), end)
                utterance.last_interim = start
                self._utterance = utterance
                if self.options.vad_events:
                    out.append({"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(start, 3)})
            utterance.pcm += frame
            utterance.last_speech_end = end
            utterance.silence = 0.0
        elif utterance is not None:
            utterance.pcm += frame
            utterance.silence += end - start
        self._history += frame
        if len(self._history) > self._preroll_bytes:
            del self._history[: len(self._history) - self._preroll_bytes]

        if utterance is not None:
            endpointing = self.options.endpointing_ms
            if endpointing is not None and utterance.silence > 0 and utterance.silence * 1000 >= endpointing - 1e-6:
                await self._end_utterance(out, speech_final=True)
            elif endpointing is None and utterance.silence >= timing.segment_gap - 1e-9:
                await self._end_utterance(out, speech_final=False)
            elif end - max(self._result_start, utterance.audio_start) >= timing.max_segment - 1e-9:
                await self._final_so_far(out)
            elif self.options.interim_results and end - utterance.last_interim >= timing.interim_interval - 1e-9:
                await self._interim(out)
        elif end - self._result_start >= timing.max_segment - 1e-9:
            out.append(self._results((), 0.0, is_final=True))  # silence gets empty finals
            self._result_start = end
        await self._maybe_utterance_end(out)

    async def _maybe_utterance_end(self, out: list[dict[str, Any]]) -> None:
        limit = self.options.utterance_end_ms
        last = self._last_word_end
        if limit is None or not self.options.interim_results or last is None or last == self._utterance_end_sent_for:
            return
        quiet_since = last
        if self._utterance is not None:
            if self._utterance.silence == 0:
                return
            quiet_since = max(last, self._utterance.last_speech_end)
        if self.now - quiet_since < limit / 1000 - 1e-9:
            return
        if self._utterance is not None:
            await self._end_utterance(out, speech_final=False)
        out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(self._last_word_end or last, 3)})
        self._utterance_end_sent_for = self._last_word_end

    async def _interim(self, out: list[dict[str, Any]]) -> None:
        utterance = self._utterance
        assert utterance is not None
        utterance.last_interim = self.now
        recognition = await self._transcribe(bytes(utterance.pcm), self._rate, False)
        words = self._place(recognition.words[utterance.words_done :], utterance, index=utterance.words_done)
        if words:
            out.append(self._results(words, recognition.confidence, is_final=False))
            self._note_words(words)

    async def _final_so_far(self, out: list[dict[str, Any]]) -> None:
        """A final segment in the middle of long speech: the words heard so far."""
        utterance = self._utterance
        assert utterance is not None
        utterance.last_interim = self.now
        recognition = await self._transcribe(bytes(utterance.pcm), self._rate, False)
        words = self._place(recognition.words[utterance.words_done :], utterance, index=utterance.words_done)
        out.append(self._results(words, recognition.confidence, is_final=True))
        utterance.words_done += len(words)
        self._note_words(words)
        self._result_start = self.now

    async def _end_utterance(
        self, out: list[dict[str, Any]], *, speech_final: bool, from_finalize: bool = False
    ) -> None:
        utterance = self._utterance
        assert utterance is not None
        self._utterance = None
        recognition = await self._transcribe(bytes(utterance.pcm), self._rate, True)
        if recognition.text and not recognition.words:
            recognition = _with_even_words(recognition, utterance)
        words = self._place(recognition.words[utterance.words_done :], utterance, index=utterance.words_done, last=True)
        out.append(
            self._results(
                words, recognition.confidence, is_final=True,
                speech_final=speech_final, from_finalize=from_finalize,
            )
        )  # fmt: skip
        self._note_words(words)
        self._result_start = self.now

    def _note_words(self, words: list[dict[str, Any]]) -> None:
        if words:
            end = words[-1]["end"]
            self._last_word_end = end if self._last_word_end is None else max(self._last_word_end, end)

    def _place(
        self, words: tuple[Word, ...], utterance: _Utterance, *, index: int, last: bool = False
    ) -> list[dict[str, Any]]:
        """Recognizer words as Deepgram words: stream times, punctuation as asked."""
        punctuate = self.options.punctuate or self.options.smart_format
        floor = self._result_start
        placed = []
        for offset, word in enumerate(words):
            start = max(floor, utterance.audio_start + word.start)
            end = max(start, utterance.audio_start + word.end)
            written = word.punctuated_word or word.word
            if punctuate:
                if index + offset == 0:
                    written = written[:1].upper() + written[1:]
                if last and offset == len(words) - 1 and written[-1:] not in (".", "?", "!"):
                    written += "."
            entry: dict[str, Any] = {
                "word": word.word,
                "start": round(start, 3),
                "end": round(end, 3),
                "confidence": round(word.confidence, 4),
            }
            if punctuate:
                entry["punctuated_word"] = written
            placed.append(entry)
        return placed

    def _results(
        self,
        words: list[dict[str, Any]] | tuple[()],
        confidence: float,
        *,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        transcript = " ".join(w.get("punctuated_word", w["word"]) for w in words)
        if not words:
            confidence = 0.0
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(self.now - self._result_start, 3),
            "start": round(self._result_start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [{"transcript": transcript, "confidence": round(confidence, 4), "words": list(words)}]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": _model_info(self.options.model),
                "model_uuid": self._model_uuid,
            },
        }


def _with_even_words(recognition: Recognition, utterance: _Utterance) -> Recognition:
    """Give a recognizer's untimed text plausible word times over the utterance."""
    tokens = recognition.text.split()
    duration = max(utterance.last_speech_end - utterance.audio_start, 0.01)
    step = duration / len(tokens)
    words = tuple(Word(t.lower(), i * step, (i + 0.9) * step, recognition.confidence, t) for i, t in enumerate(tokens))
    return Recognition(recognition.text, recognition.confidence, words)
