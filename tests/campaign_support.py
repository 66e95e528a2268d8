"""Shared pieces of the campaign tests: a campaign file builder and a dialer that
places real REST calls on FakeTwilio (TwiML ``<Pause>``: the line is up for a
while, no media) and reports the sales result a test scripts per number.

The dialer is a test double for the conversation only: the telephony (REST
create, status fetch, list, busy / no-answer / failed / invalid numbers,
durations) is FakeTwilio's, through the official SDK.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Mapping
from pathlib import Path

from vantum_pipeline.campaign.dispatch import TWILIO_STATUS_OUTCOMES, CallJob, CallStatus, PlacedCallback
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.errors import ServiceError
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.calls import place_call
from vantum_pipeline.telephony.client import TwilioCallError, TwilioRestClient
from vantum_pipeline.telephony.outcome import CallOutcome, outcome_for_error
from vantum_pipeline.telephony.settings import TwilioSettings

CALLER_ID = "+15005550006"
_REFUSED = {
    CallOutcome.REMOVE: "invalid_number",
    CallOutcome.RETRY_LATER: "rate_limited",
    CallOutcome.UNREACHABLE: "no_answer",
}


def write_campaign(
    folder: Path,
    prospects: list[tuple[str, str]] | str,
    *,
    rules: str = "",
    extra: str = "",
    dnc: list[str] | None = None,
    hours: str = 'days = ["mon","tue","wed","thu","fri","sat","sun"]\nstart = "00:00"\nend = "24:00"',
) -> Path:
    """A campaign file in ``folder`` with ``prospects`` as (number, name) rows (or CSV text)."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(prospects, str):
        csv_text = prospects
    else:
        csv_text = "number,name,company\n" + "".join(f"{n},{name},Co {i}\n" for i, (n, name) in enumerate(prospects))
    (folder / "prospects.csv").write_text(csv_text, encoding="utf-8")
    dnc_line = ""
    if dnc is not None:
        (folder / "dnc.txt").write_text("\n".join(dnc) + "\n", encoding="utf-8")
        dnc_line = 'dnc_file = "dnc.txt"\n'
    text = f"""[campaign]
name = "Test campaign"
id = "test"
caller_id = "{CALLER_ID}"
prospects = "prospects.csv"
folder = "run"
{dnc_line}
[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "Vantum"

[rules]
{rules}

[rules.calling_hours]
{hours}
{extra}
"""
    path = folder / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def twilio_settings(base_url: str, account_sid: str, auth_token: str) -> TwilioSettings:
    return TwilioSettings(
        account_sid=account_sid,
        auth_token=Secret(auth_token),
        from_number=CALLER_ID,
        public_base_url="http://127.0.0.1:1",
        api_base_url=base_url,
    )


class RestDialer:
    """Places each call on (Fake)Twilio with inline TwiML and follows it by fetching its status."""

    def __init__(
        self,
        client: TwilioRestClient,
        *,
        results: Mapping[str, str] | None = None,
        line_seconds: float = 0.5,
        cost_per_call: float = 0.0,
        poll: float = 0.05,
    ) -> None:
        self.client = client
        self.results = dict(results or {})
        self.line_seconds = line_seconds
        self.cost_per_call = cost_per_call
        self.poll = poll
        self.active = 0
        self.max_active = 0

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._call(job, placed)
        finally:
            self.active -= 1

    async def _call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        twiml = f'<Response><Pause length="{self.line_seconds}"/></Response>'
        try:
            call = await place_call(self.client, job.number, CALLER_ID, twiml=twiml)
        except TwilioCallError as exc:
            outcome = _REFUSED.get(outcome_for_error(exc.code, exc.status), "error")
            return AttemptRecord(outcome, twilio_status="failed", notes=str(exc))
        await placed(call.sid)
        while True:
            await asyncio.sleep(self.poll)
            try:
                fetched = await self.client.fetch(call.sid)
            except ServiceError:
                continue
            if str(fetched.status) in TWILIO_STATUS_OUTCOMES:
                break
        status = str(fetched.status)
        outcome = TWILIO_STATUS_OUTCOMES[status]
        if outcome == "completed":
            outcome = self.results.get(job.number, "completed")
        duration = float(fetched.duration or 0)
        twilio_cost = math.ceil(duration / 60) * 0.014 if duration else 0.0
        cost = twilio_cost + (self.cost_per_call if status == "completed" else 0.0)
        return AttemptRecord(outcome, twilio_status=status, call_sid=call.sid, duration=duration, cost=cost)

    async def call_status(self, sid: str) -> CallStatus | None:
        try:
            call = await self.client.fetch(sid)
        except TwilioCallError as exc:
            if exc.status == 404:
                return None
            raise
        return CallStatus(str(call.sid), str(call.status), float(call.duration or 0))

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        after = dt.datetime.fromtimestamp(since, dt.UTC)
        calls = await self.client.list_calls(to=number, started_after=after)
        recent = sorted((c for c in calls if c.date_created >= after), key=lambda c: c.date_created)
        return [CallStatus(str(c.sid), str(c.status), float(c.duration or 0)) for c in recent]

    async def hang_up(self, sid: str) -> None:
        await self.client.hang_up(sid)
