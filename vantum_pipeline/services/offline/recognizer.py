"""Speech recognition with pocketsphinx: streaming (partials, then a final per utterance) or one utterance at once.

Plain, synchronous code (no asyncio): feed 16 kHz pcm16 of any chunk size to
``PocketsphinxRecognizer.feed`` and get back what happened in it:

- ``SpeechStarted(time)`` when the endpointer hears speech begin;
- ``PartialTranscript(text, ...)`` as the hypothesis of the utterance grows
  (at most every ``partial_interval`` seconds of speech, only when it changed);
- ``FinalTranscript(text, words, confidence, start, end)`` when the speaker
  paused for ``endpoint_silence`` seconds (or ``finish()`` was called):
  the utterance's words with times (seconds since the first audio fed) and
  the mean posterior probability of its words as the confidence.

Utterances are delimited by pocketsphinx's endpointer (a WebRTC-style VAD
with a decision window). Partials come from a streaming decode. The final
(``rescore_final``, the default) re-decodes the utterance's audio at once on a
fresh decoder that sees only that utterance: pocketsphinx then normalizes
the cepstral mean over it. A streaming decode uses a
running estimate that starts from a fixed prior and takes several utterances
to settle (and a decoder that has streamed once never returns to per-utterance
normalization), which garbles the first utterances of a call, worst on 8 kHz
phone audio. The batch decode costs about 0.05 s per second of speech.
Its mean then seeds the streaming decoder, so the partials improve too.

The final depends on the utterance's sound alone, not on where it fell in the
stream or what came before it:

- the batch decode sees exactly ``EDGE_MARGIN`` seconds of quiet on either
  side of the speech (the endpointer cuts on its 30 ms frames, so the quiet
  it keeps varies with the speech's phase against them, and it may open an
  utterance a few samples into the speech: the audio just before the
  utterance is kept for the decode);
- its dither (a least-significant bit of noise, so that digital silence has
  a log energy) is drawn afresh from one seed for each utterance, not from a
  generator that runs on across the call;
- its decoder is new for each utterance (about 10 ms to build): a decoder
  that has decoded before carries state over, and the same audio came out
  with other words or another confidence.

Before, the same line said into the same call was heard differently
depending on where the 20 ms phone frames fell: "What is the price?" came out
as "what is right" on 14 of 18 alignments.

When something else delimits utterances (a server's endpointer), drive one
utterance at a time with ``begin_utterance`` / ``continue_utterance`` (returns
the partial hypothesis) / ``end_utterance`` instead of ``feed``; and
``recognize`` decodes a whole utterance at once.

A recognizer holds a decoder; it is not thread-safe: one thread at a time,
and one of the three styles at a time.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.services.offline.language_model import DomainLanguageModel, model_path

__all__ = [
    "FinalTranscript",
    "PartialTranscript",
    "PocketsphinxRecognizer",
    "RecognitionEvent",
    "SpeechStarted",
]

SAMPLE_RATE = 16000
#: Frames per second of pocketsphinx's features (word boundaries are in frames).
_FRAME_RATE = 100
#: Quiet kept before and after the speech of an utterance decoded at once (seconds).
EDGE_MARGIN = 0.1
#: Audio kept from before an utterance opens, in bytes: 2 s of pcm16.
_RECENT_BYTES = 2 * 2 * SAMPLE_RATE
_DITHER_SEED = 1


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    time: float


@dataclass(frozen=True, slots=True)
class PartialTranscript:
    text: str
    start: float
    time: float
    #: Words so far with times (seconds since the first audio fed), when asked for.
    words: tuple[tuple[str, float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class FinalTranscript:
    text: str
    words: tuple[tuple[str, float, float], ...]
    confidence: float
    start: float
    end: float
    #: True when the utterance was cut by ``finish()`` rather than ended by a pause.
    forced: bool = False


RecognitionEvent = SpeechStarted | PartialTranscript | FinalTranscript


class PocketsphinxRecognizer:
    """Streaming speech recognizer over pocketsphinx's en-us acoustic model.

    ``model`` is the domain model to decode with (None: pocketsphinx's
    general English model, much less accurate on a narrow dialogue);
    ``search`` picks its n-gram model (``"ngram"``, tolerant of unexpected
    word orders) or its grammar (``"grammar"``: only the phrases themselves).
    """

    def __init__(
        self,
        model: DomainLanguageModel | None = None,
        *,
        search: Literal["ngram", "grammar"] = "ngram",
        endpoint_silence: float = 0.3,
        vad_mode: int = 0,
        partial_interval: float = 0.2,
        rescore_final: bool = True,
        max_utterance: float = 30.0,
    ) -> None:
        import pocketsphinx

        # The endpointer's window decides speech start as well as end: a long one misses short words.
        if not 0.06 <= endpoint_silence <= 1.5:
            raise ConfigurationError(f"endpoint_silence must be 0.06..1.5 s, got {endpoint_silence}")
        if search not in ("ngram", "grammar"):
            raise ConfigurationError(f"search must be 'ngram' or 'grammar', got {search!r}")
        self.model = model
        self.partial_interval = partial_interval
        self.rescore_final = rescore_final
        self.max_utterance = max_utterance
        self._decoder = _make_decoder(pocketsphinx, model, search)
        self._decoder_args = (pocketsphinx, model, search)
        self._endpointer_args = (endpoint_silence, vad_mode)
        self._endpointer = pocketsphinx.Endpointer(
            window=endpoint_silence, ratio=0.9, vad_mode=vad_mode, sample_rate=SAMPLE_RATE
        )
        self._frame_bytes: int = self._endpointer.frame_bytes
        # The endpointer's times count from its creation; it is recreated after a forced end.
        self._endpointer_offset = 0.0
        self._pending = b""
        self._fed_bytes = 0
        #: The last 2 s of audio fed, ending at ``_fed_bytes`` (the endpointer's window, at most
        #: 1.5 s, and the margin): the quiet before an utterance.
        self._recent = bytearray()
        #: What came before the utterance in progress (``EDGE_MARGIN``), for its batch decode.
        self._lead_in = b""
        #: Where the last utterance ended (seconds): a lead-in never reaches back into it.
        self._last_end = 0.0
        self._in_utterance = False
        self._utterance_start = 0.0
        self._utterance_audio: list[bytes] = []
        self._utterance_bytes = 0
        self._since_partial = 0
        self._last_partial = ""

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def time(self) -> float:
        """Seconds of audio fed so far."""
        return self._fed_bytes / (2 * SAMPLE_RATE)

    @property
    def in_speech(self) -> bool:
        return self._in_utterance

    def feed(self, pcm: bytes) -> list[RecognitionEvent]:
        """Take 16 kHz mono pcm16 audio (any length); return the events it caused."""
        if len(pcm) % 2:
            raise ValueError(f"pcm16 audio must have an even number of bytes, got {len(pcm)}")
        events: list[RecognitionEvent] = []
        data = self._pending + pcm
        size = self._frame_bytes
        usable = len(data) - len(data) % size
        for offset in range(0, usable, size):
            self._process_frame(data[offset : offset + size], events)
        self._pending = data[usable:]
        return events

    def finish(self) -> list[RecognitionEvent]:
        """End the utterance in progress now (the stream paused or closed); return its final."""
        events: list[RecognitionEvent] = []
        if self._in_utterance:
            tail = self._endpointer.end_stream(self._pending) if self._pending else None
            if tail:
                self._add_speech(tail)
            self._fed_bytes += len(self._pending)
            self._pending = b""
            events.append(self._finalize(self.time, forced=True))
            self._reset_endpointer()
        return events

    def reset(self) -> None:
        """Forget any utterance in progress and restart the clock at zero."""
        if self._in_utterance:
            self._decoder.end_utt()
        self._in_utterance = False
        self._pending = b""
        self._fed_bytes = 0
        self._recent.clear()
        self._last_end = 0.0
        self._reset_endpointer()

    def recognize(self, pcm: bytes) -> FinalTranscript:
        """Recognize ``pcm`` (16 kHz mono pcm16) as one utterance, without endpointing.

        Must not be called while a streamed utterance is in progress.
        """
        if self._in_utterance:
            raise RuntimeError("recognize() called while a streamed utterance is in progress")
        return self._decode_batch(pcm, start=0.0, end=len(pcm) / (2 * SAMPLE_RATE), forced=False)

    def begin_utterance(self) -> None:
        """Start an utterance delimited by the caller (no endpointing); times count from its start."""
        if self._in_utterance:
            raise RuntimeError("begin_utterance() called while an utterance is in progress")
        self._open_utterance(0.0)

    def continue_utterance(self, pcm: bytes) -> PartialTranscript:
        """Add audio to the utterance begun with ``begin_utterance``; return the hypothesis so far, with word times."""
        if not self._in_utterance:
            raise RuntimeError("continue_utterance() called without begin_utterance()")
        if len(pcm) % 2:
            raise ValueError(f"pcm16 audio must have an even number of bytes, got {len(pcm)}")
        if pcm:
            self._add_speech(pcm)
        words = tuple(_words(self._decoder, 0.0)) if self._decoder.hyp() is not None else ()
        duration = self._utterance_bytes / (2 * SAMPLE_RATE)
        return PartialTranscript(" ".join(w for w, _, _ in words), 0.0, round(duration, 3), words)

    def end_utterance(self) -> FinalTranscript:
        """Finish the utterance begun with ``begin_utterance``; return its final."""
        if not self._in_utterance:
            raise RuntimeError("end_utterance() called without begin_utterance()")
        final = self._finalize(self._utterance_bytes / (2 * SAMPLE_RATE), forced=False)
        self._last_end = self.time  # its times count from its own start, not the stream's
        return final

    # ----------------------------------------------------------- internals

    def _reset_endpointer(self) -> None:
        import pocketsphinx

        silence, vad_mode = self._endpointer_args
        self._endpointer = pocketsphinx.Endpointer(
            window=silence, ratio=0.9, vad_mode=vad_mode, sample_rate=SAMPLE_RATE
        )
        self._endpointer_offset = self.time

    def _process_frame(self, frame: bytes, events: list[RecognitionEvent]) -> None:
        endpointer = self._endpointer
        was_in_speech = endpointer.in_speech
        speech = endpointer.process(frame)
        self._fed_bytes += len(frame)
        if self.rescore_final:  # only the batch decode takes a lead-in
            self._recent += frame
            if len(self._recent) > _RECENT_BYTES:
                del self._recent[: len(self._recent) - _RECENT_BYTES]
        if speech is None:
            return
        if not was_in_speech and not self._in_utterance:
            self._open_utterance(self._endpointer_offset + endpointer.speech_start)
            self._lead_in = self._audio_before(self._utterance_start)
            events.append(SpeechStarted(round(self._utterance_start, 3)))
        self._add_speech(speech)
        if not endpointer.in_speech:
            events.append(self._finalize(self._endpointer_offset + endpointer.speech_end, forced=False))
            return
        if self._utterance_bytes >= self.max_utterance * 2 * SAMPLE_RATE:
            events.append(self._finalize(self.time, forced=True))
            self._reset_endpointer()
            return
        self._since_partial += len(speech)
        if self._since_partial >= self.partial_interval * 2 * SAMPLE_RATE:
            self._since_partial = 0
            text = self._hypothesis()
            if text and text != self._last_partial:
                self._last_partial = text
                events.append(PartialTranscript(text, round(self._utterance_start, 3), round(self.time, 3)))

    def _audio_before(self, start: float) -> bytes:
        """Up to ``EDGE_MARGIN`` of the audio fed just before ``start`` (seconds).

        The endpointer may open an utterance a few samples into the speech (where
        its frames fell decides it): the batch decode gets what came before, so
        that ``_steady_edges`` finds the same onset whatever the alignment."""
        first = self._fed_bytes - len(self._recent)  # stream position of _recent[0], in bytes
        position = round(start * SAMPLE_RATE) * 2 - first
        floor = max(0, round(self._last_end * SAMPLE_RATE) * 2 - first, position - int(EDGE_MARGIN * SAMPLE_RATE) * 2)
        return bytes(self._recent[floor:position]) if position > floor else b""

    def _open_utterance(self, start: float) -> None:
        self._in_utterance = True
        self._utterance_start = start
        self._lead_in = b""
        self._utterance_audio = []
        self._utterance_bytes = 0
        self._since_partial = 0
        self._last_partial = ""
        self._decoder.start_utt()

    def _hypothesis(self) -> str:
        hypothesis = self._decoder.hyp()
        return _clean_text(hypothesis.hypstr) if hypothesis is not None else ""

    def _add_speech(self, speech: bytes) -> None:
        self._decoder.process_raw(speech, no_search=False, full_utt=False)
        self._utterance_audio.append(speech)
        self._utterance_bytes += len(speech)

    def _finalize(self, end: float, *, forced: bool) -> FinalTranscript:
        self._decoder.end_utt()
        self._in_utterance = False
        audio = b"".join(self._utterance_audio)
        self._utterance_audio = []
        self._last_end = end
        if self.rescore_final:
            lead_in, self._lead_in = self._lead_in, b""
            return self._decode_batch(
                lead_in + audio, start=self._utterance_start, end=end, forced=forced, lead=len(lead_in) // 2
            )
        return self._result(self._decoder, self._utterance_start, end, forced)

    def _decode_batch(self, pcm: bytes, *, start: float, end: float, forced: bool, lead: int = 0) -> FinalTranscript:
        """The final of ``pcm``: an utterance from ``start`` to ``end``, after ``lead`` samples from before it."""
        samples, skipped = _steady_edges(np.frombuffer(pcm, dtype="<i2"))
        if not len(samples):
            return FinalTranscript("", (), 0.0, round(start, 3), round(end, 3), forced)
        # A decoder of its own for each utterance (about 10 ms to build): one that has decoded
        # before carries state over (the same audio came out with another word or confidence).
        decoder = _make_decoder(*self._decoder_args, dither=False)
        decoder.start_utt()
        decoder.process_raw(_dithered(samples), no_search=False, full_utt=True)
        decoder.end_utt()
        result = self._result(decoder, start, end, forced, audio_start=start + (skipped - lead) / SAMPLE_RATE)
        if len(samples) >= SAMPLE_RATE // 2:  # half a second of audio: a mean worth keeping
            self._decoder.set_cmn(decoder.get_cmn(False))
        return result

    def _result(
        self, decoder: Any, start: float, end: float, forced: bool, *, audio_start: float | None = None
    ) -> FinalTranscript:
        """The decoder's result for the utterance from ``start`` to ``end``; its word times
        count from ``audio_start`` (where the audio it decoded began; default ``start``).

        A word is not placed before the utterance began: in quiet padded in front of it
        (``_steady_edges``) the decoder may start the first word a frame early."""
        words = _words(decoder, start if audio_start is None else audio_start)
        if audio_start is not None and audio_start < start:
            floor = round(start, 3)  # as the transcript's start
            words = [(word, max(begin, floor), max(finish, floor)) for word, begin, finish in words]
        segments = decoder.seg() if words else ()
        posteriors = [float(segment.prob) for segment in segments if not segment.word.startswith(("<", "["))]
        confidence = sum(posteriors) / len(posteriors) if posteriors else 0.0
        text = " ".join(word for word, _, _ in words)
        return FinalTranscript(
            text, tuple(words), round(min(max(confidence, 0.0), 1.0), 3), round(start, 3), round(end, 3), forced
        )


def _words(decoder: Any, start: float) -> list[tuple[str, float, float]]:
    """The decoder's best path as (word, start, end), fillers left out; times offset by ``start``."""
    words: list[tuple[str, float, float]] = []
    if decoder.hyp() is None:
        return words  # no hypothesis at all (a grammar search that matched nothing)
    for segment in decoder.seg():
        word = segment.word
        if word.startswith(("<", "[")):
            continue  # <s>, </s>, <sil>, [NOISE]...
        words.append(
            (
                word.split("(", 1)[0],
                round(start + segment.start_frame / _FRAME_RATE, 3),
                round(start + (segment.end_frame + 1) / _FRAME_RATE, 3),
            )
        )
    return words


def _clean_text(hypothesis: str) -> str:
    return " ".join(w.split("(", 1)[0] for w in hypothesis.split() if not w.startswith(("<", "[")))


def _steady_edges(samples: np.ndarray) -> tuple[np.ndarray, int]:
    """``samples`` with exactly ``EDGE_MARGIN`` of quiet before and after the speech; and the shift of its start.

    Speech is what rises above 1/50 of the peak (-34 dB): a relative level, so
    a line's noise floor is not cut into. Quiet beyond the margin is cut;
    where there is less, digital silence makes up the rest (as on a phone
    line). The shift is the samples cut in front, negative when padded.
    """
    if not len(samples):
        return samples, 0
    magnitude = np.abs(samples.astype(np.int32))
    loud = np.flatnonzero(magnitude > max(8, int(magnitude.max()) // 50))
    if not len(loud):
        return samples, 0
    margin = int(EDGE_MARGIN * SAMPLE_RATE)
    first = int(loud[0]) - margin
    last = int(loud[-1]) + 1 + margin
    kept = samples[max(0, first) : min(len(samples), last)]
    before = np.zeros(max(0, -first), dtype=samples.dtype)
    after = np.zeros(max(0, last - len(samples)), dtype=samples.dtype)
    return np.concatenate((before, kept, after)), first


def _dithered(samples: np.ndarray) -> bytes:
    """pcm16 bytes of ``samples`` plus a least-significant bit of noise, the same for every utterance."""
    noise = np.random.default_rng(_DITHER_SEED).integers(-1, 2, len(samples), dtype=np.int32)
    dithered: bytes = np.clip(samples.astype(np.int32) + noise, -32768, 32767).astype("<i2").tobytes()
    return dithered


def _make_decoder(pocketsphinx: Any, model: DomainLanguageModel | None, search: str, *, dither: bool = True) -> Any:
    options: dict[str, Any] = {
        "hmm": str(model_path("en-us/en-us")),
        "samprate": SAMPLE_RATE,
        "bestpath": True,
        "loglevel": "FATAL",
        # Digital silence (a phone line's, between words) has no energy to take the log of:
        # a least-significant bit of noise, from a fixed seed, keeps the features sane. The
        # streaming decoder dithers itself; the batch decoder's audio comes dithered (_dithered).
        "dither": dither,
        "seed": _DITHER_SEED,
    }
    if model is None:
        options["lm"] = str(model_path("en-us/en-us.lm.bin"))
        options["dict"] = str(model_path("en-us/cmudict-en-us.dict"))
        return pocketsphinx.Decoder(**options)
    # The decoder reads its model and dictionary from files; they are not needed once loaded.
    with tempfile.TemporaryDirectory(prefix="vantum-lm-") as directory:
        folder = Path(directory)
        (folder / "domain.dict").write_text(model.dictionary, encoding="utf-8")
        options["dict"] = str(folder / "domain.dict")
        if search == "grammar":
            (folder / "domain.gram").write_text(model.grammar, encoding="utf-8")
            options["jsgf"] = str(folder / "domain.gram")
        else:
            (folder / "domain.arpa").write_text(model.arpa, encoding="utf-8")
            options["lm"] = str(folder / "domain.arpa")
        return pocketsphinx.Decoder(**options)
