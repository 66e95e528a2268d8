"""OpenTelemetry traces of a call: the call, its turns, its service requests.

Optional (extra ``tracing``: opentelemetry-api and -sdk). ``CallTracer``
observes a task, like the metrics collector and the call recorder, and
turns what leaves the pipeline into spans:

``call``          StartFrame → the End (or Cancel) leaving the tail; outcome
                  and counts set at the end
``turn``          the user stopped speaking → the bot's first audio of the
                  reply (``UserStoppedSpeakingFrame`` → ``BotStartedSpeakingFrame``);
                  a turn the user resumes before any reply ends with
                  ``vantum.turn.answered = false``
``stt.stream``    one per STT connection (its ``service.request``), to the
                  next connection or the end of the call; one event per final
                  with its latency, the audio seconds billed
``llm.request``   one per request attempt (``service.request``) → its
                  usage, with ``vantum.llm.ttft_s`` and a ``first_token``
                  event, the prompt and completion tokens
``tts.context``   one per context (``service.request``) → its
                  ``TTSStoppedFrame``, with ``vantum.tts.ttfb_s`` and a
                  ``first_byte`` event, the characters sent

Service spans that start during a turn are the turn's children; the others
(the greeting, the STT stream) the call's. An interruption is an event of the
call span (timed by the first frame that leaves the pipeline after it; in a
call, the output transport's ``BotStoppedSpeakingFrame`` as it stops the
audio), and ends the open LLM and TTS spans with ``vantum.interrupted = true``; a ``service.error`` marks the
open request of that service as an error.

Timing: every frame the spans are built from except the TTS's end is a system
frame, which overtakes queued audio and leaves the pipeline as it is pushed,
so span times are the services' own; the latencies in the attributes are the
services' measures, the very values the call record holds.

Attributes never carry a key or a full phone number: every string attribute
goes through the log redactor, and anything shaped like an E.164 number is
masked (``+141******23``).

No cost when off: ``call_tracer()`` returns None (nothing is attached) when
tracing is disabled (``VANTUM_TRACING``, default off) or the extra is not
installed, and this module imports OpenTelemetry only when a tracer is built.

    tracer = call_tracer(TracingSettings.from_env(), call_id=call_sid, to="+14155550123")
    if tracer is not None:
        tracer.attach(task)
    ...
    tracer.finish(outcome="completed")     # optional: the End already closes the call span

The pipeline's End (or Cancel) ends every span. A phone call's outcome is
known only after that (Twilio's last status callback): with
``hold_for_outcome=True`` the End ends the other spans and notes the time,
and ``finish(outcome=...)`` ends the call span at that time with its outcome.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    MetricsFrame,
    StartFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.observability.metrics import (
    LATENCY_LLM_TTFT,
    LATENCY_STT_FINAL,
    LATENCY_TTS_TTFB,
    SERVICE_ERROR,
    SERVICE_REQUEST,
    USAGE_LLM_COMPLETION_TOKENS,
    USAGE_LLM_PROMPT_TOKENS,
    USAGE_STT_SECONDS,
    USAGE_TTS_CHARACTERS,
)
from vantum_pipeline.observability.redact import redact
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.settings import env_bool, load_env, optional_env
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.telephony.numbers import mask_number, mask_numbers_in

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["SERVICE_KINDS", "CallTracer", "TracingSettings", "call_tracer", "safe_attribute", "tracing_available"]

#: The kind of each service the library ships (the ``service`` label of its
#: metrics). Others are learned from the first kind-specific metric they emit.
SERVICE_KINDS: Final[Mapping[str, str]] = {
    "deepgram": "stt",
    "pocketsphinx": "stt",
    "openai": "llm",
    "scripted": "llm",
    "cartesia": "tts",
    "espeak": "tts",
}
_KIND_OF_METRIC: Final = {
    LATENCY_STT_FINAL: "stt",
    USAGE_STT_SECONDS: "stt",
    LATENCY_LLM_TTFT: "llm",
    USAGE_LLM_PROMPT_TOKENS: "llm",
    USAGE_LLM_COMPLETION_TOKENS: "llm",
    LATENCY_TTS_TTFB: "tts",
    USAGE_TTS_CHARACTERS: "tts",
}
_SPAN_NAME: Final = {"stt": "stt.stream", "llm": "llm.request", "tts": "tts.context"}
#: The frames spans are built from; every other frame is ignored after one lookup per class.
_WATCHED: Final = (
    MetricsFrame,
    UserStoppedSpeakingFrame,
    UserStartedSpeakingFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    TTSStoppedFrame,
    LLMFullResponseEndFrame,
    InterruptionFrame,
    StartFrame,
    EndFrame,
    CancelFrame,
)
_WATCHED_TYPES: dict[type, bool] = {}
#: Open TTS contexts kept per call; older ones are ended (a TTS that never stops).
MAX_OPEN_CONTEXTS: Final = 32
INSTRUMENTATION_NAME: Final = "vantum_pipeline"


def tracing_available() -> bool:
    """True when the ``tracing`` extra (opentelemetry-api) is installed."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


def safe_attribute(value: str) -> str:
    """``value`` with keys redacted and phone numbers masked."""
    return mask_numbers_in(redact(value))


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """``VANTUM_TRACING`` (off) and ``VANTUM_TRACING_NAME`` (the tracer's
    instrumentation name). Where spans go is OpenTelemetry's own
    configuration: the global tracer provider, or one passed to the tracer."""

    enabled: bool = False
    name: str = INSTRUMENTATION_NAME

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TracingSettings:
        env = load_env(env)
        name = optional_env(env, "VANTUM_TRACING_NAME", INSTRUMENTATION_NAME)
        assert name is not None
        return cls(enabled=env_bool(env, "VANTUM_TRACING", False), name=name)


def call_tracer(
    settings: TracingSettings | None = None,
    *,
    call_id: str | None = None,
    to: str | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    tracer_provider: TracerProvider | None = None,
    hold_for_outcome: bool = False,
) -> CallTracer | None:
    """A ``CallTracer`` for one call, or None when tracing is off or not installed."""
    settings = settings if settings is not None else TracingSettings.from_env()
    if not settings.enabled:
        return None
    if not tracing_available():
        logger.warning("VANTUM_TRACING is on but opentelemetry is not installed (extra 'tracing'): no traces")
        return None
    return CallTracer(
        call_id=call_id,
        to=to,
        attributes=attributes,
        tracer_provider=tracer_provider,
        name=settings.name,
        hold_for_outcome=hold_for_outcome,
    )


@dataclass(slots=True)
class _Request:
    span: Span
    service: str
    kind: str
    totals: dict[str, float] = field(default_factory=dict)
    ttfb: bool = False

    def add(self, key: str, value: float) -> None:
        total = self.totals[key] = self.totals.get(key, 0) + value
        self.span.set_attribute(key, total)


class CallTracer:
    """Spans of one call from what leaves its pipeline; see the module docstring.

    A task observer: synchronous, and it ignores audio and text frames after
    one dict lookup. ``clock`` returns nanoseconds since the epoch
    (OpenTelemetry's time); tests may pass their own.
    """

    def __init__(
        self,
        *,
        call_id: str | None = None,
        to: str | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
        tracer_provider: TracerProvider | None = None,
        tracer: Tracer | None = None,
        name: str = INSTRUMENTATION_NAME,
        clock: Any = time.time_ns,
        hold_for_outcome: bool = False,
    ) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer: Tracer = tracer or trace.get_tracer(name, tracer_provider=tracer_provider)
        self._clock = clock
        self.call_id = call_id
        self._attributes: dict[str, str | int | float | bool] = {}
        if call_id:
            self._attributes["vantum.call.id"] = safe_attribute(call_id)
        if to:
            self._attributes["vantum.call.to"] = mask_number(to)
        for key, value in (attributes or {}).items():
            self._attributes[key] = safe_attribute(value) if isinstance(value, str) else value
        self._task: PipelineTask | None = None
        self._call: Span | None = None
        self._call_context: Any = None
        self._turn: Span | None = None
        self._turn_context: Any = None
        self._turns = 0
        self._epoch = 0
        self._interruptions = 0
        self._user_speaking = False
        self._seen_user_start = False
        self._bot_speaking = False
        self._kinds: dict[str, str] = dict(SERVICE_KINDS)
        self._stt: dict[str, _Request] = {}
        self._llm: dict[str, _Request] = {}
        self._tts: deque[_Request] = deque()
        self._finished = False
        self._hold_for_outcome = hold_for_outcome
        self._ended_at: int | None = None

    # ----------------------------------------------------------------- API

    def attach(self, task: PipelineTask) -> CallTracer:
        self._task = task
        task.add_observer(self)
        return self

    @property
    def turns(self) -> int:
        """Turn spans started so far."""
        return self._turns

    def finish(self, *, outcome: str | None = None, end_time: int | None = None) -> None:
        """End every open span, the call's last (at the pipeline's end if it
        was noted); idempotent. ``outcome`` is set on the call span if it is
        still open."""
        if self._call is None or self._finished:
            return
        if outcome is not None:
            self._call.set_attribute("vantum.call.outcome", safe_attribute(outcome))
        self._finished = True
        now = end_time if end_time is not None else self._ended_at if self._ended_at is not None else self._clock()
        self._end_all_but_the_call(now)
        call = self._call
        call.set_attribute("vantum.call.turns", self._turns)
        call.set_attribute("vantum.call.interruptions", self._interruptions)
        task = self._task
        if task is not None and task.finish_reason is not None:
            call.set_attribute("vantum.call.finish_reason", task.finish_reason)
            if task.finish_reason == "error":
                detail = task.error.error if task.error is not None else "error"
                call.set_status(self._trace.Status(self._trace.StatusCode.ERROR, safe_attribute(detail)))
        call.end(end_time=now)

    # ----------------------------------------------------------- observing

    def __call__(self, frame: Frame, direction: FrameDirection) -> None:
        task = self._task
        if task is not None and task.state.epoch > self._epoch and self._recording():
            # The InterruptionFrame itself never leaves the pipeline: the first frame after it does.
            self._interrupted(task.state.epoch, self._clock())
        kind = type(frame)
        watched = _WATCHED_TYPES.get(kind)
        if watched is None:
            watched = _WATCHED_TYPES[kind] = issubclass(kind, _WATCHED)
        if not watched:
            return  # audio, text: one dict lookup
        if self._finished or self._ended_at is not None:
            return
        now = self._clock()
        if isinstance(frame, StartFrame):
            self._start(now)
        elif self._call is None:
            return
        elif isinstance(frame, MetricsFrame):
            self._metric(frame, now)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            # Sent by the STT and a VAD alike, maybe both ways: one turn per stop after a start.
            if self._user_speaking or not self._seen_user_start:
                self._user_speaking = False
                self._start_turn(now)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._user_speaking = self._seen_user_start = True
        elif isinstance(frame, BotStartedSpeakingFrame):
            if not self._bot_speaking:
                self._bot_speaking = True
                self._end_turn(now, answered=True)
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, TTSStoppedFrame):
            if self._tts:
                self._tts.popleft().span.end(end_time=now)
        elif isinstance(frame, LLMFullResponseEndFrame):
            for request in list(self._llm.values()):
                self._end_request(request, now)
        elif isinstance(frame, InterruptionFrame):
            self._interrupted(frame.epoch, now)
        elif isinstance(frame, EndFrame | CancelFrame) and direction is FrameDirection.DOWNSTREAM:
            if self._hold_for_outcome:
                self._ended(now)
            else:
                self.finish(end_time=now)

    def _ended(self, now: int) -> None:
        """The pipeline ended: every span but the call's ends now."""
        if self._ended_at is not None:
            return
        self._ended_at = now
        self._end_all_but_the_call(now)

    def _end_all_but_the_call(self, now: int) -> None:
        self._end_turn(now, answered=False)
        for request in [*self._stt.values(), *self._llm.values(), *self._tts]:
            request.span.end(end_time=now)
        self._stt.clear()
        self._llm.clear()
        self._tts.clear()

    def _recording(self) -> bool:
        return self._call is not None and not self._finished and self._ended_at is None

    def _start(self, now: int) -> None:
        if self._call is not None:
            return
        self._call = self._tracer.start_span("call", attributes=self._attributes, start_time=now)
        self._call_context = self._trace.set_span_in_context(self._call)

    def _start_turn(self, now: int) -> None:
        self._end_turn(now, answered=False)
        self._turns += 1
        self._turn = self._tracer.start_span(
            "turn", context=self._call_context, attributes={"vantum.turn.index": self._turns}, start_time=now
        )
        self._turn_context = self._trace.set_span_in_context(self._turn)

    def _end_turn(self, now: int, *, answered: bool) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        self._turn_context = None
        turn.set_attribute("vantum.turn.answered", answered)
        turn.end(end_time=now)

    def _interrupted(self, epoch: int, now: int) -> None:
        if epoch <= self._epoch:
            return
        self._epoch = epoch
        self._interruptions += 1
        self._bot_speaking = False
        if self._call is not None:
            self._call.add_event("interruption", attributes={"vantum.epoch": epoch}, timestamp=now)
        for request in [*self._llm.values(), *self._tts]:
            request.span.set_attribute("vantum.interrupted", True)
            request.span.end(end_time=now)
        self._llm.clear()
        self._tts.clear()

    # ------------------------------------------------------------- services

    def _kind(self, service: str, metric: str) -> str | None:
        kind = _KIND_OF_METRIC.get(metric)
        if kind is not None and service not in self._kinds:
            self._kinds[service] = kind
            self._learned(service, kind)
        return self._kinds.get(service)

    def _learned(self, service: str, kind: str) -> None:
        """A service of unknown kind told what it is: its open request gets its name."""
        for request in [r for r in self._tts if r.service == service and r.kind == "service"]:
            self._tts.remove(request)
            request.kind = kind
            request.span.update_name(_SPAN_NAME[kind])
            if kind == "tts":
                self._tts.append(request)
            elif kind == "llm":
                self._llm[service] = request
            else:
                self._stt[service] = request

    def _metric(self, frame: MetricsFrame, now: int) -> None:
        name, value = frame.metric, frame.value
        if not isinstance(value, int | float) or value != value:
            return
        service = frame.labels.get("service", "") or (frame.processor or "")
        kind = self._kind(service, name)
        if name == SERVICE_REQUEST:
            self._request(service, kind, now)
            return
        request = self._open_request(service, kind, first_byte=name == LATENCY_TTS_TTFB)
        if request is None:
            return
        span = request.span
        if name == SERVICE_ERROR:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, f"{safe_attribute(service)} error"))
            if kind != "stt":
                self._end_request(request, now)
        elif name == LATENCY_LLM_TTFT:
            span.set_attribute("vantum.llm.ttft_s", float(value))
            span.add_event("first_token", timestamp=now)
        elif name == USAGE_LLM_PROMPT_TOKENS:
            span.set_attribute("gen_ai.usage.input_tokens", int(value))
        elif name == USAGE_LLM_COMPLETION_TOKENS:
            span.set_attribute("gen_ai.usage.output_tokens", int(value))
            self._end_request(request, now)  # the usage is the stream's last chunk
        elif name == LATENCY_TTS_TTFB:
            request.ttfb = True
            span.set_attribute("vantum.tts.ttfb_s", float(value))
            span.add_event("first_byte", timestamp=now)
        elif name == USAGE_TTS_CHARACTERS:
            request.add("vantum.tts.characters", int(value))
        elif name == LATENCY_STT_FINAL:
            span.add_event("final", attributes={"vantum.stt.latency_s": float(value)}, timestamp=now)
            request.add("vantum.stt.finals", 1)
        elif name == USAGE_STT_SECONDS:
            request.add("vantum.stt.audio_seconds", float(value))

    def _request(self, service: str, kind: str | None, now: int) -> None:
        kind = kind or "service"
        if kind == "stt":
            previous = self._stt.pop(service, None)
            if previous is not None:
                previous.span.end(end_time=now)
        elif kind == "llm":
            previous = self._llm.pop(service, None)
            if previous is not None:
                previous.span.end(end_time=now)
        elif len(self._tts) >= MAX_OPEN_CONTEXTS:
            self._tts.popleft().span.end(end_time=now)
        parent = self._turn_context if (self._turn is not None and kind != "stt") else self._call_context
        attributes: dict[str, str | int] = {"vantum.service": safe_attribute(service)}
        if self._turn is not None and kind != "stt":
            attributes["vantum.turn.index"] = self._turns
        span = self._tracer.start_span(
            _SPAN_NAME.get(kind, f"{kind}.request"), context=parent, attributes=attributes, start_time=now
        )
        request = _Request(span, service, kind)
        if kind == "stt":
            self._stt[service] = request
        elif kind == "llm":
            self._llm[service] = request
        else:
            self._tts.append(request)

    def _open_request(self, service: str, kind: str | None, *, first_byte: bool = False) -> _Request | None:
        if kind == "stt":
            return self._stt.get(service)
        if kind == "llm":
            return self._llm.get(service)
        # The first byte belongs to the oldest context still waiting for one; the rest to the newest.
        contexts = [r for r in self._tts if r.service == service and not (first_byte and r.ttfb)]
        if not contexts:
            return None
        return contexts[0] if first_byte else contexts[-1]

    def _end_request(self, request: _Request, now: int) -> None:
        if request.kind == "llm":
            if self._llm.get(request.service) is request:
                del self._llm[request.service]
        elif request.kind == "stt":
            if self._stt.get(request.service) is request:
                del self._stt[request.service]
        elif request in self._tts:
            self._tts.remove(request)
        request.span.end(end_time=now)
