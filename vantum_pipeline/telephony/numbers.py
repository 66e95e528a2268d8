"""Phone numbers: E.164 validation before any request, and masking for logs.

E.164 is ``+`` then a country code and subscriber number: at most 15 digits,
the first not zero (``+14155550100``). We accept exactly that form: no
spaces, dashes or parentheses, so a number that reaches Twilio is the number
we validated and logged.
"""

from __future__ import annotations

import re

from vantum_pipeline.errors import ConfigurationError

__all__ = ["InvalidNumberError", "mask_number", "mask_numbers_in", "validate_e164"]

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
#: What a phone number in free text looks like: ``+`` and 8 or more digits, wherever it stands; or 8 or
#: more digits (maybe spaced, dashed or bracketed) standing alone, not inside an id such as a call SID.
_NUMBER_IN_TEXT = re.compile(r"\+[0-9][0-9 ().-]{6,}[0-9]|(?<![0-9A-Za-z+])[0-9][0-9 ().-]{6,}[0-9](?![0-9A-Za-z])")


class InvalidNumberError(ConfigurationError):
    """A phone number is not in E.164 form; no request was made."""

    def __init__(self, message: str, number: str) -> None:
        super().__init__(message)
        self.number = number


def validate_e164(number: object, *, field: str = "to") -> str:
    """Return ``number`` if it is E.164, else raise InvalidNumberError naming ``field``."""
    if not isinstance(number, str):
        raise InvalidNumberError(f"{field} must be a string in E.164 form, got {type(number).__name__}", str(number))
    if not _E164.fullmatch(number):
        raise InvalidNumberError(
            f"{field} number {mask_number(number)!r} is not E.164 (+ and up to 15 digits, e.g. +14155550100)",
            number,
        )
    return number


def mask_number(number: str) -> str:
    """``+14155550100`` → ``+141******00``: enough to tell calls apart in logs,
    not enough to call anyone."""
    if len(number) <= 6:
        return "*" * len(number)
    return number[:4] + "*" * (len(number) - 6) + number[-2:]


def mask_numbers_in(text: str) -> str:
    """``text`` with everything shaped like a phone number masked
    (``call +14155550123`` → ``call +141******23``), for text shown or
    exported beyond the logs: traces, the web console."""
    return _NUMBER_IN_TEXT.sub(lambda m: mask_number(re.sub(r"[^0-9+]", "", m.group(0))), text)
