"""The aiohttp server Twilio talks to: webhooks, media streams, one pipeline per call.

Routes (under the configured public base URL):

``POST /twilio/answer?call=<token>``
    the answer webhook of a call we placed: returns TwiML that connects the
    call to our media stream, with the call's data as ``<Parameter>``s (the
    ``<Stream>`` URL does not carry query strings): the one-time call
    token, the campaign id and the prospect id.
``GET /twilio/media`` (websocket)
    the media stream. The ``start`` message's ``call_token`` must belong to
    a call we placed and not be used yet; otherwise the socket is closed
    (1008) saying why. Then ``pipeline_factory(TwilioCall)`` builds the
    call's ``PipelineTask`` and the server runs it until the call ends.
``POST /twilio/status?call=<token>``
    status callbacks: they drive the call's state machine to its outcome.
``POST /twilio/amd?call=<token>``
    the asynchronous answering-machine detection verdict (``AnsweredBy``):
    handed to the call's pipeline through ``OutboundCall.machine_detection``.
    A missing ``AnsweredBy`` is answered 400 and logged; an unknown value is
    read as ``unknown``; a second verdict is ignored.
``POST /twilio/dial?call=<token>``
    the ``action`` callback of a transfer's ``<Dial>``: the rep answered (the
    call ends when the bridge does: outcome ``transferred``), or did not
    (``DialCallStatus`` busy, no-answer, failed, canceled), and the call
    comes back to the bot through a new ``<Connect><Stream>`` (the pipeline
    factory sees ``call.resumed_after == "transfer_failed"``) or ends with
    the end line, as ``TransferSettings.on_no_answer`` says.

Features (``features=CallFeatureSettings``): calls are placed with
asynchronous AMD when ``features.amd.mode`` is set; a transfer asked for by
the pipeline (``OutboundCall.request_transfer``) is carried out when the
pipeline has ended, by redirecting the live call to a TwiML ``<Dial>``
instead of hanging up; ``dnc`` (a ``DncChecker``) refuses to place calls to
listed numbers (outcome ``do_not_call``, no request to Twilio).

Every request, the websocket upgrade included, must carry a valid
``X-Twilio-Signature`` for the public URL it was sent to (the public base
URL plus the request's path and query: proxies and tunnels change the Host
we see, so it is never read from the request). A bad or missing signature,
or a webhook body that is not a form (Twilio posts forms; nothing else can
carry a valid signature here), is answered 403 before anything is processed,
counted in ``rejected_signatures`` and logged in one line. ``validate_signatures=False``
turns this off for local development, and says so loudly.

Several processes (``workers.py``): ``listen=False`` opens no socket, and
``adopt(sock)`` serves a connection another process accepted;
``stream_limit`` (a ``StreamLimit``) adds a bound shared with other servers
to ``max_calls``, taken at the accepted upgrade and given back when the
socket is done with.

Memory: ``tune_gc=True`` (the default) sets the garbage collector up for
serving calls, from the first ``start`` until the last started server of the
process stops (then it is put back as it was). It collects once and moves
every object then alive (the modules, the SDKs, the application's set-up:
about 158,000 objects) out of the collector's reach (``gc.freeze``), and
raises its youngest threshold from 700 to 10,000 allocations. Calls make
little cyclic garbage: with the defaults, 100 calls ran 25 young passes a
second and a full pass every five seconds (each walking the calls' 150,000
or so live objects), and all of them together freed 2,400 to 5,600 objects in
twenty seconds. In the call-density benchmark (8 kHz, two alternating
rounds each against no tuning): the collector's time falls from 6.9 % to
1.0 % of the process's CPU time at K = 100 and from 14.5 % to 2.8 % at
K = 200, and its longest pause (it stalls every call of the process) from
170-185 ms to 36 ms and from 350-400 ms to 43-47 ms. Full passes still run,
after about a million allocations, so cycles that outlive a call are still
freed. ``tune_gc=False`` leaves the collector to the application.

Start: ``warm_up=True`` (the default) runs ``vantum_pipeline.warmup`` in a
thread before the server serves: the imports and first-use set-up the SDKs
would otherwise do in the first call (559 modules in the call-density
benchmark), on the event loop, stalling every call of the process.

Load: the server measures how late its event loop runs (``loop_monitor``, a
``LoopMonitor``; see ``vantum_pipeline.observability.loop``), into the
process's metrics registry as ``loop.lag``. While the loop's p90 lag over the
last 5 s exceeds ``overload_lag`` (default 0.1 s: the process has far more
work than its core can do on time), ``place_call`` places no new call: the
call ends at once as ``retry_later`` (status ``overloaded``), with no
request to Twilio, and the calls in progress keep the core. Media streams of
calls already placed are still served. ``overload_lag=None`` places calls
whatever the load.

Isolation: each call runs in its own request handler; an exception, a
malformed stream or a failed service ends that call only. When a pipeline
ends on our side (goodbye said, ``end_call``, budget, error) the call is hung
up through the REST API (after the goodbye's last mark came back: the
output transport waits for it before the EndFrame leaves), then the socket
is closed. When the callee hangs up, the pipeline is cancelled and its
processors close their service sockets. When the far end breaks the media
stream's protocol (see ``transport.py``), the pipeline ends with an error,
the call is hung up and its outcome is ``error``, never ``completed``.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import socket as socketlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

from vantum_pipeline import warmup
from vantum_pipeline.errors import ConfigurationError, ProtocolError, ServiceError
from vantum_pipeline.observability.loop import LoopMonitor
from vantum_pipeline.observability.metrics import process_registry
from vantum_pipeline.observability.retry import RetryExhausted
from vantum_pipeline.task import PipelineTask
from vantum_pipeline.telephony.amd import MachineDetection
from vantum_pipeline.telephony.calls import CallRegistry, OutboundCall, place_call
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.control import RESUMED_AFTER_TRANSFER, TransferRequest
from vantum_pipeline.telephony.dnc import DncChecker, DoNotCallError
from vantum_pipeline.telephony.numbers import InvalidNumberError, mask_number, validate_e164
from vantum_pipeline.telephony.outcome import CallOutcome, CallRecord, outcome_for_status
from vantum_pipeline.telephony.settings import TRANSFER_RESUME, CallFeatureSettings, TwilioSettings
from vantum_pipeline.telephony.state import CallState, state_for_status
from vantum_pipeline.transports.twilio.serializer import TwilioSerializer, TwilioStartFrame
from vantum_pipeline.transports.twilio.transport import TwilioTransport, TwilioTransportParams

__all__ = ["PipelineFactory", "ServerPaths", "StreamLimit", "TwilioCall", "TwilioServer"]

#: Seconds ``stop()`` gives the REST API for the final status of the calls still without a record.
SETTLE_TIMEOUT = 5.0

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
#: Largest webhook body or media message we accept.
MAX_REQUEST_BYTES = 64 * 1024


class _ServingGc:
    """The collector's set-up while at least one server that asked for it is started (module docstring)."""

    YOUNG_THRESHOLD = 10_000
    holders = 0
    saved: tuple[int, int, int] | None = None

    @classmethod
    def hold(cls) -> None:
        if cls.holders == 0:
            gc.collect()
            gc.freeze()
            young, middle, old = gc.get_threshold()
            if young < cls.YOUNG_THRESHOLD:
                cls.saved = (young, middle, old)
                gc.set_threshold(cls.YOUNG_THRESHOLD, middle, old)
            logger.debug(
                "garbage collector set up for calls: {} objects set aside, thresholds {}",
                gc.get_freeze_count(),
                gc.get_threshold(),
            )
        cls.holders += 1

    @classmethod
    def release(cls) -> None:
        cls.holders -= 1
        if cls.holders == 0:
            gc.unfreeze()
            if cls.saved is not None:
                gc.set_threshold(*cls.saved)
                cls.saved = None


@dataclass(slots=True)
class TwilioCall:
    """What the pipeline factory gets: one answered call and its media stream."""

    transport: TwilioTransport
    call: OutboundCall
    parameters: dict[str, str]
    server: TwilioServer

    @property
    def call_sid(self) -> str:
        return self.transport.call_sid

    @property
    def answered_by(self) -> str | None:
        return self.call.answered_by


PipelineFactory = Callable[[TwilioCall], Awaitable[PipelineTask] | PipelineTask]


@dataclass(slots=True, frozen=True)
class ServerPaths:
    answer: str = "/twilio/answer"
    media: str = "/twilio/media"
    status: str = "/twilio/status"
    amd: str = "/twilio/amd"
    dial: str = "/twilio/dial"


class StreamLimit(Protocol):
    """A bound on media streams shared with other servers (see ``workers.py``).

    ``acquire`` is called at the accepted upgrade, after the server's own
    ``max_calls`` check, and must not block for long; ``release`` once for
    every successful ``acquire``, whatever ends the stream.
    """

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


@dataclass(slots=True)
class _ActiveCall:
    call: OutboundCall
    transport: TwilioTransport
    task: PipelineTask | None = None
    hung_up: bool = field(default=False)
    #: Set once the pipeline has finished and our side's verdict (failure or not) is on the call.
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class TwilioServer:
    """Serves many concurrent calls; see the module docstring.

    ``public_base_url`` (from the settings) is the URL Twilio uses to reach
    this server; tests that bind port 0 set it after ``start()``.
    ``max_calls`` bounds concurrent media streams, counted from the accepted
    upgrade (before ``start``) until the socket is done with (more are
    refused with 503, their call tokens unused); ``start_timeout`` bounds the wait for a stream's ``start``;
    ``outcome_timeout`` is how long after a stream ends the final status
    callback may take before the call's status is fetched instead, and how
    long a final status callback that arrives while the call's pipeline is
    still running waits for it to finish (so that the pipeline's failure
    decides the outcome). ``tune_gc``: see *Memory* in the module docstring.
    ``warm_up``: see *Start* in the module docstring. ``overload_lag``
    (seconds, or None) and ``loop_monitor`` (default: one observing into
    ``process_registry()``): see *Load* in the module docstring.
    """

    def __init__(
        self,
        settings: TwilioSettings,
        pipeline_factory: PipelineFactory,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        client: TwilioRestClient | None = None,
        registry: CallRegistry | None = None,
        transport_params: TwilioTransportParams | None = None,
        paths: ServerPaths | None = None,
        max_calls: int = 100,
        start_timeout: float = 10.0,
        factory_timeout: float = 10.0,
        outcome_timeout: float = 15.0,
        features: CallFeatureSettings | None = None,
        dnc: DncChecker | None = None,
        stream_limit: StreamLimit | None = None,
        listen: bool = True,
        tune_gc: bool = True,
        warm_up: bool = True,
        overload_lag: float | None = 0.1,
        loop_monitor: LoopMonitor | None = None,
    ) -> None:
        if overload_lag is not None and not overload_lag > 0:
            raise ConfigurationError(f"overload_lag must be > 0 seconds or None, got {overload_lag!r}")
        self.settings = settings
        self.public_base_url = settings.public_base_url
        self.pipeline_factory = pipeline_factory
        self.host = host
        self.port = port
        self.client = client or TwilioRestClient(settings)
        self._own_client = client is None
        self.registry = registry if registry is not None else CallRegistry()  # an empty one is falsy
        self.transport_params = transport_params or TwilioTransportParams()
        self.paths = paths or ServerPaths()
        self.max_calls = max_calls
        self.start_timeout = start_timeout
        self.factory_timeout = factory_timeout
        self.outcome_timeout = outcome_timeout
        #: None: no AMD from here (``settings.machine_detection`` still applies), no transfers.
        self.features = features
        self.dnc = dnc
        #: A bound shared with other processes, on top of ``max_calls``; None: this server's alone.
        self.stream_limit = stream_limit
        #: False: ``start`` opens no socket; connections accepted elsewhere come in through ``adopt``.
        self.listen = listen
        self.tune_gc = tune_gc
        self.warm_up = warm_up
        self.overload_lag = overload_lag
        self.loop_monitor = loop_monitor if loop_monitor is not None else LoopMonitor(registry=process_registry())
        #: Calls not placed because the process was overloaded.
        self.refused_overloaded = 0
        self._holds_gc = False
        #: Set by ``stop``: a media stream still setting up its call then ends without running a pipeline.
        self._stopping = False
        self.active: dict[str, _ActiveCall] = {}
        #: Media sockets accepted and not closed yet, started or not: what ``max_calls`` bounds.
        self.streams = 0
        #: Requests refused for a bad or missing signature.
        self.rejected_signatures = 0
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._validator: Any = None
        self.app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        self.app.router.add_post(self.paths.answer, self._answer)
        self.app.router.add_post(self.paths.status, self._status)
        self.app.router.add_get(self.paths.media, self._media)
        self.app.router.add_post(self.paths.amd, self._amd)
        self.app.router.add_post(self.paths.dial, self._dial_action)

    # ----------------------------------------------------------- lifecycle

    async def __aenter__(self) -> TwilioServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        from twilio.request_validator import RequestValidator

        if self.warm_up and warmup.pending():
            # Before the heap is frozen (tune_gc), so that what it imports is frozen with the rest.
            await asyncio.to_thread(warmup.warm_up)
        self._validator = RequestValidator(self.settings.auth_token.reveal())
        self._stopping = False
        if not self.settings.validate_signatures:
            logger.warning(
                "TWILIO SIGNATURE VALIDATION IS OFF: anyone who can reach {} can start calls' pipelines. "
                "Local development only.",
                self.public_base_url,
            )
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        if not self.listen:
            self._hold_gc()
            self.loop_monitor.start()  # after the start-up's own stalls (the collection above)
            logger.info("Twilio server ready for adopted connections (public URL {})", self.public_base_url)
            return
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self._hold_gc()
        self.loop_monitor.start()  # after the start-up's own stalls (the collection above)
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("Twilio server listening on {} (public URL {})", self.local_url, self.public_base_url)

    @property
    def overloaded(self) -> bool:
        """Whether the event loop's p90 lag is over ``overload_lag`` (then ``place_call`` places no call)."""
        return self.overload_lag is not None and self.loop_monitor.overloaded(self.overload_lag)

    def load(self) -> dict[str, Any]:
        """How loaded this server's process is (for a dashboard: the web console shows it): its calls and
        open media streams, its event loop's p90 and worst lag (ms), whether it is overloaded, and
        the calls it did not place for that."""
        monitor = self.loop_monitor
        return {
            "calls": len(self.active),
            "streams": self.streams,
            "loop_lag_ms": round(1000 * monitor.lag(0.9), 1),
            "loop_lag_worst_ms": round(1000 * monitor.worst, 1),
            "overloaded": self.overloaded,
            "refused_overloaded": self.refused_overloaded,
        }

    def _hold_gc(self) -> None:
        if self.tune_gc and not self._holds_gc:
            _ServingGc.hold()
            self._holds_gc = True

    async def adopt(self, sock: socketlib.socket) -> None:
        """Serve a connection accepted by another process (handed over with ``SCM_RIGHTS``)."""
        if self._runner is None or self._runner.server is None:
            sock.close()
            raise ConfigurationError("adopt() before start(): the server has no request handler yet")
        sock.setblocking(False)
        await asyncio.get_running_loop().connect_accepted_socket(self._runner.server, sock)

    async def stop(self) -> None:
        """Cancel every call's pipeline, close the sockets, stop listening. Bounded.

        The calls stop side by side: K live calls take as long as the slowest
        one's bounded cancel, not K times as long. Every call Twilio accepted
        from this server then has its record: no status callback can reach a
        stopped server, so a call still without one gets its status from the
        REST API (within ``SETTLE_TIMEOUT`` seconds, side by side) or ends as
        ``error``. A call still ringing is not hung up; one still being placed
        is left to ``place_call``.

        A media stream still setting up (reading ``start``, building its
        pipeline) when the stop begins runs no pipeline: it closes as the
        others do."""
        self._stopping = True
        try:
            active = list(self.active.values())
            await self._all(pipeline.cancel("server stopping") for a in active if (pipeline := a.task) is not None)
            await self._all(a.transport.close(WSCloseCode.GOING_AWAY, "server stopping") for a in active)
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=2.0)
            if self._runner is not None:
                runner, self._runner = self._runner, None
                await runner.cleanup()
            unsettled = (call for call in self.registry.calls() if call.sid is not None and not call.ended)
            await self._all(self._settle(call) for call in unsettled)
            if self._own_client:
                await self.client.aclose()
        finally:
            await self.loop_monitor.stop()
            if self._holds_gc:  # even when stopping failed or was cancelled
                self._holds_gc = False
                _ServingGc.release()

    async def _settle(self, call: OutboundCall) -> None:
        """The record of a call whose last status will never reach this server (it stops)."""
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await self._await_outcome(call, timeout=0)
        except TimeoutError:
            call.finish(CallOutcome.ERROR, "server stopped")

    @staticmethod
    async def _all(steps: Iterable[Awaitable[None]]) -> None:
        """Await every step together; one that fails is logged and does not stop the others."""
        for result in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(result, Exception):
                logger.opt(exception=result).error("stopping a call failed: {}", result)

    async def wait_idle(self) -> None:
        """Return once no media stream is open (wrap in ``asyncio.timeout``)."""
        while self.streams:
            self._idle.clear()
            await self._idle.wait()

    @property
    def local_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---------------------------------------------------------------- URLs

    def answer_url(self, call: OutboundCall) -> str:
        return f"{self.public_base_url}{self.paths.answer}?call={call.token}"

    def status_url(self, call: OutboundCall) -> str:
        return f"{self.public_base_url}{self.paths.status}?call={call.token}"

    def amd_url(self, call: OutboundCall) -> str:
        return f"{self.public_base_url}{self.paths.amd}?call={call.token}"

    def dial_url(self, call: OutboundCall) -> str:
        return f"{self.public_base_url}{self.paths.dial}?call={call.token}"

    def dial_twiml(self, call: OutboundCall, request: TransferRequest) -> str:
        """``<Dial>`` the rep, with caller id and ring timeout; its action comes back to us."""
        from twilio.twiml.voice_response import VoiceResponse

        response = VoiceResponse()
        dial = response.dial(
            caller_id=request.caller_id or self.settings.from_number,
            timeout=request.timeout,
            action=self.dial_url(call),
            method="POST",
        )
        dial.number(request.number)
        return str(response)

    @property
    def media_url(self) -> str:
        scheme, _, rest = self.public_base_url.partition("://")
        return ("wss" if scheme == "https" else "ws") + "://" + rest + self.paths.media

    def twiml_for(self, call: OutboundCall) -> str:
        """``<Connect><Stream>`` to our media URL, the call's data as Parameters."""
        from twilio.twiml.voice_response import VoiceResponse

        response = VoiceResponse()
        stream = response.connect().stream(url=self.media_url)
        for name, value in call.parameters.items():
            stream.parameter(name=name, value=value)
        return str(response)

    # --------------------------------------------------------------- calls

    async def place_call(
        self,
        to: str,
        *,
        campaign_id: str | None = None,
        prospect_id: str | None = None,
        machine_detection: str | None = None,
        inline_twiml: bool = False,
    ) -> OutboundCall:
        """Place a call that will be served by this server.

        Never raises for a call that cannot be placed: the returned call has
        then ended already, with its record (``call.record.outcome``:
        ``remove`` for an invalid number, ``retry_later`` when rate limited,
        ``error`` otherwise). ``await call.wait()`` gives the record of any call.
        """
        call = self.registry.new_call(
            to,
            self.settings.from_number,
            price_per_minute=self.settings.price_per_minute,
            campaign_id=campaign_id,
            prospect_id=prospect_id,
        )
        if self.overloaded:
            self.refused_overloaded += 1
            logger.warning(
                "call to {} not placed: this process is overloaded (its event loop runs {:.0f} ms late, p90); "
                "retry later",
                mask_number(to),
                1000 * self.loop_monitor.lag(0.9),
            )
            call.finish(CallOutcome.RETRY_LATER, "overloaded")
            return call
        amd = self.features.amd if self.features is not None else None
        detection = machine_detection or (amd.mode if amd is not None else None)
        if amd is not None and detection is not None:
            call.machine_detection = MachineDetection()
        try:
            validate_e164(to, field="to")
            placed = await place_call(
                self.client,
                to,
                self.settings.from_number,
                url=None if inline_twiml else self.answer_url(call),
                twiml=self.twiml_for(call) if inline_twiml else None,
                status_callback=self.status_url(call),
                machine_detection=detection or self.settings.machine_detection,
                amd_callback=self.amd_url(call) if call.machine_detection is not None else None,
                machine_detection_timeout=amd.machine_detection_timeout if amd is not None else None,
                ring_timeout=self.settings.ring_timeout,
                dnc=self.dnc,
            )
        except DoNotCallError as exc:
            logger.warning("call to {} not placed: {}", mask_number(to), exc)
            call.finish(CallOutcome.DO_NOT_CALL, "not placed")
            return call
        except (InvalidNumberError, ServiceError) as exc:
            cause = exc.__cause__ if isinstance(exc, RetryExhausted) else exc
            logger.warning("call to {} not placed: {}", mask_number(to), exc)
            call.failed_to_place(cause if isinstance(cause, BaseException) else exc)
            return call
        call.placed(placed)
        logger.info("call {} to {} placed ({})", placed.sid, mask_number(to), placed.status)
        return call

    async def hang_up(self, call: OutboundCall) -> bool:
        """End ``call`` through the REST API; False if that failed (logged)."""
        if call.sid is None or call.ended:
            return False
        try:
            await self.client.hang_up(call.sid)
        except (ServiceError, ConfigurationError) as exc:
            logger.warning("call {}: hang-up request failed: {}", call.sid, exc)
            return False
        logger.info("call {}: hung up", call.sid)
        return True

    # ---------------------------------------------------------- signatures

    async def _verified(self, request: web.Request) -> Mapping[str, str] | None:
        """The request's parameters if its signature is valid, else None."""
        params: Mapping[str, str] = {}
        form = request.method != "POST" or request.content_type == "application/x-www-form-urlencoded"
        if request.method == "POST" and form:
            params = await request.post()  # type: ignore[assignment]  # form fields are str
        if not self.settings.validate_signatures:
            return params
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            self._reject(request, "no X-Twilio-Signature header")
            return None
        if not form:
            # Twilio posts these webhooks as forms; any other body cannot carry a valid signature.
            self._reject(request, f"the body is not a form ({request.content_type or 'no content type'})")
            return None
        from twilio.request_validator import get_signature_algorithm

        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        base = self.public_base_url
        if request.path == self.paths.media:
            base = self.media_url[: -len(self.paths.media)]
        url = base + request.raw_path
        try:
            valid = bool(self._validator.validate(url, params, signature, algorithm))
        except (TypeError, ValueError) as exc:  # the SDK's checks of what it was handed
            self._reject(request, f"signature could not be checked: {type(exc).__name__}")
            return None
        if not valid:
            why = "signature does not match"
            if algorithm != "HMAC_SHA1":
                why += f" ({algorithm} signatures need the webhook signing key, not the auth token)"
            self._reject(request, why)
            return None
        return params

    def _reject(self, request: web.Request, why: str) -> None:
        self.rejected_signatures += 1
        logger.warning("refused {} {} from {}: {}", request.method, request.path, request.remote, why)

    # ------------------------------------------------------------ webhooks

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        params = await self._verified(request)
        if params is None:
            return web.Response(status=403, text="invalid Twilio signature")
        call = self.registry.get(request.query.get("call"))
        if call is None:
            logger.warning("answer webhook for an unknown call {}: hanging up", params.get("CallSid", "?"))
            return web.Response(
                text='<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>', content_type="text/xml"
            )
        call.on_answered(params)
        return web.Response(text=self.twiml_for(call), content_type="text/xml")

    async def _status(self, request: web.Request) -> web.StreamResponse:
        params = await self._verified(request)
        if params is None:
            return web.Response(status=403, text="invalid Twilio signature")
        call = self.registry.get(request.query.get("call"))
        if call is None:
            logger.debug(
                "status callback {} for a finished or unknown call {}", params.get("CallStatus"), params.get("CallSid")
            )
            return web.Response(status=204)
        active = self.active.get(call.token)
        if active is not None and state_for_status(params.get("CallStatus", "")) is CallState.ENDED:
            # The final status often overtakes the end of the stream: let our side's verdict
            # (a failed pipeline, the far end's protocol violation) reach the call first.
            try:
                async with asyncio.timeout(self.outcome_timeout):
                    await active.finished.wait()
            except TimeoutError:
                logger.warning("call {}: final status {} before the pipeline finished", call.sid, params["CallStatus"])
        call.on_status(params)
        return web.Response(status=204)

    # --------------------------------------------------------- media stream

    async def _media(self, request: web.Request) -> web.StreamResponse:
        if await self._verified(request) is None:
            return web.Response(status=403, text="invalid Twilio signature")
        if self._stopping:
            return web.Response(status=503, text="server stopping")
        if self.streams >= self.max_calls:
            # Refused before the upgrade, before 'start' is read: the call's token stays unused.
            logger.warning("refused a media stream: {} streams already open (max_calls)", self.streams)
            return web.Response(status=503, text="too many calls")
        if self.stream_limit is not None and not self.stream_limit.acquire():
            logger.warning("refused a media stream: the shared max_calls are all taken")
            return web.Response(status=503, text="too many calls")
        # Counted from here (no await since the check) until the socket is done with, whatever ends it.
        self.streams += 1
        self._idle.clear()
        try:
            return await self._serve_socket(request)
        finally:
            self.streams -= 1
            if self.stream_limit is not None:
                self.stream_limit.release()
            if not self.streams:
                self._idle.set()

    async def _serve_socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=MAX_REQUEST_BYTES, timeout=self.transport_params.io_timeout)
        try:
            await socket.prepare(request)
            await self._serve_stream(socket)
        except Exception as exc:
            # One call's failure must never reach the server or other calls.
            logger.opt(exception=exc).error("media stream failed: {}: {}", type(exc).__name__, exc)
        finally:
            if socket.prepared and not socket.closed:
                try:
                    async with asyncio.timeout(self.transport_params.io_timeout):
                        await socket.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
                except (TimeoutError, OSError):
                    pass
        return socket

    async def _read_start(self, socket: web.WebSocketResponse, serializer: TwilioSerializer) -> TwilioStartFrame:
        async with asyncio.timeout(self.start_timeout):
            while serializer.start is None:
                message = await socket.receive()
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    raise ProtocolError("the media socket closed before 'start'")
                frames = serializer.deserialize(message.data)
                if any(not isinstance(f, TwilioStartFrame) for f in frames):
                    raise ProtocolError("media stream messages before 'start'")
        return serializer.start

    async def _serve_stream(self, socket: web.WebSocketResponse) -> None:
        params = self.transport_params
        serializer = TwilioSerializer(passthrough=params.passthrough_input)
        try:
            start = await self._read_start(socket, serializer)
        except (ProtocolError, TimeoutError) as exc:
            reason = str(exc) or f"no 'start' within {self.start_timeout:.0f}s"
            logger.warning("media stream refused: {}", reason)
            await socket.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode()[:120])
            return
        if self._stopping:
            logger.info("media stream of call {} closed: the server is stopping", start.call_sid)
            await socket.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
            return
        call = self.registry.claim_stream(start.custom_parameters.get("call_token"), start.call_sid)
        if call is None:
            logger.warning("media stream of call {} refused: unknown or already used call token", start.call_sid)
            await socket.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unknown call token")
            return
        call.on_stream_started()
        transport = TwilioTransport(socket, serializer, params)
        active = _ActiveCall(call, transport)
        self.active[call.token] = active
        try:
            await self._run_pipeline(active)
        finally:
            active.finished.set()
            self.active.pop(call.token, None)
            if call.transfer_pending and not call.ended and transport.violation is None:
                # The handover line has played: the call goes to the rep, not down.
                await self._transfer(call, transport)
            elif (not transport.ended.is_set() or transport.violation is not None) and not active.hung_up:
                # Our side ended the call (goodbye, error, the far end's protocol violation): hang up, then close.
                active.hung_up = await self.hang_up(call)
            await transport.close(WSCloseCode.OK, "call ended")
            self._follow_outcome(call)

    async def _run_pipeline(self, active: _ActiveCall) -> None:
        call, transport = active.call, active.transport
        session = TwilioCall(transport, call, dict(transport.start.custom_parameters), self)
        try:
            async with asyncio.timeout(self.factory_timeout):
                built = self.pipeline_factory(session)
                task = await built if inspect.isawaitable(built) else built
        except Exception as exc:
            logger.opt(exception=exc).error("call {}: the pipeline could not be built: {}", call.sid, exc)
            call.note_failure(f"pipeline could not be built: {type(exc).__name__}")
            return
        if self._stopping:
            # Built while the server stopped: the stop cancelled the pipelines it found; this one never starts.
            logger.info("call {}: pipeline not started: the server is stopping", call.sid)
            call.pipeline_finished("cancel")
            return
        active.task = task
        try:
            await task.run()
        finally:
            logger.info("call {}: pipeline finished ({})", call.sid, task.finish_reason)
            call.pipeline_finished(task.finish_reason)
            if task.finish_reason == "error":
                call.note_failure(f"pipeline error: {task.error.error if task.error else 'unknown'}")

    def _follow_outcome(self, call: OutboundCall) -> None:
        """Make sure the call gets its record, even if the last callback is lost."""
        if call.ended:
            return
        timeout = self.outcome_timeout
        if call.transfer_status in ("dialing", "answered") and self.features is not None:
            # The prospect talks with the rep: the final callback comes when they are done.
            transfer = self.features.transfer
            timeout = transfer.timeout + transfer.max_bridge_seconds
        task = asyncio.get_running_loop().create_task(self._await_outcome(call, timeout), name=f"outcome:{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_outcome(self, call: OutboundCall, timeout: float | None = None) -> CallRecord:
        try:
            async with asyncio.timeout(self.outcome_timeout if timeout is None else timeout):
                return await call.wait()
        except TimeoutError:
            pass
        status = "unknown"
        if call.sid is not None:
            try:
                fetched = await self.client.fetch(call.sid)
                status = str(fetched.status)
                if fetched.duration:
                    call.duration = float(fetched.duration)
            except (ServiceError, ConfigurationError, ValueError) as exc:
                logger.warning("call {}: status could not be fetched: {}", call.sid, exc)
        outcome = outcome_for_status(status) or CallOutcome.ERROR
        if outcome is CallOutcome.COMPLETED and call.conclusion is not None:
            outcome = call.conclusion
        return call.finish(outcome, status)

    # ---------------------------------------------------- AMD and transfers

    async def _amd(self, request: web.Request) -> web.StreamResponse:
        """The asynchronous AMD verdict of a call we placed."""
        params = await self._verified(request)
        if params is None:
            return web.Response(status=403, text="invalid Twilio signature")
        call = self.registry.get(request.query.get("call"))
        if call is None:
            logger.debug("AMD callback for a finished or unknown call {}", str(params.get("CallSid"))[:40])
            return web.Response(status=204)
        sid = params.get("CallSid")
        if sid and call.sid is not None and sid != call.sid:
            logger.warning("call {}: AMD callback names another call {!r}; refused", call.sid, sid[:40])
            return web.Response(status=400, text="CallSid does not match the call")
        try:
            call.on_amd(params)
        except ProtocolError as exc:
            logger.warning("call {}: malformed AMD callback refused: {}", call.sid, exc)
            return web.Response(status=400, text=str(exc))
        return web.Response(status=204)

    async def _transfer(self, call: OutboundCall, transport: TwilioTransport) -> None:
        """Redirect the live call to ``<Dial>`` the rep (the AI leg is over)."""
        request = call.transfer
        assert request is not None and call.sid is not None
        if transport.ended.is_set():
            logger.warning("call {}: the callee hung up before the transfer", call.sid)
            call.transfer_status = "not_answered"
            return
        try:
            await self.client.redirect(call.sid, self.dial_twiml(call, request))
        except (ServiceError, ConfigurationError) as exc:
            logger.error("call {}: the transfer could not start: {}; hanging up", call.sid, exc)
            call.transfer_status = "not_answered"
            call.note_failure(f"transfer failed: {exc}")
            await self.hang_up(call)
            return
        call.transfer_status = "dialing"
        logger.info("call {}: transferring to {}", call.sid, mask_number(request.number))

    async def _dial_action(self, request: web.Request) -> web.StreamResponse:
        """The end of a transfer's ``<Dial>``: what the call does next, as TwiML."""
        params = await self._verified(request)
        if params is None:
            return web.Response(status=403, text="invalid Twilio signature")
        hang_up = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'
        call = self.registry.get(request.query.get("call"))
        if call is None or call.transfer is None:
            logger.warning("Dial action for an unknown call {}: hanging up", str(params.get("CallSid"))[:40])
            return web.Response(text=hang_up, content_type="text/xml")
        status = params.get("DialCallStatus", "")
        if status in ("completed", "answered"):
            call.transfer_status = "answered"
            call.conclude(CallOutcome.TRANSFERRED)
            self._follow_outcome(call)
            return web.Response(text=hang_up, content_type="text/xml")
        if status not in ("busy", "no-answer", "failed", "canceled"):
            logger.warning("call {}: unknown DialCallStatus {!r}: the rep was not reached", call.sid, status[:40])
        call.transfer_status = "not_answered"
        logger.info("call {}: the rep did not answer ({})", call.sid, status[:40] or "no status")
        if call.ended or params.get("CallStatus") in ("completed", "canceled", "failed", "busy", "no-answer"):
            return web.Response(text=hang_up, content_type="text/xml")
        transfer = self.features.transfer if self.features is not None else None
        if transfer is None or transfer.on_no_answer == TRANSFER_RESUME:
            # Back to the bot: a new stream, which the same token may claim once more.
            call.resumed_after = RESUMED_AFTER_TRANSFER
            call.stream_claimed = False
            return web.Response(text=self.twiml_for(call), content_type="text/xml")
        from twilio.twiml.voice_response import VoiceResponse

        response = VoiceResponse()
        response.say(transfer.end_line)
        response.hangup()
        return web.Response(text=str(response), content_type="text/xml")
