"""The `vantum campaign` command's edges, the example campaign's files, the live view and plain lines."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vantum_pipeline.campaign.command import campaign_lock, stop_on_signals
from vantum_pipeline.campaign.config import load_campaign
from vantum_pipeline.campaign.dispatch import CampaignEvent
from vantum_pipeline.campaign.prospects import read_prospects
from vantum_pipeline.campaign.runner import prepare_campaign
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.campaign.view import LiveView, PlainView, make_view
from vantum_pipeline.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "campaign"


def _vantum(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vantum_pipeline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_example_prospects_and_dnc_import_with_the_bad_row_reported(tmp_path: Path) -> None:
    config = load_campaign(EXAMPLE / "campaign.toml")
    prospects = read_prospects(config.prospects, default_timezone=config.default_timezone)
    assert len(prospects.prospects) == 12
    assert [row.line for row in prospects.rejected] == [10]
    config.folder = tmp_path
    with CampaignStore(tmp_path / "s.sqlite") as store:
        prepared = prepare_campaign(config, store)
        assert prepared.imported == 12
        assert store.dnc_numbers() == ["+14155550108"]


def test_run_with_a_malformed_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[campaign]\nname = "x"\ncaller_id = "+15005550006"\nprospects = "p.csv"\n[rules]\nmax_concurrent_calls = -1\n'
    )
    result = _vantum("campaign", "run", "--fake", str(bad))
    assert result.returncode == 2
    assert f"{bad}:6: rules.max_concurrent_calls: must be an integer >= 1" in result.stderr


def test_status_of_a_campaign_that_never_ran_is_a_clear_error(tmp_path: Path) -> None:
    result = _vantum("campaign", "status", str(tmp_path))
    assert result.returncode == 2 and "no campaign.sqlite" in result.stderr


def test_one_runner_per_campaign_folder(tmp_path: Path) -> None:
    with campaign_lock(tmp_path):
        with pytest.raises(ConfigurationError, match="another runner"), campaign_lock(tmp_path):
            pass
    with campaign_lock(tmp_path):  # released with its holder
        pass


def test_plain_view_prints_one_line_per_event() -> None:
    out = io.StringIO()
    view = PlainView(out)
    view(CampaignEvent("dialing", "c:p1:1", "+14155550101", "Jordan (attempt 1)"))
    view(CampaignEvent("line", "c:p1:1", "+14155550101", "Yes, I have a minute.", role="callee"))
    view(CampaignEvent("ended", "c:p1:1", "+14155550101", "meeting_booked", outcome="meeting_booked"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[1].endswith("+14155550101     callee Yes, I have a minute.")
    assert "ended: meeting_booked" in lines[2]


def test_live_view_shows_calls_in_progress_counts_and_progress(tmp_path: Path) -> None:
    from rich.console import Console

    with CampaignStore(tmp_path / "s.sqlite") as store:
        store.ensure_campaign("c", "C")
        view = LiveView(store, "c", title="campaign C", stream=io.StringIO())
        view(CampaignEvent("dialing", "c:p1:1", "p1", "Jordan (attempt 1)"))
        view(CampaignEvent("line", "c:p1:1", "p1", "Would a short demo next week be useful?", role="bot"))
        view(CampaignEvent("deferred", prospect_id="p2", text="outside calling hours: next Wed 09:00 Asia/Tokyo"))
        console = Console(file=io.StringIO(), width=140)
        console.print(view.render())
        shown = console.file.getvalue()  # type: ignore[attr-defined]
        assert "Jordan (attempt 1)" in shown and "bot: Would a short demo next week be useful?" in shown
        assert "outside calling hours" in shown and "spend" in shown
        # Not a terminal: plain lines.
        assert isinstance(make_view(store, "c", title="C", stream=io.StringIO()), PlainView)


async def test_the_first_signal_stops_gently_and_the_second_abandons() -> None:
    """`vantum campaign run` and `vantum worker`: Ctrl-C (or SIGTERM) lets the calls in progress finish;
    a second one abandons them."""
    stops: list[str] = []
    stopped = asyncio.Event()

    def stop() -> None:
        stops.append("stop")
        stopped.set()

    main = asyncio.get_running_loop().create_task(asyncio.sleep(60), name="work in progress")
    try:
        with stop_on_signals(stop, main, "stopping (test)"):
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                pytest.skip("no signal handlers on this event loop")
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stopped.wait(), 10)
            await asyncio.sleep(0.05)
            assert stops == ["stop"] and not main.done()  # the work goes on
            os.kill(os.getpid(), signal.SIGINT)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(main, 10)
            assert stops == ["stop"]
        # Outside the block the process's own handlers are back.
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        main.cancel()
