"""Twilio's view of a campaign's calls, over the REST API alone.

``TwilioCallLookup`` answers the questions reconciliation asks (a call's
status, the calls placed to a number since a moment, hang up a call left up)
with the account's REST client and nothing else: no webhook server, no media.
The ``PhoneDialer`` of a machine that places calls uses it, and so does the
coordinator of a campaign on many machines, whose calls the workers place:
there it is the whole :class:`~vantum_pipeline.campaign.dispatch.Dialer`
(:class:`ReconcilingDialer`), and ``call`` is an error.

Reconciliation itself, the same for the runner of one machine and for a
worker that finds a dead worker's job: :func:`ask_twilio` tries each request
a bounded number of times, :func:`follow_to_end` polls a call until it has
ended (hanging it up if it is still up after a timeout), and
:func:`reconciled_record` turns Twilio's last word on the call into the
attempt's record.

A dial whose answer was lost (no answer in time, a 5xx, a dropped
connection: the call may have been placed all the same) is settled the same
way, at once, by :class:`ConfirmingDialer`, which both the runner's calls
and the workers' go through: every call Twilio placed is some attempt's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from loguru import logger

from vantum_pipeline.campaign.dispatch import (
    TWILIO_STATUS_OUTCOMES,
    CallJob,
    CallStatus,
    Dialer,
    PlacedCallback,
    dialer_overloaded,
)
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.errors import PipelineError, ServiceError
from vantum_pipeline.telephony.outcome import call_cost

if TYPE_CHECKING:
    from vantum_pipeline.telephony.client import TwilioRestClient
    from vantum_pipeline.telephony.settings import TwilioSettings

__all__ = [
    "TWILIO_PRICE_PER_MINUTE",
    "ConfirmingDialer",
    "KnownSids",
    "ReconcilingDialer",
    "TwilioCallLookup",
    "UnconfirmedCall",
    "ask_twilio",
    "follow_to_end",
    "reconciled_record",
    "rest_settings_from_env",
]

#: Twilio's price per started minute (the product's figure), for calls whose record was lost.
TWILIO_PRICE_PER_MINUTE = 0.014
#: Seconds a call hung up by reconciliation may take to end before it is hung up again.
_HANG_UP_GRACE = 30.0
#: Hang-ups reconciliation sends before it gives up on a call Twilio keeps reporting up.
_MAX_HANG_UPS = 3
#: Seconds before a dial that the search for its call starts (Twilio's clock and whole-second dates).
CLOCK_MARGIN = 60.0

T = TypeVar("T")


class TwilioCallLookup:
    """``call_status``, ``find_calls`` and ``hang_up`` on a ``TwilioRestClient``."""

    def __init__(self, client: TwilioRestClient) -> None:
        self.client = client

    async def call_status(self, sid: str) -> CallStatus | None:
        from vantum_pipeline.telephony.client import TwilioCallError

        try:
            call = await self.client.fetch(sid)
        except TwilioCallError as exc:
            if exc.status == 404:
                return None
            raise
        return CallStatus(str(call.sid), str(call.status), float(call.duration or 0), call.answered_by)

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        after = dt.datetime.fromtimestamp(since, dt.UTC)
        calls = await self.client.list_calls(to=number, started_after=after)
        # Twilio filters by date: keep the calls created since ``since``, oldest first.
        recent = [c for c in calls if c.date_created is None or c.date_created >= after]
        recent.sort(key=lambda c: c.date_created or after)
        return [CallStatus(str(c.sid), str(c.status), float(c.duration or 0), c.answered_by) for c in recent]

    async def hang_up(self, sid: str) -> None:
        await self.client.hang_up(sid)


class ReconcilingDialer(TwilioCallLookup):
    """The coordinator's dialer when workers place the calls: reconciliation only; ``async with``."""

    def __init__(self, settings: TwilioSettings) -> None:
        from vantum_pipeline.telephony.client import TwilioRestClient

        super().__init__(TwilioRestClient(settings))

    async def __aenter__(self) -> ReconcilingDialer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.aclose()

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        raise PipelineError(f"job {job.log_id}: this coordinator places no calls (its workers do)")


async def ask_twilio(request: Callable[[], Awaitable[T]], *, tries: int = 5) -> T:
    """``await request()``, tried ``tries`` times with a growing pause (1, 2, 4, 8 s) while it
    raises ``ServiceError``; then a retryable ``ServiceError``: nobody is dialled on a guess."""
    for attempt in range(tries):
        try:
            return await request()
        except ServiceError as exc:
            logger.warning("reconciliation request failed ({}/{}): {}", attempt + 1, tries, exc)
            if attempt + 1 < tries:
                await asyncio.sleep(min(2.0**attempt, 8.0))
    raise ServiceError(f"Twilio did not answer {tries} reconciliation requests", service="twilio", retryable=True)


async def follow_to_end(
    dialer: Dialer, sid: str, *, timeout: float, hang_ups: int = _MAX_HANG_UPS, grace: float = _HANG_UP_GRACE
) -> CallStatus | None:
    """Poll Twilio until call ``sid`` has ended (None: Twilio does not know it). A call still
    up after ``timeout`` seconds is hung up, and again every ``grace`` seconds while Twilio says
    it is up, at most ``hang_ups`` times: a call Twilio still reports up after that is given up
    on (an error is logged) and its last status returned, which settles it as ``error``.
    Each request goes through :func:`ask_twilio` (its ``ServiceError`` is raised)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.25
    hung_up = 0
    while True:
        status = await ask_twilio(lambda: dialer.call_status(sid))
        if status is None or status.ended:
            return status
        if loop.time() >= deadline:
            if hung_up >= hang_ups:
                logger.error("call {} still {} after {} hang-ups: giving up on it", sid, status.status, hung_up)
                return status
            hung_up += 1
            logger.warning(
                "call {} still {} after {:g}s: hanging up ({} of at most {})",
                sid,
                status.status,
                timeout if hung_up == 1 else grace,
                hung_up,
                hang_ups,
            )
            await ask_twilio(lambda: dialer.hang_up(sid))
            deadline = loop.time() + grace
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def reconciled_record(sid: str, status: CallStatus | None, *, notes: str) -> AttemptRecord:
    """The record of an attempt whose conversation was lost, from Twilio's final ``status``
    (None: Twilio does not know the call): ``interrupted`` if it was answered or unknown,
    else Twilio's outcome (busy, no_answer, ...); its cost at :data:`TWILIO_PRICE_PER_MINUTE`."""
    if status is None:
        outcome, twilio_status, duration = "interrupted", None, 0.0
    else:
        twilio_status, duration = status.status, status.duration
        outcome = TWILIO_STATUS_OUTCOMES.get(status.status, "error")
        if outcome == "completed":
            outcome = "interrupted"  # answered, but the conversation's result was lost
    cost = call_cost(duration, TWILIO_PRICE_PER_MINUTE)
    return AttemptRecord(
        outcome,
        twilio_status=twilio_status,
        call_sid=sid,
        duration=duration,
        cost=cost,
        cost_by_service={"twilio": cost},
        notes=notes,
    )


#: The call sids of a job's prospect's earlier attempts (not this attempt's call, whatever their dates).
KnownSids = Callable[[CallJob], Awaitable[set[str]]]


class UnconfirmedCall(ServiceError):
    """A dial failed without Twilio's answer, and Twilio could not be asked whether it placed the call."""


class ConfirmingDialer:
    """``dialer``, whose failed dials are checked with Twilio before they count as not placed.

    A call that ends in ``error`` without a call sid (the create request got no answer in
    time, a 5xx, a dropped connection, an exception) may have been placed all the same. The
    calls Twilio placed to the number since the dial began (less :data:`CLOCK_MARGIN`) that
    are none of ``known(job)`` are then this attempt's: the newest is reported to ``placed``,
    followed to its end and recorded (:func:`reconciled_record`). A request Twilio received
    may take a moment to become a call: none found, Twilio is asked again ``settle`` seconds
    later. Twilio out of reach for that search raises :class:`UnconfirmedCall`: the attempt
    must stay open.
    """

    def __init__(self, dialer: Dialer, known: KnownSids, *, timeout: float = 120.0, settle: float = 10.0) -> None:
        self.dialer = dialer
        self.known = known
        self.timeout = timeout
        self.settle = settle

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        started = time.time()
        confirmed: list[str] = []

        async def placed_here(sid: str) -> None:
            confirmed.append(sid)
            await placed(sid)

        try:
            record = await self.dialer.call(job, placed_here)
        except Exception as exc:  # one broken call never hurts another
            logger.opt(exception=exc).error("campaign call {} failed: {}", job.log_id, exc)
            record = AttemptRecord(outcome="error", notes=f"{type(exc).__name__}: {exc}"[:200])
        if confirmed or record.call_sid is not None or record.outcome != "error":
            return record
        found = await self._search(job, record, started)
        if not found:
            await asyncio.sleep(self.settle)
            found = await self._search(job, record, started)
        if not found:
            logger.info("campaign call {}: Twilio placed no call ({})", job.log_id, record.notes)
            return record
        sid = found[-1].sid
        logger.warning(
            "campaign call {}: Twilio placed call {} though the dial failed ({}); following it",
            job.log_id,
            sid,
            record.notes,
        )
        await placed(sid)
        try:
            status = await follow_to_end(self.dialer, sid, timeout=self.timeout)
        except ServiceError as exc:
            raise UnconfirmedCall(
                f"call {job.log_id} is Twilio's call {sid}, whose end Twilio could not tell: {exc}",
                service="twilio",
                retryable=True,
            ) from exc
        return reconciled_record(sid, status, notes=f"placed, though the dial failed: {record.notes}"[:300])

    async def _search(self, job: CallJob, record: AttemptRecord, started: float) -> list[CallStatus]:
        """Twilio's calls to the job's number since the dial began that no earlier attempt made."""
        try:
            found = await ask_twilio(lambda: self.dialer.find_calls(job.number, started - CLOCK_MARGIN))
            known = await self.known(job)
        except ServiceError as exc:
            raise UnconfirmedCall(
                f"call {job.log_id} failed ({record.notes}), and Twilio could not say whether it was placed: {exc}",
                service="twilio",
                retryable=True,
            ) from exc
        return [call for call in found if call.sid not in known]

    def overloaded(self) -> bool:
        """The wrapped dialer's (see ``dialer_overloaded``)."""
        return dialer_overloaded(self.dialer)

    async def call_status(self, sid: str) -> CallStatus | None:
        return await self.dialer.call_status(sid)

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        return await self.dialer.find_calls(number, since)

    async def hang_up(self, sid: str) -> None:
        await self.dialer.hang_up(sid)


def rest_settings_from_env(caller_id: str, env: Mapping[str, str] | None = None) -> TwilioSettings:
    """The account's REST settings from the environment (``TWILIO_ACCOUNT_SID``,
    ``TWILIO_AUTH_TOKEN``, ``TWILIO_API_BASE_URL``): no public URL needed."""
    from vantum_pipeline.settings import load_env, optional_env, require_env, require_secret
    from vantum_pipeline.telephony.settings import TwilioSettings

    env = load_env(env)
    return TwilioSettings(
        account_sid=require_env(env, "TWILIO_ACCOUNT_SID"),
        auth_token=require_secret(env, "TWILIO_AUTH_TOKEN"),
        from_number=caller_id,
        public_base_url="https://coordinator.invalid",  # the coordinator serves no webhook
        api_base_url=optional_env(env, "TWILIO_API_BASE_URL"),
    )
