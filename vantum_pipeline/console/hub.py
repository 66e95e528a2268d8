"""The console's model: calls in progress and finished, and who is watching.

``ConsoleHub`` holds, per call, what the page shows: the masked number, the
state (``live`` → ``ended`` → ``finished``), the turns as the call record
builds them (what the bot said and what the callee heard of it,
interruptions, per-turn latencies), the cost by service, the outcome, and
where the recording is. A call's pipeline is watched with ``watch()``:

    hub = ConsoleHub()
    registry = CallRegistry(on_record=hub.call_ended)         # telephony outcomes
    server = TwilioServer(settings, factory, registry=registry)

    def factory(call: TwilioCall) -> PipelineTask:
        recorder = CallRecorder(sink=sink, tracker=tracker, call_id=call.call_sid)
        task = PipelineTask(Pipeline([..., stt, recorder.user_tap(), ...]))
        hub.watch(task, recorder, call_id=call.call_sid, to=call.call.to,
                  campaign_id=call.call.campaign_id, recording=f"recordings/{call.call_sid}.wav")
        return task

The hub reads the recorder's record as it grows (``CallRecorder.build()``),
so the live transcript and the finished call are the same data; it freezes
the record when the pipeline's End or Cancel leaves it. While the callee
speaks, the view also carries ``interim``: their words not final yet (the
recorder's user tap sees the STT's interim transcripts), replaced by the
final text in the transcript when it comes. The telephony
record (``call_ended``) adds the outcome Twilio reported and the line's cost.

Changes are pushed to subscribers (the console's event streams) at most
every ``flush_interval`` seconds per call, coalesced: a burst of frames is
one update. Bounded: ``max_finished`` finished calls are kept, each
subscriber has a queue of ``queue_size`` updates; a subscriber that falls
behind is sent a fresh snapshot instead of the updates it missed. No task
is started: updates are scheduled with ``loop.call_later`` handles that
``close()`` cancels.

Everything a view holds has been scrubbed: numbers masked, keys redacted.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from loguru import logger

from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    HeardTextFrame,
    InterruptionFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
)
from vantum_pipeline.observability.record import CallRecorder
from vantum_pipeline.observability.redact import redact
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.telephony.numbers import mask_number, mask_numbers_in
from vantum_pipeline.telephony.outcome import CallRecord

__all__ = ["CallView", "ConsoleHub", "Subscription", "scrub"]

LIVE: Final = "live"
ENDED: Final = "ended"
FINISHED: Final = "finished"
#: Frames after which the transcript may have changed.
_CHANGES: Final = (
    TranscriptionFrame,
    EndOfTurnFrame,
    TextFrame,
    TTSSpeakFrame,
    HeardTextFrame,
    InterruptionFrame,
    MetricsFrame,
)


_WATCHED_TYPES: dict[type, bool] = {}


def scrub(value: Any) -> Any:
    """``value`` (JSON-like) with keys redacted and phone numbers masked in every string."""
    if isinstance(value, str):
        return mask_numbers_in(redact(value))
    if isinstance(value, Mapping):
        return {scrub(key) if isinstance(key, str) else key: scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


@dataclass(slots=True)
class CallView:
    """One call as the console shows it."""

    call_id: str
    to: str  # masked
    started_at: float
    campaign_id: str | None = None
    state: str = LIVE
    outcome: str | None = None
    status: str | None = None
    ended_at: float | None = None
    record: dict[str, Any] = field(default_factory=dict)
    line_cost: float | None = None
    recording: Path | None = None
    recorder: CallRecorder | None = None
    telephony: bool = True
    timer: asyncio.Handle | None = None
    cached: dict[str, Any] | None = None
    #: The app's outcome (a campaign's ``meeting_booked``): it wins over the telephony record's.
    app_outcome: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The view sent to the page (scrubbed); a finished call's is computed once."""
        if self.cached is not None:
            return self.cached
        record = self.record
        if self.recorder is not None:
            record = self.recorder.build()
        cost = dict((record.get("cost") or {}).get("by_service") or {})
        if self.line_cost is not None:
            cost["twilio"] = round(self.line_cost, 6)  # what Twilio bills: whole minutes
        turns = record.get("turns") or []
        interim = self.recorder.interim if self.recorder is not None and self.state == LIVE else ""
        view = {
            "call_id": self.call_id,
            "to": self.to,
            "campaign_id": self.campaign_id,
            "state": self.state,
            "outcome": self.app_outcome or self.outcome or (record.get("outcome") if self.state != LIVE else None),
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_seconds": record.get("duration_seconds"),
            "turns": [_turn_view(turn) for turn in turns],
            "interim": interim,
            "interruptions": (record.get("counts") or {}).get("interruptions", 0),
            "latencies": record.get("latencies") or {},
            "cost": {"by_service": cost, "total": round(sum(cost.values()), 6)},
            "errors": len(record.get("errors") or []),
            "recording": self.recording is not None and self.recording.is_file(),
        }
        scrubbed: dict[str, Any] = scrub(view)
        if self.state == FINISHED:
            self.cached = scrubbed
        return scrubbed


def _turn_view(turn: Mapping[str, Any]) -> dict[str, Any]:
    view = {
        "role": turn.get("role"),
        "text": turn.get("text") or "",
        "at": turn.get("at"),
        "latencies": turn.get("latencies") or {},
    }
    if turn.get("role") == "assistant":
        view["heard"] = turn.get("heard")
        view["interrupted"] = bool(turn.get("interrupted"))
    return view


class Subscription:
    """One event stream's queue of updates: ``("call", view)`` or ``("snapshot", None)``."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[str, dict[str, Any] | None]] = asyncio.Queue(maxsize=size)
        self.resyncs = 0

    def offer(self, kind: str, view: dict[str, Any] | None) -> None:
        try:
            self.queue.put_nowait((kind, view))
        except asyncio.QueueFull:
            # Behind: what it missed is replaced by one fresh snapshot (or the close).
            self.resyncs += 1
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("close" if kind == "close" else "snapshot", None))


class ConsoleHub:
    """See the module docstring."""

    def __init__(
        self,
        *,
        max_finished: int = 200,
        max_live: int = 1000,
        flush_interval: float = 0.2,
        outcome_timeout: float = 30.0,
        queue_size: int = 64,
        recordings_dir: str | os.PathLike[str] | None = None,
        clock: Any = time.time,
    ) -> None:
        self.max_finished = max_finished
        self.max_live = max_live
        self.flush_interval = flush_interval
        self.outcome_timeout = outcome_timeout
        self.queue_size = queue_size
        self.recordings_dir = Path(recordings_dir) if recordings_dir is not None else None
        self._clock = clock
        self._live: dict[str, CallView] = {}
        self._finished: OrderedDict[str, CallView] = OrderedDict()
        self._unstreamed = 0
        self._subscribers: set[Subscription] = set()
        self._dirty: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ watching

    def watch(
        self,
        task: PipelineTask,
        recorder: CallRecorder,
        *,
        call_id: str,
        to: str | None = None,
        campaign_id: str | None = None,
        recording: str | os.PathLike[str] | None = None,
        telephony: bool = True,
    ) -> CallView:
        """Show the call that ``task`` runs. ``recorder`` is attached to the
        task here (do not attach it yourself). ``recording`` is the WAV file the
        pipeline writes (default: ``<recordings_dir>/<call_id>.wav``).

        With ``telephony`` the call is finished when both its pipeline has
        ended and its telephony record has come (``call_ended``), or
        ``outcome_timeout`` seconds after the pipeline's end; without, the
        pipeline's end finishes it with the record's outcome."""
        if len(self._live) >= self.max_live:
            oldest = next(iter(self._live))
            logger.warning("console: more than {} live calls; no longer showing {}", self.max_live, oldest)
            self._live.pop(oldest)
        path = Path(recording) if recording is not None else None
        if path is None and self.recordings_dir is not None:
            path = self.recordings_dir / f"{Path(call_id).name}.wav"
        view = CallView(
            call_id=call_id,
            to=mask_number(to) if to else "",
            started_at=self._clock(),
            campaign_id=campaign_id,
            recording=path,
            recorder=recorder,
            telephony=telephony,
        )
        self._live[call_id] = view
        recorder.attach(task)
        recorder.on_transcript = lambda: self._changed(call_id)  # the callee's words, as they come

        def observe(frame: Frame, direction: FrameDirection) -> None:
            kind = type(frame)
            watched = _WATCHED_TYPES.get(kind)
            if watched is None:
                watched = _WATCHED_TYPES[kind] = issubclass(kind, (*_CHANGES, EndFrame, CancelFrame, StartFrame))
            if not watched:
                return  # audio: one dict lookup
            if isinstance(frame, _CHANGES):
                self._changed(call_id)
            elif isinstance(frame, EndFrame | CancelFrame) and direction is FrameDirection.DOWNSTREAM:
                self._pipeline_ended(view)
            elif isinstance(frame, StartFrame):
                self._changed(call_id)

        task.add_observer(observe)
        self._changed(call_id)
        return view

    def call_ended(self, record: CallRecord) -> None:
        """The telephony record of a call (``CallRegistry(on_record=...)``)."""
        view = self._find(record.call_sid)
        if view is None:
            self._show_unstreamed(record)  # busy, no answer, failed: no pipeline ever ran
            return
        self._apply(view, record)
        if view.state == ENDED:
            self._move_to_finished(view)
        elif view.state == LIVE and view.timer is None:
            # The call is over; its pipeline should end any moment. If its End never shows, do not wait forever.
            view.timer = asyncio.get_running_loop().call_later(self.outcome_timeout, self._pipeline_overdue, view)
        self._changed(view.call_id)

    def refresh(self, call_id: str, *, outcome: str | None = None) -> None:
        """The call changed outside its pipeline: the app settled its ``outcome``
        (shown instead of the telephony one), or its recording was written."""
        view = self._find(call_id)
        if view is None:
            return
        if outcome is not None:
            view.app_outcome = outcome
        view.cached = None
        self._changed(call_id)

    def _pipeline_overdue(self, view: CallView) -> None:
        view.timer = None
        if view.state == LIVE:
            logger.warning("console: call {} is over but its pipeline never ended: shown as finished", view.call_id)
            view.ended_at = self._clock()
            self._move_to_finished(view)
            self._changed(view.call_id)

    def _show_unstreamed(self, record: CallRecord) -> None:
        now = self._clock()
        self._unstreamed += 1
        view = CallView(
            call_id=record.call_sid or f"unplaced-{self._unstreamed}",
            to=record.to if "*" in record.to else mask_number(record.to),
            started_at=now,
            campaign_id=record.campaign_id,
            state=FINISHED,
            ended_at=now,
        )
        self._apply(view, record)
        self._store_finished(view)
        self._changed(view.call_id)

    @staticmethod
    def _apply(view: CallView, record: CallRecord) -> None:
        view.cached = None
        view.outcome = record.outcome.value
        view.status = record.status
        view.line_cost = record.cost
        if record.campaign_id and not view.campaign_id:
            view.campaign_id = record.campaign_id

    def _pipeline_ended(self, view: CallView) -> None:
        if view.state != LIVE:
            return
        if view.timer is not None:
            view.timer.cancel()
        view.state = ENDED
        view.ended_at = self._clock()
        # The task notes how it finished right after its observers saw the End.
        view.timer = asyncio.get_running_loop().call_soon(self._settle, view)
        self._changed(view.call_id)

    def _settle(self, view: CallView) -> None:
        view.timer = None
        if view.state != ENDED:
            return
        self._freeze(view)
        if view.outcome is not None or not view.telephony:
            self._move_to_finished(view)
        else:
            loop = asyncio.get_running_loop()
            view.timer = loop.call_later(self.outcome_timeout, self._outcome_overdue, view)
        self._changed(view.call_id)

    @staticmethod
    def _freeze(view: CallView) -> None:
        if view.recorder is not None:
            view.record = view.recorder.build(final=True)
            view.recorder = None

    def _outcome_overdue(self, view: CallView) -> None:
        view.timer = None
        if view.state == ENDED:
            logger.warning("console: no telephony outcome for call {}: shown with its pipeline's", view.call_id)
            self._move_to_finished(view)
            self._changed(view.call_id)

    def _move_to_finished(self, view: CallView) -> None:
        if view.timer is not None:
            view.timer.cancel()
            view.timer = None
        self._freeze(view)
        view.state = FINISHED
        self._live.pop(view.call_id, None)
        self._store_finished(view)

    def _store_finished(self, view: CallView) -> None:
        self._finished[view.call_id] = view
        self._finished.move_to_end(view.call_id)
        while len(self._finished) > self.max_finished:
            self._finished.popitem(last=False)

    def _find(self, call_id: str | None) -> CallView | None:
        if not call_id:
            return None
        return self._live.get(call_id) or self._finished.get(call_id)

    # ------------------------------------------------------------- reading

    def call(self, call_id: str) -> dict[str, Any] | None:
        view = self._find(call_id)
        return None if view is None else view.as_dict()

    def recording_path(self, call_id: str) -> Path | None:
        view = self._find(call_id)
        if view is None or view.recording is None or view.state == LIVE:
            return None  # a recording is served once the call is over
        return view.recording if view.recording.is_file() else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "live": [view.as_dict() for view in self._live.values()],
            "finished": [view.as_dict() for view in reversed(self._finished.values())],
        }

    # ---------------------------------------------------------- publishing

    def subscribe(self) -> Subscription:
        subscription = Subscription(self.queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _changed(self, call_id: str) -> None:
        if not self._subscribers:
            return  # nobody watching: a new viewer starts from a snapshot
        self._dirty.add(call_id)
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self.flush_interval, self._flush)

    def _flush(self) -> None:
        self._timer = None
        dirty, self._dirty = self._dirty, set()
        for call_id in dirty:
            view = self._find(call_id)
            if view is None:
                continue
            try:
                data = view.as_dict()
            except Exception as exc:  # one call's bad data must not stop the others' updates
                logger.opt(exception=exc).error("console: call {} could not be shown: {}", call_id, exc)
                continue
            for subscription in list(self._subscribers):
                subscription.offer("call", data)

    def close(self) -> None:
        """Cancel pending updates; tell the event streams to end."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for view in self._live.values():
            if view.timer is not None:
                view.timer.cancel()
                view.timer = None
        for subscription in self._subscribers:
            subscription.offer("close", None)
        self._subscribers.clear()
