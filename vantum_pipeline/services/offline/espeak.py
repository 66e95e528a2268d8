"""Speech synthesis with espeak-ng, driven through ctypes: text → pcm16 and word timings.

Plain, synchronous code (no asyncio): ``EspeakSynthesizer.synthesize`` blocks
while espeak-ng renders (typically a few hundred times faster than real time)
and calls ``on_chunk`` with each buffer as it is produced. The asyncio service
(``tts.py``) runs it in a worker thread.

The library comes from the ``espeakng-loader`` wheel (libespeak-ng and its data
bundled) when installed, else from the system (``libespeak-ng.so.1`` with its
default data directory). libespeak-ng keeps global state and is not
thread-safe: every call into it holds one process-wide lock, and the voice is
set on each call, so several synthesizers with different voices can share
the library.

A synthesis is not independent of the ones before it in the process: the
same text in the same voice can come out as a slightly different waveform
(state inside libespeak-ng that no API call resets: the pitch flutter of its
classic and Klatt generators, and more: a synthesis in a speechPlayer voice
such as the bot's, whose generator keeps no flutter state, still changes a
later one in another voice, depending on its text). It sounds the same to a
listener, but a speech recognizer may hear it differently, so a test that
judges recognition of synthesized speech synthesizes it in a fresh process
(as ``tests/test_offline_demo.py`` runs the demo).

Word timings come from espeak's word events (start of each word in the audio);
a word ends where its sound ends: the last loud sample before the next word
starts, so the pause after a comma is not counted as the word.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vantum_pipeline.errors import ConfigurationError

__all__ = ["BOT_VOICE", "CALLEE_VOICE", "EspeakSynthesizer", "EspeakVoice", "Synthesis", "espeak_available"]

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_SENTENCE_END = 5
_EVENT_MSG_TERMINATED = 6
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_EE_OK = 0

#: Milliseconds of audio per callback: the granularity of streaming and cancellation.
_CHUNK_MS = 100
#: A sample quieter than this (of 32767) counts as silence when finding where a word ends.
_SILENCE_LEVEL = 300


@dataclass(frozen=True, slots=True)
class EspeakVoice:
    """A voice: espeak-ng voice name (``language+variant``), words per minute, pitch 0–100.

    The Klatt variants sound less buzzy than the default and are recognized
    far better after the 8 kHz μ-law phone line (see the package notes).
    """

    name: str = "en-us+klatt6"
    rate: int = 165
    pitch: int = 45
    pitch_range: int = 50
    volume: int = 100

    def __post_init__(self) -> None:
        if not 80 <= self.rate <= 450:
            raise ConfigurationError(f"espeak rate must be 80..450 words per minute, got {self.rate}")
        for field_name in ("pitch", "pitch_range"):
            value = getattr(self, field_name)
            if not 0 <= value <= 100:
                raise ConfigurationError(f"espeak {field_name} must be 0..100, got {value}")
        if not 0 <= self.volume <= 200:
            raise ConfigurationError(f"espeak volume must be 0..200, got {self.volume}")


#: The bot's voice in the offline default.
BOT_VOICE = EspeakVoice("en-us+klatt6", rate=165, pitch=45)
#: The simulated callee: another variant, higher pitched, a little faster.
CALLEE_VOICE = EspeakVoice("en-us+klatt3", rate=170, pitch=62, pitch_range=60)


@dataclass(frozen=True, slots=True)
class Synthesis:
    """What one ``synthesize`` call produced."""

    audio: bytes
    sample_rate: int
    words: tuple[tuple[str, float, float], ...]
    cancelled: bool = False

    @property
    def duration(self) -> float:
        return len(self.audio) / 2 / self.sample_rate


class _Event(ctypes.Structure):
    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _Id),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class _Run:
    """State of the synthesis in progress (one at a time, under the lock)."""

    __slots__ = ("cancelled", "chunks", "error", "on_chunk", "should_stop", "word_events")

    def __init__(self, on_chunk: Callable[[bytes], None] | None, should_stop: Callable[[], bool] | None) -> None:
        self.chunks: list[bytes] = []
        self.word_events: list[tuple[int, int, int]] = []  # (text position, length, start ms)
        self.on_chunk = on_chunk
        self.should_stop = should_stop
        self.cancelled = False
        self.error: BaseException | None = None


class _Library:
    """The loaded libespeak-ng, initialized once per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.run: _Run | None = None
        lib, data_path = _load()
        self.lib = lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        path = data_path.encode() if data_path else None
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _CHUNK_MS, path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise ConfigurationError(f"espeak-ng failed to initialize (data path {data_path!r}, code {rate})")
        self.sample_rate: int = int(rate)
        # Keep a reference: the C library calls it for as long as the process lives.
        self._callback = _Callback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], count: int, events: ctypes._Pointer[_Event]) -> int:
        run = self.run
        if run is None:
            return 1
        try:
            index = 0
            while True:
                event = events[index]
                if event.type in (_EVENT_LIST_TERMINATED, _EVENT_MSG_TERMINATED):
                    break
                if event.type == _EVENT_WORD:
                    run.word_events.append((event.text_position, event.length, event.audio_position))
                index += 1
            if count > 0 and wav:
                chunk = ctypes.string_at(wav, count * 2)
                run.chunks.append(chunk)
                if run.on_chunk is not None:
                    run.on_chunk(chunk)
            if run.should_stop is not None and run.should_stop():
                run.cancelled = True
                return 1
        except BaseException as exc:  # never let an exception unwind through C
            run.error = exc
            return 1
        return 0

    def synthesize(
        self,
        text: str,
        voice: EspeakVoice,
        on_chunk: Callable[[bytes], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> Synthesis:
        encoded = text.encode("utf-8") + b"\0"
        with self.lock:
            lib = self.lib
            if lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
                raise ConfigurationError(f"espeak-ng has no voice {voice.name!r}")
            lib.espeak_SetParameter(_PARAM_RATE, voice.rate, 0)
            lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
            lib.espeak_SetParameter(_PARAM_RANGE, voice.pitch_range, 0)
            lib.espeak_SetParameter(_PARAM_VOLUME, voice.volume, 0)
            run = _Run(on_chunk, should_stop)
            self.run = run
            try:
                code = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            finally:
                self.run = None
        if run.error is not None:
            raise run.error
        if code != _EE_OK and not run.cancelled:
            raise RuntimeError(f"espeak_Synth failed with code {code}")
        audio = b"".join(run.chunks)
        words = _word_timings(text, run.word_events, audio, self.sample_rate)
        return Synthesis(audio, self.sample_rate, words, cancelled=run.cancelled)


def _load() -> tuple[ctypes.CDLL, str | None]:
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path()
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise ConfigurationError(
            "espeak-ng is not available: pip install 'vantum-pipeline[offline]' "
            "(brings the espeakng-loader wheel), or install the system package libespeak-ng1"
        )
    return ctypes.CDLL(name), None


def _word_timings(
    text: str, events: list[tuple[int, int, int]], audio: bytes, sample_rate: int
) -> tuple[tuple[str, float, float], ...]:
    samples = np.frombuffer(audio, dtype=np.int16)
    total = len(samples) / sample_rate
    loud = np.flatnonzero(np.abs(samples) > _SILENCE_LEVEL)
    words: list[tuple[str, float, float]] = []
    for index, (position, length, start_ms) in enumerate(events):
        word = text[position - 1 : position - 1 + length].strip()
        if not word:
            continue
        start = min(start_ms / 1000, total)
        limit = events[index + 1][2] / 1000 if index + 1 < len(events) else total
        limit = min(max(limit, start), total)
        # The word ends at its last loud sample before the next word begins.
        lo, hi = int(start * sample_rate), int(limit * sample_rate)
        inside = loud[(loud >= lo) & (loud < hi)]
        end = (int(inside[-1]) + 1) / sample_rate if len(inside) else limit
        words.append((word, round(start, 3), round(max(end, start), 3)))
    return tuple(words)


_library: _Library | None = None
_library_lock = threading.Lock()


def _get_library() -> _Library:
    global _library
    with _library_lock:
        if _library is None:
            _library = _Library()
        return _library


def espeak_available() -> bool:
    """True when libespeak-ng can be loaded and initialized here."""
    try:
        _get_library()
    except (ConfigurationError, OSError):
        return False
    return True


class EspeakSynthesizer:
    """Text to 16-bit mono PCM at espeak-ng's native rate (22,050 Hz), with word timings.

    ``synthesize`` is blocking and thread-safe (calls into the library are
    serialized). Loading the library happens on first use, or at once with
    ``EspeakSynthesizer.load()``.
    """

    def __init__(self, voice: EspeakVoice = BOT_VOICE) -> None:
        self.voice = voice
        self._library: _Library | None = None

    @classmethod
    def load(cls, voice: EspeakVoice = BOT_VOICE) -> EspeakSynthesizer:
        """A synthesizer whose library is loaded now (fails early when espeak-ng is missing)."""
        synthesizer = cls(voice)
        synthesizer._library = _get_library()
        return synthesizer

    @property
    def sample_rate(self) -> int:
        return self._lib().sample_rate

    def _lib(self) -> _Library:
        if self._library is None:
            self._library = _get_library()
        return self._library

    def synthesize(
        self,
        text: str,
        voice: EspeakVoice | None = None,
        *,
        on_chunk: Callable[[bytes], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Synthesis:
        """Speak ``text``; return all its audio and word timings.

        ``on_chunk`` receives each buffer (about 100 ms) as it is rendered;
        ``should_stop`` is polled after each buffer, and a true answer ends the
        synthesis there (``Synthesis.cancelled`` is then set). Word timings
        are seconds from the start of the returned audio.
        """
        if not text.strip():
            return Synthesis(b"", self.sample_rate, ())
        return self._lib().synthesize(text, voice or self.voice, on_chunk, should_stop)
