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

``CallFeatureSettings.from_env()`` reads the sales-call features: AMD and
voicemail (``AMD_*``, ``VOICEMAIL_MESSAGE``), live transfer
(``TRANSFER_*``), opt-out (``OPT_OUT_KEYPAD_DIGIT``) and the keypad
(``KEYPAD_*``); see each dataclass and ``.env.example``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import (
    Secret,
    env_float,
    env_int,
    load_env,
    optional_env,
    require_env,
    require_secret,
)
from vantum_pipeline.telephony.numbers import validate_e164

__all__ = [
    "AMD_START_AND_YIELD",
    "AMD_WAIT",
    "KEYPAD_ACTIONS",
    "TRANSFER_END",
    "TRANSFER_RESUME",
    "AmdSettings",
    "CallFeatureSettings",
    "KeypadSettings",
    "OptOutSettings",
    "TransferSettings",
    "TwilioSettings",
]


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


# ------------------------------------------------------------- call features

#: What the bot does while AMD has not decided yet.
AMD_WAIT = "wait"
AMD_START_AND_YIELD = "start_and_yield"
#: What happens when the rep does not answer a transfer.
TRANSFER_RESUME = "resume"
TRANSFER_END = "end"
#: Actions a keypad sequence can trigger.
KEYPAD_ACTIONS = ("opt_out", "transfer", "repeat")
_OPT_OUT_CONFIRMATION = (
    "Of course. I've removed your number from our list, and you won't be called again. Sorry to bother you. Goodbye!"
)


@dataclass(slots=True, frozen=True)
class AmdSettings:
    """Answering-machine detection and voicemail drop.

    ``mode``: Twilio's ``MachineDetection`` (``DetectMessageEnd`` reports a
    machine once its greeting and beep are over, the moment to leave a
    message; ``Enable`` reports as soon as it knows), None turns AMD off.
    Detection is always asynchronous (``AsyncAmd=true``): the call connects
    at once. ``while_detecting``: ``wait`` holds the bot's first words until
    the verdict; ``start_and_yield`` lets the bot start and stops it (clears
    the audio) if a machine answered. ``decision_timeout``: after this long
    without a verdict the bot goes on as with a human. ``voicemail_message``:
    the campaign's message, with ``{name}``-style fields filled from the
    call's variables; None leaves no message (outcome ``machine``).
    ``greeting_end_silence`` / ``max_greeting_wait``: with ``Enable``, how
    long the machine must be quiet before the message starts, and the most
    the bot waits for that.
    """

    mode: str | None = "DetectMessageEnd"
    while_detecting: str = AMD_WAIT
    decision_timeout: float = 35.0
    #: Twilio's MachineDetectionTimeout (3-59 s; None: Twilio's default, 30).
    machine_detection_timeout: int | None = None
    voicemail_message: str | None = None
    greeting_end_silence: float = 1.0
    max_greeting_wait: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in (None, "Enable", "DetectMessageEnd"):
            raise ConfigurationError(f"AMD mode must be 'Enable', 'DetectMessageEnd' or off, got {self.mode!r}")
        if self.while_detecting not in (AMD_WAIT, AMD_START_AND_YIELD):
            raise ConfigurationError(
                f"AMD_WHILE_DETECTING must be {AMD_WAIT!r} or {AMD_START_AND_YIELD!r}, got {self.while_detecting!r}"
            )
        if self.machine_detection_timeout is not None and not 3 <= self.machine_detection_timeout <= 59:
            raise ConfigurationError(f"AMD_TIMEOUT must be 3-59 seconds, got {self.machine_detection_timeout}")
        for name in ("decision_timeout", "greeting_end_silence", "max_greeting_wait"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"AmdSettings.{name} must be > 0, got {getattr(self, name)}")
        if self.voicemail_message is not None and not self.voicemail_message.strip():
            raise ConfigurationError("VOICEMAIL_MESSAGE must not be blank (unset it to leave no message)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AmdSettings:
        """``AMD_MODE`` (DetectMessageEnd, Enable or off), ``AMD_WHILE_DETECTING``,
        ``AMD_TIMEOUT``, ``AMD_DECISION_TIMEOUT``, ``VOICEMAIL_MESSAGE``."""
        env = load_env(env)
        mode = optional_env(env, "AMD_MODE", "DetectMessageEnd")
        return cls(
            mode=None if mode is None or mode.lower() in ("off", "none", "false") else mode,
            while_detecting=optional_env(env, "AMD_WHILE_DETECTING", AMD_WAIT) or AMD_WAIT,
            decision_timeout=env_float(env, "AMD_DECISION_TIMEOUT", 35.0, minimum=1.0) or 35.0,
            machine_detection_timeout=env_int(env, "AMD_TIMEOUT", None, minimum=3, maximum=59),
            voicemail_message=optional_env(env, "VOICEMAIL_MESSAGE"),
        )


@dataclass(slots=True, frozen=True)
class TransferSettings:
    """Live transfer to a human rep; ``number`` None: no transfers.

    ``caller_id``: what the rep's phone shows (default: our
    ``TWILIO_FROM_NUMBER``). ``timeout``: seconds the rep's phone rings.
    ``on_no_answer``: ``resume`` brings the call back to the bot, which says
    ``fallback_line`` and goes on; ``end`` says ``end_line`` and hangs up.
    ``transfer_on_error``: when the bot's reply fails for good, the error
    phrase ("... Let me transfer you to a human.") is followed by a transfer
    (with no number configured the phrase is replaced by ``no_transfer_error_line``).
    """

    number: str | None = None
    caller_id: str | None = None
    timeout: int = 20
    handover_line: str = "Of course. Let me connect you with a colleague now, one moment please."
    on_no_answer: str = TRANSFER_RESUME
    fallback_line: str = "I'm sorry, my colleague isn't available right now. Can I help you with anything else?"
    end_line: str = "I'm sorry, my colleague isn't available right now. Someone will call you back soon. Goodbye!"
    transfer_on_error: bool = True
    no_transfer_error_line: str = "I'm experiencing technical difficulties. Someone will call you back shortly."
    #: Longest a transferred call is followed before its status is fetched.
    max_bridge_seconds: float = 4 * 3600.0

    def __post_init__(self) -> None:
        if self.number is not None:
            validate_e164(self.number, field="TRANSFER_NUMBER")
        if self.caller_id is not None:
            validate_e164(self.caller_id, field="TRANSFER_CALLER_ID")
        if not 5 <= self.timeout <= 600:
            raise ConfigurationError(f"TRANSFER_TIMEOUT must be 5-600 seconds, got {self.timeout}")
        if self.on_no_answer not in (TRANSFER_RESUME, TRANSFER_END):
            raise ConfigurationError(
                f"TRANSFER_ON_NO_ANSWER must be {TRANSFER_RESUME!r} or {TRANSFER_END!r}, got {self.on_no_answer!r}"
            )
        for name in ("handover_line", "fallback_line", "end_line", "no_transfer_error_line"):
            if not getattr(self, name).strip():
                raise ConfigurationError(f"TransferSettings.{name} must not be blank")

    @property
    def enabled(self) -> bool:
        return self.number is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TransferSettings:
        """``TRANSFER_NUMBER``, ``TRANSFER_CALLER_ID``, ``TRANSFER_TIMEOUT``,
        ``TRANSFER_ON_NO_ANSWER`` (resume or end)."""
        env = load_env(env)
        return cls(
            number=optional_env(env, "TRANSFER_NUMBER"),
            caller_id=optional_env(env, "TRANSFER_CALLER_ID"),
            timeout=env_int(env, "TRANSFER_TIMEOUT", 20, minimum=5, maximum=600) or 20,
            on_no_answer=optional_env(env, "TRANSFER_ON_NO_ANSWER", TRANSFER_RESUME) or TRANSFER_RESUME,
        )


@dataclass(slots=True, frozen=True)
class OptOutSettings:
    """Opt-out ("take me off your list"): the line the bot confirms with
    before hanging up, and the keypad digit that opts out (None: no keypad
    opt-out; the campaign enables it, e.g. ``"9"`` for "press 9 to be removed")."""

    confirmation_line: str = _OPT_OUT_CONFIRMATION
    #: Said when the do-not-call list could not be updated: nothing false is promised.
    failure_line: str = "I'm sorry for the trouble. I've noted your request. Goodbye!"
    keypad_digit: str | None = None

    def __post_init__(self) -> None:
        if self.keypad_digit is not None and (len(self.keypad_digit) != 1 or self.keypad_digit not in "0123456789*#"):
            raise ConfigurationError(f"OPT_OUT_KEYPAD_DIGIT must be one key (0-9, * or #), got {self.keypad_digit!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OptOutSettings:
        """``OPT_OUT_KEYPAD_DIGIT`` (unset: no keypad opt-out)."""
        env = load_env(env)
        return cls(keypad_digit=optional_env(env, "OPT_OUT_KEYPAD_DIGIT"))


@dataclass(slots=True, frozen=True)
class KeypadSettings:
    """Keypad (DTMF) sequences and the actions they trigger.

    ``bindings`` maps a digit sequence to an action in ``KEYPAD_ACTIONS``.
    A sequence ends when no longer binding could still match, or after
    ``inter_digit_timeout`` seconds without a key; at most ``max_digits``.
    """

    bindings: Mapping[str, str] = field(default_factory=dict)
    inter_digit_timeout: float = 2.0
    max_digits: int = 8

    def __post_init__(self) -> None:
        for sequence, action in self.bindings.items():
            if not sequence or not set(sequence) <= set("0123456789*#ABCD") or len(sequence) > self.max_digits:
                raise ConfigurationError(f"keypad sequence {sequence!r} must be 1-{self.max_digits} keys of 0-9 * #")
            if action not in KEYPAD_ACTIONS:
                raise ConfigurationError(f"keypad action {action!r} must be one of {', '.join(KEYPAD_ACTIONS)}")
        if self.inter_digit_timeout <= 0 or self.max_digits < 1:
            raise ConfigurationError("KeypadSettings: inter_digit_timeout must be > 0 and max_digits >= 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeypadSettings:
        """``KEYPAD_ACTIONS`` (``9=opt_out,0=transfer,*=repeat``), ``KEYPAD_INTER_DIGIT_TIMEOUT``."""
        env = load_env(env)
        bindings: dict[str, str] = {}
        for item in (optional_env(env, "KEYPAD_ACTIONS") or "").split(","):
            if not item.strip():
                continue
            sequence, sep, action = item.partition("=")
            if not sep:
                raise ConfigurationError(f"KEYPAD_ACTIONS entries must read sequence=action, got {item.strip()!r}")
            bindings[sequence.strip()] = action.strip()
        return cls(
            bindings=bindings,
            inter_digit_timeout=env_float(env, "KEYPAD_INTER_DIGIT_TIMEOUT", 2.0, minimum=0.1) or 2.0,
        )


@dataclass(slots=True, frozen=True)
class CallFeatureSettings:
    """Every telephony feature of a sales call, together."""

    amd: AmdSettings = field(default_factory=AmdSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    opt_out: OptOutSettings = field(default_factory=OptOutSettings)
    keypad: KeypadSettings = field(default_factory=KeypadSettings)

    def keypad_bindings(self) -> dict[str, str]:
        """The keypad's bindings with the opt-out digit added when enabled."""
        bindings = dict(self.keypad.bindings)
        if self.opt_out.keypad_digit is not None:
            bindings.setdefault(self.opt_out.keypad_digit, "opt_out")
        return bindings

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CallFeatureSettings:
        env = load_env(env)
        return cls(
            amd=AmdSettings.from_env(env),
            transfer=TransferSettings.from_env(env),
            opt_out=OptOutSettings.from_env(env),
            keypad=KeypadSettings.from_env(env),
        )
