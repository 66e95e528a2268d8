"""The calls FakeTwilio places: how the far end behaves, and what is recorded.

``CalleeBehaviour`` says how a number answers (or does not), what its media
stream says (a callee script, or an ``AnsweringMachine`` that greets, beeps
and records, or a fax's CNG tones), what AMD decides about it, and where the
fake signs wrongly on purpose. ``RestFault`` injects REST failures.
``FakeCall`` and ``FakeDial`` record everything observed of a call and of
the ``<Dial>``s it ran.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vantum_pipeline.testing.callee import Callee, CalleeScript

__all__ = [
    "API_VERSION",
    "AnsweringMachine",
    "CalleeBehaviour",
    "FakeCall",
    "FakeDial",
    "RestFault",
    "RestRequest",
    "beep",
    "fax_machine",
    "fax_tones",
]

API_VERSION = "2010-04-01"


def _tone(seconds: float, freq: float, level: int = 8000, rate: int = 8000) -> bytes:
    samples = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * samples)).astype("<i2").tobytes()


def beep(seconds: float = 0.5) -> bytes:
    """An answering machine's beep: 1 kHz, pcm16 at 8 kHz."""
    return _tone(seconds, 1000.0)


def fax_tones(seconds: float = 4.0) -> bytes:
    """A calling fax's CNG: 0.5 s of 1100 Hz every 3.5 s, pcm16 at 8 kHz."""
    cycle = _tone(0.5, 1100.0) + bytes(2 * int(3.0 * 8000))
    count = max(1, math.ceil(seconds / 3.5))
    return (cycle * count)[: 2 * int(seconds * 8000)]


@dataclass(slots=True)
class AnsweringMachine:
    """A voicemail box: says ``greeting`` (pcm16 at ``sample_rate``; a tone
    stand-in when None), beeps (unless ``beep_seconds`` is 0), then records
    what it hears until hung up on, ``hang_up_after_silence`` seconds after
    the caller's audio stopped, or ``max_record_seconds``."""

    greeting: bytes | None = None
    sample_rate: int = 8000
    beep_seconds: float = 0.5
    hang_up_after_silence: float = 3.0
    max_record_seconds: float = 60.0

    async def __call__(self, callee: Callee) -> None:
        greeting = self.greeting if self.greeting is not None else _tone(2.0, 440.0, level=6000)
        await callee.say(greeting, self.sample_rate)
        if self.beep_seconds > 0:
            await callee.say(beep(self.beep_seconds), 8000)
        callee.greeting_ended_at = callee.now()
        callee.greeting_over.set()
        try:
            await callee.listen(quiet=self.hang_up_after_silence, max_wait=self.max_record_seconds)
        except TimeoutError:
            pass
        await callee.hang_up()


@dataclass(slots=True)
class CalleeBehaviour:
    """How the far end of a number behaves."""

    script: CalleeScript | None = None
    #: None: answer. "busy", "no-answer" or "failed": end that way instead.
    outcome: str | None = None
    #: With MachineDetection: what AMD decides.
    answered_by: str = "human"
    #: How long AMD takes to decide a human, fax or unknown (and machine_start).
    amd_seconds: float = 0.3
    #: A machine's voicemail box (a default one when AMD says machine and this is None).
    machine: AnsweringMachine | None = None
    ring_seconds: float = 0.05
    #: Where to send a wrong X-Twilio-Signature: "webhook", "stream", "status", "amd", "dial".
    bad_signature: frozenset[str] = frozenset()
    #: The callee hangs up after this long on the line at most (a rep: the
    #: length of the bridged conversation).
    max_seconds: float = 600.0
    #: Scripts of the media streams after the first (a call back from a transfer).
    later_scripts: tuple[CalleeScript, ...] = ()


@dataclass(slots=True, frozen=True)
class RestFault:
    """How the next REST request(s) fail: an error status (Twilio's error JSON,
    ``Retry-After`` when given), after ``delay`` seconds, or no answer at all."""

    status: int = 500
    code: int | None = None
    message: str = "An internal server error occurred"
    retry_after: float | None = None
    delay: float = 0.0
    stall: bool = False
    #: Answer with the RFC 9457 problem shape newer Twilio APIs use, not the legacy one.
    problem: bool = False

    @classmethod
    def rate_limited(cls, retry_after: float | None = 1.0) -> RestFault:
        return cls(429, 20429, "Too Many Requests", retry_after=retry_after)

    @classmethod
    def unavailable(cls) -> RestFault:
        return cls(503, 20503, "Service Unavailable")


@dataclass(slots=True)
class RestRequest:
    method: str
    path: str
    params: dict[str, list[str]]
    at: float


@dataclass
class FakeDial:
    """One ``<Dial>`` of a call: the child call to ``to`` and how it went."""

    sid: str
    to: str
    caller_id: str
    timeout: int
    status: str = "ringing"
    answered_at: float | None = None
    ended_at: float | None = None
    #: (HTTP status, body) of the action callback, if one was made.
    action_response: tuple[int | None, str] | None = None

    @property
    def duration(self) -> int:
        if self.answered_at is None:
            return 0
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return max(0, round(end - self.answered_at))


@dataclass
class FakeCall:
    """One call placed through the fake, and everything observed about it."""

    sid: str
    account_sid: str
    to: str
    from_: str
    params: dict[str, list[str]]
    behaviour: CalleeBehaviour
    status: str = "queued"
    created_at: float = field(default_factory=time.monotonic)
    #: Wall-clock (Unix) creation time, for the resource's dates.
    created_wall: float = field(default_factory=time.time)
    answered_at: float | None = None
    ended_at: float | None = None
    answered_by: str | None = None
    error_code: int | None = None
    #: (CallStatus, HTTP status of our POST) of every status callback sent.
    callbacks: list[tuple[str, int | None]] = field(default_factory=list)
    webhook_status: int | None = None
    twiml: str | None = None
    stream_url: str | None = None
    stream_status: int | None = None
    callee: Callee | None = None
    #: Every media stream's callee, in order (``callee`` is the latest).
    callees: list[Callee] = field(default_factory=list)
    #: (params, HTTP status of our POST) of every AMD callback sent.
    amd_callbacks: list[tuple[dict[str, str], int | None]] = field(default_factory=list)
    #: TwiML documents given by ``POST …/Calls/{sid}.json`` (redirects).
    redirects: list[str] = field(default_factory=list)
    dials: list[FakeDial] = field(default_factory=list)
    #: Texts of ``<Say>`` verbs run.
    said: list[str] = field(default_factory=list)
    hangup_requested_at: float | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set while a ``<Dial>``ed party is connected to the callee.
    bridged: asyncio.Event = field(default_factory=asyncio.Event)
    _hangup: asyncio.Event = field(default_factory=asyncio.Event)
    _redirect: asyncio.Event = field(default_factory=asyncio.Event)
    _pending_twiml: str | None = None
    _greeting_over: asyncio.Event = field(default_factory=asyncio.Event)

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None

    @property
    def duration(self) -> int:
        if self.answered_at is None:
            return 0
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return max(0, round(end - self.answered_at))

    @property
    def ended_wall(self) -> float | None:
        """Wall-clock (Unix) end time."""
        return None if self.ended_at is None else self.created_wall + (self.ended_at - self.created_at)

    def resource(self, base_url: str) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json"
        created = _rfc2822(self.created_wall)
        ended = self.status in ("completed", "busy", "no-answer", "failed", "canceled")
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "status": self.status,
            "direction": "outbound-api",
            "api_version": API_VERSION,
            "answered_by": self.answered_by,
            "duration": str(self.duration) if ended else None,
            "price": None,
            "price_unit": "USD",
            "date_created": created,
            "date_updated": _rfc2822(self.ended_wall) if self.ended_wall is not None else created,
            "start_time": created,
            "end_time": _rfc2822(self.ended_wall) if self.ended_wall is not None else None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "caller_name": None,
            "forwarded_from": None,
            "group_sid": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri,
            "subresource_uris": {"recordings": uri.replace(".json", "/Recordings.json")},
        }


def _rfc2822(unix: float) -> str:
    """Twilio's date format: ``Tue, 31 Aug 2010 20:36:28 +0000``."""
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(unix, datetime.UTC)).replace("-0000", "+0000")


async def fax_machine(callee: Callee) -> None:
    """A fax machine's side of the line: CNG tones until hung up on."""
    await callee.say(fax_tones(60.0), 8000)
