"""Our frames ⇄ pipecat's frames: the translation table, as data.

``TABLE`` is the one place that says which of our frames becomes which of
pipecat's on the way into a hosted processor, and which of pipecat's becomes
which of ours on the way out. Each row names both classes, the converters
(``None`` where a direction has no mapping) and a note. ``docs/pipecat.md``
renders the same table.

A frame that has no row in its direction is not dropped: ours travels
through the hosted processor inside a :class:`Carried` pipecat frame and
comes out unchanged; pipecat's leaves the adapter inside a
:class:`ForeignFrame` (or :class:`ForeignSystemFrame`), so a second hosted
processor downstream receives the very pipecat frame. Both are counted.

A few frames need the adapter's state, not just a converter, and are marked
"adapter" in the notes: ``StartFrame`` (the pipeline's audio parameters),
``InterruptionFrame`` (our epochs), ``LLMContextFrame`` (our conversation
becomes pipecat's ``LLMContext``), pipecat's ``TTSTextFrame`` (its word
timings become our ``TTSWordTimestampsFrame``) and pipecat's function-call
frames (our tools).

Importing this module imports pipecat: only ``interop/pipecat.py`` does.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    from pipecat.frames import frames as pc
    from pipecat.metrics.metrics import (
        LLMUsageMetricsData,
        ProcessingMetricsData,
        STTUsageMetricsData,
        TTFBMetricsData,
        TTSUsageMetricsData,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    from vantum_pipeline.interop import PIPECAT_MISSING

    raise ImportError(PIPECAT_MISSING) from exc

from vantum_pipeline import frames as vp
from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.observability.metrics import (
    USAGE_LLM_COMPLETION_TOKENS,
    USAGE_LLM_PROMPT_TOKENS,
    USAGE_STT_SECONDS,
    USAGE_TTS_CHARACTERS,
)

__all__ = [
    "TABLE",
    "TTFB",
    "Carried",
    "CarriedKept",
    "CarriedSystem",
    "ForeignFrame",
    "ForeignSystemFrame",
    "Translation",
    "converter_to_pipecat",
    "markdown_table",
    "to_ours",
    "to_pipecat",
]

ToPipecat = Callable[[Any], "pc.Frame"]
ToOurs = Callable[[Any], "vp.Frame | tuple[vp.Frame, ...]"]


# ------------------------------------------------------- frames of the adapter


@dataclass(slots=True, eq=False)
class ForeignFrame(vp.DataFrame):
    """A pipecat frame with no counterpart here, travelling in band."""

    frame: Any


@dataclass(slots=True, eq=False)
class ForeignSystemFrame(vp.SystemFrame):
    """A pipecat system frame with no counterpart here (out of band)."""

    frame: Any


@dataclass
class Carried(pc.DataFrame):
    """One of our in-band frames crossing a hosted processor untranslated."""

    frame: Any = None


@dataclass
class CarriedKept(pc.DataFrame):
    """One of our frames that survives interruptions, crossing untranslated."""

    frame: Any = None
    interruptible: bool = field(default=False, init=False)


@dataclass
class CarriedSystem(pc.SystemFrame):
    """One of our system frames crossing a hosted processor untranslated."""

    frame: Any = None


# ----------------------------------------------------------------- converters


def _pcm(frame: vp.AudioRawFrame) -> bytes:
    return ulaw2lin(frame.audio) if frame.encoding == vp.MULAW else frame.audio


def _iso(timestamp: float) -> str:
    moment = timestamp if timestamp > 0 else 0.0
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="milliseconds")


def _seconds(iso: str) -> float:
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _language(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _error_to_pipecat(frame: vp.ErrorFrame) -> pc.ErrorFrame:
    # Pipecat deprecated ``fatal`` (1.8); ours keeps it: the original comes out the other side.
    exception = frame.exception if isinstance(frame.exception, Exception) else None
    return pc.ErrorFrame(frame.error, exception=exception)


def _error_to_ours(frame: pc.ErrorFrame) -> vp.ErrorFrame:
    processor = getattr(frame.processor, "name", None)
    return vp.ErrorFrame(str(frame.error), fatal=bool(frame.fatal), processor=processor, exception=frame.exception)


#: Pipecat's TTFB is the first output of a request; what it measures depends on the service.
TTFB = "latency.ttfb"


def _metrics_to_ours(frame: pc.MetricsFrame) -> tuple[vp.Frame, ...]:
    """One of ours per measurement we name; ``TTFB`` is renamed by the adapter per role."""
    out: list[vp.Frame] = []
    for data in frame.data:
        labels = {"via": "pipecat"}
        if isinstance(data, TTFBMetricsData):
            out.append(vp.MetricsFrame(TTFB, float(data.value), "s", data.processor, labels))
        elif isinstance(data, ProcessingMetricsData):
            out.append(vp.MetricsFrame("latency.processing", float(data.value), "s", data.processor, labels))
        elif isinstance(data, LLMUsageMetricsData):
            usage = data.value
            out.append(
                vp.MetricsFrame(USAGE_LLM_PROMPT_TOKENS, float(usage.prompt_tokens), "tokens", data.processor, labels)
            )
            out.append(
                vp.MetricsFrame(
                    USAGE_LLM_COMPLETION_TOKENS, float(usage.completion_tokens), "tokens", data.processor, labels
                )
            )
        elif isinstance(data, TTSUsageMetricsData):
            out.append(vp.MetricsFrame(USAGE_TTS_CHARACTERS, float(data.value), "characters", data.processor, labels))
        elif isinstance(data, STTUsageMetricsData):
            out.append(vp.MetricsFrame(USAGE_STT_SECONDS, float(data.value.audio_seconds), "s", data.processor, labels))
    return tuple(out) if out else (ForeignSystemFrame(frame),)


def _transcription(frame: pc.TranscriptionFrame) -> vp.TranscriptionFrame:
    return vp.TranscriptionFrame(
        frame.text, user_id=frame.user_id, timestamp=_seconds(frame.timestamp), language=_language(frame.language)
    )


def _interim(frame: pc.InterimTranscriptionFrame) -> vp.InterimTranscriptionFrame:
    return vp.InterimTranscriptionFrame(
        frame.text, user_id=frame.user_id, timestamp=_seconds(frame.timestamp), language=_language(frame.language)
    )


# ---------------------------------------------------------------------- table


@dataclass(frozen=True, slots=True)
class Translation:
    """One row: ``ours`` ⇄ ``theirs``; a ``None`` converter: no mapping that way."""

    ours: type[vp.Frame] | None
    theirs: type[pc.Frame]
    to_theirs: ToPipecat | None
    to_ours: ToOurs | None
    note: str = ""

    @property
    def by_adapter(self) -> bool:
        """The adapter translates this pair itself (it needs the adapter's state)."""
        return self.note.startswith("adapter:")


TABLE: tuple[Translation, ...] = (
    Translation(
        vp.StartFrame, pc.StartFrame, None, None,
        "adapter: pipecat's StartFrame carries the pipeline's audio rates",
    ),
    Translation(vp.EndFrame, pc.EndFrame, lambda f: pc.EndFrame(reason=f.reason or None), lambda f: vp.EndFrame()),
    Translation(
        vp.CancelFrame, pc.CancelFrame, lambda f: pc.CancelFrame(reason=f.reason or None), None,
        "ours passes on at once; pipecat's coming out is absorbed",
    ),
    Translation(
        vp.InterruptionFrame, pc.InterruptionFrame, None, None,
        "adapter: ours becomes pipecat's; pipecat's raised inside becomes push_interruption()",
    ),
    Translation(
        vp.EndTaskFrame, pc.EndWorkerFrame, lambda f: pc.EndWorkerFrame(reason=f.reason or None),
        lambda f: vp.EndTaskFrame(reason=str(f.reason or "")), "a processor asks the task to end",
    ),
    Translation(
        vp.CancelTaskFrame, pc.CancelWorkerFrame, lambda f: pc.CancelWorkerFrame(reason=f.reason or None),
        lambda f: vp.CancelTaskFrame(reason=str(f.reason or "")),
    ),
    Translation(
        vp.ErrorFrame, pc.ErrorFrame,
        _error_to_pipecat, _error_to_ours,
    ),
    Translation(
        vp.MetricsFrame, pc.MetricsFrame, None, _metrics_to_ours,
        "TTFB (per role: latency.stt_final, latency.llm_ttft, latency.tts_ttfb), processing time, "
        "usage (LLM tokens, TTS characters, STT seconds); ours cross carried",
    ),
    Translation(
        vp.UserStartedSpeakingFrame, pc.VADUserStartedSpeakingFrame, lambda f: pc.VADUserStartedSpeakingFrame(),
        lambda f: vp.UserStartedSpeakingFrame(source="pipecat"),
    ),
    Translation(
        vp.UserStoppedSpeakingFrame, pc.VADUserStoppedSpeakingFrame, lambda f: pc.VADUserStoppedSpeakingFrame(),
        lambda f: vp.UserStoppedSpeakingFrame(source="pipecat"),
        "pipecat's STT services finalize on it (Deepgram's Finalize)",
    ),
    Translation(
        vp.UserStartedSpeakingFrame, pc.UserStartedSpeakingFrame, None,
        lambda f: vp.UserStartedSpeakingFrame(source="pipecat"), "pipecat's turn-level frame",
    ),
    Translation(
        vp.UserStoppedSpeakingFrame, pc.UserStoppedSpeakingFrame, None,
        lambda f: vp.UserStoppedSpeakingFrame(source="pipecat"), "pipecat's turn-level frame",
    ),
    Translation(
        vp.BotStartedSpeakingFrame, pc.BotStartedSpeakingFrame, lambda f: pc.BotStartedSpeakingFrame(),
        lambda f: vp.BotStartedSpeakingFrame(),
    ),
    Translation(
        vp.BotStoppedSpeakingFrame, pc.BotStoppedSpeakingFrame, lambda f: pc.BotStoppedSpeakingFrame(),
        lambda f: vp.BotStoppedSpeakingFrame(),
    ),
    Translation(
        vp.InputAudioRawFrame, pc.InputAudioRawFrame,
        lambda f: pc.InputAudioRawFrame(audio=_pcm(f), sample_rate=f.sample_rate, num_channels=f.num_channels),
        lambda f: vp.InputAudioRawFrame(f.audio, f.sample_rate, f.num_channels),
        "μ-law becomes 16-bit PCM on the way in (pipecat's audio is PCM)",
    ),
    Translation(
        vp.TTSAudioRawFrame, pc.TTSAudioRawFrame,
        lambda f: pc.TTSAudioRawFrame(
            audio=_pcm(f), sample_rate=f.sample_rate, num_channels=f.num_channels, context_id=f.context_id
        ),
        lambda f: vp.TTSAudioRawFrame(f.audio, f.sample_rate, f.num_channels, context_id=f.context_id),
        "a context's audio carries the epoch of the turn that opened it",
    ),
    Translation(
        vp.OutputAudioRawFrame, pc.OutputAudioRawFrame,
        lambda f: pc.OutputAudioRawFrame(audio=_pcm(f), sample_rate=f.sample_rate, num_channels=f.num_channels),
        lambda f: vp.OutputAudioRawFrame(f.audio, f.sample_rate, f.num_channels),
    ),
    Translation(
        vp.TTSWordTimestampsFrame, pc.TTSTextFrame, None, None,
        "adapter: a spoken word and its time; a word ends where the next begins",
    ),
    Translation(vp.LLMTextFrame, pc.LLMTextFrame, lambda f: pc.LLMTextFrame(f.text), lambda f: vp.LLMTextFrame(f.text)),
    Translation(vp.TextFrame, pc.TextFrame, lambda f: pc.TextFrame(f.text), lambda f: vp.TextFrame(f.text)),
    Translation(
        vp.TTSSpeakFrame, pc.TTSSpeakFrame, lambda f: pc.TTSSpeakFrame(f.text), lambda f: vp.TTSSpeakFrame(f.text),
    ),
    Translation(
        vp.TranscriptionFrame, pc.TranscriptionFrame,
        lambda f: pc.TranscriptionFrame(f.text, f.user_id, _iso(f.timestamp)), _transcription,
    ),
    Translation(
        vp.InterimTranscriptionFrame, pc.InterimTranscriptionFrame,
        lambda f: pc.InterimTranscriptionFrame(f.text, f.user_id, _iso(f.timestamp)), _interim,
    ),
    Translation(
        vp.LLMFullResponseStartFrame, pc.LLMFullResponseStartFrame, lambda f: pc.LLMFullResponseStartFrame(),
        lambda f: vp.LLMFullResponseStartFrame(),
    ),
    Translation(
        vp.LLMFullResponseEndFrame, pc.LLMFullResponseEndFrame, lambda f: pc.LLMFullResponseEndFrame(),
        lambda f: vp.LLMFullResponseEndFrame(),
    ),
    Translation(
        vp.TTSStartedFrame, pc.TTSStartedFrame, lambda f: pc.TTSStartedFrame(context_id=f.context_id),
        lambda f: vp.TTSStartedFrame(context_id=f.context_id),
    ),
    Translation(
        vp.TTSStoppedFrame, pc.TTSStoppedFrame, lambda f: pc.TTSStoppedFrame(context_id=f.context_id),
        lambda f: vp.TTSStoppedFrame(context_id=f.context_id),
    ),
    Translation(
        vp.LLMContextFrame, pc.LLMContextFrame, None, None,
        "adapter: our LLMContext becomes pipecat's (messages, tools; never `interrupted`)",
    ),
    Translation(
        None, pc.FunctionCallsStartedFrame, None, None,
        "adapter: pipecat's function calls run our tools and land in our LLMContext",
    ),
)  # fmt: skip


def markdown_table() -> str:
    """``TABLE`` as the Markdown table of ``docs/pipecat.md``."""

    def name(cls: type[Any] | None) -> str:
        return "—" if cls is None else f"`{cls.__name__}`"

    def way(row: Translation, converter: Any) -> str:
        return "adapter" if row.by_adapter else "✓" if converter is not None else "—"

    lines = ["| ours | pipecat's | into pipecat | out to ours | notes |", "|---|---|---|---|---|"]
    for row in TABLE:
        note = row.note.removeprefix("adapter:").strip()
        lines.append(
            f"| {name(row.ours)} | {name(row.theirs)} | {way(row, row.to_theirs)} | {way(row, row.to_ours)} | {note} |"
        )
    return "\n".join(lines) + "\n"


def _index_theirs() -> dict[type[Any], ToPipecat]:
    index: dict[type[Any], ToPipecat] = {}
    for row in TABLE:
        if row.ours is not None and row.to_theirs is not None:
            index.setdefault(row.ours, row.to_theirs)
    return index


def _index_ours() -> dict[type[Any], ToOurs]:
    index: dict[type[Any], ToOurs] = {}
    for row in TABLE:
        if row.to_ours is not None:
            index.setdefault(row.theirs, row.to_ours)
    return index


_TO_PIPECAT = _index_theirs()
_TO_OURS = _index_ours()
_MISSING: dict[type[Any], None] = {}


def _lookup(index: dict[type[Any], Any], cls: type[Any]) -> Any:
    """The converter of ``cls`` or of its nearest mapped base class (cached)."""
    converter = index.get(cls, _MISSING)
    if converter is not _MISSING:
        return converter
    converter = None
    for base in cls.__mro__[1:]:
        if base in index:
            converter = index[base]
            break
    index[cls] = converter
    return converter


def converter_to_pipecat(cls: type[vp.Frame]) -> ToPipecat | None:
    """The converter of our frames of class ``cls`` into pipecat's, or None when the table has no row."""
    converter: ToPipecat | None = _lookup(_TO_PIPECAT, cls)
    return converter


def to_pipecat(frame: vp.Frame) -> pc.Frame | None:
    """Pipecat's frame for ``frame``, or None when the table has no row for it."""
    converter = _lookup(_TO_PIPECAT, type(frame))
    return None if converter is None else converter(frame)


def to_ours(frame: pc.Frame) -> vp.Frame | tuple[vp.Frame, ...] | None:
    """Our frame(s) for pipecat's ``frame``, or None when the table has no row for it."""
    converter = _lookup(_TO_OURS, type(frame))
    return None if converter is None else converter(frame)
