"""The call record: one JSON-serializable summary per call, written at its end.

    recorder = CallRecorder(sink=JsonLinesSink("calls.jsonl"), tracker=tracker, call_id=call_sid)
    pipeline = Pipeline([transport.input(), stt, recorder.user_tap(), user_agg, llm, ...])
    task = PipelineTask(pipeline)
    recorder.attach(task)
    await recorder.run(task)          # runs the call, then writes the record

The recorder observes the task: every frame leaving either end (bot text,
TTS brackets and word timings, heard text, speaking events, metrics, errors,
the End) and the task's interruption epoch. The user's transcripts often stop
at the user aggregator and never reach an end; ``user_tap()`` is a
pass-through processor to place right after the STT so that the record gets
them. Without it the record holds the user turns that do reach an end.
The tap also keeps ``interim``, the user's words not final yet (the STT's
latest interim transcript since its last final one; never in the record),
and calls ``on_transcript()``, when set, after each transcript it sees:
a live view (the web console) shows the words as they are spoken.

A record (``record_version`` 1)::

    {"record_version": 1, "call_id": "...", "ids": {...}, "started_at": "2026-…Z",
     "ended_at": "…", "duration_seconds": 73.2, "outcome": "completed",
     "end_reason": "", "turns": [
        {"role": "assistant", "text": "Hi, this is …", "heard": "Hi, this is …",
         "interrupted": false, "at": 0.4, "latencies": {}},
        {"role": "user", "text": "Who is this?", "confidence": 0.97, "at": 3.1,
         "latencies": {"latency.stt_final": 0.21}},
        {"role": "assistant", "text": "…", "heard": "I'm calling", "interrupted": true, …}],
     "latencies": {"latency.llm_ttft": {"count": 4, "mean": …, "p50": …, "p95": …, "max": …}},
     "cost": {"total": 0.0123, "by_service": {...}, "usage": {...}, "per_minute": …},
     "counts": {"interruptions": 1, "service.error": {"openai": 1}},
     "errors": [{"at": 12.0, "processor": "openai", "error": "…", "fatal": false}],
     "truncated": {"turns": 0, "errors": 0}}

``outcome``: what the app set with ``set_outcome`` (telephony: "no_answer",
"voicemail", …), else ``budget_exceeded`` when the budget guard ended the
call, else from how the pipeline finished: ``completed``, ``cancelled``,
``error``, ``idle_timeout``. ``heard`` is what the callee actually heard
(from the output transport's HeardTextFrames; null when it never reported),
``interrupted`` marks a bot turn cut by a barge-in; ``"backchannel": true`` a
user turn said over the bot only to show listening ("mm-hmm"), which was not
answered and did not end the bot's turn; ``"resumed": true`` a bot turn that
is the rest of the one before it, resumed after a false interruption (its
first word may repeat the last one heard).

Sinks: ``JsonLinesSink`` (default; one line per call, rotated past
``max_bytes``, writes serialized by a lock and done off the event loop),
``MemorySink`` (bounded, for tests and dashboards), or any object with
``async def write(record)``. Strings pass through the log redactor.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from loguru import logger

from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    ErrorFrame,
    Frame,
    HeardTextFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    ResumeSpeakFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.observability.budget import BUDGET_EXCEEDED
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.metrics import LATENCY_PREFIX, LATENCY_STT_FINAL, USAGE_PREFIX
from vantum_pipeline.observability.redact import redact
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.settings import env_int, load_env, optional_env
from vantum_pipeline.task import PipelineTask

__all__ = ["CallRecorder", "JsonLinesSink", "MemorySink", "RecordSink", "RecordSinkSettings"]

RECORD_VERSION: Final = 1
#: Longest text kept per turn or error, in characters.
MAX_TEXT: Final = 4000

_OUTCOME_OF_FINISH: Final = {"end": "completed", "cancel": "cancelled", "error": "error", "idle": "idle_timeout"}


class RecordSink(Protocol):
    async def write(self, record: Mapping[str, Any]) -> None: ...


def _utc(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


@dataclass(frozen=True, slots=True)
class RecordSinkSettings:
    """``CALL_RECORD_PATH`` (``call_records.jsonl``) and ``CALL_RECORD_MAX_BYTES`` (50 MB)."""

    path: str = "call_records.jsonl"
    max_bytes: int = 50_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RecordSinkSettings:
        env = load_env(env)
        default = cls()
        path = optional_env(env, "CALL_RECORD_PATH", default.path)
        max_bytes = env_int(env, "CALL_RECORD_MAX_BYTES", default.max_bytes, minimum=1024)
        assert path is not None and max_bytes is not None
        return cls(path=path, max_bytes=max_bytes)


class JsonLinesSink:
    """Appends one JSON line per record to ``path``.

    Bounded: once the file passes ``max_bytes`` it is renamed to ``path.1``
    (older ones shift up to ``path.<backups>``, the oldest is deleted).
    Async-safe: writes are serialized by a lock and done in a worker thread.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 50_000_000, backups: int = 3) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: RecordSinkSettings) -> JsonLinesSink:
        return cls(settings.path, max_bytes=settings.max_bytes)

    async def write(self, record: Mapping[str, Any]) -> None:
        line = redact(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line.encode()) > self.max_bytes:
            self._rotate()
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)

    def _rotate(self) -> None:
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))


class MemorySink:
    """Keeps the last ``maxlen`` records (as redacted, JSON-round-tripped dicts)."""

    def __init__(self, maxlen: int = 100) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=maxlen)

    async def write(self, record: Mapping[str, Any]) -> None:
        self.records.append(json.loads(redact(json.dumps(record, default=str))))


@dataclass(slots=True)
class _Turn:
    role: str
    at: float
    epoch: int
    text: list[str] = field(default_factory=list)
    latencies: dict[str, float] = field(default_factory=dict)
    # user
    confidence: float | None = None
    low_confidence: bool = False
    backchannel: bool = False
    # assistant
    llm_text: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    heard: dict[str, str] = field(default_factory=dict)  # context id → cumulative heard text
    contexts: list[str] = field(default_factory=list)
    interrupted: bool = False
    response_open: bool = False
    tts_open: int = 0
    speaking: bool = False
    spoke: bool = False
    resumed: bool = False  # the rest of a reply cut by a false interruption

    def finished(self) -> bool:
        return self.spoke and not self.speaking and not self.response_open and self.tts_open <= 0

    def as_dict(self) -> dict[str, Any]:
        if self.role == "user":
            return {
                "role": "user",
                "text": _clip(" ".join(self.text)),
                "confidence": self.confidence,
                "low_confidence": self.low_confidence,
                **({"backchannel": True} if self.backchannel else {}),
                "at": round(self.at, 3),
                "latencies": {name: round(value, 4) for name, value in self.latencies.items()},
            }
        text = " ".join(self.text) or "".join(self.llm_text) or " ".join(self.words)
        heard = " ".join(h for h in (self.heard.get(c, "") for c in self._heard_order()) if h) if self.heard else None
        return {
            "role": "assistant",
            "text": _clip(text.strip()),
            "heard": None if heard is None else _clip(heard.strip()),
            "interrupted": self.interrupted,
            **({"resumed": True} if self.resumed else {}),
            "at": round(self.at, 3),
            "latencies": {name: round(value, 4) for name, value in self.latencies.items()},
        }

    def _heard_order(self) -> list[str]:
        extra = [c for c in self.heard if c not in self.contexts]
        return [*self.contexts, *extra]


class _UserTap(FrameProcessor):
    """Pass-through that shows the recorder the user's transcripts."""

    def __init__(self, recorder: CallRecorder) -> None:
        super().__init__(name="CallRecorder.user_tap")
        self._recorder = recorder

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionFrame):
            self._recorder._interrupted(frame.epoch)
        elif direction is FrameDirection.DOWNSTREAM:
            if isinstance(frame, TranscriptionFrame | EndOfTurnFrame):
                self._recorder._user_frame(frame)
                self._recorder._transcript_seen()
            elif isinstance(frame, InterimTranscriptionFrame):
                self._recorder.interim = frame.text.strip()
                self._recorder._transcript_seen()
        await self.push_frame(frame, direction)


class CallRecorder:
    """Builds the call record from what the task shows it; see the module docstring."""

    def __init__(
        self,
        *,
        sink: RecordSink | None = None,
        tracker: CostTracker | None = None,
        call_id: str | None = None,
        ids: Mapping[str, Any] | None = None,
        clock: Any = time.monotonic,
        wall_clock: Any = time.time,
        max_turns: int = 500,
        max_errors: int = 100,
        write_timeout: float = 5.0,
    ) -> None:
        self.sink: RecordSink = sink if sink is not None else JsonLinesSink.from_settings(RecordSinkSettings.from_env())
        self.tracker = tracker
        self.call_id = call_id
        self.ids: dict[str, Any] = dict(ids or {})
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_turns = max_turns
        self._max_errors = max_errors
        self._write_timeout = write_timeout
        self._task: PipelineTask | None = None
        self._started: float | None = None
        self._started_wall: float | None = None
        self._ended: float | None = None
        self._ended_wall: float | None = None
        self._turns: list[_Turn] = []
        self._dropped_turns = 0
        self._errors: list[dict[str, Any]] = []
        self._dropped_errors = 0
        self._pending_user: _Turn | None = None
        self._pending_user_latencies: dict[str, float] = {}
        self._pending_bot_latencies: dict[str, float] = {}
        self._latencies: dict[str, list[float]] = {}
        self._counts: dict[str, dict[str, float]] = {}
        self._epoch = 0
        self._interruptions = 0
        self._seen_user_frames: deque[int] = deque(maxlen=64)
        self._end_reason = ""
        self._budget_exceeded = False
        self._outcome: str | None = None
        self._outcome_reason = ""
        self.record: dict[str, Any] | None = None
        #: The user's words not final yet (see the module docstring).
        self.interim = ""
        #: Called after each transcript the user tap sees (interim or final); must not raise.
        self.on_transcript: Callable[[], None] | None = None

    # ----------------------------------------------------------------- API

    def attach(self, task: PipelineTask) -> CallRecorder:
        self._task = task
        task.add_observer(self._observe)
        return self

    def user_tap(self) -> FrameProcessor:
        """A pass-through processor for right after the STT (see the module docstring)."""
        return _UserTap(self)

    def set_outcome(self, outcome: str, reason: str = "") -> None:
        """The app's word on how the call ended; it wins over the pipeline's."""
        self._outcome = outcome
        self._outcome_reason = reason

    async def run(self, task: PipelineTask) -> dict[str, Any]:
        """Run ``task`` (attaching to it first if needed), then write the record."""
        if self._task is not task:
            self.attach(task)
        try:
            await task.run()
        finally:
            record = await self.finish()
        return record

    async def finish(self) -> dict[str, Any]:
        """Build the record and write it to the sink (once; bounded by
        ``write_timeout``; a failing sink is logged). Returns the record."""
        if self.record is not None:
            return self.record
        record = self.build(final=True)
        self.record = record
        try:
            async with asyncio.timeout(self._write_timeout):
                await self.sink.write(record)
        except TimeoutError:
            logger.error(
                "call record {}: the sink did not finish within {:.1f}s", record["call_id"], self._write_timeout
            )
        except Exception as exc:
            logger.opt(exception=exc).error("call record {}: the sink failed: {}", record["call_id"], exc)
        return record

    def build(self, *, final: bool = False) -> dict[str, Any]:
        """The record as it stands; ``final`` freezes the end time (and the
        tracker's figures) first."""
        if final and self._ended is None:
            self._ended = self._clock()
            self._ended_wall = self._wall_clock()
            self._flush_user()
        ended = self._ended if self._ended is not None else self._clock()
        ended_wall = self._ended_wall if self._ended_wall is not None else self._wall_clock()
        if self.tracker is None:
            cost = None
        else:
            cost = (self.tracker.finish() if final else self.tracker.snapshot()).as_dict()
        duration = 0.0 if self._started is None else max(0.0, ended - self._started)
        if cost is not None and cost["duration_seconds"]:
            duration = cost["duration_seconds"]
        outcome, reason = self._outcome_and_reason()
        counts: dict[str, Any] = {"interruptions": self._interruptions}
        counts.update({name: dict(by_service) for name, by_service in sorted(self._counts.items())})
        record: dict[str, Any] = {
            "record_version": RECORD_VERSION,
            "call_id": self.call_id or str(uuid.uuid4()),
            "ids": self.ids,
            "started_at": None if self._started_wall is None else _utc(self._started_wall),
            "ended_at": _utc(ended_wall) if final or self._ended is not None else None,
            "duration_seconds": round(duration, 3),
            "outcome": outcome,
            "end_reason": _clip(redact(reason)),
            "turns": [turn.as_dict() for turn in self._turns if turn.role == "user" or self._has_content(turn)]
            + ([self._pending_user.as_dict()] if self._pending_user is not None else []),
            "latencies": {name: _summary(values) for name, values in sorted(self._latencies.items())},
            "cost": cost,
            "counts": counts,
            "errors": list(self._errors),
            "truncated": {"turns": self._dropped_turns, "errors": self._dropped_errors},
        }
        self.call_id = record["call_id"]
        return record

    # ----------------------------------------------------------- observing

    def _now(self) -> float:
        return 0.0 if self._started is None else self._clock() - self._started

    def _observe(self, frame: Frame, direction: FrameDirection) -> None:
        task = self._task
        if task is not None and task.state.epoch > self._epoch:
            self._interrupted(task.state.epoch)
        if isinstance(frame, MetricsFrame):
            self._metric(frame)
        elif isinstance(frame, ErrorFrame):
            self._error(frame)
        elif direction is FrameDirection.UPSTREAM:
            return  # speaking events and requests to end travel both ways: count them once, downstream
        elif isinstance(frame, TranscriptionFrame | EndOfTurnFrame):
            self._user_frame(frame)
        elif isinstance(frame, StartFrame):
            self._start(frame)
        elif isinstance(frame, EndFrame):
            self._end_reason = self._end_reason or frame.reason
        elif isinstance(frame, CancelFrame):
            # The task's own CancelFrame carries only its finish code.
            if frame.reason not in _OUTCOME_OF_FINISH:
                self._end_reason = self._end_reason or frame.reason
        elif isinstance(frame, InterruptionFrame):
            self._interrupted(frame.epoch)
        else:
            self._bot_frame(frame)

    def _start(self, frame: StartFrame) -> None:
        if self._started is not None:
            return
        self._started = self._clock()
        self._started_wall = self._wall_clock()
        for key, value in frame.metadata.items():
            if isinstance(value, str | int | float | bool) and key not in self.ids:
                self.ids[key] = value
        if self.call_id is None and isinstance(frame.metadata.get("call_id"), str):
            self.call_id = frame.metadata["call_id"]

    def _transcript_seen(self) -> None:
        if self.on_transcript is not None:
            try:
                self.on_transcript()
            except Exception as exc:  # a viewer's bug must not break the call
                logger.opt(exception=exc).error("call record: on_transcript failed: {}", exc)

    def _user_frame(self, frame: TranscriptionFrame | EndOfTurnFrame) -> None:
        if isinstance(frame, TranscriptionFrame):
            self.interim = ""  # the final text replaces the words heard so far
        if frame.id in self._seen_user_frames:
            return  # the same frame seen by the tap and again at the tail
        self._seen_user_frames.append(frame.id)
        if not frame.text.strip():
            return
        self._close_bot_turn()
        pending = self._pending_user
        if pending is None:
            pending = self._pending_user = _Turn(role="user", at=self._now(), epoch=frame.epoch)
        if isinstance(frame, EndOfTurnFrame):
            pending.text = [frame.text.strip()]
            pending.confidence = frame.confidence
            pending.low_confidence = frame.low_confidence
            pending.backchannel = frame.backchannel
            self._flush_user()
        else:
            pending.text.append(frame.text.strip())
            if frame.confidence is not None:
                pending.confidence = frame.confidence

    def _flush_user(self) -> None:
        pending, self._pending_user = self._pending_user, None
        if pending is None:
            return
        pending.latencies.update(self._pending_user_latencies)
        self._pending_user_latencies = {}
        self._append(pending)

    def _append(self, turn: _Turn) -> None:
        if len(self._turns) >= self._max_turns:
            self._dropped_turns += 1
            return
        self._turns.append(turn)

    def _current_bot_turn(self) -> _Turn | None:
        if self._pending_user is not None:
            return None
        # A backchannel said over the bot is kept in its place but does not end the bot's turn.
        for turn in reversed(self._turns):
            if turn.role == "assistant":
                return turn
            if not turn.backchannel:
                return None
        return None

    def _bot_turn(self, frame: Frame) -> _Turn:
        turn = self._current_bot_turn()
        if turn is None or turn.epoch < frame.epoch:
            self._flush_user()
            turn = _Turn(role="assistant", at=self._now(), epoch=max(frame.epoch, self._epoch))
            turn.latencies.update(self._pending_bot_latencies)
            self._pending_bot_latencies = {}
            self._append(turn)
        return turn

    def _close_bot_turn(self) -> None:
        turn = self._current_bot_turn()
        if turn is not None:
            turn.response_open = False

    def _bot_frame(self, frame: Frame) -> None:
        if isinstance(frame, LLMTextFrame):
            self._bot_turn(frame).llm_text.append(frame.text)
        elif isinstance(frame, TextFrame | TTSSpeakFrame):
            if frame.text.strip():
                spoken = self._bot_turn(frame)
                spoken.text.append(frame.text.strip())
                spoken.resumed = spoken.resumed or isinstance(frame, ResumeSpeakFrame)
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._bot_turn(frame).response_open = True
        elif isinstance(frame, LLMFullResponseEndFrame):
            turn = self._current_bot_turn()
            if turn is not None:
                turn.response_open = False
        elif isinstance(frame, TTSStartedFrame):
            turn = self._bot_turn(frame)
            turn.tts_open += 1
            if frame.context_id and frame.context_id not in turn.contexts:
                turn.contexts.append(frame.context_id)
        elif isinstance(frame, TTSStoppedFrame):
            turn = self._current_bot_turn()
            if turn is not None:
                turn.tts_open -= 1
        elif isinstance(frame, TTSWordTimestampsFrame):
            self._bot_turn(frame).words.extend(word for word, _, _ in frame.words)
        elif isinstance(frame, HeardTextFrame):
            turn = self._turn_of_context(frame.context_id)
            if turn is not None:
                turn.heard[frame.context_id or ""] = frame.text
        elif isinstance(frame, BotStartedSpeakingFrame):
            turn = self._current_bot_turn()
            if turn is not None:
                turn.speaking = turn.spoke = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            turn = self._current_bot_turn()
            if turn is not None and frame.epoch <= turn.epoch:
                turn.speaking = False

    def _turn_of_context(self, context_id: str | None) -> _Turn | None:
        if context_id:
            for turn in reversed(self._turns):
                if context_id in turn.contexts:
                    return turn
        return self._current_bot_turn()

    def _interrupted(self, epoch: int) -> None:
        if epoch <= self._epoch:
            return
        self._interruptions += 1
        self._epoch = epoch
        turn = self._current_bot_turn()
        if turn is not None and turn.epoch < epoch and not turn.finished() and self._has_content(turn):
            turn.interrupted = True
            turn.response_open = False
            turn.speaking = False
            # Nothing heard yet is something heard: the callee cut in before any audio.
            if not turn.heard:
                turn.heard[turn.contexts[-1] if turn.contexts else ""] = ""

    @staticmethod
    def _has_content(turn: _Turn) -> bool:
        return bool(turn.text or turn.llm_text or turn.words or turn.contexts or turn.response_open)

    def _metric(self, frame: MetricsFrame) -> None:
        name, value = frame.metric, frame.value
        if not isinstance(value, int | float) or value != value:
            return
        if name.startswith(LATENCY_PREFIX):
            values = self._latencies.setdefault(name, [])
            if len(values) < 10_000:
                values.append(float(value))
            self._turn_latency(name, float(value))
        elif name == BUDGET_EXCEEDED:
            self._budget_exceeded = True
        elif not name.startswith(USAGE_PREFIX):
            by_service = self._counts.setdefault(name, {})
            service = frame.labels.get("service", "")
            by_service[service] = by_service.get(service, 0.0) + value

    def _turn_latency(self, name: str, value: float) -> None:
        # Metrics are system frames and may overtake the turn they belong to:
        # a turn takes the first value of each name; a second one waits for
        # the next turn.
        if name == LATENCY_STT_FINAL:
            if self._pending_user is not None and name not in self._pending_user.latencies:
                self._pending_user.latencies[name] = value
            else:
                self._pending_user_latencies.setdefault(name, value)
            return
        turn = self._current_bot_turn()
        if turn is not None and name not in turn.latencies:
            turn.latencies[name] = value
        else:
            self._pending_bot_latencies.setdefault(name, value)

    def _error(self, frame: ErrorFrame) -> None:
        if len(self._errors) >= self._max_errors:
            self._dropped_errors += 1
            return
        self._errors.append(
            {
                "at": round(self._now(), 3),
                "processor": frame.processor,
                "error": _clip(redact(frame.error)),
                "fatal": frame.fatal,
            }
        )

    def _outcome_and_reason(self) -> tuple[str, str]:
        if self._outcome is not None:
            return self._outcome, self._outcome_reason or self._end_reason
        if self._budget_exceeded:
            return "budget_exceeded", self._end_reason
        task = self._task
        finish = task.finish_reason if task is not None else ("end" if self._end_reason else None)
        reason = self._end_reason
        if task is not None and task.error is not None:
            reason = task.error.error
        return _OUTCOME_OF_FINISH.get(finish or "", "unknown"), reason


def _summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    count = len(ordered)

    def rank(q: float) -> float:
        """Nearest-rank percentile."""
        return ordered[max(1, math.ceil(q * count)) - 1]

    return {
        "count": count,
        "mean": round(sum(ordered) / count, 4),
        "p50": round(rank(0.50), 4),
        "p95": round(rank(0.95), 4),
        "max": round(ordered[-1], 4),
    }
