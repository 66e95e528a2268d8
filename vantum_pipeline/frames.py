"""Frames: the units of data and signalling that flow through a pipeline.

Three kinds, told apart by class (never by a flag):

``SystemFrame``
    Out of band. Delivered at once, overtaking in-band frames queued ahead of
    it, never dropped by an interruption. Start, Cancel, Error, Interruption,
    user/bot speaking, metrics.
``DataFrame``
    In band: strictly ordered per direction, subject to backpressure, and
    dropped by an interruption when it belongs to an older epoch. Audio, text,
    transcriptions, LLM tokens, TTS audio.
``ControlFrame``
    In band and ordered like data, and dropped like data.

A class whose ``survives_interruption`` is true is never dropped by an
interruption: ``EndFrame`` (an End is never lost) and the frames that carry
the *user's* input (``InputAudioRawFrame``, transcriptions, end of turn,
DTMF): a barge-in cancels the bot's turn, not what the user is saying.

Every frame carries ``id`` (monotonically increasing, process-wide) and
``epoch``: the interruption epoch it was produced in. ``epoch`` is stamped by
the framework when the frame is first pushed (see ``processor.py``); an
unstamped frame has epoch ``-1``.

Stream grammar
--------------
Per direction, what a processor may see (``*`` zero or more, ``?`` optional)::

    downstream := StartFrame  body*  (EndFrame | CancelFrame)
    body       := data | system | response | speech | InterruptionFrame
    response   := LLMFullResponseStartFrame  (LLMTextFrame | system)*  LLMFullResponseEndFrame
    speech     := TTSStartedFrame  (TTSAudioRawFrame | TTSWordTimestampsFrame | system)*  TTSStoppedFrame

- ``StartFrame`` is the first frame any processor sees; in-band frames that
  arrive before it are held until it has been handled.
- Nothing in band follows ``EndFrame``; nothing at all follows ``CancelFrame``.
- An ``InterruptionFrame`` closes every open bracket (``response``,
  ``speech``) implicitly: the closing frame of a bracket opened in an older
  epoch may never come, and a processor must reset its per-turn state when it
  sees the interruption. Every processor sees exactly one ``InterruptionFrame``
  per interruption, and no in-band frame of an older epoch after it
  (``EndFrame`` excepted).
- Upstream carries system frames (errors, speaking events, metrics) and
  the rare in-band frame a processor sends back (none of the shipped ones do).

Audio is ``bytes`` with ``sample_rate`` and ``num_channels``; ``encoding`` is
``"pcm16"`` (16-bit signed little-endian PCM) unless the producer says
``"mulaw"`` (G.711, one byte per sample), which the phone path uses to pass
audio through without decoding it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "Frame",
    "SystemFrame",
    "DataFrame",
    "ControlFrame",
    "PCM16",
    "MULAW",
    # system
    "StartFrame",
    "CancelFrame",
    "ErrorFrame",
    "InterruptionFrame",
    "UserStartedSpeakingFrame",
    "UserStoppedSpeakingFrame",
    "BotStartedSpeakingFrame",
    "BotStoppedSpeakingFrame",
    "EndTaskFrame",
    "CancelTaskFrame",
    "MetricsFrame",
    # data
    "AudioRawFrame",
    "InputAudioRawFrame",
    "OutputAudioRawFrame",
    "TTSAudioRawFrame",
    "TextFrame",
    "LLMTextFrame",
    "TTSSpeakFrame",
    "ResumeSpeakFrame",
    "TranscriptionFrame",
    "InterimTranscriptionFrame",
    "EndOfTurnFrame",
    "FalseInterruptionFrame",
    "TTSWordTimestampsFrame",
    "HeardTextFrame",
    "LLMContextFrame",
    "InputDTMFFrame",
    # control
    "EndFrame",
    "LLMFullResponseStartFrame",
    "LLMFullResponseEndFrame",
    "TTSStartedFrame",
    "TTSStoppedFrame",
]

PCM16 = "pcm16"
MULAW = "mulaw"

UNSTAMPED = -1

_next_id = itertools.count(1).__next__


@dataclass(slots=True, eq=False)
class Frame:
    """Base of all frames. Compare frames by identity, not by value."""

    id: int = field(default_factory=_next_id, init=False)
    epoch: int = field(default=UNSTAMPED, init=False)

    #: In band (ordered, flushable) or out of band (system).
    in_band: ClassVar[bool] = True
    #: In-band frames kept across an interruption.
    survives_interruption: ClassVar[bool] = False

    @property
    def tag(self) -> str:
        """Short label for logs: class name and id."""
        return f"{type(self).__name__}#{self.id}"


@dataclass(slots=True, eq=False)
class SystemFrame(Frame):
    """Out-of-band frame: overtakes queued frames, never flushed."""

    in_band: ClassVar[bool] = False
    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class DataFrame(Frame):
    """In-band payload: ordered, backpressured, dropped by interruptions."""


@dataclass(slots=True, eq=False)
class ControlFrame(Frame):
    """In-band signal: ordered like data."""


# --------------------------------------------------------------------- system


@dataclass(slots=True, eq=False)
class StartFrame(SystemFrame):
    """First frame of a pipeline run; processors open their resources here."""

    audio_in_sample_rate: int = 16000
    audio_out_sample_rate: int = 16000
    allow_interruptions: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class CancelFrame(SystemFrame):
    """Stop now: processors drop what they hold and release resources.

    ``expected``: the usual end of a session rather than a failure (the callee
    hung up): the task logs it at INFO instead of WARNING."""

    reason: str = ""
    expected: bool = False


@dataclass(slots=True, eq=False)
class ErrorFrame(SystemFrame):
    """An error, travelling upstream to the task. ``fatal`` ends the pipeline."""

    error: str
    fatal: bool = False
    processor: str | None = None
    exception: BaseException | None = field(default=None, repr=False)


@dataclass(slots=True, eq=False)
class InterruptionFrame(SystemFrame):
    """The user barged in: drop the bot's current turn.

    Raise one with ``FrameProcessor.push_interruption()``; the framework
    delivers one to every processor of the pipeline.
    """


@dataclass(slots=True, eq=False)
class UserStartedSpeakingFrame(SystemFrame):
    source: str = ""


@dataclass(slots=True, eq=False)
class UserStoppedSpeakingFrame(SystemFrame):
    source: str = ""


@dataclass(slots=True, eq=False)
class BotStartedSpeakingFrame(SystemFrame):
    """The output transport started playing bot audio (sent both ways)."""


@dataclass(slots=True, eq=False)
class BotStoppedSpeakingFrame(SystemFrame):
    """The output transport finished (or stopped) playing bot audio."""


@dataclass(slots=True, eq=False)
class EndTaskFrame(SystemFrame):
    """Ask the task, from any processor, to end the pipeline gracefully.

    Push it upstream: it travels out of band to the head, where the task
    queues an ``EndFrame`` behind everything already queued, so every
    processor flushes and the transport finishes playing first. (An
    ``EndFrame`` itself must not travel upstream: processors on its way would
    take it for the end of the stream.)"""

    reason: str = ""


@dataclass(slots=True, eq=False)
class CancelTaskFrame(SystemFrame):
    """Ask the task, from any processor, to cancel the pipeline now (push it upstream)."""

    reason: str = ""


@dataclass(slots=True, eq=False)
class MetricsFrame(SystemFrame):
    """One measurement, e.g. ``metric="ttfb", value=0.21, unit="s"``."""

    metric: str
    value: float
    unit: str = ""
    processor: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------- data


@dataclass(slots=True, eq=False)
class AudioRawFrame(DataFrame):
    audio: bytes
    sample_rate: int
    num_channels: int = 1
    encoding: str = PCM16

    @property
    def num_samples(self) -> int:
        """Samples per channel."""
        width = 2 if self.encoding == PCM16 else 1
        return len(self.audio) // (width * self.num_channels)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.num_samples / self.sample_rate


@dataclass(slots=True, eq=False)
class InputAudioRawFrame(AudioRawFrame):
    """Audio from the user (microphone, phone line)."""

    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class OutputAudioRawFrame(AudioRawFrame):
    """Audio for the user (speaker, phone line)."""


@dataclass(slots=True, eq=False)
class TTSAudioRawFrame(OutputAudioRawFrame):
    """Synthesized speech; ``context_id`` names the TTS turn it belongs to."""

    context_id: str | None = None


@dataclass(slots=True, eq=False)
class TextFrame(DataFrame):
    """Text for the bot to say (a TTS service speaks every TextFrame)."""

    text: str


@dataclass(slots=True, eq=False)
class LLMTextFrame(TextFrame):
    """A token (or a few) streamed by the LLM."""


@dataclass(slots=True, eq=False)
class TTSSpeakFrame(DataFrame):
    """Speak this text as one turn of its own (greetings, fallback phrases)."""

    text: str
    category: str | None = None


@dataclass(slots=True, eq=False)
class ResumeSpeakFrame(TTSSpeakFrame):
    """Speak the rest of an interrupted reply after a false interruption.

    ``text`` is ``lead_in`` (heard words said again, so the sentence makes
    sense) followed by the words the callee did not hear; ``message`` is the
    interrupted reply's context message, which the assistant aggregator
    completes instead of recording a second reply.
    """

    lead_in: str = ""
    message: Any = None


@dataclass(slots=True, eq=False)
class TranscriptionFrame(DataFrame):
    """A final transcript segment of the user's speech."""

    text: str
    user_id: str = ""
    timestamp: float = 0.0
    confidence: float | None = None
    words: tuple[tuple[str, float, float], ...] = ()
    language: str | None = None

    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class InterimTranscriptionFrame(DataFrame):
    """A revisable, partial transcript of the user's speech."""

    text: str
    user_id: str = ""
    timestamp: float = 0.0
    confidence: float | None = None
    language: str | None = None

    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class EndOfTurnFrame(DataFrame):
    """The user finished their turn; ``text`` is the whole turn's transcript.

    ``low_confidence`` is set when the transcript is not trustworthy enough to
    answer (the conversation layer asks the user to repeat instead).
    """

    text: str
    confidence: float | None = None
    low_confidence: bool = False
    #: Said over the bot only to show listening ("mm-hmm", "right"): not a turn.
    backchannel: bool = False

    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class FalseInterruptionFrame(DataFrame):
    """The last interruption was a false alarm: speech over the bot that no
    words followed (a cough, a line click, only a backchannel). The
    conversation layer may resume the reply it cut, saying again the last
    ``lead_in_words`` heard words first when the cut was mid-sentence."""

    lead_in_words: int = 1

    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class TTSWordTimestampsFrame(DataFrame):
    """Word timings of a TTS context, seconds from the start of its audio."""

    words: tuple[tuple[str, float, float], ...]
    context_id: str | None = None


@dataclass(slots=True, eq=False)
class HeardTextFrame(DataFrame):
    """Bot text the user has actually heard, emitted by the output transport
    as playback advances (Twilio mark echoes, the sound card's playback) and
    mapped through TTS word timestamps. Cumulative: ``text`` is everything of
    the ``context_id`` turn heard so far, so a late or repeated frame is
    harmless. A record of the past, so it survives interruptions."""

    text: str
    context_id: str | None = None

    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class LLMContextFrame(DataFrame):
    """Ask the LLM for a reply to ``context`` (an ``LLMContext``)."""

    context: Any


@dataclass(slots=True, eq=False)
class InputDTMFFrame(DataFrame):
    digit: str

    survives_interruption: ClassVar[bool] = True


# -------------------------------------------------------------------- control


@dataclass(slots=True, eq=False)
class EndFrame(ControlFrame):
    """Finish gracefully once everything ahead of it has been processed."""

    reason: str = ""
    survives_interruption: ClassVar[bool] = True


@dataclass(slots=True, eq=False)
class LLMFullResponseStartFrame(ControlFrame):
    """An LLM reply starts; LLMTextFrames follow."""


@dataclass(slots=True, eq=False)
class LLMFullResponseEndFrame(ControlFrame):
    """The LLM reply is complete."""


@dataclass(slots=True, eq=False)
class TTSStartedFrame(ControlFrame):
    """Audio of a TTS turn follows."""

    context_id: str | None = None


@dataclass(slots=True, eq=False)
class TTSStoppedFrame(ControlFrame):
    """The TTS turn's audio is complete."""

    context_id: str | None = None
