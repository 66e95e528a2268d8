"""Outbound campaigns: a prospect list dialled under the product's rules.

- ``config``: the campaign file (TOML), validated with the line of each error;
- ``prospects``: the prospects CSV (E.164 on import, bad rows reported by line);
- ``rules``: calling hours (prospect's local time), outcome → retry/done/remove/DNC;
- ``dnc``: the do-not-call list (file and table) and the ``DoNotCall`` protocol;
- ``store``: SQLite (WAL, migrations), one transaction per state change;
- ``dispatch``: where due calls go (``Dispatcher``; in-process, paced, bounded);
- ``runner``: the loop, reconciliation after a crash, budget stop;
- ``phone``: the real calls (Twilio server, the service pipeline per call);
- ``callbacks``: the ``schedule_callback`` tool the model calls;
- ``results``: status and export; ``view``: the live terminal view;
- on many machines (the ``redis`` extra): ``jobs`` (the job and result wire
  format), ``leases`` (cluster-wide limits that expire), ``redis_dispatch``
  (the coordinator's ``RedisDispatcher``), ``worker`` (``CampaignWorker``),
  ``redis_link`` (reconnection, the retry policy on Redis writes),
  ``twilio_rest`` (reconciliation over Twilio's REST API alone) and
  ``cluster_command`` (``vantum worker``, the cluster's status).

``campaign`` sits on telephony and transports; nothing below imports it.
"""

from vantum_pipeline.campaign.clock import Clock, FrozenClock, OffsetClock, SystemClock
from vantum_pipeline.campaign.config import CampaignConfig, CampaignFileError, load_campaign, parse_campaign
from vantum_pipeline.campaign.dispatch import CallJob, CallStatus, Dialer, Dispatcher, InProcessDispatcher
from vantum_pipeline.campaign.dnc import DoNotCall
from vantum_pipeline.campaign.rules import CallingHours, OutcomeRule, ProspectState
from vantum_pipeline.campaign.runner import CampaignRunner, RunSummary, prepare_campaign
from vantum_pipeline.campaign.store import AttemptRecord, CampaignStore

__all__ = [
    "AttemptRecord",
    "CallJob",
    "CallStatus",
    "CallingHours",
    "CampaignConfig",
    "CampaignFileError",
    "CampaignRunner",
    "CampaignStore",
    "Clock",
    "Dialer",
    "Dispatcher",
    "DoNotCall",
    "FrozenClock",
    "InProcessDispatcher",
    "OffsetClock",
    "OutcomeRule",
    "ProspectState",
    "RunSummary",
    "SystemClock",
    "load_campaign",
    "parse_campaign",
    "prepare_campaign",
]
