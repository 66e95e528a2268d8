"""The do-not-call list: a file the campaign imports and a table calls add to.

A DNC number is never dialled, whatever else says: the runner refuses to
claim an attempt for it, and the dialer checks again just before the REST
request (a number added by another call a moment ago). Numbers are
normalized (E.164, separators removed) before they are stored or looked up.

``DoNotCall`` is what a call needs to honour "take me off your list" at once
(an opt-out tool, a keypad action): ``add(number, source=...)`` commits the
entry before it returns; ``blocks(number)`` answers from the table.

The file: one number per line; blank lines and ``#`` comments ignored; a
line that is not a phone number is reported with its line number and
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from vantum_pipeline.campaign.prospects import normalize_number
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.telephony.numbers import InvalidNumberError

__all__ = ["DncFile", "DoNotCall", "read_dnc_file"]


@runtime_checkable
class DoNotCall(Protocol):
    """The campaign's do-not-call list, as a call sees it."""

    def add(self, number: str, *, source: str = "call") -> None:
        """Put ``number`` on the list now (committed when this returns)."""
        ...

    def blocks(self, number: str) -> bool:
        """True when ``number`` must not be dialled."""
        ...


@dataclass(slots=True)
class DncFile:
    numbers: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def read_dnc_file(path: str | Path) -> DncFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the do-not-call file: {exc.strerror}") from exc
    result = DncFile()
    for line_number, raw in enumerate(text.splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            result.numbers.append(normalize_number(entry))
        except InvalidNumberError as exc:
            result.rejected.append(f"{path}:{line_number}: {exc}")
    return result
