"""kill -9 of a campaign runner (a real subprocess) mid-campaign, restarted: nobody is dialled twice
for one attempt, the calls in flight are reconciled through Twilio, and the final results equal an
uninterrupted run's."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
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


# --------------------------------------------- the production command, killed mid-conversation

CLI_PEOPLE = {
    "+14155550201": "books_meeting",
    "+14155550202": "not_interested",
    "+14155550203": "remove_me",
    "+14155550204": "always_busy",
    "+14155550205": "failed",
    "+14155550206": "talks_over",
}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli_campaign(folder: Path, world: object) -> Path:
    from vantum_pipeline.demo.campaign_world import SimulatedWorld

    assert isinstance(world, SimulatedWorld)
    folder.mkdir(parents=True)
    rows = "".join(f"{n},Prospect {i},Co {i}\n" for i, n in enumerate(CLI_PEOPLE))
    (folder / "prospects.csv").write_text("number,name,company\n" + rows)
    (folder / "campaign.toml").write_text(
        f"""
[campaign]
name = "Killed"
id = "killed"
caller_id = "+15005550006"
prospects = "prospects.csv"
folder = "run"
record_calls = false

[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "Vantum"

[rules]
max_concurrent_calls = 6
calls_per_second = 5

[rules.calling_hours]
days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
start = "00:00"
end = "24:00"

[rules.outcomes]
busy = {{ action = "retry", delay_seconds = 0.5, max_attempts = 2 }}
interrupted = {{ action = "retry", delay_seconds = 0, max_attempts = 5 }}

[services.deepgram]
url = "{world.deepgram.ws_url}"

[services.cartesia]
base_url = "{world.cartesia.http_url}"
websocket_base_url = "{world.cartesia.ws_url}"
"""
    )
    return folder / "campaign.toml"


async def _cli(folder: Path, world: object, port: int) -> asyncio.subprocess.Process:
    from vantum_pipeline.demo.campaign_world import SimulatedWorld

    assert isinstance(world, SimulatedWorld)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "TWILIO_ACCOUNT_SID": world.twilio.account_sid,
        "TWILIO_AUTH_TOKEN": world.twilio.auth_token,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": world.twilio.base_url,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "DEEPGRAM_API_KEY": "simulated",
        "OPENAI_API_KEY": "simulated",
        "OPENAI_BASE_URL": world.openai.base_url,
        "CARTESIA_API_KEY": "simulated",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vantum_pipeline",
        "campaign",
        "run",
        str(folder / "campaign.toml"),
        "--plain",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--exit-when-idle",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=folder,
    )


async def _cli_world_run(folder: Path, *, kill_after_lines: int | None) -> tuple[list[str], set[str]]:
    from vantum_pipeline.demo.campaign_world import PERSONAS, SimulatedWorld

    async with SimulatedWorld({n: PERSONAS[p] for n, p in CLI_PEOPLE.items()}, voices=False) as world:
        for number, persona in CLI_PEOPLE.items():
            world.prepare_phone(number, PERSONAS[persona], 1)
        _cli_campaign(folder, world)
        outputs = []
        if kill_after_lines is not None:
            process = await _cli(folder, world, _free_port())
            assert process.stdout is not None
            seen = 0
            async with asyncio.timeout(120):
                while seen < kill_after_lines:  # kill once the conversations are under way
                    line = await process.stdout.readline()
                    assert line, (await process.stderr.read()).decode()[-3000:]  # type: ignore[union-attr]
                    seen += b" callee " in line
            process.kill()
            await process.wait()
            outputs.append(f"killed: {process.returncode}")
        process = await _cli(folder, world, _free_port())
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
        assert process.returncode == 0, stderr.decode()[-3000:]
        outputs.append(stdout.decode())
        return outputs, set(world.twilio.calls)


async def test_kill_9_of_vantum_campaign_run_mid_conversation(tmp_path: Path) -> None:
    _, _ = await _cli_world_run(tmp_path / "clean", kill_after_lines=None)
    with CampaignStore(tmp_path / "clean" / "run" / "campaign.sqlite") as store:
        clean = {p["id"]: (p["state"], p["result"]) for p in store.prospects("killed")}
    outputs, fake_sids = await _cli_world_run(tmp_path / "killed", kill_after_lines=3)
    assert outputs[0] == "killed: -9"
    assert re.search(r"\b[1-9][0-9]* reconciled", outputs[1]), outputs[1][-2000:]
    with CampaignStore(tmp_path / "killed" / "run" / "campaign.sqlite") as store:
        killed = {p["id"]: (p["state"], p["result"]) for p in store.prospects("killed")}
        attempts = store.attempts("killed")
        assert store.open_attempts("killed") == []
    sids = [a["call_sid"] for a in attempts if a["call_sid"]]
    assert len(sids) == len(set(sids)) and set(sids) == fake_sids
    interrupted = [a for a in attempts if a["outcome"] == "interrupted"]
    assert interrupted, outputs[1]
    assert killed == clean, (killed, clean)
    assert clean["+14155550201"] == ("done", "meeting_booked")
    assert clean["+14155550203"] == ("dnc", "opted_out")
