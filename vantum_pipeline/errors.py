"""The exception hierarchy.

Every exception the library raises on purpose derives from :class:`VantumError`.
Three families matter to a caller, because each calls for a different reaction:

- :class:`ConfigurationError`: our caller asked for something impossible
  (a missing key, an unknown sample rate). Fix the configuration; retrying is futile.
- :class:`ProtocolError`: a peer sent something malformed (a bad Twilio message,
  a Deepgram result that is not JSON). The offending input is named, truncated.
- :class:`ServiceError`: a remote service failed. ``retryable`` says whether the
  same request may succeed later (429, 5xx, dropped socket) or not (401, 400).

Messages never contain secrets: callers pass values through
``vantum_pipeline.observability.redact`` before they reach an exception.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "PipelineError",
    "ProtocolError",
    "ServiceError",
    "VantumError",
]


class VantumError(Exception):
    """Base class of every error raised by vantum_pipeline."""


class ConfigurationError(VantumError, ValueError):
    """A setting is missing or invalid; the message names the setting."""


class PipelineError(VantumError, RuntimeError):
    """The pipeline was used in a way its lifecycle does not allow."""


class ProtocolError(VantumError, ValueError):
    """A peer sent a message that violates its protocol.

    ``raw`` holds a truncated copy of the offending input, for logs.
    """

    MAX_RAW = 200

    def __init__(self, message: str, raw: str | bytes | None = None) -> None:
        super().__init__(message)
        if raw is not None and len(raw) > self.MAX_RAW:
            raw = raw[: self.MAX_RAW]
        self.raw = raw


class ServiceError(VantumError):
    """A remote service failed.

    ``service`` names it ("deepgram", "openai", ...), ``status`` is the HTTP
    status or websocket close code when there is one, ``retryable`` says whether
    trying again may succeed, and ``retry_after`` is the delay the service asked
    for, in seconds, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        base = super().__str__()
        tag = f"{self.service}"
        if self.status is not None:
            tag += f" {self.status}"
        return f"[{tag}] {base}"
