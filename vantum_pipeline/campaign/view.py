"""The campaign in the terminal while it runs.

On a terminal (and with the ``campaign`` extra, which brings ``rich``): a live
panel with the calls in progress and their last transcript line, outcome
counts, spend and a progress bar over the prospects. Otherwise (a pipe, a
log file, CI): one plain line per event. Both are fed by the runner's and
the dialer's ``CampaignEvent``s and read the counts from the store.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict
from typing import Any, TextIO

from vantum_pipeline.campaign.dispatch import CampaignEvent
from vantum_pipeline.campaign.store import CampaignStore

__all__ = ["LiveView", "PlainView", "make_view"]

_LINE_CHARS = 90


class PlainView:
    """One line per event on ``stream``."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, event: CampaignEvent) -> None:
        stamp = f"[{time.monotonic() - self.started:6.1f}s]"
        who = event.prospect_id or "campaign"
        if event.kind == "line":
            text = f"{event.role:<6} {event.text}"
        elif event.kind == "ended":
            text = f"ended: {event.outcome} -> {event.text}"
        else:
            text = f"{event.kind}: {event.text}"
        print(f"{stamp} {who:<16} {text}", file=self.stream, flush=True)

    async def __aenter__(self) -> PlainView:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class LiveView:
    """A rich live panel; use ``async with`` around the run."""

    def __init__(self, store: CampaignStore, campaign_id: str, *, title: str, stream: TextIO = sys.stdout) -> None:
        from rich.console import Console

        self.store = store
        self.campaign_id = campaign_id
        self.title = title
        self.console = Console(file=stream)
        self.calls: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.recent: list[str] = []
        self.started = time.monotonic()
        self._live: Any = None
        self._refresher: asyncio.Task[None] | None = None

    def __call__(self, event: CampaignEvent) -> None:
        if event.kind == "dialing":
            self.calls[event.job_id] = {"who": event.text, "state": "dialing", "line": ""}
        elif event.kind == "placed" and event.job_id in self.calls:
            self.calls[event.job_id]["state"] = "ringing"
        elif event.kind == "line" and event.job_id in self.calls:
            call = self.calls[event.job_id]
            call["state"] = "talking"
            call["line"] = f"{event.role}: {event.text}"[:_LINE_CHARS]
        elif event.kind == "ended":
            ended = self.calls.pop(event.job_id, {"who": event.prospect_id})
            who = ended["who"]
            self._remember(f"{who}: {event.outcome} ({event.text})")
        elif event.kind in ("deferred", "skipped", "note"):
            self._remember(f"{event.prospect_id + ': ' if event.prospect_id else ''}{event.text}")

    def _remember(self, text: str) -> None:
        self.recent.append(f"{time.monotonic() - self.started:5.0f}s  {text}"[:110])
        del self.recent[:-8]

    def render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        states = self.store.state_counts(self.campaign_id)
        total = sum(states.values()) or 1
        final = total - states.get("pending", 0) - states.get("dialing", 0)
        calls = Table(title="calls in progress", expand=True, show_edge=False)
        calls.add_column("prospect", no_wrap=True)
        calls.add_column("state", no_wrap=True)
        calls.add_column("last line")
        for call in self.calls.values():
            calls.add_row(call["who"], call["state"], call["line"])
        results = self.store.result_counts(self.campaign_id)
        summary = Table.grid(padding=(0, 2))
        summary.add_row("results", ", ".join(f"{k} {v}" for k, v in sorted(results.items())) or "-")
        summary.add_row(
            "attempts",
            ", ".join(f"{k} {v}" for k, v in sorted(self.store.outcome_counts(self.campaign_id).items())) or "-",
        )
        summary.add_row("spend", f"${self.store.spend(self.campaign_id):.4f}")
        summary.add_row("progress", f"{final}/{total} prospects settled, {states.get('pending', 0)} waiting")
        return Panel(
            Group(ProgressBar(total=total, completed=final), summary, calls, "\n".join(self.recent)),
            title=self.title,
        )

    async def __aenter__(self) -> LiveView:
        from rich.live import Live

        self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="campaign-view")
        return self

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._live.update(self.render())

    async def __aexit__(self, *exc_info: object) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(None, None, None)


def make_view(
    store: CampaignStore, campaign_id: str, *, title: str, stream: TextIO = sys.stdout, plain: bool = False
) -> PlainView | LiveView:
    """The live panel on a terminal when rich is installed, else plain lines."""
    if not plain and stream.isatty():
        try:
            return LiveView(store, campaign_id, title=title, stream=stream)
        except ImportError:
            pass
    return PlainView(stream)
