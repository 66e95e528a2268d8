"""Settings of the Twilio side: credentials, our number, the public URL.

``TwilioSettings.from_env()`` reads:

- ``TWILIO_ACCOUNT_SID`` (``AC…``) and ``TWILIO_AUTH_TOKEN`` (a secret: it
  signs webhooks and authenticates REST calls);
- ``TWILIO_FROM_NUMBER``: the caller id, a Twilio number in E.164
  (``TWILIO_PHONE_NUMBER`` is accepted too);
- ``PUBLIC_BASE_URL``: where Twilio reaches our server from the internet
  (``https://calls.example.com``, or a tunnel's URL). Webhook URLs and the
  media stream URL are built from it, and signatures are checked against
  it, because a proxy or tunnel changes the Host our server sees;
- optional: ``TWILIO_API_BASE_URL`` (point the REST client elsewhere, e.g.
  at ``FakeTwilio``), ``TWILIO_VALIDATE_SIGNATURES`` (``false`` turns
  signature checks off: local development only, logged loudly).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import Secret, load_env, optional_env, require_env, require_secret
from vantum_pipeline.telephony.numbers import validate_e164

__all__ = ["TwilioSettings"]


def _base_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL such as https://calls.example.com, got {value!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{name} must not carry a query or fragment: {value!r}")
    return value.rstrip("/")


@dataclass(slots=True)
class TwilioSettings:
    """Everything the Twilio side needs; the defaults are the product's."""

    account_sid: str
    auth_token: Secret
    from_number: str
    public_base_url: str
    api_base_url: str | None = None
    validate_signatures: bool = True
    #: USD per started minute of an outbound call.
    price_per_minute: float = 0.014
    #: Seconds Twilio lets the phone ring before ``no-answer`` (Twilio's own default is 60).
    ring_timeout: int = 30
    #: ``"Enable"`` or ``"DetectMessageEnd"`` turns answering-machine detection on.
    machine_detection: str | None = None
    #: Bound on each REST request.
    request_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.account_sid.startswith("AC"):
            raise ConfigurationError("TWILIO_ACCOUNT_SID must start with 'AC'")
        validate_e164(self.from_number, field="TWILIO_FROM_NUMBER")
        self.public_base_url = _base_url(self.public_base_url, "PUBLIC_BASE_URL")
        if self.api_base_url is not None:
            self.api_base_url = _base_url(self.api_base_url, "TWILIO_API_BASE_URL")
        if self.machine_detection not in (None, "Enable", "DetectMessageEnd"):
            raise ConfigurationError(
                f"machine_detection must be 'Enable' or 'DetectMessageEnd', got {self.machine_detection!r}"
            )

    @property
    def public_ws_base_url(self) -> str:
        """The public base URL with the websocket scheme (https → wss)."""
        scheme, _, rest = self.public_base_url.partition("://")
        return ("wss" if scheme == "https" else "ws") + "://" + rest

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TwilioSettings:
        env = load_env(env)
        from_number = optional_env(env, "TWILIO_FROM_NUMBER") or optional_env(env, "TWILIO_PHONE_NUMBER")
        if from_number is None:
            raise ConfigurationError("TWILIO_FROM_NUMBER is not set: add it to the environment or to .env")
        validate = (optional_env(env, "TWILIO_VALIDATE_SIGNATURES", "true") or "true").lower()
        if validate not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigurationError(f"TWILIO_VALIDATE_SIGNATURES must be true or false, got {validate!r}")
        return cls(
            account_sid=require_env(env, "TWILIO_ACCOUNT_SID"),
            auth_token=require_secret(env, "TWILIO_AUTH_TOKEN"),
            from_number=from_number,
            public_base_url=require_env(env, "PUBLIC_BASE_URL"),
            api_base_url=optional_env(env, "TWILIO_API_BASE_URL"),
            validate_signatures=validate in ("true", "1", "yes"),
        )
