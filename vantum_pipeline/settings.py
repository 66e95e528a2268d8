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

A missing variable is a ConfigurationError naming it. A ``Secret`` never shows
its value in ``repr``/``str``/f-strings/logs; call ``.reveal()`` at the one
place the value is handed to an SDK.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from vantum_pipeline.errors import ConfigurationError

__all__ = ["Secret", "load_env", "optional_env", "require_env", "require_secret"]


class Secret:
    """A string that does not say what it is.

    ``str()``, ``repr()`` and formatting give ``'***'``; equality compares
    values without exposing them. ``reveal()`` returns the value.
    """

    __slots__ = ("_value",)

    MASK: Final = "***"

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise ConfigurationError(f"a secret must be a string, got {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.MASK})"

    def __str__(self) -> str:
        return self.MASK

    def __format__(self, spec: str) -> str:
        return self.MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

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
    ``dotenv_path`` when it exists.
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


def require_env(env: Mapping[str, str], name: str) -> str:
    """The value of ``name``; a ConfigurationError naming it when missing or empty."""
    value = env.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"{name} is not set: add it to the environment or to .env (see .env.example)")
    return value


def require_secret(env: Mapping[str, str], name: str) -> Secret:
    return Secret(require_env(env, name))


def optional_env(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name, "").strip()
    return value or default
