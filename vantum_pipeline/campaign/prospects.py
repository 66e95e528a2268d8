"""The prospects CSV: numbers validated on import, bad rows reported by line.

Columns (a header row is required; names are case-insensitive):

- ``number`` (or ``phone``): E.164. Spaces, dashes, dots and parentheses
  are removed first (``+1 (415) 555-0101`` → ``+14155550101``); anything
  else that is not ``+`` and 2-15 digits is refused;
- ``name``, ``company``: become the prompt's ``prospect_name`` and
  ``prospect_company``;
- ``timezone``: an IANA zone; empty → from the country code when the
  country has one zone, else the campaign's default;
- ``id``: optional, the number otherwise;
- every other column becomes a prompt variable of that name.

A row that cannot be used (bad number, unknown time zone, duplicate number
or id) is reported with its line in ``ProspectList.rejected`` and skipped,
never silently dropped.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vantum_pipeline.campaign.rules import timezone_for_number, zone
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.telephony.numbers import InvalidNumberError, mask_number, validate_e164

__all__ = ["Prospect", "ProspectList", "RejectedRow", "normalize_number", "prospect_prompt_variables", "read_prospects"]

_SEPARATORS = re.compile(r"[\s\-.()]")
_NUMBER_COLUMNS = ("number", "phone", "phone_number")
_RESERVED = {"id", "name", "company", "timezone", *_NUMBER_COLUMNS}
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def normalize_number(raw: str) -> str:
    """``raw`` as E.164 (separators removed); InvalidNumberError otherwise."""
    number = _SEPARATORS.sub("", raw.strip())
    return validate_e164(number, field="number")


@dataclass(frozen=True, slots=True)
class Prospect:
    id: str
    number: str
    name: str
    company: str
    timezone: str
    variables: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def prompt_variables(self) -> dict[str, str]:
        """What the prompt template gets from this row."""
        return prospect_prompt_variables(self.name, self.company, self.variables)


def prospect_prompt_variables(name: str, company: str, variables: Mapping[str, str]) -> dict[str, str]:
    """What the prompt template gets from a prospect (its row here, its stored row when dialled):
    ``prospect_name``, ``prospect_company`` and the extra columns, the empty ones left out."""
    values = {"prospect_name": name, "prospect_company": company, **variables}
    return {key: value for key, value in values.items() if value != ""}


@dataclass(frozen=True, slots=True)
class RejectedRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(slots=True)
class ProspectList:
    source: str
    prospects: list[Prospect] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


def read_prospects(path: str | Path, *, default_timezone: str) -> ProspectList:
    """Read the CSV at ``path``; ConfigurationError if it cannot be read at all."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the prospects file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{path}: the prospects file is not UTF-8 text") from exc
    return parse_prospects(text, source=str(path), default_timezone=default_timezone)


def parse_prospects(text: str, *, source: str, default_timezone: str) -> ProspectList:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    result = ProspectList(source)
    header: list[str] | None = None
    seen_numbers: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = _header(row, source, line)
                continue
            try:
                prospect = _prospect(header, row, line, default_timezone)
            except (ConfigurationError, ValueError) as exc:
                result.rejected.append(RejectedRow(line, str(exc)))
                continue
            if prospect.number in seen_numbers:
                result.rejected.append(
                    RejectedRow(
                        line,
                        f"number {mask_number(prospect.number)} repeats line {seen_numbers[prospect.number]}",
                    )
                )
                continue
            if prospect.id in seen_ids:
                result.rejected.append(RejectedRow(line, f"id {prospect.id!r} repeats line {seen_ids[prospect.id]}"))
                continue
            seen_numbers[prospect.number] = line
            seen_ids[prospect.id] = line
            result.prospects.append(prospect)
    except csv.Error as exc:
        raise ConfigurationError(f"{source}:{reader.line_num}: malformed CSV: {exc}") from None
    if header is None:
        raise ConfigurationError(f"{source}: the prospects file is empty (a header row with 'number' is required)")
    return result


def _header(row: list[str], source: str, line: int) -> list[str]:
    names = [cell.strip().lower() for cell in row]
    if not any(name in _NUMBER_COLUMNS for name in names):
        raise ConfigurationError(f"{source}:{line}: the header has no 'number' column (got {', '.join(names)})")
    for name in names:
        if name and name not in _RESERVED and not _VARIABLE.fullmatch(name):
            raise ConfigurationError(
                f"{source}:{line}: column {name!r} cannot be a prompt variable (letters, digits and _ only)"
            )
    duplicates = {name for name in names if name and names.count(name) > 1}
    if duplicates:
        raise ConfigurationError(f"{source}:{line}: repeated columns {sorted(duplicates)}")
    return names


def _prospect(header: list[str], row: list[str], line: int, default_timezone: str) -> Prospect:
    if len(row) > len(header):
        raise ValueError(f"{len(row)} cells but the header has {len(header)} columns")
    cells = {name: value.strip() for name, value in zip(header, row, strict=False) if name}
    raw = next((cells[name] for name in _NUMBER_COLUMNS if cells.get(name)), "")
    if not raw:
        raise ValueError("no number")
    try:
        number = normalize_number(raw)
    except InvalidNumberError as exc:
        raise ValueError(str(exc).replace("number number", "number")) from None
    timezone = cells.get("timezone") or timezone_for_number(number) or default_timezone
    zone(timezone, field=f"timezone {timezone!r}")
    variables = {name: value for name, value in cells.items() if name not in _RESERVED}
    return Prospect(
        id=cells.get("id") or number,
        number=number,
        name=cells.get("name", ""),
        company=cells.get("company", ""),
        timezone=timezone,
        variables=variables,
        line=line,
    )
