"""Placing outbound calls and following them to their outcome.

``place_call(client, to, from_, ...)`` is one REST request (numbers checked
first, nothing sent when they are not E.164). ``OutboundCall`` follows one
call through its state machine from Twilio's status callbacks and our media
stream, and ends with exactly one :class:`CallRecord` (and one log line).
``CallRegistry`` holds the calls in flight by their one-time token: the
token travels in our webhook URLs and as a ``<Parameter>`` of the media
stream, and is how the server recognises a stream as one of ours.

An ``OutboundCall`` is also the ``CallControl`` its pipeline talks to: the
AMD verdict (``machine_detection``), what the call achieved (``conclude``:
voicemail left, opted out, transferred) and a transfer to a rep
(``request_transfer``, carried out by the server once the pipeline ended).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, PipelineError, ServiceError
from vantum_pipeline.telephony.amd import AmdVerdict, MachineDetection, parse_amd_callback
from vantum_pipeline.telephony.client import TwilioCallError, TwilioRestClient
from vantum_pipeline.telephony.control import TransferRequest
from vantum_pipeline.telephony.dnc import DncChecker, DoNotCallError
from vantum_pipeline.telephony.numbers import mask_number, validate_e164
from vantum_pipeline.telephony.outcome import (
    CallOutcome,
    CallRecord,
    call_cost,
    outcome_for_error,
    outcome_for_status,
)
from vantum_pipeline.telephony.state import CallState, CallStateMachine, state_for_status

__all__ = ["STATUS_EVENTS", "CallRegistry", "OutboundCall", "PlacedCall", "place_call"]

#: Every progress event Twilio can report to a status callback.
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")


@dataclass(slots=True, frozen=True)
class PlacedCall:
    """Twilio accepted the call: its sid and first status (``queued``)."""

    sid: str
    status: str


async def place_call(
    client: TwilioRestClient,
    to: str,
    from_: str,
    *,
    url: str | None = None,
    twiml: str | None = None,
    status_callback: str | None = None,
    status_events: Iterable[str] = STATUS_EVENTS,
    machine_detection: str | None = None,
    amd_callback: str | None = None,
    machine_detection_timeout: int | None = None,
    ring_timeout: int | None = None,
    time_limit: int | None = None,
    dnc: DncChecker | None = None,
) -> PlacedCall:
    """Ask Twilio to call ``to`` from ``from_``.

    Exactly one of ``url`` (Twilio fetches TwiML from it when the callee
    answers) and ``twiml`` (inline) is required. Raises InvalidNumberError
    before any request for a number that is not E.164, and TwilioCallError
    when Twilio refuses (``.code`` 21211: invalid number, ...).
    ``amd_callback`` (with ``machine_detection``) makes detection
    asynchronous: the call connects at once and the verdict is POSTed there.
    ``dnc``: a number on that do-not-call list raises DoNotCallError, and
    no request is made.
    Cancel-safe, but a cancelled request may still have placed the call.
    """
    validate_e164(to, field="to")
    validate_e164(from_, field="from_")
    if (url is None) == (twiml is None):
        raise ConfigurationError("place_call needs exactly one of url= and twiml=")
    if amd_callback is not None and machine_detection is None:
        raise ConfigurationError("amd_callback needs machine_detection ('Enable' or 'DetectMessageEnd')")
    if dnc is not None and await _listed(dnc, to):
        raise DoNotCallError(to)
    parameters: dict[str, Any] = {"to": to, "from_": from_}
    if url is not None:
        parameters["url"] = url
        parameters["method"] = "POST"
    else:
        parameters["twiml"] = twiml
    if status_callback is not None:
        events = list(status_events)
        unknown = set(events) - set(STATUS_EVENTS)
        if unknown:
            raise ConfigurationError(f"unknown status callback events {sorted(unknown)}; use {STATUS_EVENTS}")
        parameters.update(status_callback=status_callback, status_callback_event=events, status_callback_method="POST")
    if machine_detection is not None:
        parameters["machine_detection"] = machine_detection
        if machine_detection_timeout is not None:
            parameters["machine_detection_timeout"] = machine_detection_timeout
    if amd_callback is not None:
        parameters.update(async_amd="true", async_amd_status_callback=amd_callback)
        parameters["async_amd_status_callback_method"] = "POST"
    if ring_timeout is not None:
        parameters["timeout"] = ring_timeout
    if time_limit is not None:
        parameters["time_limit"] = time_limit
    call = await client.create_call(**parameters)
    return PlacedCall(sid=str(call.sid), status=str(call.status or "queued"))


async def _listed(dnc: DncChecker, number: str, timeout: float = 5.0) -> bool:
    """Whether ``number`` is on the DNC list; a list that cannot answer (an
    error, or no answer within ``timeout``) is a retryable ServiceError: no
    number is dialled unchecked."""
    try:
        async with asyncio.timeout(timeout):
            return await dnc.contains(number)
    except Exception as exc:
        raise ServiceError(
            f"the do-not-call list could not be checked: {type(exc).__name__}: {exc}", service="dnc", retryable=True
        ) from exc


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


class OutboundCall:
    """One call we placed, from the REST request to its record."""

    def __init__(
        self,
        token: str,
        to: str,
        from_: str,
        *,
        price_per_minute: float,
        campaign_id: str | None = None,
        prospect_id: str | None = None,
        on_record: Callable[[CallRecord], None] | None = None,
    ) -> None:
        self.token = token
        self.to = to
        self.from_ = from_
        self.campaign_id = campaign_id
        self.prospect_id = prospect_id
        self.price_per_minute = price_per_minute
        self.sid: str | None = None
        self.status = "queued"
        self.answered_by: str | None = None
        self.error_code: int | None = None
        self.duration: float | None = None
        self.machine = CallStateMachine(time.monotonic())
        self.stream_claimed = False
        #: Set when our side failed the call (no stream, pipeline error): the
        #: outcome is then ``error`` even if Twilio reports ``completed``.
        self.failure: str | None = None
        #: Calls served by our media server must reach ``streaming`` to count as completed.
        self.expects_stream = True
        self.record: CallRecord | None = None
        #: The AMD verdict holder when the call was placed with detection on.
        self.machine_detection: MachineDetection | None = None
        #: What the call achieved, when more than "completed" (see ``conclude``).
        self.conclusion: CallOutcome | None = None
        #: A conclusion that holds once the pipeline has ended cleanly.
        self._provisional: CallOutcome | None = None
        #: A transfer asked for by the pipeline, and how it went: None, then
        #: "requested", "dialing", "answered" or "not_answered".
        self.transfer: TransferRequest | None = None
        self.transfer_status: str | None = None
        #: Why the current media stream is not the call's first (see telephony.control).
        self.resumed_after: str | None = None
        self._on_record = on_record
        self._done = asyncio.Event()

    def __repr__(self) -> str:
        return f"<OutboundCall {self.sid or '(unplaced)'} to {mask_number(self.to)} {self.machine.state}>"

    @property
    def state(self) -> CallState:
        return self.machine.state

    @property
    def call_sid(self) -> str | None:
        return self.sid

    # --------------------------------------------------- the CallControl side

    def conclude(self, outcome: CallOutcome, *, needs_clean_end: bool = False) -> None:
        """What the call achieved (``voicemail_left``, ``opted_out``, ...):
        its record's outcome once Twilio reports it ``completed``. A later
        conclusion replaces an earlier one (``machine`` → ``voicemail_left``).
        ``needs_clean_end``: the outcome is provisional until the pipeline
        ends by its EndFrame (everything played); a call cut off before keeps
        the earlier conclusion, whichever of the hang-up's status callback
        and the pipeline's end comes first."""
        if self.record is not None:
            return
        if needs_clean_end:
            self._provisional = outcome
            return
        self.conclusion = outcome
        logger.info("call {}: concluded {}", self.sid, outcome.value)

    def pipeline_finished(self, reason: str | None) -> None:
        """The call's pipeline ended (``reason``: the task's finish_reason)."""
        provisional, self._provisional = self._provisional, None
        if provisional is None:
            return
        if reason == "end":
            self.conclude(provisional)
        else:
            logger.info("call {}: {} did not hold: the pipeline ended by {}", self.sid, provisional.value, reason)

    def request_transfer(self, request: TransferRequest) -> None:
        """Transfer the callee to a rep once the pipeline has ended."""
        if self.record is not None or self.transfer_status in ("requested", "dialing"):
            logger.warning(
                "call {}: transfer ignored: {}", self.sid, "call over" if self.record else "one is under way"
            )
            return
        self.transfer = request
        self.transfer_status = "requested"
        logger.info("call {}: transfer requested to {}", self.sid, mask_number(request.number))

    @property
    def transfer_pending(self) -> bool:
        """A transfer was requested and has not been dialled yet."""
        return self.transfer_status == "requested"

    def on_amd(self, params: Mapping[str, str]) -> AmdVerdict | None:
        """An AMD status callback (already verified); the verdict if it is the first."""
        verdict = parse_amd_callback(params)
        self.answered_by = verdict.answered_by.value
        if self.machine_detection is None:
            self.machine_detection = MachineDetection()
        if not self.machine_detection.decide(verdict):
            logger.warning("call {}: a second AMD verdict ({}) ignored", self.sid, verdict.answered_by.value)
            return None
        logger.info(
            "call {}: answered by {} (AMD took {} ms)", self.sid, verdict.answered_by.value, verdict.duration_ms
        )
        return verdict

    @property
    def parameters(self) -> dict[str, str]:
        """What travels as ``<Parameter>``s of the media stream."""
        values = {"call_token": self.token, "campaign_id": self.campaign_id, "prospect_id": self.prospect_id}
        return {k: v for k, v in values.items() if v is not None}

    def placed(self, placed: PlacedCall) -> None:
        self.sid = placed.sid

    def on_status(self, params: Mapping[str, str]) -> CallRecord | None:
        """A status callback; returns the record if it ended the call."""
        if self.record is not None:
            return None
        sid = params.get("CallSid")
        if sid and self.sid is None:
            self.sid = sid  # the callback can overtake the REST response
        status = params.get("CallStatus", "")
        answered_by = params.get("AnsweredBy")
        if answered_by:
            self.answered_by = answered_by
        error = _int(params.get("ErrorCode"))
        if error is not None:
            self.error_code = error
        target = state_for_status(status)
        if target is None:
            logger.warning("call {}: unknown CallStatus {!r} ignored", self.sid, status[:40])
            return None
        self.status = status
        if target is CallState.ENDED:
            duration = _int(params.get("CallDuration"))
            if duration is not None:
                self.duration = float(duration)
            outcome = outcome_for_status(status) or CallOutcome.ERROR
            if outcome is CallOutcome.COMPLETED and self.conclusion is not None:
                return self.finish(self.conclusion, status)
            if outcome is CallOutcome.COMPLETED:
                if self.failure is None and self.expects_stream and self.machine.entered(CallState.STREAMING) is None:
                    self.failure = "answered, but the media stream never started"
                if self.failure is not None:
                    logger.warning("call {}: completed, but our side failed: {}", self.sid, self.failure)
                    outcome = CallOutcome.ERROR
            return self.finish(outcome, status)
        self.machine.advance(target, time.monotonic())
        return None

    def on_answered(self, params: Mapping[str, str]) -> None:
        """The answer webhook was called: the callee picked up."""
        if params.get("AnsweredBy"):
            self.answered_by = params["AnsweredBy"]
        self.machine.advance(CallState.ANSWERED, time.monotonic())

    def note_failure(self, reason: str) -> None:
        """Our side failed the call; its outcome will be ``error``."""
        if self.failure is None:
            self.failure = reason

    def on_stream_started(self) -> None:
        self.machine.advance(CallState.STREAMING, time.monotonic())

    def failed_to_place(self, error: BaseException) -> CallRecord:
        """Twilio refused the call (or we could not reach it)."""
        if isinstance(error, TwilioCallError):
            self.error_code = error.code
            return self.finish(outcome_for_error(error.code, error.status), "failed")
        if isinstance(error, ConfigurationError):
            return self.finish(CallOutcome.REMOVE, "failed")
        return self.finish(CallOutcome.ERROR, "failed")

    def finish(self, outcome: CallOutcome, status: str) -> CallRecord:
        """End the call with ``outcome``: builds its one record (idempotent)."""
        if self.record is not None:
            return self.record
        now = time.monotonic()
        self.status = status
        if self.duration is None:
            answered = self.machine.entered(CallState.ANSWERED) or self.machine.entered(CallState.STREAMING)
            self.duration = now - answered if answered is not None else 0.0
        self.machine.advance(CallState.ENDED, now)
        self.record = CallRecord(
            call_sid=self.sid,
            to=mask_number(self.to),
            outcome=outcome,
            status=status,
            duration=self.duration,
            cost=call_cost(self.duration, self.price_per_minute),
            answered_by=self.answered_by,
            error_code=self.error_code,
            campaign_id=self.campaign_id,
            prospect_id=self.prospect_id,
        )
        self.record.log()
        self._done.set()
        if self._on_record is not None:
            try:
                self._on_record(self.record)
            except Exception:
                logger.opt(exception=True).error("call {}: on_record callback failed", self.sid)
        return self.record

    @property
    def ended(self) -> bool:
        return self.record is not None

    async def wait(self) -> CallRecord:
        """The call's record once it ended (wrap in ``asyncio.timeout``)."""
        await self._done.wait()
        assert self.record is not None
        return self.record


class CallRegistry:
    """Calls in flight, by token and by sid; records of the last ``keep_records``."""

    def __init__(
        self,
        *,
        max_calls: int = 1000,
        keep_records: int = 1000,
        on_record: Callable[[CallRecord], None] | None = None,
    ) -> None:
        self.max_calls = max_calls
        self.on_record = on_record
        self.records: deque[CallRecord] = deque(maxlen=keep_records)
        self._by_token: dict[str, OutboundCall] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def new_call(
        self,
        to: str,
        from_: str,
        *,
        price_per_minute: float,
        campaign_id: str | None = None,
        prospect_id: str | None = None,
    ) -> OutboundCall:
        if len(self._by_token) >= self.max_calls:
            raise PipelineError(f"{len(self._by_token)} calls already in flight (max_calls={self.max_calls})")
        token = secrets.token_urlsafe(24)
        call = OutboundCall(
            token,
            to,
            from_,
            price_per_minute=price_per_minute,
            campaign_id=campaign_id,
            prospect_id=prospect_id,
            on_record=lambda record: self._ended(token, record),
        )
        self._by_token[token] = call
        return call

    def _ended(self, token: str, record: CallRecord) -> None:
        self._by_token.pop(token, None)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def get(self, token: str | None) -> OutboundCall | None:
        return self._by_token.get(token) if token else None

    def claim_stream(self, token: str | None, call_sid: str) -> OutboundCall | None:
        """The call a media stream belongs to, once: a token opens one stream.

        None when the token is unknown, already used, or belongs to another call.
        """
        call = self.get(token)
        if call is None or call.stream_claimed:
            return None
        if call.sid is not None and call_sid and call.sid != call_sid:
            return None
        call.stream_claimed = True
        if call.sid is None and call_sid:
            call.sid = call_sid
        return call

    def calls(self) -> list[OutboundCall]:
        return list(self._by_token.values())
