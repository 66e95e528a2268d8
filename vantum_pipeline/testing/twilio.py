"""FakeTwilio: a local stand-in for Twilio's REST API and its call machinery.

Point the official SDK at it (``client.api.base_url = fake.base_url``, or
``TwilioSettings(api_base_url=fake.base_url)``) and it behaves like Twilio
placing an outbound call:

1. ``POST /2010-04-01/Accounts/{sid}/Calls.json`` (Basic auth with the fake's
   account sid and auth token): validates ``To``/``From``, honours the magic
   test numbers (To ``+15005550001`` → 21217, ``…0002`` → 21214, ``…0003`` →
   21215, ``…0004`` → 21216; From ``+15005550001`` → 21212) and answers 201
   with a call resource, or 400 with Twilio's error JSON (21211 for a ``To``
   that is not a phone number).
2. Then drives the call: status callbacks (only the ``StatusCallbackEvent``s
   asked for; ``completed`` when none are given) for ``initiated``,
   ``ringing``, then either a final ``busy`` / ``no-answer`` / ``failed``
   (when the callee's behaviour says so) or the answer: the TwiML is fetched
   from ``Url`` (a signed form POST) or taken from ``Twiml``, ``answered``
   is posted, and a ``<Connect><Stream>`` opens the media websocket with a
   signed upgrade and the ``<Parameter>``s in ``start.customParameters``.
3. A :class:`~vantum_pipeline.testing.callee.Callee` runs the media stream
   from the number's script; the call ends when the callee hangs up, the
   server closes the socket, or ``POST …/Calls/{sid}.json`` with
   ``Status=completed`` hangs it up (the fake then sends ``stop``); the
   ``completed`` callback carries ``CallDuration``.

``GET …/Calls/{sid}.json`` fetches a call; ``GET …/Calls.json`` lists calls,
newest first, filtered by ``To``, ``From``, ``Status`` and ``StartTime`` /
``StartTime<`` / ``StartTime>`` (compared by UTC date, as Twilio documents),
in pages of ``PageSize`` (default 50) with ``next_page_uri``. Every REST request is recorded
(``requests``), every call keeps its callbacks, webhook response, and its
callee's recordings (``calls[sid].callee.heard``: what the callee heard).

Faults: ``fake.fail_next(RestFault(...), times=n)`` for the REST API (an
error status such as 429 with ``Retry-After``, 500 or 503; a delay; no
answer at all). Per number (``fake.behave(number, ...)``) or for every number
(``fake.default``): ``outcome`` ("busy", "no-answer", "failed"), a wrong
signature on the webhook / stream upgrade / status callbacks
(``bad_signature={"webhook", "stream", "status"}``), AMD's ``answered_by``,
and the callee script's own faults (hang up mid-sentence, ``Drop``, ``SendRaw``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import math
import re
import secrets
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import BasicAuth, ClientSession, ClientTimeout, TCPConnector, WSServerHandshakeError, web
from loguru import logger

from vantum_pipeline.testing.callee import Callee, CalleeScript

__all__ = ["CalleeBehaviour", "FakeCall", "FakeTwilio", "RestFault", "RestRequest"]

DEFAULT_ACCOUNT_SID = "AC" + "f" * 32
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token"
WRONG_KEY = "not-the-auth-token"
API_VERSION = "2010-04-01"
#: A number Twilio could dial: E.164 with a plausible length (7 to 15 digits).
_DIALABLE = re.compile(r"\+[1-9][0-9]{6,14}")

#: Twilio's test credentials' magic numbers: To → (code, message).
MAGIC_TO = {
    "+15005550001": (21217, "Phone number {to} is not a valid phone number."),
    "+15005550002": (21214, "'To' phone number {to} cannot be reached."),
    "+15005550003": (21215, "Account not authorized to call {to}. Check your international permissions."),
    "+15005550004": (21216, "Account not allowed to call {to}: the number is blocked."),
}
MAGIC_FROM = {"+15005550001": (21212, "The 'From' number {from_} is not a valid phone number.")}
FINAL_SIP = {"busy": 486, "no-answer": 487, "failed": 404, "completed": 200, "canceled": 487}


@dataclass(slots=True)
class CalleeBehaviour:
    """How the far end of a number behaves."""

    script: CalleeScript | None = None
    #: None: answer. "busy", "no-answer" or "failed": end that way instead.
    outcome: str | None = None
    #: With MachineDetection: what AMD decides.
    answered_by: str = "human"
    ring_seconds: float = 0.05
    #: Where to send a wrong X-Twilio-Signature: "webhook", "stream", "status".
    bad_signature: frozenset[str] = frozenset()
    #: The callee hangs up after this long on the line at most.
    max_seconds: float = 600.0


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
    #: Wall-clock (Unix) creation and end times, for the resource's dates.
    created_wall: float = field(default_factory=time.time)
    ended_wall: float | None = None
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
    hangup_requested_at: float | None = None
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _hangup: asyncio.Event = field(default_factory=asyncio.Event)

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None

    @property
    def duration(self) -> int:
        if self.answered_at is None:
            return 0
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return max(0, round(end - self.answered_at))

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


def _filter_date(value: str) -> datetime.date | None:
    """The UTC date of a ``StartTime`` filter value (``2026-03-10`` or an ISO 8601 date-time)."""
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(datetime.UTC)
    return parsed.date()


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def _sign(key: str, url: str, params: Mapping[str, str] | None) -> str:
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(key).compute_signature(url, dict(params or {})))


class FakeTwilio:
    """Async context manager: ``async with FakeTwilio() as twilio: ... twilio.base_url``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        default: CalleeBehaviour | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.default = default or CalleeBehaviour()
        self.request_timeout = request_timeout
        self.behaviours: dict[str, CalleeBehaviour] = {}
        self.calls: dict[str, FakeCall] = {}
        self.requests: list[RestRequest] = []
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._drivers: set[asyncio.Task[None]] = set()
        self._faults: list[RestFault] = []

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        """The REST API's base URL: give it to the SDK as ``client.api.base_url``."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> FakeTwilio:
        app = web.Application(client_max_size=256 * 1024)
        prefix = f"/{API_VERSION}/Accounts/{{account}}/Calls"
        app.router.add_post(prefix + ".json", self._create)
        app.router.add_get(prefix + ".json", self._list)
        app.router.add_get(prefix + "/{sid}.json", self._fetch)
        app.router.add_post(prefix + "/{sid}.json", self._update)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._session = ClientSession(
            connector=TCPConnector(limit=0), timeout=ClientTimeout(total=self.request_timeout)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for driver in self._drivers:
            driver.cancel()
        if self._drivers:
            await asyncio.wait(self._drivers, timeout=3.0)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------ scripting

    def behave(self, number: str, behaviour: CalleeBehaviour | None = None, **changes: Any) -> CalleeBehaviour:
        """Set how ``number`` behaves (a behaviour, or changes to the default)."""
        chosen = behaviour or replace(self.default, **changes)
        if "bad_signature" in changes and not isinstance(chosen.bad_signature, frozenset):
            chosen.bad_signature = frozenset(chosen.bad_signature)
        self.behaviours[number] = chosen
        return chosen

    def fail_next(self, fault: RestFault, times: int = 1) -> None:
        """Make the next ``times`` REST requests fail with ``fault``."""
        self._faults.extend([fault] * times)

    async def wait_ended(self, sid: str | None = None, *, within: float = 30.0) -> list[FakeCall]:
        """Wait until the call ``sid`` (or every call so far) has ended."""
        calls = [self.calls[sid]] if sid is not None else list(self.calls.values())
        async with asyncio.timeout(within):
            for call in calls:
                await call.ended.wait()
        return calls

    # ------------------------------------------------------------------ REST

    def _authorized(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            auth = None
        if auth is None or (auth.login, auth.password) != (self.account_sid, self.auth_token):
            return _error(401, 20003, "Authenticate")
        if request.match_info["account"] != self.account_sid:
            return _error(404, 20404, "The requested resource was not found")
        return None

    async def _record(self, request: web.Request) -> dict[str, list[str]]:
        params: dict[str, list[str]] = {}
        if request.method == "POST":
            form = await request.post()
            for key in form:
                params.setdefault(key, []).extend(str(v) for v in form.getall(key))
        self.requests.append(RestRequest(request.method, request.path, params, time.monotonic()))
        return params

    async def _injected(self) -> web.Response | None:
        """The next injected fault's answer, if one is pending (after its delay)."""
        if not self._faults:
            return None
        fault = self._faults.pop(0)
        if fault.stall:
            await asyncio.Event().wait()  # until the client gives up or the fake stops
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status < 400:
            return None
        code = fault.code or fault.status
        if fault.problem:
            body = {
                "type": f"https://www.twilio.com/docs/errors/{code}",
                "title": fault.message,
                "status": fault.status,
                "code": code,
                "detail": f"injected fault {code}",
            }
            response = web.json_response(body, status=fault.status, content_type="application/problem+json")
        else:
            response = _error(fault.status, code, fault.message)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = f"{fault.retry_after:g}"
        return response

    async def _create(self, request: web.Request) -> web.Response:
        params = await self._record(request)
        refused = self._authorized(request) or await self._injected()
        if refused is not None:
            return refused

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        to, from_ = one("To"), one("From")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not _DIALABLE.fullmatch(to):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not _DIALABLE.fullmatch(from_):
            return _error(400, 21212, f"Invalid 'From' Phone Number: {from_}")
        if to in MAGIC_TO:
            code, message = MAGIC_TO[to]
            return _error(400, code, message.format(to=to))
        if from_ in MAGIC_FROM:
            code, message = MAGIC_FROM[from_]
            return _error(400, code, message.format(from_=from_))
        if not one("Url") and not one("Twiml") and not one("ApplicationSid"):
            return _error(400, 21205, "A 'Url', 'Twiml' or 'ApplicationSid' parameter is required")
        behaviour = self.behaviours.get(to, self.default)
        call = FakeCall("CA" + secrets.token_hex(16), self.account_sid, to, from_, params, behaviour)
        self.calls[call.sid] = call
        driver = asyncio.get_running_loop().create_task(self._drive(call), name=f"fake-twilio:{call.sid}")
        self._drivers.add(driver)
        driver.add_done_callback(self._drivers.discard)
        return web.json_response(call.resource(self.base_url), status=201)

    async def _list(self, request: web.Request) -> web.Response:
        await self._record(request)
        refused = self._authorized(request) or await self._injected()
        if refused is not None:
            return refused
        query = request.query
        try:
            page_size = min(1000, max(1, int(query.get("PageSize", "50"))))
            page = max(0, int(query.get("Page", "0")))
        except ValueError:
            return _error(400, 20001, "Invalid paging parameters")
        bounds: dict[str, datetime.date] = {}
        for name in ("StartTime", "StartTime<", "StartTime>"):
            if name in query:
                day = _filter_date(query[name])
                if day is None:
                    return _error(400, 20001, f"Invalid {name}: {query[name]}")
                bounds[name] = day
        selected = []
        for call in sorted(self.calls.values(), key=lambda c: c.created_wall, reverse=True):
            if call.account_sid != request.match_info["account"]:
                continue
            if any(query.get(name) not in (None, value) for name, value in (("To", call.to), ("From", call.from_))):
                continue
            if query.get("Status") not in (None, call.status):
                continue
            day = datetime.datetime.fromtimestamp(call.created_wall, datetime.UTC).date()
            if "StartTime" in bounds and day != bounds["StartTime"]:
                continue
            if "StartTime<" in bounds and day > bounds["StartTime<"]:
                continue
            if "StartTime>" in bounds and day < bounds["StartTime>"]:
                continue
            selected.append(call)
        chunk = selected[page * page_size : (page + 1) * page_size]
        uri = f"/{API_VERSION}/Accounts/{request.match_info['account']}/Calls.json"
        more = (page + 1) * page_size < len(selected)
        body = {
            "calls": [call.resource(self.base_url) for call in chunk],
            "page": page,
            "page_size": page_size,
            "start": page * page_size,
            "end": page * page_size + max(0, len(chunk) - 1),
            "uri": f"{uri}?PageSize={page_size}&Page={page}",
            "first_page_uri": f"{uri}?PageSize={page_size}&Page=0",
            "previous_page_uri": f"{uri}?PageSize={page_size}&Page={page - 1}" if page > 0 else None,
            "next_page_uri": f"{uri}?PageSize={page_size}&Page={page + 1}" if more else None,
        }
        return web.json_response(body)

    async def _lookup(self, request: web.Request) -> FakeCall | web.Response:
        refused = self._authorized(request) or await self._injected()
        if refused is not None:
            return refused
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return call

    async def _fetch(self, request: web.Request) -> web.Response:
        await self._record(request)
        found = await self._lookup(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(found.resource(self.base_url))

    async def _update(self, request: web.Request) -> web.Response:
        params = await self._record(request)
        found = await self._lookup(request)
        if isinstance(found, web.Response):
            return found
        status = params["Status"][-1] if params.get("Status") else None
        twiml = params["Twiml"][-1] if params.get("Twiml") else None
        hang_up = status in ("completed", "canceled") or (twiml is not None and "<Hangup" in twiml)
        if status is not None and status not in ("completed", "canceled"):
            return _error(400, 21220, f"Invalid call state: Status must be completed or canceled, got {status}")
        if not hang_up:
            return _error(400, 21220, "This fake only supports hanging up (Status=completed|canceled)")
        if found.ended.is_set():
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status == "canceled" and found.status == "in-progress":
            # Twilio: canceled only ends calls that are queued or ringing.
            return web.json_response(found.resource(self.base_url))
        found.hangup_requested_at = time.monotonic()
        found._hangup.set()
        if found.callee is not None:
            await found.callee.end("api hang-up")
        return web.json_response(found.resource(self.base_url))

    # ----------------------------------------------------------- the call

    async def _drive(self, call: FakeCall) -> None:
        try:
            await self._progress(call)
        except asyncio.CancelledError:
            if call.callee is not None:
                await call.callee.end("fake shutting down")
            raise
        except Exception as exc:
            logger.opt(exception=exc).error("fake twilio: call {} failed: {}", call.sid, exc)
            call.error_code = call.error_code or 11200
            await self._final(call, "failed")
        finally:
            call.ended.set()

    async def _progress(self, call: FakeCall) -> None:
        behaviour = call.behaviour
        await self._callback(call, "initiated")
        call.status = "ringing"
        await self._callback(call, "ringing")
        if await self._hung_up_within(call, behaviour.ring_seconds):
            await self._final(call, "canceled")
            return
        if behaviour.outcome is not None:
            await self._final(call, behaviour.outcome)
            return
        call.status = "in-progress"
        call.answered_at = time.monotonic()
        call.answered.set()
        if call.param("MachineDetection"):
            call.answered_by = behaviour.answered_by
        twiml = await self._twiml(call)
        await self._callback(call, "answered")
        if twiml is not None:
            await self._run_twiml(call, twiml)
        await self._final(call, "completed")

    async def _hung_up_within(self, call: FakeCall, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await call._hangup.wait()
        except TimeoutError:
            return False
        return True

    def _call_params(self, call: FakeCall, status: str) -> dict[str, str]:
        params = {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }
        if call.answered_by is not None:
            params["AnsweredBy"] = call.answered_by
        return params

    async def _post(self, call: FakeCall, url: str, params: dict[str, str], where: str) -> tuple[int | None, str]:
        assert self._session is not None
        key = WRONG_KEY if where in call.behaviour.bad_signature else self.auth_token
        headers = {"X-Twilio-Signature": _sign(key, url, params), "User-Agent": "TwilioProxy/1.1"}
        try:
            async with self._session.post(url, data=params, headers=headers) as response:
                return response.status, await response.text()
        except (OSError, TimeoutError) as exc:
            logger.warning("fake twilio: {} POST to {} failed: {}", where, url.split("?")[0], exc)
            return None, ""

    async def _callback(self, call: FakeCall, event: str, status: str | None = None) -> None:
        url = call.param("StatusCallback")
        if not url:
            return
        events = call.params.get("StatusCallbackEvent") or ["completed"]
        if event not in events:
            return
        status = status or {"answered": "in-progress"}.get(event, event)
        params = self._call_params(call, status)
        params.update(
            {
                "CallbackSource": "call-progress-events",
                "SequenceNumber": str(len(call.callbacks)),
                "Timestamp": email.utils.formatdate(usegmt=True),
            }
        )
        if event == "completed":
            params["CallDuration"] = str(call.duration)
            params["Duration"] = str(math.ceil(call.duration / 60))
            params["SipResponseCode"] = str(FINAL_SIP.get(status, 200))
            if call.error_code is not None:
                params["ErrorCode"] = str(call.error_code)
        http_status, _ = await self._post(call, url, params, "status")
        call.callbacks.append((status, http_status))

    async def _final(self, call: FakeCall, status: str) -> None:
        if call.ended_at is not None:
            return
        call.status = status
        call.ended_at = time.monotonic()
        call.ended_wall = time.time()
        await self._callback(call, "completed", status)

    async def _twiml(self, call: FakeCall) -> str | None:
        inline = call.param("Twiml")
        if inline is not None:
            call.twiml = inline
            return inline
        url = call.param("Url")
        if url is None:
            return None
        status, body = await self._post(call, url, self._call_params(call, "in-progress"), "webhook")
        call.webhook_status = status
        if status != 200:
            call.error_code = 11200  # HTTP retrieval failure
            return None
        call.twiml = body
        return body

    async def _run_twiml(self, call: FakeCall, twiml: str) -> None:
        try:
            root = ElementTree.fromstring(twiml)
        except ElementTree.ParseError:
            call.error_code = 12100  # document parse failure
            return
        if root.tag != "Response":
            call.error_code = 12100
            return
        for verb in root:
            if verb.tag == "Hangup":
                return
            if verb.tag == "Connect":
                stream = verb.find("Stream")
                if stream is None or not stream.get("url"):
                    call.error_code = 12200  # schema validation
                    return
                parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
                await self._stream(call, stream.get("url", ""), parameters)
                return
            if verb.tag == "Pause":
                with contextlib.suppress(ValueError):
                    if await self._hung_up_within(call, float(verb.get("length", "1"))):
                        return

    async def _stream(self, call: FakeCall, url: str, parameters: dict[str, str]) -> None:
        assert self._session is not None
        call.stream_url = url
        key = WRONG_KEY if "stream" in call.behaviour.bad_signature else self.auth_token
        headers = {"X-Twilio-Signature": _sign(key, url, None)}
        try:
            socket = await self._session.ws_connect(url, headers=headers, autoping=True, max_msg_size=1 << 20)
        except WSServerHandshakeError as exc:
            call.stream_status = exc.status
            call.error_code = 31920  # stream: websocket handshake error
            return
        except (OSError, TimeoutError) as exc:
            logger.warning("fake twilio: media stream to {} failed: {}", url, exc)
            call.error_code = 31920
            return
        call.stream_status = 101
        callee = Callee(
            socket,
            stream_sid="MZ" + secrets.token_hex(16),
            call_sid=call.sid,
            account_sid=call.account_sid,
            parameters=parameters,
            max_seconds=call.behaviour.max_seconds,
        )
        call.callee = callee
        try:
            if call._hangup.is_set():
                return
            await callee.run(call.behaviour.script)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await socket.close()
