"""The do-not-call list, as the telephony layer sees it: a sink and a checker.

A call only needs two things of a do-not-call (DNC) list, and they are
defined here as protocols so that whoever owns the list (a campaign's DNC
table, a CRM, a file) binds to them:

``DncSink``
    ``await sink.add(entry)``: the prospect asked to be removed; the number
    must be on the list at once (before the bot even confirms), so a crash
    later in the call cannot lose the request.
``DncChecker``
    ``await checker.contains(number)``: is this number on the list? The
    server asks before placing a call and refuses to dial a listed number
    (the call's outcome is ``do_not_call``; no request reaches Twilio).

``InMemoryDncList`` implements both, bounded, for tests, demos and
single-process use. Numbers are compared in E.164 form.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from vantum_pipeline.errors import ConfigurationError, PipelineError
from vantum_pipeline.telephony.numbers import mask_number, validate_e164

__all__ = ["DncChecker", "DncEntry", "DncListFull", "DncSink", "DoNotCallError", "InMemoryDncList"]


@dataclass(slots=True, frozen=True)
class DncEntry:
    """One opt-out: who, when, how (``"model"``: the prospect asked and the
    model called ``do_not_call``; ``"keypad"``: the prospect pressed the
    opt-out key), and on which call."""

    number: str
    source: str
    call_sid: str | None = None
    campaign_id: str | None = None
    prospect_id: str | None = None
    at: float = field(default_factory=time.time)

    def __repr__(self) -> str:
        return f"DncEntry({mask_number(self.number)}, source={self.source!r}, call_sid={self.call_sid!r})"


@runtime_checkable
class DncSink(Protocol):
    """Where opt-outs go. ``add`` must be durable when it returns; it may
    raise (the call then tells the prospect nothing false: see ``CallActions``)."""

    async def add(self, entry: DncEntry) -> None: ...


@runtime_checkable
class DncChecker(Protocol):
    """Answers whether a number may be dialled."""

    async def contains(self, number: str) -> bool: ...


class DoNotCallError(ConfigurationError):
    """A call to a number on the do-not-call list was refused before any request."""

    def __init__(self, number: str) -> None:
        super().__init__(f"{mask_number(number)} is on the do-not-call list: not dialled")
        self.number = number


class DncListFull(PipelineError):
    """``InMemoryDncList`` reached its bound: the entry was not stored."""


class InMemoryDncList:
    """A DNC list in memory: both a ``DncSink`` and a ``DncChecker``.

    Bounded by ``max_entries``: when full, ``add`` raises ``DncListFull``
    rather than forget an opt-out silently (a real deployment binds a
    durable table instead).
    """

    def __init__(self, numbers: tuple[str, ...] = (), *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ConfigurationError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.entries: OrderedDict[str, DncEntry] = OrderedDict()
        self._lock = asyncio.Lock()
        for number in numbers:
            validate_e164(number, field="number")
            self.entries[number] = DncEntry(number, "imported")

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, number: object) -> bool:
        return number in self.entries

    async def add(self, entry: DncEntry) -> None:
        validate_e164(entry.number, field="number")
        async with self._lock:
            if entry.number in self.entries:
                return
            if len(self.entries) >= self.max_entries:
                raise DncListFull(f"the do-not-call list holds {len(self.entries)} numbers (max_entries)")
            self.entries[entry.number] = entry

    async def contains(self, number: str) -> bool:
        return number in self.entries
