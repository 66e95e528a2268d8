"""FakeTwilio's call list (GET …/Calls.json) through the official SDK: filters, newest first, paging,
date-granular StartTime filters, as Twilio documents them; and the callback tool's handler."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.campaign_support import CALLER_ID, twilio_settings
from vantum_pipeline.campaign.callbacks import schedule_callback_tool
from vantum_pipeline.campaign.clock import FrozenClock
from vantum_pipeline.campaign.rules import CallingHours
from vantum_pipeline.telephony.calls import place_call
from vantum_pipeline.telephony.client import TwilioCallError, TwilioRestClient
from vantum_pipeline.testing.twilio import FakeTwilio, RestFault

TWIML = '<Response><Pause length="0.2"/></Response>'


async def test_list_calls_filters_pages_and_orders_newest_first() -> None:
    async with FakeTwilio() as twilio:
        twilio.behave("+14155550102", outcome="busy")
        async with TwilioRestClient(twilio_settings(twilio.base_url, twilio.account_sid, twilio.auth_token)) as client:
            sids = [
                (await place_call(client, number, CALLER_ID, twiml=TWIML)).sid
                for number in ("+14155550101", "+14155550102", "+14155550101")
            ]
            await twilio.wait_ended(within=10)
            mine = await client.list_calls(to="+14155550101")
            assert [c.sid for c in mine] == [sids[2], sids[0]]  # newest first, only that number
            assert all(c.status == "completed" and c.date_created is not None for c in mine)
            everyone = await client.list_calls(limit=3)  # pages of up to 3 through next_page_uri
            assert {c.sid for c in everyone} == set(sids)
            # The filter goes by date: the calls' own, not today's (midnight may pass while they run).
            created = [c.date_created for c in mine if c.date_created is not None]
            assert len(await client.list_calls(to="+14155550101", started_after=min(created))) == 2
            later = max(created) + dt.timedelta(days=1)
            assert await client.list_calls(to="+14155550101", started_after=later) == []
            sdk = client._sdk()
            paged = await sdk.calls.list_async(page_size=1)  # the SDK follows next_page_uri
            assert [c.sid for c in paged] == list(reversed(sids))
            assert [c.status for c in await client.list_calls(to="+14155550102")] == ["busy"]
            twilio.fail_next(RestFault(401, 20003, "Authenticate"))
            with pytest.raises(TwilioCallError):
                await client.list_calls()
        listed = [r for r in twilio.requests if r.method == "GET" and r.path.endswith("/Calls.json")]
        assert listed


async def test_schedule_callback_tool_accepts_a_time_in_hours_and_refuses_others() -> None:
    clock = FrozenClock(dt.datetime(2026, 3, 17, 14, 30, tzinfo=dt.UTC))  # Tuesday 10:30 New York
    scheduled: list[tuple[dt.datetime, str]] = []
    tool = schedule_callback_tool(
        timezone="America/New_York",
        hours=CallingHours(),
        clock=clock,
        on_scheduled=lambda at, n: scheduled.append((at, n)),
    )
    assert "Tuesday 2026-03-17 10:30 (America/New_York)" in tool.description
    result = await tool.handler({"when": "2026-03-18 15:00", "notes": "after lunch"})
    assert result == {"scheduled": "Wednesday 2026-03-18 15:00", "timezone": "America/New_York"}
    assert scheduled == [(dt.datetime(2026, 3, 18, 19, 0, tzinfo=dt.UTC), "after lunch")]
    with pytest.raises(ValueError, match="outside the calling hours"):
        await tool.handler({"when": "2026-03-22 15:00"})  # a Sunday
    assert len(scheduled) == 1
