"""kill -9 of a campaign runner (a real subprocess) mid-campaign, restarted: nobody is dialled twice
for one attempt, the calls in flight are reconciled through Twilio, and the final results equal an
uninterrupted run's."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

from tests.campaign_support import write_campaign
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.testing.twilio import FakeTwilio

CHILD = Path(__file__).resolve().parent / "campaign_child.py"
ROOT = CHILD.parent.parent

PROSPECTS = [(f"+1415555{i:04d}", f"Prospect {i}") for i in range(1, 17)]
PHONES = {PROSPECTS[0][0]: "busy", PROSPECTS[5][0]: "busy", PROSPECTS[9][0]: "no-answer", PROSPECTS[12][0]: "failed"}
RESULTS = {n: ("meeting_booked", "not_interested", "callback_later")[i % 3] for i, (n, _) in enumerate(PROSPECTS)}
RULES = "max_concurrent_calls = 4\ncalls_per_second = 8"
OUTCOMES = """
[rules.outcomes]
busy = { action = "retry", delay_seconds = 0.3, max_attempts = 3 }
no_answer = { action = "retry", delay_seconds = 0.3, max_attempts = 2 }
interrupted = { action = "retry", delay_seconds = 0, max_attempts = 50 }
callback_later = { action = "done" }
"""

pytestmark = pytest.mark.timeout(300)


async def _spawn(campaign: Path, twilio: FakeTwilio) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(campaign),
        twilio.base_url,
        twilio.account_sid,
        twilio.auth_token,
        json.dumps(RESULTS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


async def _run_to_end(campaign: Path, twilio: FakeTwilio) -> dict[str, object]:
    process = await _spawn(campaign, twilio)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, stderr.decode()[-3000:]
    return json.loads(stdout.decode().strip().splitlines()[-1])


def _fake(twilio: FakeTwilio) -> None:
    for number, outcome in PHONES.items():
        twilio.behave(number, outcome=outcome)


def _results(folder: Path) -> tuple[dict[str, int], dict[str, str | None], list[dict[str, object]]]:
    with CampaignStore(folder / "run" / "campaign.sqlite") as store:
        assert store.open_attempts("test") == []
        results = {p["id"]: p["result"] for p in store.prospects("test")}
        return store.result_counts("test"), results, store.attempts("test")


async def test_kill_9_mid_campaign_and_restart(tmp_path: Path) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
    clean = write_campaign(clean_dir, PROSPECTS, rules=RULES, extra=OUTCOMES)
    killed = write_campaign(killed_dir, PROSPECTS, rules=RULES, extra=OUTCOMES)

    async with FakeTwilio() as twilio:
        _fake(twilio)
        await _run_to_end(clean, twilio)
    clean_counts, clean_results, _ = _results(clean_dir)

    kills = []
    async with FakeTwilio() as twilio:
        _fake(twilio)
        for round_no in range(3):
            process = await _spawn(killed, twilio)
            target = len(twilio.calls) + rng.randint(2, 6)
            deadline = time.monotonic() + 60
            while len(twilio.calls) < target and process.returncode is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polling the fake's call count
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            live = sum(1 for c in twilio.calls.values() if not c.ended.is_set())
            if process.returncode is None:
                process.kill()  # SIGKILL: no cleanup, no finally
            await process.wait()
            kills.append((round_no, len(twilio.calls), live, process.returncode))
        summary = await _run_to_end(killed, twilio)
        fake_sids = set(twilio.calls)
        calls_per_number: dict[str, int] = {}
        for call in twilio.calls.values():
            calls_per_number[call.to] = calls_per_number.get(call.to, 0) + 1

    context = f"seed {seed}, kills (round, calls so far, live calls, returncode) {kills}, last run {summary}"
    assert all(code == -9 for *_, code in kills), context
    counts, results, attempts = _results(killed_dir)
    # Every call Twilio placed belongs to exactly one attempt, and every attempt to at most one call.
    store_sids = [a["call_sid"] for a in attempts if a["call_sid"]]
    assert len(store_sids) == len(set(store_sids)), context
    assert set(store_sids) == fake_sids, context
    for number, count in calls_per_number.items():
        assert count == sum(1 for a in attempts if a["number"] == number and a["call_sid"]), (number, context)
    # The calls in flight at each kill were reconciled through Twilio, then retried.
    assert any(a["outcome"] == "interrupted" for a in attempts), context
    assert all(a["notes"] == "reconciled after a restart" for a in attempts if a["outcome"] == "interrupted")
    # The same end as a run nobody killed.
    assert results == clean_results, context
    assert counts == clean_counts, context
