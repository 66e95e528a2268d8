"""Twilio's view of a campaign's calls, over the REST API alone.

``TwilioCallLookup`` answers the questions reconciliation asks (a call's
status, the calls placed to a number since a moment, hang up a call left up)
with the account's REST client and nothing else: no webhook server, no media.
The ``PhoneDialer`` of a machine that places calls uses it, and so does the
coordinator of a campaign on many machines, whose calls the workers place:
there it is the whole :class:`~vantum_pipeline.campaign.dispatch.Dialer`
(:class:`ReconcilingDialer`), and ``call`` is an error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING

from vantum_pipeline.campaign.dispatch import CallJob, CallStatus, PlacedCallback
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.errors import PipelineError

if TYPE_CHECKING:
    from vantum_pipeline.telephony.client import TwilioRestClient
    from vantum_pipeline.telephony.settings import TwilioSettings

__all__ = ["ReconcilingDialer", "TwilioCallLookup", "rest_settings_from_env"]


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
