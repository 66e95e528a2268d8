"""Keep keys out of logs: a redactor for text and a loguru patcher/sink.

Two sources of "this looks like a key":

- the registry of known secret values: every ``settings.Secret`` registers its
  value when created and again when revealed, so the exact strings handed to
  an SDK are masked wherever they turn up (a URL, an exception, a repr of
  someone else's object);
- patterns for credentials in their usual clothes, known or not:
  ``Authorization: Bearer|Token|Basic …`` headers, ``api_key=`` / ``token=`` /
  ``secret=`` query parameters and key-value pairs, ``user:password@`` in URLs,
  OpenAI keys (``sk-…``), Cartesia keys (``sk_car_…``), JWTs (Deepgram
  temporary tokens), Twilio Account SIDs (``AC`` + 32 hex) and 32-hex auth
  tokens, 40-hex Deepgram keys.

The hex shapes also mask innocent 32/40-hex strings (uuid4().hex, git SHAs);
that is the price of never printing a Twilio auth token or a Deepgram key.
Twilio call SIDs (``CA…``) and dashed UUIDs stay readable.

Apps call ``install_log_redaction()`` once at start-up. It sets loguru's
global patcher (every handler then receives redacted messages, extras and
exception messages), replaces loguru's default stderr handler with one whose
complete output, tracebacks included, is redacted, and forwards the standard
``logging`` records of the vendor SDKs (openai, httpx, websockets, twilio,
aiohttp: they log request lines and headers at DEBUG) into loguru, through the
same redaction. Add other sinks through ``redacting_sink(sink)`` (or with
``diagnose=False``) to get the same guarantee for their tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, Protocol

from loguru import logger

__all__ = [
    "MASK",
    "MAX_SECRETS",
    "MIN_SECRET_LENGTH",
    "install_log_redaction",
    "redact",
    "redact_patcher",
    "redacting_sink",
    "register_secret",
    "registered_secret_count",
    "uninstall_log_redaction",
]

MASK: Final = "***"
#: Shorter values are not registered: masking every "test" or "abc" in the
#: logs would hide more than it protects (a Secret still hides them in reprs).
MIN_SECRET_LENGTH: Final = 8
#: The registry is bounded; past this many values the oldest are forgotten
#: (per-call tokens of calls long gone). The patterns still apply to them.
MAX_SECRETS: Final = 4096

_NAME = (
    r"(?:[A-Za-z0-9]+[_-])*"
    r"(?:api[_-]?key|apikey|access[_-]?key|secret[_-]?key|client[_-]?secret|secret"
    r"|auth[_-]?token|access[_-]?token|token|password|passwd|signature)"
)


def _mask_header(match: re.Match[str]) -> str:
    prefix, scheme = match.group(1), match.group(2)
    return f"{prefix}{scheme} {MASK}" if scheme else f"{prefix}{MASK}"


_Replacement = str | Callable[[re.Match[str]], str]

# (needles, pattern, replacement): a pattern runs only when one of its needles
# occurs in the lower-cased text, which skips most rules on most lines.
# Order matters: the header rule runs before the bare-scheme rule, the
# key-value rule before the key shapes (so "api_key=sk-…" keeps its name).
_PATTERNS: Final[tuple[tuple[tuple[str, ...], re.Pattern[str], _Replacement], ...]] = (
    # Authorization: Bearer <x> / 'Authorization': 'Token <x>' / Proxy-Authorization: <x>
    (
        ("authorization",),
        re.compile(
            r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
            r"(?:(bearer|token|basic|digest)\s+)?([^\s\"',;}\])]+)"
        ),
        _mask_header,
    ),
    # A scheme and a credential outside a header ("Bearer abc…" in a message).
    (
        ("bearer ", "token ", "basic "),
        re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=-]{16,}"),
        r"\1 " + MASK,
    ),
    # api_key=…, ?token=…, "password": "…", call_token: …
    (
        ("key", "token", "secret", "passw", "signature"),
        re.compile(r"(?i)(?<![A-Za-z0-9])(" + _NAME + r")([\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}\])#]{4,}"),
        r"\1\2" + MASK,
    ),
    # scheme://user:password@host
    (("@",), re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), r"\1" + MASK + "@"),
    # OpenAI: sk-…, sk-proj-…, sk-svcacct-…, and the partly starred form its
    # 401 messages quote ("sk-proj-*****…abcd"): not even part of a key is logged.
    (
        ("sk-",),
        re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?(?:[A-Za-z0-9_-]{16,}|[A-Za-z0-9_-]*\*{3,}[A-Za-z0-9_*-]*)"),
        "sk-" + MASK,
    ),
    # Cartesia: sk_car_…
    (("sk_car_",), re.compile(r"\bsk_car_[A-Za-z0-9_-]{8,}"), "sk_car_" + MASK),
    # JWT (Deepgram temporary tokens and many others).
    (("eyj",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), MASK),
    # Twilio Account SID.
    (("ac",), re.compile(r"\bAC[0-9a-fA-F]{32}\b"), "AC" + MASK),
    # Twilio auth tokens (32 hex) and Deepgram keys (40 hex): no needle, any
    # line of 32 characters or more may hold one.
    ((), re.compile(r"\b(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{32})\b"), MASK),
)


class _Registry:
    """Known secret values, matched by one compiled alternation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, None] = {}  # insertion-ordered set
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if len(value) < MIN_SECRET_LENGTH or value in self._values:
            return
        with self._lock:
            if value in self._values:
                return
            self._values[value] = None
            while len(self._values) > MAX_SECRETS:
                del self._values[next(iter(self._values))]
            # Longest first, so a secret containing another is masked whole.
            alternation = "|".join(re.escape(v) for v in sorted(self._values, key=len, reverse=True))
            self._pattern = re.compile(alternation)

    def __len__(self) -> int:
        return len(self._values)

    def sub(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(MASK, text)


_registry = _Registry()


def register_secret(value: str) -> None:
    """Mask ``value`` (and its URL-encoded form) in everything ``redact`` sees.

    Values shorter than ``MIN_SECRET_LENGTH`` are ignored. Thread-safe.
    """
    if not isinstance(value, str):
        return
    _registry.add(value)
    from urllib.parse import quote

    quoted = quote(value, safe="")
    if quoted != value:
        _registry.add(quoted)


def registered_secret_count() -> int:
    """How many values the registry holds (for diagnostics; never the values)."""
    return len(_registry)


def redact(text: str) -> str:
    """``text`` with registered secrets and key-shaped substrings masked."""
    text = _registry.sub(text)
    lowered = text.lower()
    for needles, pattern, replacement in _PATTERNS:
        if needles:
            if not any(needle in lowered for needle in needles):
                continue
        elif len(text) < 32:
            continue
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact_value(v) for v in value)
    return value


class _RedactedError(Exception):
    """Stands in for an exception whose message held a secret (for loguru's
    formatter only: it names the original class and keeps its traceback)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_stand_in_classes: dict[type[BaseException], type[_RedactedError]] = {}
_MAX_STAND_IN_CLASSES: Final = 256


def _stand_in_class(cls: type[BaseException]) -> type[_RedactedError]:
    known = _stand_in_classes.get(cls)
    if known is not None:
        return known
    stand_in = type(cls.__name__, (_RedactedError,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
    if len(_stand_in_classes) < _MAX_STAND_IN_CLASSES:
        _stand_in_classes[cls] = stand_in
    return stand_in


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break logging
        return f"<{type(exc).__name__} (unprintable)>"


def _redacted_chain(exc: BaseException, seen: dict[int, BaseException]) -> BaseException:
    """``exc`` itself when nothing in its chain needs masking, else a stand-in chain."""
    if id(exc) in seen:
        return seen[id(exc)]
    seen[id(exc)] = exc
    cause = _redacted_chain(exc.__cause__, seen) if exc.__cause__ is not None else None
    context = _redacted_chain(exc.__context__, seen) if exc.__context__ is not None else None
    text = _safe_str(exc)
    clean = redact(text)
    notes = getattr(exc, "__notes__", None)
    clean_notes = [redact(str(n)) for n in notes] if isinstance(notes, list) else None
    if clean == text and cause is exc.__cause__ and context is exc.__context__ and clean_notes == notes:
        return exc
    stand_in = _stand_in_class(type(exc))(clean).with_traceback(exc.__traceback__)
    stand_in.__cause__ = cause
    stand_in.__context__ = context
    stand_in.__suppress_context__ = exc.__suppress_context__
    if clean_notes is not None:
        stand_in.__notes__ = clean_notes
    seen[id(exc)] = stand_in
    return stand_in


def redact_patcher(record: Any) -> None:
    """A loguru patcher: redacts the message, string extras and the exception
    messages of the record (a traceback's source lines and variables are
    the sink's business: see ``redacting_sink``)."""
    record["message"] = redact(record["message"])
    extra = record["extra"]
    for key, value in extra.items():
        extra[key] = _redact_value(value)
    exception = record["exception"]
    if exception is not None and exception.value is not None:
        clean = _redacted_chain(exception.value, {})
        if clean is not exception.value:
            record["exception"] = exception._replace(type=type(clean), value=clean)


class _Writable(Protocol):
    def write(self, text: str, /) -> Any: ...


def redacting_sink(sink: _Writable | Callable[[str], Any]) -> Callable[[Any], None]:
    """Wrap a text stream (``sys.stderr``, an open file) or a callable so that
    everything loguru hands it, tracebacks included, is redacted first.

        logger.add(redacting_sink(open("app.log", "a")), diagnose=False)
    """
    write = sink.write if hasattr(sink, "write") else sink
    flush = getattr(sink, "flush", None)

    def emit(message: Any) -> None:
        write(redact(str(message)))
        if flush is not None:
            flush()

    return emit


class _ToLoguru(logging.Handler):
    """Forwards standard-library log records into loguru (and its redaction)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format in a library's log call
            message = f"{record.msg!r} (unformattable arguments)"
        exc_info = record.exc_info if record.exc_info and record.exc_info[1] is not None else None

        def where(entry: Any) -> None:
            # Show where the library logged, not this handler.
            entry.update(name=record.name, function=record.funcName, line=record.lineno, module=record.module)

        logger.patch(where).opt(exception=exc_info).log(level, "{}", message)


_install_lock = threading.Lock()
_installed_handler: int | None = None
_stdlib_handler: _ToLoguru | None = None


def install_log_redaction(
    sink: _Writable | Callable[[str], Any] | None = None,
    *,
    level: str | int = "INFO",
    format: str | None = None,
    replace_default_handler: bool = True,
    capture_stdlib: bool = True,
) -> int:
    """Make every log line of the process redacted. Call once at start-up
    (calling again replaces the handler it added; it never adds two).

    Sets ``redact_patcher`` as loguru's global patcher (an app with a patcher
    of its own composes it: ``logger.configure(patcher=lambda r: (mine(r),
    redact_patcher(r)))``), removes loguru's default stderr handler when
    ``replace_default_handler`` and adds ``sink`` (default ``sys.stderr``)
    wrapped by ``redacting_sink``, with ``diagnose=False`` so tracebacks do
    not print variable values. With ``capture_stdlib``, a handler on the
    root ``logging`` logger forwards standard-library records to loguru (the
    levels of the stdlib loggers are left as the app set them). Returns the
    handler id.
    """
    global _installed_handler, _stdlib_handler
    with _install_lock:
        if capture_stdlib and _stdlib_handler is None:
            _stdlib_handler = _ToLoguru()
            logging.getLogger().addHandler(_stdlib_handler)
        logger.configure(patcher=redact_patcher)
        if _installed_handler is not None:
            try:
                logger.remove(_installed_handler)
            except ValueError:
                pass  # the app removed it already
            _installed_handler = None
        if replace_default_handler:
            try:
                logger.remove(0)
            except ValueError:
                pass  # already removed (by the app, or an earlier call)
        options: dict[str, Any] = {"level": level, "diagnose": False, "backtrace": False}
        if format is not None:
            options["format"] = format
        _installed_handler = logger.add(redacting_sink(sink if sink is not None else sys.stderr), **options)
        return _installed_handler


def uninstall_log_redaction() -> None:
    """Undo ``install_log_redaction``: remove its handler and the global
    patcher (loguru's default handler is not restored). For tests and apps
    that reconfigure logging."""
    global _installed_handler, _stdlib_handler
    with _install_lock:
        if _installed_handler is not None:
            try:
                logger.remove(_installed_handler)
            except ValueError:
                pass
            _installed_handler = None
        if _stdlib_handler is not None:
            logging.getLogger().removeHandler(_stdlib_handler)
            _stdlib_handler = None
        logger.configure(patcher=_no_patch)


def _no_patch(record: Any) -> None:
    """loguru's configure() cannot unset a patcher; this one does nothing."""
