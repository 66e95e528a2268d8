"""The campaign's rules as values: calling hours, what each outcome leads to.

**Calling hours** are in the prospect's local time (``zoneinfo``, so daylight
saving changes are handled by the tz database): ``CallingHours.allows(at, tz)``
and ``next_opening(at, tz)``, the first moment at or after ``at`` when a call
may start. A local time that does not exist on a spring-forward day is never
produced: openings are computed as local wall times and converted through the
zone, and a skipped time moves forward with it.

**Outcomes → rules** is data (``OutcomeRule`` per outcome name), so new
outcomes (voicemail, fax, transfer, opt-out) are entries, not code:

=====================  ========  ====================================================
outcome                action    default
=====================  ========  ====================================================
busy                   retry     after 15 min, at most 3 attempts, then unreachable
no_answer              retry     after 4 h, at most 3 attempts, then unreachable
failed                 remove    the number is not in service: off the list
invalid_number         remove    Twilio refused the number
error                  retry     our side or the network failed: after 10 min, 3 attempts, then failed
rate_limited           retry     Twilio said too many requests, or our server was overloaded: after 1 min, 10 attempts
canceled               retry     we canceled it before an answer: after 10 min, 3 attempts
interrupted            retry     the runner stopped mid-call: at once, 3 attempts, then failed
completed              done      answered, no result recorded
meeting_booked         done
not_interested         done
interested             done
wrong_person           remove
callback_requested     callback  at the time the prospect asked (or after 1 day)
do_not_call            dnc       the number joins the do-not-call list
opted_out              dnc
do_not_call_list       dnc       added to the list after the claim: never dialled
voicemail_left         done      (a campaign setting: e.g. retry after 1 day)
machine                retry     a machine, no message left: after 4 h, 2 attempts, then unreachable
fax                    remove
transferred            done      the prospect is talking with a rep
transfer_unanswered    retry     asked for a rep who did not answer: after 1 h, 2 attempts, then done
=====================  ========  ====================================================

The product's spec names the actions (busy: retry later; no answer: mark
unreachable; invalid: remove); the delays and counts are our defaults,
each a setting. An outcome with no rule falls back to ``error``'s.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vantum_pipeline.errors import ConfigurationError

__all__ = [
    "COUNTRY_TIMEZONES",
    "DEFAULT_OUTCOME_RULES",
    "END_OF_DAY",
    "WEEKDAYS",
    "Action",
    "CallingHours",
    "Decision",
    "OutcomeRule",
    "ProspectState",
    "decide",
    "timezone_for_number",
    "zone",
]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: A calling window's ``end`` at midnight (``"24:00"`` in a campaign file): the window runs to the end of the day.
END_OF_DAY = dt.time.max


class ProspectState(enum.StrEnum):
    """Where a prospect is in the campaign. The last five are final."""

    PENDING = "pending"  # due at next_at (or now)
    DIALING = "dialing"  # an attempt is claimed and being placed or on the line
    DONE = "done"
    REMOVED = "removed"
    UNREACHABLE = "unreachable"
    DNC = "dnc"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self not in (ProspectState.PENDING, ProspectState.DIALING)


class Action(enum.StrEnum):
    RETRY = "retry"
    DONE = "done"
    REMOVE = "remove"
    CALLBACK = "callback"
    DNC = "dnc"


@dataclass(frozen=True, slots=True)
class OutcomeRule:
    """What an outcome leads to. For ``retry``: try again after ``delay``
    seconds until ``max_attempts`` attempts ended this way, then the prospect
    becomes ``then``. For ``callback``: ``delay`` is used when no time was given."""

    action: Action
    delay: float = 0.0
    max_attempts: int = 1
    then: ProspectState = ProspectState.UNREACHABLE

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ConfigurationError(f"a rule's delay must be >= 0 seconds, got {self.delay}")
        if self.max_attempts < 1:
            raise ConfigurationError(f"a rule's max_attempts must be >= 1, got {self.max_attempts}")
        if not self.then.final:
            raise ConfigurationError(f"a rule's 'then' must be a final state, got {self.then.value!r}")


_MIN, _HOUR, _DAY = 60.0, 3600.0, 86400.0

DEFAULT_OUTCOME_RULES: Mapping[str, OutcomeRule] = {
    "busy": OutcomeRule(Action.RETRY, 15 * _MIN, 3),
    "no_answer": OutcomeRule(Action.RETRY, 4 * _HOUR, 3),
    "failed": OutcomeRule(Action.REMOVE),
    "invalid_number": OutcomeRule(Action.REMOVE),
    "error": OutcomeRule(Action.RETRY, 10 * _MIN, 3, ProspectState.FAILED),
    "rate_limited": OutcomeRule(Action.RETRY, 1 * _MIN, 10, ProspectState.FAILED),
    "canceled": OutcomeRule(Action.RETRY, 10 * _MIN, 3, ProspectState.FAILED),
    "interrupted": OutcomeRule(Action.RETRY, 0.0, 3, ProspectState.FAILED),
    "completed": OutcomeRule(Action.DONE),
    "meeting_booked": OutcomeRule(Action.DONE),
    "not_interested": OutcomeRule(Action.DONE),
    "interested": OutcomeRule(Action.DONE),
    "other": OutcomeRule(Action.DONE),
    "wrong_person": OutcomeRule(Action.REMOVE),
    "callback_requested": OutcomeRule(Action.CALLBACK, 1 * _DAY),
    "do_not_call": OutcomeRule(Action.DNC),
    "opted_out": OutcomeRule(Action.DNC),
    "do_not_call_list": OutcomeRule(Action.DNC),
    "voicemail": OutcomeRule(Action.DONE),
    "voicemail_left": OutcomeRule(Action.DONE),
    "machine": OutcomeRule(Action.RETRY, 4 * _HOUR, 2),
    "fax": OutcomeRule(Action.REMOVE),
    "transferred": OutcomeRule(Action.DONE),
    "transfer_unanswered": OutcomeRule(Action.RETRY, 1 * _HOUR, 2, ProspectState.DONE),
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to a prospect after an attempt: its new state, when it is
    due again (pending only) and whether its number joins the DNC list."""

    state: ProspectState
    next_at: dt.datetime | None = None
    add_to_dnc: bool = False
    reason: str = ""
    #: The prospect's final result (final states only): the outcome, or the state a retry rule ran out into.
    result: str | None = None


def decide(
    outcome: str,
    *,
    rules: Mapping[str, OutcomeRule],
    ended_this_way: int,
    now: dt.datetime,
    callback_at: dt.datetime | None = None,
) -> Decision:
    """Apply the rule for ``outcome``; ``ended_this_way`` counts the prospect's
    attempts with this outcome, the one just ended included."""
    rule = rules.get(outcome) or rules.get("error") or DEFAULT_OUTCOME_RULES["error"]
    if rule.action is Action.DONE:
        return Decision(ProspectState.DONE, reason=outcome, result=outcome)
    if rule.action is Action.REMOVE:
        return Decision(ProspectState.REMOVED, reason=outcome, result=outcome)
    if rule.action is Action.DNC:
        return Decision(ProspectState.DNC, add_to_dnc=True, reason=outcome, result=outcome)
    if rule.action is Action.CALLBACK:
        when = callback_at if callback_at is not None and callback_at > now else now + dt.timedelta(seconds=rule.delay)
        return Decision(ProspectState.PENDING, when, reason=f"{outcome}: call back")
    if ended_this_way >= rule.max_attempts:
        # Ran out into "done": the last outcome is the result (voicemail_left twice); else the state says it.
        result = outcome if rule.then is ProspectState.DONE else rule.then.value
        return Decision(rule.then, reason=f"{outcome} {ended_this_way}x: {rule.then.value}", result=result)
    return Decision(
        ProspectState.PENDING,
        now + dt.timedelta(seconds=rule.delay),
        reason=f"{outcome} {ended_this_way}/{rule.max_attempts}: retry",
    )


def zone(name: str, *, field: str = "timezone") -> ZoneInfo:
    """``ZoneInfo(name)``, or a ConfigurationError naming ``field``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"{field}: unknown time zone {name!r} (use an IANA name like Europe/Paris)") from exc


@dataclass(frozen=True, slots=True)
class CallingHours:
    """When calls may start, in the prospect's local time: ``start`` ≤ t < ``end`` on ``days``
    (``end`` = ``END_OF_DAY``: to midnight, the whole of the last minute included)."""

    start: dt.time = dt.time(9, 0)
    end: dt.time = dt.time(20, 0)
    days: frozenset[int] = field(default_factory=lambda: frozenset(range(5)))  # Monday = 0

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise ConfigurationError(f"calling hours: start {self.start} must be before end {self.end}")
        if not self.days or not self.days <= frozenset(range(7)):
            raise ConfigurationError(f"calling hours: days must be a non-empty subset of {', '.join(WEEKDAYS)}")

    def allows(self, at: dt.datetime, tz: ZoneInfo) -> bool:
        local = at.astimezone(tz)
        clock = local.time().replace(tzinfo=None)
        # END_OF_DAY ("24:00") closes the window at midnight: the day's last instant is in it.
        return local.weekday() in self.days and self.start <= clock and (clock < self.end or self.end == END_OF_DAY)

    def next_opening(self, at: dt.datetime, tz: ZoneInfo) -> dt.datetime:
        """``at`` if calls are allowed then, else when the next window opens (UTC)."""
        if self.allows(at, tz):
            return at
        local = at.astimezone(tz)
        for offset in range(15):  # a window lost to a clock change's gap moves it a week on
            day = local.date() + dt.timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opening = self._opening_on(day, tz)
            if opening is not None and opening > at:
                return opening
        raise AssertionError("two weeks always hold an opening")  # pragma: no cover

    def _opening_on(self, day: dt.date, tz: ZoneInfo) -> dt.datetime | None:
        """The window's first moment on ``day`` (UTC). A start skipped by a spring-forward
        change opens the window at the end of the gap; None when the whole window is in it."""
        early = dt.datetime.combine(day, self.start.replace(fold=1), tzinfo=tz).astimezone(dt.UTC)
        late = dt.datetime.combine(day, self.start.replace(fold=0), tzinfo=tz).astimezone(dt.UTC)
        moment = min(early, late)
        while moment <= max(early, late):  # at most the gap's length, in minutes
            if self.allows(moment, tz):
                return moment
            moment += dt.timedelta(minutes=1)
        return None

    def window_text(self) -> str:
        days = ",".join(WEEKDAYS[d] for d in sorted(self.days))
        end = "24:00" if self.end == END_OF_DAY else f"{self.end:%H:%M}"
        return f"{self.start:%H:%M}-{end} {days}"


#: Country calling code → time zone, for countries with one zone. Countries
#: spanning several zones (+1, +7, +55, +61, +52, ...) get the campaign default.
COUNTRY_TIMEZONES: Mapping[str, str] = {
    "20": "Africa/Cairo",
    "27": "Africa/Johannesburg",
    "30": "Europe/Athens",
    "31": "Europe/Amsterdam",
    "32": "Europe/Brussels",
    "33": "Europe/Paris",
    "34": "Europe/Madrid",
    "36": "Europe/Budapest",
    "39": "Europe/Rome",
    "40": "Europe/Bucharest",
    "41": "Europe/Zurich",
    "43": "Europe/Vienna",
    "44": "Europe/London",
    "45": "Europe/Copenhagen",
    "46": "Europe/Stockholm",
    "47": "Europe/Oslo",
    "48": "Europe/Warsaw",
    "49": "Europe/Berlin",
    "51": "America/Lima",
    "54": "America/Argentina/Buenos_Aires",
    "56": "America/Santiago",
    "57": "America/Bogota",
    "60": "Asia/Kuala_Lumpur",
    "63": "Asia/Manila",
    "64": "Pacific/Auckland",
    "65": "Asia/Singapore",
    "66": "Asia/Bangkok",
    "81": "Asia/Tokyo",
    "82": "Asia/Seoul",
    "84": "Asia/Ho_Chi_Minh",
    "86": "Asia/Shanghai",
    "90": "Europe/Istanbul",
    "91": "Asia/Kolkata",
    "92": "Asia/Karachi",
    "234": "Africa/Lagos",
    "254": "Africa/Nairobi",
    "351": "Europe/Lisbon",
    "352": "Europe/Luxembourg",
    "353": "Europe/Dublin",
    "354": "Atlantic/Reykjavik",
    "358": "Europe/Helsinki",
    "420": "Europe/Prague",
    "852": "Asia/Hong_Kong",
    "886": "Asia/Taipei",
    "971": "Asia/Dubai",
    "972": "Asia/Jerusalem",
}


def timezone_for_number(number: str) -> str | None:
    """The time zone of an E.164 number's country when it has only one; else None."""
    digits = number.lstrip("+")
    for length in (3, 2):
        zone_name = COUNTRY_TIMEZONES.get(digits[:length])
        if zone_name is not None:
            return zone_name
    return None
