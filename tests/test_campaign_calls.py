"""Whole calls of a campaign through the production path (Twilio media stream, Deepgram, OpenAI and
Cartesia on their SDKs) against the stand-ins, with simulated prospects: every answered outcome, the
callback tool, the opt-out, a barge-in, stereo recordings, costs by service, the command's output."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import wave
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from vantum_pipeline.campaign.command import export_command, status_command
from vantum_pipeline.campaign.config import load_campaign
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.demo.campaign_demo import run_fake

pytestmark = pytest.mark.timeout(300)

NY = ZoneInfo("America/New_York")
START = dt.datetime(2026, 3, 17, 10, 30, tzinfo=NY)  # a Tuesday
PEOPLE = {
    "+14155550101": ("Jordan", "books_meeting"),
    "+14155550102": ("Sam", "talks_over"),
    "+14155550103": ("Kim", "not_interested"),
    "+14155550104": ("Ana", "callback"),
    "+14155550105": ("Chris", "remove_me"),
    "+14155550106": ("Lee", "busy_then_meeting"),
    "+14155550107": ("Tom", "failed"),
    "+15005550001": ("Val", None),  # Twilio refuses it
    "+14155550109": ("Eve", None),  # on the DNC file
}


def _campaign(folder: Path) -> Path:
    rows = "".join(f"{number},{name},Co {name}\n" for number, (name, _) in PEOPLE.items())
    (folder / "prospects.csv").write_text("number,name,company\n" + rows)
    (folder / "dnc.txt").write_text("+1 415 555 0109\n")
    personas = "\n".join(f'"{n}" = "{p}"' for n, (_, p) in PEOPLE.items() if p is not None)
    (folder / "campaign.toml").write_text(
        f"""
[campaign]
name = "Calls"
id = "calls"
caller_id = "+15005550006"
prospects = "prospects.csv"
dnc_file = "dnc.txt"
folder = "run"

[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "Vantum"

[rules]
max_concurrent_calls = 7
calls_per_second = 4

[rules.outcomes]
busy = {{ action = "retry", delay_seconds = 1, max_attempts = 3 }}

[simulation]
start = "{START.isoformat()}"
voices = false

[simulation.personas]
{personas}
"""
    )
    return folder / "campaign.toml"


async def test_a_simulated_campaign_covers_every_answered_path(tmp_path: Path) -> None:
    config = load_campaign(_campaign(tmp_path))
    out = io.StringIO()
    assert await run_fake(config, idle_exit=20.0, plain=True, stream=out) == 0
    text = out.getvalue()
    assert "9 prospects (9 new), 0 rows rejected, 1 numbers on the do-not-call list" in text

    with CampaignStore(tmp_path / "run-simulated" / "campaign.sqlite") as store:
        prospects = {p["id"]: p for p in store.prospects("calls")}
        attempts = {(a["prospect_id"], a["attempt"]): a for a in store.attempts("calls")}

        def final(number: str) -> tuple[str, str | None, int]:
            row = prospects[number]
            return row["state"], row["result"], row["attempts"]

        assert final("+14155550101") == ("done", "meeting_booked", 1)
        assert final("+14155550102") == ("done", "meeting_booked", 1)
        assert final("+14155550103") == ("done", "not_interested", 1)
        assert final("+14155550105") == ("dnc", "opted_out", 1)
        assert final("+14155550106") == ("done", "meeting_booked", 2)
        assert final("+14155550107") == ("removed", "failed", 1)
        assert final("+15005550001") == ("removed", "invalid_number", 1)
        assert final("+14155550109") == ("dnc", "do_not_call_list", 0)
        # The callback the prospect asked for, through the model's tool: tomorrow 15:00 their time.
        tomorrow_three = dt.datetime(2026, 3, 18, 15, 0, tzinfo=NY).timestamp()
        assert final("+14155550104")[0] == "pending"
        assert prospects["+14155550104"]["next_at"] == tomorrow_three
        assert attempts[("+14155550104", 1)]["outcome"] == "callback_requested"
        assert attempts[("+14155550104", 1)]["callback_at"] == tomorrow_three
        # The opt-out reached the DNC table.
        assert store.in_dnc("+14155550105")
        # Talking over the bot: the cut reply keeps only what was heard, and is flagged.
        transcript = json.loads(attempts[("+14155550102", 1)]["transcript"])
        cut = [t for t in transcript if t["role"] == "assistant" and t.get("interrupted")]
        assert cut and len(cut[0]["heard"]) < len(cut[0]["text"])
        assert any(t["role"] == "user" and t["text"] == "What is the price?" for t in transcript)
        # Costs by service, and the stereo recording of an answered call.
        booked = attempts[("+14155550101", 1)]
        costs = json.loads(booked["cost_by_service"])
        assert set(costs) >= {"twilio", "deepgram", "openai", "cartesia"} and booked["cost"] > 0
        with wave.open(booked["recording"], "rb") as wav:
            assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
        assert np.abs(samples[:, 0]).max() > 1000 and np.abs(samples[:, 1]).max() > 1000  # callee and bot
        record = json.loads((tmp_path / "run-simulated" / "calls" / "+14155550101-1.json").read_text())
        assert record["outcome"] == "meeting_booked" and record["to"].startswith("+141")
    assert "ended: meeting_booked" in text and "callee Yes, let's book a meeting." in text
    assert "do-not-call    1 never dialled (on the list), 1 added by a call's opt-out" in text
    assert "callbacks      1 scheduled: +14155550104" in text and "retries        busy 1" in text
    assert re.search(r"at most [1-7] calls at once \(limit 7\)", text)

    status = io.StringIO()
    assert status_command(tmp_path / "campaign.toml", stream=status, fake=True) == 0
    assert "meeting_booked 3" in status.getvalue() and "in progress   0" in status.getvalue()
    exported = io.StringIO()
    assert export_command(tmp_path / "run-simulated", "jsonl", "attempts", None, stream=exported) == 0
    assert not (tmp_path / "run").exists()  # the simulation never touches the real campaign's folder
    rows = [json.loads(line) for line in exported.getvalue().splitlines()]
    assert len(rows) == len(attempts) and {r["outcome"] for r in rows} >= {"busy", "opted_out", "callback_requested"}
