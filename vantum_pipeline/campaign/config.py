"""The campaign file: TOML, validated, every error naming the field and its line.

A minimal file (everything else has the product's default)::

    [campaign]
    name = "Spring outreach"
    caller_id = "+15005550006"
    prospects = "prospects.csv"

See ``examples/campaign/campaign.toml`` for every setting. Paths are relative
to the campaign file.

The sales-call features (``telephony``) have their own tables; left out,
each keeps the default below:

- ``[amd]``: Twilio's asynchronous answering-machine detection on every call
  (``enabled``, default on: ``DetectMessageEnd``, the bot's first words held
  until the verdict; ``while_detecting = "start_and_yield"`` lets the bot
  start and stops it for a machine; ``detection``, ``twilio_timeout``,
  ``decision_timeout``);
- ``[voicemail]``: ``message`` (or ``message_file``), a template filled with
  the prospect's variables like the prompt (a variable missing for any
  prospect stops the campaign before its first call); without one, a
  machine is hung up on (outcome ``machine``);
- ``[transfer]``: ``number`` of the rep (none: no transfers), ``caller_id``
  (default: the campaign's), ``timeout`` (seconds the rep's phone rings,
  default 20), ``on_no_answer`` (``"resume"``: back to the bot with a
  fallback line, the default; ``"end"``: end politely), the lines said;
- ``[keypad]``: ``opt_out`` (a key, e.g. ``"9"``: "press 9 to be removed";
  default off), ``[keypad.bindings]`` (``"0" = "transfer"``, ``"*" = "repeat"``),
  ``inter_digit_timeout`` (default 2 s). ``load_campaign(path)`` raises :class:`CampaignFileError`
(a ``ConfigurationError``) whose message starts ``file:line: field:``.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vantum_pipeline.campaign.rules import (
    DEFAULT_OUTCOME_RULES,
    END_OF_DAY,
    WEEKDAYS,
    Action,
    CallingHours,
    OutcomeRule,
    ProspectState,
    zone,
)
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.processors.context import SALES_PROMPT, PromptTemplate
from vantum_pipeline.telephony.numbers import InvalidNumberError, validate_e164
from vantum_pipeline.telephony.settings import (
    AMD_START_AND_YIELD,
    AMD_WAIT,
    KEYPAD_ACTIONS,
    TRANSFER_END,
    TRANSFER_RESUME,
    AmdSettings,
    CallFeatureSettings,
    KeypadSettings,
    OptOutSettings,
    TransferSettings,
)

__all__ = ["CampaignConfig", "CampaignFileError", "load_campaign", "parse_campaign"]

_SLUG = re.compile(r"[^a-z0-9]+")
_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-"' ]+?)\s*=""")


class CampaignFileError(ConfigurationError):
    """The campaign file is malformed; ``line`` and ``field`` say where."""

    def __init__(self, path: str, line: int | None, field_name: str, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field_name}: {message}" if field_name else f"{where}: {message}")
        self.path = path
        self.line = line
        self.field = field_name


class _Lines:
    """Line numbers of the keys of a TOML document, by dotted path (scanned, not parsed:
    tomllib keeps no positions). An inline table's keys map to its own line."""

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        table = ""
        for number, raw in enumerate(text.splitlines(), start=1):
            header = _TABLE.match(raw)
            if header is not None and not raw.lstrip().startswith("#"):
                table = _dotted(header.group(1))
                self.lines.setdefault(table, number)
                continue
            key = _KEY.match(raw)
            if key is not None and not raw.lstrip().startswith("#"):
                path = f"{table}.{_dotted(key.group(1))}" if table else _dotted(key.group(1))
                self.lines.setdefault(path, number)

    def find(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return None


def _dotted(key: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


@dataclass(slots=True)
class CampaignConfig:
    """A validated campaign file."""

    path: Path
    id: str
    name: str
    caller_id: str
    prospects: Path
    dnc_file: Path | None = None
    folder: Path | None = None
    default_timezone: str = "America/New_York"
    record_calls: bool = True
    prompt: PromptTemplate = SALES_PROMPT
    prompt_variables: dict[str, str] = field(default_factory=dict)
    calling_hours: CallingHours = field(default_factory=CallingHours)
    max_concurrent_calls: int = 5
    calls_per_second: float = 1.0
    budget_usd: float | None = None
    reserve_per_call_usd: float = 0.20
    max_call_seconds: float = 600.0
    outcome_rules: dict[str, OutcomeRule] = field(default_factory=lambda: dict(DEFAULT_OUTCOME_RULES))
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    simulation: dict[str, Any] = field(default_factory=dict)
    #: AMD and voicemail, transfer, opt-out and keypad, as every call of the campaign uses them.
    features: CallFeatureSettings = field(default_factory=CallFeatureSettings)
    #: The voicemail left on a machine, filled per prospect (None: no message).
    voicemail: PromptTemplate | None = None
    lines: _Lines | None = field(default=None, repr=False)

    def error(self, field_name: str, message: str) -> CampaignFileError:
        """An error about ``field_name`` of this file, with its line."""
        line = self.lines.find(field_name) if self.lines is not None else None
        return CampaignFileError(str(self.path), line, field_name, message)

    def resolved_folder(self) -> Path:
        return self.folder if self.folder is not None else self.path.parent / "runs" / self.id


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CampaignFileError(str(path), None, "", f"cannot read the campaign file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise CampaignFileError(str(path), None, "", "the campaign file is not UTF-8 text") from exc
    return parse_campaign(text, path)


def parse_campaign(text: str, path: Path) -> CampaignConfig:
    """Validate the TOML ``text`` of the campaign file at ``path``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise CampaignFileError(
            str(path), int(match.group(1)) if match else None, "", f"not valid TOML: {exc}"
        ) from None
    return _Reader(data, _Lines(text), path).read()


class _Reader:
    def __init__(self, data: dict[str, Any], lines: _Lines, path: Path) -> None:
        self.data = data
        self.lines = lines
        self.path = path
        self.base = path.parent

    def fail(self, field_name: str, message: str) -> CampaignFileError:
        return CampaignFileError(str(self.path), self.lines.find(field_name), field_name, message)

    def table(self, name: str, parent: Mapping[str, Any] | None = None, prefix: str = "") -> dict[str, Any]:
        source = self.data if parent is None else parent
        value = source.get(name, {})
        full = f"{prefix}{name}"
        if not isinstance(value, dict):
            raise self.fail(full, f"must be a table, got {type(value).__name__}")
        return value

    def only(self, table: Mapping[str, Any], prefix: str, known: set[str]) -> None:
        for key in table:
            if key not in known:
                hint = ", ".join(sorted(known))
                raise self.fail(f"{prefix}.{key}", f"unknown setting (known here: {hint})")

    def string(self, table: Mapping[str, Any], key: str, prefix: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(f"{prefix}.{key}", f"must be a string, got {value!r}")
        return value

    def number(
        self, table: Mapping[str, Any], key: str, prefix: str, default: float | None, *, minimum: float = 0.0
    ) -> float | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.fail(f"{prefix}.{key}", f"must be a number >= {minimum:g}, got {value!r}")
        return float(value)

    def integer(
        self,
        table: Mapping[str, Any],
        key: str,
        prefix: str,
        default: int,
        *,
        minimum: int = 1,
        maximum: int | None = None,
    ) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(f"{prefix}.{key}", f"must be an integer >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.fail(f"{prefix}.{key}", f"must be an integer from {minimum} to {maximum}, got {value!r}")
        return value

    def boolean(self, table: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{prefix}.{key}", f"must be true or false, got {value!r}")
        return value

    def choice(self, table: Mapping[str, Any], key: str, prefix: str, default: str, choices: tuple[str, ...]) -> str:
        value = table.get(key, default)
        if value not in choices:
            raise self.fail(f"{prefix}.{key}", f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return str(value)

    def line_text(self, table: Mapping[str, Any], key: str, prefix: str, default: str) -> str:
        value = self.string(table, key, prefix, default) or ""
        if not value.strip():
            raise self.fail(f"{prefix}.{key}", "must not be blank")
        return value

    def number_e164(self, table: Mapping[str, Any], key: str, prefix: str) -> str | None:
        value = self.string(table, key, prefix)
        if value is None:
            return None
        try:
            validate_e164(value, field=key)
        except InvalidNumberError as exc:
            raise self.fail(f"{prefix}.{key}", str(exc)) from None
        return value

    def path_of(self, value: str) -> Path:
        candidate = Path(value)
        return candidate if candidate.is_absolute() else self.base / candidate

    def read(self) -> CampaignConfig:
        self.only(
            self.data,
            "",
            {"campaign", "prompt", "rules", "services", "simulation", "amd", "voicemail", "transfer", "keypad"},
        )
        campaign = self.table("campaign")
        if not campaign:
            raise self.fail("campaign", "the [campaign] table is required (name, caller_id, prospects)")
        known = {"name", "id", "caller_id", "prospects", "dnc_file", "folder", "default_timezone", "record_calls"}
        self.only(campaign, "campaign", known)
        name = self.string(campaign, "name", "campaign")
        if not name:
            raise self.fail("campaign.name", "is required")
        campaign_id = self.string(campaign, "id", "campaign") or _SLUG.sub("-", name.lower()).strip("-")
        if not campaign_id or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", campaign_id):
            raise self.fail("campaign.id", f"must be 1-64 letters, digits, '.', '_' or '-', got {campaign_id!r}")
        caller_id = self.string(campaign, "caller_id", "campaign")
        if caller_id is None:
            raise self.fail("campaign.caller_id", "is required: the Twilio number calls come from, in E.164")
        try:
            validate_e164(caller_id, field="caller_id")
        except InvalidNumberError as exc:
            raise self.fail("campaign.caller_id", str(exc)) from None
        prospects = self.string(campaign, "prospects", "campaign")
        if not prospects:
            raise self.fail("campaign.prospects", "is required: the prospects CSV file")
        dnc_file = self.string(campaign, "dnc_file", "campaign")
        folder = self.string(campaign, "folder", "campaign")
        default_tz = self.string(campaign, "default_timezone", "campaign", "America/New_York") or ""
        try:
            zone(default_tz)
        except ConfigurationError as exc:
            raise self.fail("campaign.default_timezone", str(exc)) from None
        record_calls = campaign.get("record_calls", True)
        if not isinstance(record_calls, bool):
            raise self.fail("campaign.record_calls", f"must be true or false, got {record_calls!r}")
        config = CampaignConfig(
            path=self.path,
            id=campaign_id,
            name=name,
            caller_id=caller_id,
            prospects=self.path_of(prospects),
            dnc_file=self.path_of(dnc_file) if dnc_file else None,
            folder=self.path_of(folder) if folder else None,
            default_timezone=default_tz,
            record_calls=record_calls,
            lines=self.lines,
        )
        self.read_prompt(config)
        self.read_rules(config)
        self.read_features(config)
        services = self.table("services")
        self.only(services, "services", {"deepgram", "openai", "cartesia", "twilio"})
        for service in services:
            config.services[service] = self.table(service, services, "services.")
        config.simulation = self.table("simulation")
        return config

    def read_prompt(self, config: CampaignConfig) -> None:
        prompt = self.table("prompt")
        self.only(prompt, "prompt", {"template", "template_file", "variables"})
        template = self.string(prompt, "template", "prompt")
        template_file = self.string(prompt, "template_file", "prompt")
        if template is not None and template_file is not None:
            raise self.fail("prompt.template_file", "give either template or template_file, not both")
        if template_file is not None:
            try:
                template = self.path_of(template_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise self.fail("prompt.template_file", f"cannot read {template_file!r}: {exc.strerror}") from None
        variables = self.table("variables", prompt, "prompt.")
        for key, value in variables.items():
            if not isinstance(value, str | int | float):
                raise self.fail(f"prompt.variables.{key}", f"must be a string or number, got {value!r}")
        config.prompt_variables = {key: str(value) for key, value in variables.items()}
        if template is not None:
            try:
                config.prompt = PromptTemplate(template)
            except ConfigurationError as exc:
                raise self.fail("prompt.template", str(exc)) from None

    def read_rules(self, config: CampaignConfig) -> None:
        rules = self.table("rules")
        known = {
            "calling_hours",
            "max_concurrent_calls",
            "calls_per_second",
            "budget_usd",
            "reserve_per_call_usd",
            "max_call_seconds",
            "outcomes",
        }
        self.only(rules, "rules", known)
        config.max_concurrent_calls = self.integer(rules, "max_concurrent_calls", "rules", 5)
        rate = self.number(rules, "calls_per_second", "rules", 1.0, minimum=0.001)
        assert rate is not None
        config.calls_per_second = rate
        config.budget_usd = self.number(rules, "budget_usd", "rules", None)
        reserve = self.number(rules, "reserve_per_call_usd", "rules", 0.20)
        assert reserve is not None
        config.reserve_per_call_usd = reserve
        limit = self.number(rules, "max_call_seconds", "rules", 600.0, minimum=1.0)
        assert limit is not None
        config.max_call_seconds = limit
        config.calling_hours = self.read_hours(self.table("calling_hours", rules, "rules."))
        outcomes = self.table("outcomes", rules, "rules.")
        for outcome, table in outcomes.items():
            prefix = f"rules.outcomes.{outcome}"
            if not isinstance(table, dict):
                raise self.fail(prefix, 'must be a table such as { action = "retry", delay_minutes = 30 }')
            config.outcome_rules[outcome] = self.read_rule(table, prefix, config.outcome_rules.get(outcome))

    def read_hours(self, table: Mapping[str, Any]) -> CallingHours:
        prefix = "rules.calling_hours"
        self.only(table, prefix, {"start", "end", "days"})
        default = CallingHours()
        start = self.clock_time(table, "start", prefix, default.start)
        end = self.clock_time(table, "end", prefix, default.end)
        days = table.get("days")
        day_numbers = default.days
        if days is not None:
            if not isinstance(days, list) or not days:
                raise self.fail(f"{prefix}.days", f"must be a list of {', '.join(WEEKDAYS)}, got {days!r}")
            try:
                day_numbers = frozenset(WEEKDAYS.index(str(day).lower()[:3]) for day in days)
            except ValueError:
                raise self.fail(f"{prefix}.days", f"days are {', '.join(WEEKDAYS)}, got {days!r}") from None
        try:
            return CallingHours(start, end, day_numbers)
        except ConfigurationError as exc:
            raise self.fail(prefix, str(exc)) from None

    def clock_time(self, table: Mapping[str, Any], key: str, prefix: str, default: dt.time) -> dt.time:
        value = table.get(key)
        if value is None:
            return default
        if isinstance(value, dt.time):
            return value
        if isinstance(value, str):
            if key == "end" and value.strip() in ("24:00", "24:00:00"):
                return END_OF_DAY  # a window to midnight ("23:59" would leave the day's last minute out)
            try:
                return dt.time.fromisoformat(value)
            except ValueError:
                pass
        hint = ' (or "24:00" for an end at midnight)' if key == "end" else ""
        raise self.fail(f"{prefix}.{key}", f'must be a time of day like "09:00"{hint}, got {value!r}')

    def read_rule(self, table: Mapping[str, Any], prefix: str, base: OutcomeRule | None) -> OutcomeRule:
        self.only(table, prefix, {"action", "delay_minutes", "delay_seconds", "max_attempts", "then"})
        action_name = self.string(table, "action", prefix, base.action.value if base else None)
        if action_name is None:
            raise self.fail(f"{prefix}.action", f"is required for a new outcome: one of {[a.value for a in Action]}")
        try:
            action = Action(action_name)
        except ValueError:
            actions = [a.value for a in Action]
            raise self.fail(f"{prefix}.action", f"must be one of {actions}, got {action_name!r}") from None
        if "delay_minutes" in table and "delay_seconds" in table:
            raise self.fail(f"{prefix}.delay_seconds", "give delay_minutes or delay_seconds, not both")
        delay = base.delay if base else 0.0
        if "delay_minutes" in table:
            delay = 60.0 * (self.number(table, "delay_minutes", prefix, 0.0) or 0.0)
        elif "delay_seconds" in table:
            delay = self.number(table, "delay_seconds", prefix, 0.0) or 0.0
        attempts = self.integer(table, "max_attempts", prefix, base.max_attempts if base else 1)
        then_name = self.string(table, "then", prefix, base.then.value if base else "unreachable") or ""
        try:
            then = ProspectState(then_name)
            return OutcomeRule(action, delay, attempts, then)
        except (ValueError, ConfigurationError) as exc:
            finals = [s.value for s in ProspectState if s.final]
            raise self.fail(f"{prefix}.then", f"must be one of {finals}, got {then_name!r} ({exc})") from None

    # ------------------------------------------------------ call features

    def read_features(self, config: CampaignConfig) -> None:
        amd = self.read_amd(config)
        transfer = self.read_transfer()
        opt_out, keypad = self.read_keypad(transfer)
        config.features = CallFeatureSettings(amd=amd, transfer=transfer, opt_out=opt_out, keypad=keypad)

    def read_amd(self, config: CampaignConfig) -> AmdSettings:
        prefix = "amd"
        amd = self.table("amd")
        self.only(amd, prefix, {"enabled", "detection", "while_detecting", "twilio_timeout", "decision_timeout"})
        enabled = self.boolean(amd, "enabled", prefix, True)
        detection = self.choice(amd, "detection", prefix, "DetectMessageEnd", ("DetectMessageEnd", "Enable"))
        while_detecting = self.choice(amd, "while_detecting", prefix, AMD_WAIT, (AMD_WAIT, AMD_START_AND_YIELD))
        twilio_timeout = None
        if "twilio_timeout" in amd:
            twilio_timeout = self.integer(amd, "twilio_timeout", prefix, 30, minimum=3, maximum=59)
        decision = self.number(amd, "decision_timeout", prefix, 35.0, minimum=1.0)
        assert decision is not None

        voicemail = self.table("voicemail")
        self.only(voicemail, "voicemail", {"message", "message_file"})
        message = self.string(voicemail, "message", "voicemail")
        message_file = self.string(voicemail, "message_file", "voicemail")
        if message is not None and message_file is not None:
            raise self.fail("voicemail.message_file", "give either message or message_file, not both")
        field_name = "voicemail.message"
        if message_file is not None:
            field_name = "voicemail.message_file"
            try:
                message = self.path_of(message_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise self.fail(field_name, f"cannot read {message_file!r}: {exc.strerror}") from None
        if message is not None:
            if not message.strip():
                raise self.fail(field_name, "must not be blank (leave [voicemail] out to leave no message)")
            if not enabled:
                raise self.fail(field_name, "a voicemail needs answering-machine detection: set [amd] enabled = true")
            try:
                config.voicemail = PromptTemplate(message)
            except ConfigurationError as exc:
                raise self.fail(field_name, str(exc)) from None
        return AmdSettings(
            mode=detection if enabled else None,
            while_detecting=while_detecting,
            decision_timeout=decision,
            machine_detection_timeout=twilio_timeout,
            voicemail_message=message,
        )

    def read_transfer(self) -> TransferSettings:
        prefix = "transfer"
        transfer = self.table("transfer")
        lines = ("handover_line", "fallback_line", "end_line")
        self.only(transfer, prefix, {"number", "caller_id", "timeout", "on_no_answer", "on_error", *lines})
        default = TransferSettings()
        number = self.number_e164(transfer, "number", prefix)
        if number is None and transfer:
            raise self.fail("transfer.number", "is required: the rep's number in E.164 (leave [transfer] out for none)")
        return TransferSettings(
            number=number,
            caller_id=self.number_e164(transfer, "caller_id", prefix),
            timeout=self.integer(transfer, "timeout", prefix, default.timeout, minimum=5, maximum=600),
            on_no_answer=self.choice(
                transfer, "on_no_answer", prefix, TRANSFER_RESUME, (TRANSFER_RESUME, TRANSFER_END)
            ),
            transfer_on_error=self.boolean(transfer, "on_error", prefix, default.transfer_on_error),
            handover_line=self.line_text(transfer, "handover_line", prefix, default.handover_line),
            fallback_line=self.line_text(transfer, "fallback_line", prefix, default.fallback_line),
            end_line=self.line_text(transfer, "end_line", prefix, default.end_line),
        )

    def read_keypad(self, transfer: TransferSettings) -> tuple[OptOutSettings, KeypadSettings]:
        prefix = "keypad"
        keypad = self.table("keypad")
        self.only(keypad, prefix, {"opt_out", "bindings", "inter_digit_timeout"})
        opt_out = keypad.get("opt_out", False)
        digit: str | None = None
        if opt_out is not False:
            one_key = isinstance(opt_out, str | int) and not isinstance(opt_out, bool) and len(str(opt_out)) == 1
            if not one_key or str(opt_out) not in "0123456789*#":
                raise self.fail("keypad.opt_out", f'must be one key (0-9, * or #) like "9", or false; got {opt_out!r}')
            digit = str(opt_out)
        bindings = self.table("bindings", keypad, "keypad.")
        names: dict[str, str] = {}
        for sequence, action in bindings.items():
            where = f"keypad.bindings.{sequence}"
            if not sequence or len(sequence) > 8 or not set(sequence) <= set("0123456789*#"):
                raise self.fail(where, f"a sequence is 1-8 keys of 0-9, * and #, got {sequence!r}")
            if action not in KEYPAD_ACTIONS:
                raise self.fail(where, f"the action must be one of {', '.join(KEYPAD_ACTIONS)}, got {action!r}")
            if action == "transfer" and not transfer.enabled:
                raise self.fail(where, "a transfer key needs a rep: set [transfer] number")
            if digit is not None and sequence == digit and action != "opt_out":
                raise self.fail(where, f"key {digit!r} is already the opt-out key ([keypad] opt_out)")
            names[sequence] = action
        timeout = self.number(keypad, "inter_digit_timeout", prefix, 2.0, minimum=0.1)
        assert timeout is not None
        return OptOutSettings(keypad_digit=digit), KeypadSettings(bindings=names, inter_digit_timeout=timeout)
