"""Reconciliation through Twilio's REST API (``campaign.twilio_rest``), shared by the runner and the
workers: a call still up after the timeout is hung up and settled as ``interrupted`` with its cost,
a Twilio that keeps failing stops the runner with a clear error before anyone is dialled, and a dial
whose answer was lost is found among Twilio's calls and recorded on its attempt."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from tests.campaign_support import CALLER_ID, RestDialer, twilio_settings, write_campaign
from vantum_pipeline.campaign.clock import SystemClock
from vantum_pipeline.campaign.config import load_campaign
from vantum_pipeline.campaign.dispatch import CallJob, CallStatus
from vantum_pipeline.campaign.runner import CampaignRunner, prepare_campaign
from vantum_pipeline.campaign.store import AttemptRow, CampaignStore
from vantum_pipeline.campaign.twilio_rest import (
    TWILIO_PRICE_PER_MINUTE,
    ConfirmingDialer,
    TwilioCallLookup,
    ask_twilio,
    follow_to_end,
    reconciled_record,
)
from vantum_pipeline.errors import ServiceError
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.telephony.calls import place_call
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.outcome import call_cost
from vantum_pipeline.testing.twilio import FakeTwilio
from vantum_pipeline.testing.twilio_calls import RestFault

NUMBER = "+14155550101"


async def test_a_call_still_up_after_the_timeout_is_hung_up_and_settled_as_interrupted() -> None:
    async with FakeTwilio() as twilio:
        settings = twilio_settings(twilio.base_url, twilio.account_sid, twilio.auth_token)
        async with TwilioRestClient(settings) as client:
            call = await place_call(client, NUMBER, CALLER_ID, twiml='<Response><Pause length="60"/></Response>')
            lookup = TwilioCallLookup(client)
            status = await asyncio.wait_for(follow_to_end(lookup, call.sid, timeout=1.5), timeout=30.0)
            assert status is not None and status.sid == call.sid and status.status == "completed"
            assert twilio.calls[call.sid].hangup_requested_at is not None  # ended by our hang-up, not the TwiML
            record = reconciled_record(call.sid, status, notes="reconciled in a test")
            assert record.outcome == "interrupted" and record.twilio_status == "completed"
            assert record.call_sid == call.sid and record.notes == "reconciled in a test"
            assert record.cost == call_cost(status.duration, TWILIO_PRICE_PER_MINUTE)
            assert record.cost_by_service == {"twilio": record.cost}
            # A sid Twilio does not know: nothing to follow, and the attempt is interrupted at no cost.
            unknown = await follow_to_end(lookup, "CA" + "0" * 32, timeout=1.0)
            assert unknown is None
            lost = reconciled_record("CA" + "0" * 32, unknown, notes="")
            assert (lost.outcome, lost.twilio_status, lost.cost) == ("interrupted", None, 0.0)


def test_final_statuses_keep_their_outcome() -> None:
    from vantum_pipeline.campaign.dispatch import CallStatus

    for status, outcome in (("busy", "busy"), ("no-answer", "no_answer"), ("failed", "failed"), ("odd", "error")):
        record = reconciled_record("CA1", CallStatus("CA1", status, 0.0), notes="")
        assert record.outcome == outcome and record.cost == 0.0
    assert reconciled_record("CA1", CallStatus("CA1", "completed", 61.0), notes="").cost == 2 * TWILIO_PRICE_PER_MINUTE


async def test_ask_twilio_gives_up_with_a_retryable_service_error() -> None:
    async with FakeTwilio() as twilio:
        settings = twilio_settings(twilio.base_url, twilio.account_sid, twilio.auth_token)
        async with TwilioRestClient(settings, retry=RetryPolicy(max_retries=0)) as client:
            twilio.fail_next(RestFault.unavailable(), times=2)
            with pytest.raises(ServiceError, match="did not answer 2 reconciliation requests") as failed:
                await ask_twilio(lambda: TwilioCallLookup(client).call_status("CA" + "1" * 32), tries=2)
            assert failed.value.retryable and failed.value.service == "twilio"
            # Twilio back: the next request is answered.
            assert await ask_twilio(lambda: TwilioCallLookup(client).call_status("CA" + "1" * 32), tries=2) is None


async def test_a_runner_twilio_cannot_answer_stops_with_a_clear_error_and_dials_nobody(tmp_path: Path) -> None:
    async with FakeTwilio() as twilio:
        config = load_campaign(write_campaign(tmp_path, [(NUMBER, "Prospect 1"), ("+14155550102", "Prospect 2")]))
        with CampaignStore(config.resolved_folder() / "campaign.sqlite") as store:
            prepare_campaign(config, store)
            left_open = store.claim("test", NUMBER, dt.datetime.now(dt.UTC).timestamp())
            assert left_open is not None
            settings = twilio_settings(twilio.base_url, twilio.account_sid, twilio.auth_token)
            async with TwilioRestClient(settings, retry=RetryPolicy(max_retries=0)) as client:
                twilio.fail_next(RestFault.unavailable(), times=1000)
                runner = CampaignRunner(config, store, RestDialer(client), clock=SystemClock(), idle_exit=0.0)
                with pytest.raises(ServiceError, match="not dialling until it does"):
                    await asyncio.wait_for(runner.run(), timeout=120.0)
            assert runner.dialled == 0 and not twilio.calls
            assert [a["outcome"] for a in store.attempts("test")] == [None]  # still open for the next run


class _CallThatNeverEnds:
    """A Twilio account (the ``Dialer`` protocol's lookup side) whose call stays up whatever is asked."""

    def __init__(self) -> None:
        self.hang_ups = 0

    async def call_status(self, sid: str) -> CallStatus:
        return CallStatus(sid, "in-progress", 0.0)

    async def hang_up(self, sid: str) -> None:
        self.hang_ups += 1


async def test_a_call_twilio_keeps_reporting_up_is_given_up_on_after_a_bounded_number_of_hang_ups() -> None:
    account = _CallThatNeverEnds()
    status = await asyncio.wait_for(
        follow_to_end(account, "CA1", timeout=0.1, hang_ups=2, grace=0.1),  # type: ignore[arg-type]
        timeout=30.0,
    )
    assert account.hang_ups == 2
    assert status is not None and status.status == "in-progress"
    assert reconciled_record("CA1", status, notes="").outcome == "error"


@pytest.mark.parametrize("placed_anyway", [True, False], ids=["answer-lost", "refused"])
async def test_a_dial_whose_answer_was_lost_is_found_through_twilio_and_recorded(placed_anyway: bool) -> None:
    """The create request gets no answer within the client's deadline, and Twilio places the call
    all the same: the dial is not retried (that rang prospects twice), the call is found among
    Twilio's calls to the number (the prospect's earlier call is not taken for it), reported as
    placed and followed to its end. A create Twilio refused stays an ``error`` with no call."""
    async with FakeTwilio() as twilio:
        settings = twilio_settings(twilio.base_url, twilio.account_sid, twilio.auth_token)
        # 0.8 s: the healthy dial first must fit in it on a loaded machine too; the lost answer comes after 1.5 s.
        policy = RetryPolicy(max_retries=2, base_delay=0.01, attempt_timeout=0.8)
        async with TwilioRestClient(settings, retry=policy) as client:
            earlier = await place_call(client, NUMBER, CALLER_ID, twiml="<Response/>")  # attempt 1's call
            await twilio.wait_ended(earlier.sid, within=10)

            async def known(job: CallJob) -> set[str]:
                return {earlier.sid}

            dialer = ConfirmingDialer(RestDialer(client), known, timeout=10.0, settle=2.0)
            job = CallJob(AttemptRow("test", NUMBER, 2, NUMBER, "claimed", None, 0.0))
            placed: list[str] = []

            async def on_placed(sid: str) -> None:
                placed.append(sid)

            # Answered after the deadline (the call is placed), or refused before any call.
            twilio.fail_next(RestFault(200, delay=1.5) if placed_anyway else RestFault.unavailable())
            record = await asyncio.wait_for(dialer.call(job, on_placed), timeout=60.0)
            await twilio.wait_ended(within=10)
    creates = [r for r in twilio.requests if r.method == "POST" and r.path.endswith("/Calls.json")]
    assert len(creates) == 2, "the dial was retried"
    if placed_anyway:
        (sid,) = set(twilio.calls) - {earlier.sid}
        assert placed == [sid] and record.call_sid == sid
        assert record.outcome == "interrupted" and record.twilio_status == "completed"
        assert "placed, though the dial failed" in record.notes
    else:
        assert list(twilio.calls) == [earlier.sid]
        assert placed == [] and record.call_sid is None and record.outcome == "error"
