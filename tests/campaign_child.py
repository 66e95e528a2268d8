"""A campaign runner in a process of its own (the kill -9 test kills it).

    python tests/campaign_child.py CAMPAIGN.toml TWILIO_BASE_URL ACCOUNT_SID AUTH_TOKEN RESULTS_JSON

Runs the campaign with the REST dialer of ``campaign_support`` against the
FakeTwilio the parent process serves, until every prospect is settled.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger

from tests.campaign_support import RestDialer, twilio_settings
from vantum_pipeline.campaign.config import load_campaign
from vantum_pipeline.campaign.runner import CampaignRunner, prepare_campaign
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.telephony.client import TwilioRestClient


async def main(path: str, base_url: str, account_sid: str, auth_token: str, results: str) -> int:
    config = load_campaign(path)
    with CampaignStore(config.resolved_folder() / "campaign.sqlite") as store:
        prepare_campaign(config, store)
        async with TwilioRestClient(twilio_settings(base_url, account_sid, auth_token)) as client:
            dialer = RestDialer(client, results=json.loads(results), line_seconds=0.6)
            runner = CampaignRunner(config, store, dialer, idle_exit=10.0, poll_interval=0.05)
            summary = await runner.run()
    print(json.dumps({"reason": summary.reason, "dialled": summary.dialled, "reconciled": summary.reconciled}))
    return 0 if summary.reason == "finished" else 1


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    sys.exit(asyncio.run(main(*sys.argv[1:6])))
