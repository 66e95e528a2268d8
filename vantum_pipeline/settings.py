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

``InterruptionSettings`` (with ``DEFAULT_BACKCHANNELS``) holds the product's
barge-in defaults, shared by every STT service: see docs/interruptions.md.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.redact import register_secret

__all__ = [
    "DEFAULT_BACKCHANNELS",
    "InterruptionSettings",
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


# ---------------------------------------------------------------- interruptions

#: What English-speaking callees say to show they are listening, not to take the turn.
DEFAULT_BACKCHANNELS: Final[tuple[str, ...]] = (
    "mm-hmm", "mhm", "mmhmm", "mm", "hmm", "uh-huh", "uh huh", "yeah", "yes", "yep", "yup", "ya",
    "right", "okay", "ok", "sure", "alright", "all right", "i see", "got it", "ah", "oh", "uh", "um",
    "wow", "cool", "nice", "really", "interesting", "exactly", "true", "of course", "makes sense",
    "go on", "go ahead", "i know", "totally", "absolutely", "great", "good", "fine",
)  # fmt: skip

INTERRUPTION_POLICIES: Final = ("phone", "at_once", "min_words", "min_duration")


@dataclass(frozen=True, slots=True)
class InterruptionSettings:
    """When speech over the bot interrupts it, and what happens after a false alarm.

    The defaults are the product's, for phone calls: interrupt on
    ``min_words`` (2) words that are not backchannels, or ``min_speech_seconds``
    (0.6 s) of continuous speech, never on a backchannel alone
    (``policy="phone"``); ``"at_once"`` interrupts on any speech start (the
    behaviour before policies); ``"min_words"`` and ``"min_duration"`` use one
    rule each (never on a backchannel either). See docs/interruptions.md.

    ``resume_after_false_interruption``: when an interruption fired but no
    words followed (a cough, a click, or only a backchannel), the bot resumes
    its reply from the first word the callee did not hear, repeating the last
    ``resume_lead_in_words`` heard words first when it was cut mid-sentence.
    ``false_interruption_timeout``: seconds of quiet after the interruption
    with no words before it counts as false (the STT closing the turn empty
    says so sooner). ``speech_threshold_dbfs``: input level above which audio
    counts as speech for ``min_speech_seconds``.
    """

    policy: str = "phone"
    min_words: int = 2
    min_speech_seconds: float = 0.6
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS
    resume_after_false_interruption: bool = True
    false_interruption_timeout: float = 1.2
    resume_lead_in_words: int = 1
    speech_threshold_dbfs: float = -40.0

    def __post_init__(self) -> None:
        if self.policy not in INTERRUPTION_POLICIES:
            raise ConfigurationError(
                f"InterruptionSettings.policy must be one of {', '.join(INTERRUPTION_POLICIES)}, got {self.policy!r}"
            )
        if isinstance(self.min_words, bool) or not isinstance(self.min_words, int) or self.min_words < 1:
            raise ConfigurationError(f"InterruptionSettings.min_words must be an integer >= 1, got {self.min_words!r}")
        if not 0 <= self.min_speech_seconds <= 10:
            raise ConfigurationError(
                f"InterruptionSettings.min_speech_seconds must be in [0, 10], got {self.min_speech_seconds}"
            )
        if not 0 < self.false_interruption_timeout <= 10:
            raise ConfigurationError(
                f"InterruptionSettings.false_interruption_timeout must be in (0, 10], "
                f"got {self.false_interruption_timeout}"
            )
        if not 0 <= self.resume_lead_in_words <= 5:
            raise ConfigurationError(
                f"InterruptionSettings.resume_lead_in_words must be in [0, 5], got {self.resume_lead_in_words}"
            )
        if isinstance(self.backchannels, str) or not all(isinstance(p, str) and p.strip() for p in self.backchannels):
            raise ConfigurationError(
                f"InterruptionSettings.backchannels must be a tuple of non-empty phrases, got {self.backchannels!r}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> InterruptionSettings:
        """``INTERRUPTION_POLICY``, ``INTERRUPTION_MIN_WORDS``, ``INTERRUPTION_MIN_SPEECH_SECONDS``,
        ``INTERRUPTION_BACKCHANNELS`` (comma-separated), ``INTERRUPTION_RESUME`` (true/false);
        all optional; ``overrides`` win."""
        values = load_env(env)
        found: dict[str, object] = {}
        policy = optional_env(values, "INTERRUPTION_POLICY")
        if policy is not None:
            found["policy"] = policy.strip().lower()
        words = env_int(values, "INTERRUPTION_MIN_WORDS", minimum=1)
        if words is not None:
            found["min_words"] = words
        seconds = env_float(values, "INTERRUPTION_MIN_SPEECH_SECONDS", minimum=0.0, maximum=10.0)
        if seconds is not None:
            found["min_speech_seconds"] = seconds
        phrases = optional_env(values, "INTERRUPTION_BACKCHANNELS")
        if phrases is not None:
            found["backchannels"] = tuple(p.strip() for p in phrases.split(",") if p.strip())
        found["resume_after_false_interruption"] = env_bool(values, "INTERRUPTION_RESUME", True)
        return cls(**{**found, **overrides})  # type: ignore[arg-type]
