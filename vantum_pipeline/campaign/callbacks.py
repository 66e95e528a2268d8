"""``schedule_callback``: the tool the model calls when the prospect asks to be called back.

The model is told the prospect's local time now and the calling hours, and
passes the agreed time as local wall time (``2026-03-10 15:00``). The time is
checked before it is accepted: in the future, within the calling hours (in
the prospect's zone, DST included), within ``max_days``; otherwise the model
gets an error it can act on ("that is a Sunday; the calling hours are …")
and may propose another time. An accepted time becomes the attempt's
``callback_at``, and the campaign's ``callback_requested`` rule dials the
prospect then.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from vantum_pipeline.campaign.clock import Clock
from vantum_pipeline.campaign.rules import CallingHours, zone
from vantum_pipeline.processors.tools import Tool

__all__ = ["CALLBACK_TOOL_NAME", "parse_callback_time", "schedule_callback_tool"]

CALLBACK_TOOL_NAME = "schedule_callback"


def parse_callback_time(
    when: str, *, timezone: str, hours: CallingHours, now: dt.datetime, max_days: int = 60
) -> dt.datetime:
    """The callback time as UTC; ValueError (worded for the model) when it cannot be used."""
    try:
        local = dt.datetime.fromisoformat(when.strip().replace("T", " "))
    except ValueError:
        raise ValueError(f"{when!r} is not a local date and time like 2026-03-10 15:00") from None
    tz = zone(timezone)
    if local.tzinfo is None:
        local = local.replace(tzinfo=tz)
    at = local.astimezone(dt.UTC)
    if at <= now:
        raise ValueError(f"{when} is in the past: it is {now.astimezone(tz):%Y-%m-%d %H:%M} for the prospect")
    if at > now + dt.timedelta(days=max_days):
        raise ValueError(f"{when} is more than {max_days} days away")
    if not hours.allows(at, tz):
        opening = hours.next_opening(at, tz).astimezone(tz)
        raise ValueError(
            f"{when} ({local:%A}) is outside the calling hours ({hours.window_text()}, the prospect's time); "
            f"the next possible time is {opening:%A %Y-%m-%d %H:%M}. Agree on a time within the hours."
        )
    return at


def schedule_callback_tool(
    *,
    timezone: str,
    hours: CallingHours,
    clock: Clock,
    on_scheduled: Callable[[dt.datetime, str], None],
) -> Tool:
    """The tool for one call: ``on_scheduled(utc_time, note)`` hears each accepted callback."""
    now_local = clock.now().astimezone(zone(timezone))

    async def schedule_callback(args: dict[str, Any]) -> dict[str, Any]:
        when = str(args.get("when") or "")
        at = parse_callback_time(when, timezone=timezone, hours=hours, now=clock.now())
        on_scheduled(at, str(args.get("notes") or ""))
        return {"scheduled": at.astimezone(zone(timezone)).strftime("%A %Y-%m-%d %H:%M"), "timezone": timezone}

    return Tool(
        CALLBACK_TOOL_NAME,
        "Schedule a call back at the time the prospect asked for. "
        f"The prospect's local time now is {now_local:%A %Y-%m-%d %H:%M} ({timezone}); "
        f"calls are allowed {hours.window_text()} in the prospect's time. "
        "Pass the agreed local date and time; then say goodbye and end the call.",
        {
            "type": "object",
            "properties": {
                "when": {"type": "string", "description": "Local date and time, e.g. 2026-03-10 15:00"},
                "notes": {"type": "string", "description": "What to pick up on, in a few words."},
            },
            "required": ["when"],
        },
        schedule_callback,
    )
