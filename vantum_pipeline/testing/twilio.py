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

Answering-machine detection: with ``MachineDetection`` and ``AsyncAmd=true``
the call connects at once and the verdict (the number's ``answered_by``)
is POSTed, signed, to ``AsyncAmdStatusCallback`` with ``CallSid``,
``AccountSid``, ``AnsweredBy`` and ``MachineDetectionDuration`` (ms): for a
human, fax or ``unknown`` after ``amd_seconds``; for a machine, with
``DetectMessageEnd``, once its greeting and beep are over
(``machine_end_beep``...), with ``Enable`` as ``machine_start`` after
``amd_seconds``. Without ``AsyncAmd`` the verdict comes as ``AnsweredBy``
on the answer webhook, as before. A machine's media stream plays its
greeting, then a 1 kHz beep, then records (``callee.heard``) until it is hung
up on or hears ``hang_up_after_silence`` seconds of silence after the bot
spoke (:class:`AnsweringMachine`); a fax plays CNG tones.

Redirecting a live call: ``POST …/Calls/{sid}.json`` with ``Twiml`` (or
``Url``) stops what the call is doing (a media stream gets ``stop`` and is
closed) and runs the new TwiML. ``<Dial>`` (with ``<Number>``, ``callerId``,
``timeout``, ``action``) dials the number as a child call behaving as
``fake.behave(number, ...)`` says (answers, then hangs up after
``max_seconds``; ``busy``; ``no-answer``, also when it rings longer than the
timeout), then POSTs the ``action`` callback (``DialCallStatus``,
``DialCallSid``, ``DialCallDuration``, ``DialBridged``) and runs the TwiML it
returns, e.g. a new ``<Connect><Stream>`` whose callee runs the number's
next ``later_scripts`` entry. ``<Say>`` is recorded (``said``) and takes
the time of its words. The callee sends ``dtmf`` messages with the ``Dtmf``
script step.

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
signature on the webhook / stream upgrade / status / AMD / Dial action callbacks
(``bad_signature={"webhook", "stream", "status", "amd", "dial"}``), AMD's ``answered_by``,
and the callee script's own faults (hang up mid-sentence, ``Drop``, ``SendRaw``).

The behaviours, faults and records live in ``testing.twilio_calls`` and are
re-exported here.
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
from dataclasses import replace
from typing import Any

from aiohttp import BasicAuth, ClientError, ClientSession, ClientTimeout, TCPConnector, WSServerHandshakeError, web
from loguru import logger

from vantum_pipeline.testing.callee import Callee, CalleeScript
from vantum_pipeline.testing.twilio_calls import (
    API_VERSION,
    AnsweringMachine,
    CalleeBehaviour,
    FakeCall,
    FakeDial,
    RestFault,
    RestRequest,
    beep,
    fax_machine,
    fax_tones,
)

__all__ = [
    "AnsweringMachine",
    "CalleeBehaviour",
    "FakeCall",
    "FakeDial",
    "FakeTwilio",
    "RestFault",
    "RestRequest",
    "beep",
    "fax_tones",
]

DEFAULT_ACCOUNT_SID = "AC" + "f" * 32
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token"
WRONG_KEY = "not-the-auth-token"
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
#: Seconds per word of ``<Say>`` (Twilio's voices speak about 150 words a minute).
SAY_SECONDS_PER_WORD = 0.4
FINAL_SIP = {"busy": 486, "no-answer": 487, "failed": 404, "completed": 200, "canceled": 487}


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
        url = params["Url"][-1] if params.get("Url") else None
        if status is not None and status not in ("completed", "canceled"):
            return _error(400, 21220, f"Invalid call state: Status must be completed or canceled, got {status}")
        if status is None and twiml is None and url is None:
            return web.json_response(found.resource(self.base_url))  # nothing to change
        if found.ended.is_set():
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status is None:
            return await self._redirect_call(found, twiml, url)
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

    async def _redirect_call(self, call: FakeCall, twiml: str | None, url: str | None) -> web.Response:
        """Replace the call's TwiML: what runs now stops (a stream gets ``stop``)."""
        if call.status != "in-progress":
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        if twiml is None:
            assert url is not None
            status, body = await self._post(call, url, self._call_params(call, "in-progress"), "webhook")
            if status != 200:
                return _error(400, 21220, f"Unable to fetch TwiML from {url.split('?')[0]}")
            twiml = body
        try:
            ElementTree.fromstring(twiml)
        except ElementTree.ParseError:
            return _error(400, 21220, "Invalid TwiML: not well-formed XML")
        call.redirects.append(twiml)
        call._pending_twiml = twiml
        call._redirect.set()
        if call.callee is not None and not call.callee.ended.is_set():
            await call.callee.end("redirected")
        return web.json_response(call.resource(self.base_url))

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
        detection = call.param("MachineDetection")
        async_amd = detection is not None and call.param("AsyncAmd") == "true"
        if detection and not async_amd:
            call.answered_by = self._amd_verdict(call)
        amd: asyncio.Task[None] | None = None
        if async_amd:
            amd = asyncio.get_running_loop().create_task(self._async_amd(call), name=f"fake-amd:{call.sid}")
        try:
            twiml = await self._twiml(call)
            await self._callback(call, "answered")
            while twiml is not None:
                twiml = await self._run_twiml(call, twiml)
        finally:
            if amd is not None:
                amd.cancel()
                await asyncio.wait({amd}, timeout=1.0)
        await self._final(call, "completed")

    def _amd_verdict(self, call: FakeCall) -> str:
        """What AMD reports for the callee: ``machine_start`` with ``Enable``."""
        verdict = call.behaviour.answered_by
        if verdict.startswith("machine_") and call.param("MachineDetection") == "Enable":
            return "machine_start"
        if verdict == "machine_start" and call.param("MachineDetection") == "DetectMessageEnd":
            return "machine_end_other"
        return verdict

    async def _async_amd(self, call: FakeCall) -> None:
        """Decide, then POST the verdict to ``AsyncAmdStatusCallback``."""
        verdict = self._amd_verdict(call)
        started = time.monotonic()
        limit = float(call.param("MachineDetectionTimeout") or 30)
        try:
            if verdict.startswith("machine_end_") and self._plays_machine(call.behaviour):
                async with asyncio.timeout(limit):
                    await call._greeting_over.wait()
            else:
                await asyncio.sleep(call.behaviour.amd_seconds)
        except TimeoutError:
            verdict = "unknown"
        call.answered_by = verdict
        url = call.param("AsyncAmdStatusCallback")
        if not url or call.ended_at is not None:
            return
        params = {
            "AccountSid": call.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": verdict,
            "MachineDetectionDuration": str(round((time.monotonic() - started) * 1000)),
        }
        http_status, _ = await self._post(call, url, params, "amd")
        call.amd_callbacks.append((params, http_status))

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
        except (OSError, TimeoutError, ClientError) as exc:  # Twilio logs it; the call goes on
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

    async def _run_twiml(self, call: FakeCall, twiml: str) -> str | None:
        """Run one TwiML document; the next one to run (a redirect, a
        ``<Dial>`` action's answer), or None: the call is over."""
        try:
            root = ElementTree.fromstring(twiml)
        except ElementTree.ParseError:
            call.error_code = 12100  # document parse failure
            return None
        if root.tag != "Response":
            call.error_code = 12100
            return None
        for verb in root:
            if call._hangup.is_set():
                return None
            if call._redirect.is_set():
                break
            if verb.tag == "Hangup":
                return None
            if verb.tag == "Connect":
                stream = verb.find("Stream")
                if stream is None or not stream.get("url"):
                    call.error_code = 12200  # schema validation
                    return None
                parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
                await self._stream(call, stream.get("url", ""), parameters)
                if (
                    not call._redirect.is_set()
                    and call.callee is not None
                    and call.callee.end_reason
                    in (
                        "callee hung up",
                        "dropped",
                        "api hang-up",
                    )
                ):
                    return None  # the callee is gone: nothing after <Connect> runs
            elif verb.tag == "Dial":
                following = await self._dial(call, verb)
                if following is not None:
                    return following
            elif verb.tag == "Say":
                text = (verb.text or "").strip()
                call.said.append(text)
                if await self._hung_up_within(call, SAY_SECONDS_PER_WORD * max(1, len(text.split()))):
                    return None
            elif verb.tag == "Pause":
                with contextlib.suppress(ValueError):
                    if await self._hung_up_within(call, float(verb.get("length", "1"))):
                        return None
        if call._redirect.is_set():
            call._redirect.clear()
            following, call._pending_twiml = call._pending_twiml, None
            return following
        return None

    async def _dial(self, call: FakeCall, verb: ElementTree.Element) -> str | None:
        """``<Dial><Number>``: ring the number, bridge it, then the ``action``."""
        number_element = verb.find("Number")
        number = ((number_element.text if number_element is not None else verb.text) or "").strip()
        try:
            timeout = int(verb.get("timeout", "30"))
        except ValueError:
            timeout = 30
        timeout = min(max(timeout, 5), 600)  # Twilio clamps the ring timeout
        dial = FakeDial("CA" + secrets.token_hex(16), number, verb.get("callerId") or call.from_, timeout)
        call.dials.append(dial)
        rep = self.behaviours.get(number)
        if not _DIALABLE.fullmatch(number) or rep is None:
            dial.status = "failed"  # nobody at this number
        elif rep.outcome in ("busy", "failed"):
            dial.status = rep.outcome if not await self._interrupted(call, rep.ring_seconds) else "canceled"
        elif rep.outcome == "no-answer" or rep.ring_seconds >= timeout:
            dial.status = "no-answer" if not await self._interrupted(call, timeout) else "canceled"
        elif await self._interrupted(call, rep.ring_seconds):
            dial.status = "canceled"
        else:
            dial.answered_at = time.monotonic()
            dial.status = "in-progress"
            call.bridged.set()
            await self._interrupted(call, rep.max_seconds)  # the conversation with the rep
            call.bridged.clear()
            dial.status = "completed"
        dial.ended_at = time.monotonic()
        action = verb.get("action")
        if not action:
            return None  # the document goes on after <Dial>
        params = self._call_params(call, "completed" if call._hangup.is_set() else "in-progress")
        params.update(
            {
                "DialCallSid": dial.sid,
                "DialCallStatus": dial.status,
                "DialBridged": str(dial.answered_at is not None).lower(),
            }
        )
        if dial.answered_at is not None:
            params["DialCallDuration"] = str(dial.duration)
        status, body = await self._post(call, action, params, "dial")
        dial.action_response = (status, body)
        if call._hangup.is_set() or status != 200:
            return None
        return body or None

    async def _interrupted(self, call: FakeCall, seconds: float) -> bool:
        """Wait ``seconds``; True if the call was hung up or redirected meanwhile."""
        hangup = asyncio.ensure_future(call._hangup.wait())
        redirect = asyncio.ensure_future(call._redirect.wait())
        try:
            done, _ = await asyncio.wait({hangup, redirect}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            redirect.cancel()
        return bool(done)

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
        script = self._script_for(call)
        callee = Callee(
            socket,
            stream_sid="MZ" + secrets.token_hex(16),
            call_sid=call.sid,
            account_sid=call.account_sid,
            parameters=parameters,
            max_seconds=call.behaviour.max_seconds,
        )
        callee.greeting_over = call._greeting_over
        call.callee = callee
        call.callees.append(callee)
        try:
            if call._hangup.is_set() or call._redirect.is_set():
                return
            await callee.run(script)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await socket.close()

    @staticmethod
    def _plays_machine(behaviour: CalleeBehaviour) -> bool:
        """A machine answers: its greeting and beep (unless a script of its own was given)."""
        machine = behaviour.answered_by.startswith("machine_")
        return machine and (behaviour.machine is not None or behaviour.script is None)

    def _script_for(self, call: FakeCall) -> CalleeScript | None:
        """The script of the call's next media stream."""
        behaviour = call.behaviour
        streams = len(call.callees)
        if streams > 0:
            later = behaviour.later_scripts
            return later[streams - 1] if streams - 1 < len(later) else None
        if call.param("MachineDetection") and self._plays_machine(behaviour):
            return behaviour.machine or AnsweringMachine()
        if call.param("MachineDetection") and behaviour.answered_by == "fax" and behaviour.script is None:
            return fax_machine
        return behaviour.script
