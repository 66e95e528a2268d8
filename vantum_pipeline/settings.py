"""Secrets and environment loading shared by every service's settings.

Each service defines its own settings dataclass next to its code (with the
product's defaults) and builds it from the environment with the helpers here:

    @dataclass
    class DeepgramSettings:
        api_key: Secret
        model: str = "nova-2"

        @classmethod
        def from_env(cls, env: Mapping[str, str] | None = None) -> "DeepgramSettings":
            env = load_env(env)
            return cls(api_key=require_secret(env, "DEEPGRAM_API_KEY"))

A missing variable is a ConfigurationError naming it; so is a value that does
not parse (``env_float(env, "CALL_BUDGET_USD")`` on ``"ten"``). A ``Secret``
never shows its value in ``repr``/``str``/f-strings/logs; call ``.reveal()``
at the one place the value is handed to an SDK. Every Secret registers its
value with the log redactor (``observability.redact``), so the revealed value
is masked should it reach a log line anyway. ``.env.example`` at the
repository root lists every variable.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.redact import register_secret

__all__ = [
    "Secret",
    "env_bool",
    "env_float",
    "env_int",
    "load_env",
    "optional_env",
    "require_env",
    "require_secret",
]

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


class Secret:
    """A string that does not say what it is.

    ``str()``, ``repr()`` and formatting give ``'***'``; equality compares
    values (in constant time) without exposing them. ``reveal()`` returns the
    value. Not picklable, so it cannot leak through a pickle either.
    """

    __slots__ = ("_value",)

    MASK: Final = "***"

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise ConfigurationError(f"a secret must be a string, got {type(value).__name__}")
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        # Registered again: the registry is bounded and may have forgotten an
        # old value that is still in use.
        register_secret(self._value)
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.MASK})"

    def __str__(self) -> str:
        return self.MASK

    def __format__(self, spec: str) -> str:
        return self.MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(other._value.encode(), self._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


def load_env(env: Mapping[str, str] | None = None, *, dotenv_path: str | Path | None = ".env") -> Mapping[str, str]:
    """The environment to read settings from.

    With ``env`` given, that mapping alone (tests pass one). Otherwise the
    process environment, completed (never overridden) by the ``.env`` file at
    ``dotenv_path`` (relative to the working directory) when it exists.
    """
    if env is not None:
        return env
    merged = dict(os.environ)
    if dotenv_path is not None and Path(dotenv_path).is_file():
        from dotenv import dotenv_values

        for key, value in dotenv_values(dotenv_path).items():
            if value is not None and key not in merged:
                merged[key] = value
    return merged


def _lookup(env: Mapping[str, str], name: str, aliases: Sequence[str]) -> str:
    for key in (name, *aliases):
        value = env.get(key, "").strip()
        if value:
            return value
    return ""


def require_env(env: Mapping[str, str], name: str, *, aliases: Sequence[str] = ()) -> str:
    """The value of ``name`` (or of the first set alias, an older spelling);
    a ConfigurationError naming ``name`` when missing or empty."""
    value = _lookup(env, name, aliases)
    if not value:
        raise ConfigurationError(f"{name} is not set: add it to the environment or to .env (see .env.example)")
    return value


def require_secret(env: Mapping[str, str], name: str, *, aliases: Sequence[str] = ()) -> Secret:
    """``require_env`` wrapped in a Secret."""
    return Secret(require_env(env, name, aliases=aliases))


def optional_env(
    env: Mapping[str, str], name: str, default: str | None = None, *, aliases: Sequence[str] = ()
) -> str | None:
    """The value of ``name`` (or an alias), or ``default`` when missing or empty."""
    return _lookup(env, name, aliases) or default


def env_float(
    env: Mapping[str, str],
    name: str,
    default: float | None = None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """``name`` as a float, ``default`` when unset; a ConfigurationError naming
    the variable and the value when it does not parse or is out of range."""
    raw = optional_env(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigurationError(f"{name} must be a finite number, got {raw!r}")
    _check_range(name, value, minimum, maximum)
    return value


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    """``name`` as an integer, ``default`` when unset; a ConfigurationError
    naming the variable when it does not parse or is out of range."""
    raw = optional_env(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """``name`` as a boolean (1/0, true/false, yes/no, on/off), ``default`` when unset."""
    raw = optional_env(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be <= {maximum}, got {value}")
