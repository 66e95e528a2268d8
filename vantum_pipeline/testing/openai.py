"""FakeOpenAI: the chat-completions API on loopback, for tests and demos.

    async with FakeOpenAI(api_key="sk-test") as fake:
        fake.script("Hello! How are you today?")
        client = AsyncOpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)
        stream = await client.chat.completions.create(model="gpt-4o", messages=[...], stream=True)

It serves ``POST /v1/audio/speech`` (text-to-speech, see ``openai_speech.py``)
and ``POST /v1/chat/completions``, streaming (server-sent events: the
role delta first, one content delta per token, tool-call deltas by index with
the arguments in fragments, the finish_reason chunk, the usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``) and not
streaming. Requests are checked like the API checks them (401 without the
configured key; 400 for malformed JSON, unknown arguments, unknown message
fields such as a leaked ``interrupted`` flag, tool messages that answer no
tool call) and every response carries ``x-ratelimit-*`` headers.

What the model says
-------------------
In order of precedence, for each valid request:

1. the next scripted reply: ``fake.script("text", Reply(tool_calls=[ToolCall("end_call")]))``;
2. the responder, if one was given: ``responder(request) -> str | Reply``
   (or an awaitable of one), where ``request`` is the JSON body as sent
   (``model``, ``messages``, ``tools``, ...). A ``str`` is a plain text
   reply; a ``Reply`` carries text and/or ``ToolCall(name, arguments)``.
   ``last_user_text(request)`` gives the text to answer. This is the hook for
   a scripted conversation partner;
3. ``default_reply``.

Pacing: ``time_to_first_token`` seconds before the first token, then
``tokens_per_second`` (None: as fast as possible), on an absolute clock; a
``Reply`` may override both.

Faults
------
``fake.fail_next(fault, times=n)`` makes the next ``n`` requests fail with
``fault`` (then replies resume: "n failures then success"; a failing request
streams the next scripted reply, if it streams at all, without using it up). See ``Fault``:
429 with ``retry-after`` / ``retry-after-ms``, 500/503, 401, a stall before
the first token or mid-stream, an error event or a malformed event
mid-stream, a close without ``[DONE]``, a dropped connection.

Records
-------
``fake.requests`` lists every request received (``RecordedRequest``: headers
with the key redacted, body, status, tokens sent, whether the client went
away mid-stream); ``await fake.wait_for_requests(n)`` waits for them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.testing.openai_speech import SpeechEndpoint
from vantum_pipeline.testing.openai_wire import (
    SSE_DONE,
    CompletionBuilder,
    Reply,
    RequestRejected,
    ToolCall,
    encode_sse,
    error_body,
    last_user_text,
    validate_chat_request,
)

__all__ = ["FakeOpenAI", "Fault", "RecordedRequest", "Reply", "Responder", "ToolCall", "last_user_text"]

ReplyLike = str | Reply
Responder = Callable[[dict[str, Any]], ReplyLike | Awaitable[ReplyLike]]

FaultKind = Literal[
    "http_error",
    "stall_headers",
    "stall_first_token",
    "stall_mid_stream",
    "error_event",
    "malformed_event",
    "close_without_done",
    "drop",
]

MAX_BODY = 4 * 1024 * 1024
MAX_SCRIPT = 10_000
MAX_RECORDED = 10_000

_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
_BAD_KEY = "Incorrect API key provided: ***. You can find your API key at https://platform.openai.com/account/api-keys."
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure; build it with the class methods.

    ``after_tokens`` places a mid-stream fault after that many token chunks;
    ``seconds`` is a stall's length (None: until the client goes away or the
    fake closes).
    """

    kind: FaultKind
    status: int = 0
    message: str = ""
    error_type: str = ""
    code: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    after_tokens: int = 0
    seconds: float | None = None
    #: A malformed event's ``data:`` (None: a line that is not JSON).
    data: str | None = None

    @classmethod
    def http_error(
        cls,
        status: int,
        message: str = "",
        *,
        error_type: str = "server_error",
        code: str | None = None,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        should_retry: bool | None = None,
    ) -> Fault:
        """Answer ``status`` with the API's error body (``x-should-retry``
        sent when ``should_retry`` is not None)."""
        return cls(
            "http_error",
            status=status,
            message=message or f"fake error {status}",
            error_type=error_type,
            code=code,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            should_retry=should_retry,
        )

    @classmethod
    def rate_limited(
        cls, retry_after: float | None = 1.0, *, retry_after_ms: int | None = None, quota: bool = False
    ) -> Fault:
        """429: a rate limit (retry after the delay) or, with ``quota``, an
        exhausted quota (retrying will not help)."""
        if quota:
            return cls.http_error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                error_type="insufficient_quota",
                code="insufficient_quota",
            )
        wait = "1s" if retry_after is None else f"{retry_after:g}s"
        return cls.http_error(
            429,
            "Rate limit reached for gpt-4o in organization org-fake on requests per min (RPM): Limit 500, "
            f"Used 500, Requested 1. Please try again in {wait}.",
            error_type="requests",
            code="rate_limit_exceeded",
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """500 ("had an error"), 502/503 ("overloaded") or any 5xx."""
        message = (
            "The server had an error while processing your request. Sorry about that!"
            if status == 500
            else "The engine is currently overloaded, please try again later."
        )
        return cls.http_error(status, message, error_type="server_error")

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls.http_error(401, _BAD_KEY, error_type="invalid_request_error", code="invalid_api_key")

    @classmethod
    def stall_before_first_token(cls, seconds: float | None = None, *, headers_sent: bool = True) -> Fault:
        """Accept the request and say nothing: after the 200 headers
        (``headers_sent``) or before them."""
        return cls("stall_first_token" if headers_sent else "stall_headers", seconds=seconds)

    @classmethod
    def stall_mid_stream(cls, after_tokens: int = 1, seconds: float | None = None) -> Fault:
        return cls("stall_mid_stream", after_tokens=after_tokens, seconds=seconds)

    @classmethod
    def error_event(
        cls, after_tokens: int = 1, message: str = "The server had an error while processing your request."
    ) -> Fault:
        """A ``data: {"error": {...}}`` event mid-stream, then the end of the body."""
        return cls("error_event", after_tokens=after_tokens, message=message, error_type="server_error")

    @classmethod
    def malformed_event(cls, after_tokens: int = 1, data: str | None = None) -> Fault:
        """A ``data:`` line that is not JSON (or is ``data``, JSON that is not a
        chunk: ``'{"choices": "abc"}'``) mid-stream, then the end of the body."""
        if data is not None and ("\n" in data or "\r" in data):
            raise ValueError("a malformed event's data must be one line")
        return cls("malformed_event", after_tokens=after_tokens, data=data)

    @classmethod
    def close_without_done(cls, after_tokens: int | None = None) -> Fault:
        """End the body cleanly but early: after ``after_tokens`` token chunks,
        or (None) after every chunk but ``[DONE]``."""
        return cls("close_without_done", after_tokens=-1 if after_tokens is None else after_tokens)

    @classmethod
    def drop_connection(cls, after_tokens: int = 1) -> Fault:
        """Cut the TCP connection mid-body (the client sees an incomplete read)."""
        return cls("drop", after_tokens=after_tokens)


@dataclass(eq=False)
class RecordedRequest:
    """One request as the fake saw it, and what it did with it."""

    method: str
    path: str
    headers: dict[str, str]
    received_at: float
    body: Any = None
    raw: bytes = b""
    status: int | None = None
    fault: FaultKind | None = None
    reply_text: str = ""
    tokens_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []


def _redact(headers: Mapping[str, str]) -> dict[str, str]:
    redacted = {}
    for name, value in headers.items():
        if name.lower() in ("authorization", "api-key", "openai-api-key"):
            scheme = value.split(" ", 1)[0] if " " in value else ""
            value = f"{scheme} ***".strip()
        redacted[name] = value
    return redacted


def _duration(seconds: float) -> str:
    """The API's reset format: ``12ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class _ClientGone(Exception):
    """The client closed the connection while we were writing."""


class FakeOpenAI:
    """The fake server; see the module docstring. ``api_key=None`` accepts any
    non-empty key (a key is still required, as by the API)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        responder: Responder | None = None,
        default_reply: ReplyLike = "Thanks for taking my call. Do you have a minute to talk?",
        time_to_first_token: float = 0.0,
        tokens_per_second: float | None = None,
        model_version: str | None = None,
        rate_limit_requests: int = 10_000,
        rate_limit_tokens: int = 30_000_000,
    ) -> None:
        if tokens_per_second is not None and tokens_per_second <= 0:
            raise ConfigurationError(f"tokens_per_second must be > 0, got {tokens_per_second}")
        if time_to_first_token < 0:
            raise ConfigurationError(f"time_to_first_token must be >= 0, got {time_to_first_token}")
        self.host = host
        self._requested_port = port
        self.port = port
        self.api_key = api_key
        self.responder = responder
        self.default_reply = default_reply
        self.time_to_first_token = time_to_first_token
        self.tokens_per_second = tokens_per_second
        self.model_version = model_version
        self.rate_limit_requests = rate_limit_requests
        self.rate_limit_tokens = rate_limit_tokens
        self.requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self._replies: deque[ReplyLike] = deque()
        self._faults: deque[Fault] = deque()
        self._usage_window: deque[tuple[float, int]] = deque()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        #: ``POST /v1/audio/speech`` (see ``testing/openai_speech.py``).
        self.speech = SpeechEndpoint(self)

    # ------------------------------------------------------------ public

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What to pass to ``AsyncOpenAI(base_url=...)``."""
        return f"{self.url}/v1"

    def script(self, *replies: ReplyLike) -> None:
        """Queue replies, served one per request before the responder."""
        if len(self._replies) + len(replies) > MAX_SCRIPT:
            raise ConfigurationError(f"at most {MAX_SCRIPT} scripted replies")
        self._replies.extend(replies)

    def fail_next(self, fault: Fault, times: int = 1) -> None:
        """Make the next ``times`` requests fail with ``fault``."""
        if times < 0 or len(self._faults) + times > MAX_SCRIPT:
            raise ConfigurationError(f"times must be in 0..{MAX_SCRIPT}, got {times}")
        self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    async def wait_for_requests(
        self,
        count: int = 1,
        *,
        timeout: float = 5.0,
        finished: bool = False,
    ) -> list[RecordedRequest]:
        """Wait until ``count`` requests were received (and, with ``finished``,
        answered in full or abandoned); return them."""

        def ready() -> bool:
            found = self.requests
            return len(found) >= count and (not finished or all(r.done.is_set() for r in list(found)[:count]))

        async with asyncio.timeout(timeout):
            while not ready():
                self._changed.clear()
                await self._changed.wait()
        return list(self.requests)[:count]

    async def start(self) -> FakeOpenAI:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/chat/completions", self._handle_chat)
        app.router.add_post("/v1/audio/speech", self.speech.handle)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        # Cancel a handler when its client disconnects: how the fake notices
        # a stream closed early.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            await self._runner.cleanup()
            raise
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ----------------------------------------------------------- helpers

    def _notify(self) -> None:
        self._changed.set()

    def _headers(self, prompt_tokens: int = 0) -> dict[str, str]:
        now = time.monotonic()
        self._usage_window.append((now, prompt_tokens))
        while self._usage_window and self._usage_window[0][0] < now - 60:
            self._usage_window.popleft()
        used_tokens = sum(tokens for _, tokens in self._usage_window)
        return {
            "x-request-id": "req_" + secrets.token_hex(16),
            "openai-version": "2020-10-01",
            "openai-organization": "org-fake",
            "openai-processing-ms": "1",
            "x-ratelimit-limit-requests": str(self.rate_limit_requests),
            "x-ratelimit-limit-tokens": str(self.rate_limit_tokens),
            "x-ratelimit-remaining-requests": str(max(0, self.rate_limit_requests - len(self._usage_window))),
            "x-ratelimit-remaining-tokens": str(max(0, self.rate_limit_tokens - used_tokens)),
            "x-ratelimit-reset-requests": _duration(60 / self.rate_limit_requests),
            "x-ratelimit-reset-tokens": _duration(60 * used_tokens / self.rate_limit_tokens),
        }

    def _error(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers or self._headers())

    async def _pause(self, seconds: float | None) -> bool:
        """Sleep ``seconds`` (None: until the fake closes); True if closing."""
        if seconds is not None and seconds <= 0:
            return self._closing.is_set()
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return False
        return True

    async def _reply_for(self, body: dict[str, Any], *, consume: bool = True) -> Reply:
        if self._replies:
            reply = self._replies.popleft() if consume else self._replies[0]
        elif self.responder is not None:
            produced = self.responder(body)
            reply = await produced if inspect.isawaitable(produced) else produced
        else:
            reply = self.default_reply
        if isinstance(reply, str):
            return Reply(text=reply)
        if not isinstance(reply, Reply):
            raise TypeError(f"a reply must be a str or a Reply, got {type(reply).__name__}")
        return reply

    # ----------------------------------------------------------- handlers

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        record = RecordedRequest(request.method, request.path, _redact(request.headers), time.monotonic(), status=404)
        record.done.set()
        self.requests.append(record)
        self._notify()
        message = f"Invalid URL ({request.method} {request.path})"
        return self._error(404, error_body(message, type="invalid_request_error"))

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        record = RecordedRequest(request.method, request.path, _redact(request.headers), time.monotonic())
        self.requests.append(record)
        self._notify()
        try:
            response = await self._serve_chat(request, record)
            if record.status is None:
                record.status = response.status
            return response
        except asyncio.CancelledError:
            record.disconnected = True
            raise
        finally:
            record.done.set()
            self._notify()

    def _authorized(self, request: web.Request) -> str | None:
        """None when the key is acceptable, else the 401 message."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _MISSING_KEY
        if self.api_key is not None and not secrets.compare_digest(key.strip(), self.api_key):
            return _BAD_KEY
        return None

    async def _serve_chat(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        denied = self._authorized(request)
        if denied is not None:
            code = None if denied is _MISSING_KEY else "invalid_api_key"
            return self._error(401, error_body(denied, type="invalid_request_error", code=code))
        record.raw = await request.read()
        try:
            body = json.loads(record.raw)
        except (ValueError, UnicodeDecodeError):
            return self._error(400, error_body(_BAD_JSON, type="invalid_request_error"))
        record.body = body
        try:
            tool_names = validate_chat_request(body)
        except RequestRejected as rejected:
            return self._error(rejected.status, rejected.body)
        fault = self._faults.popleft() if self._faults else None
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "http_error":
            return self._fault_response(fault)
        try:
            # A request that fails mid-way leaves its scripted reply for the retry.
            reply = await self._reply_for(body, consume=fault is None)
        except Exception as exc:
            logger.opt(exception=exc).error("FakeOpenAI: the responder failed")
            return self._error(500, error_body(f"fake responder failed: {exc}", type="server_error"))
        unknown = [call.name for call in reply.tool_calls if call.name not in tool_names]
        if unknown:
            # A script error in the test, not a model behaviour: make it loud.
            message = f"fake: scripted tool call {unknown[0]!r} is not among the request's tools {sorted(tool_names)}"
            logger.error(message)
            return self._error(500, error_body(message, type="server_error"))
        builder = CompletionBuilder(body, reply, model_version=self.model_version)
        record.reply_text = builder.text
        headers = self._headers(builder.prompt_tokens)
        if not body.get("stream"):
            return await self._complete(builder, reply, headers, fault, record)
        return await self._stream(request, builder, reply, headers, fault, record)

    def _fault_response(self, fault: Fault) -> web.Response:
        headers = self._headers()
        if fault.status == 429:
            headers["x-ratelimit-remaining-requests"] = "0"
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        if fault.should_retry is not None:
            headers["x-should-retry"] = "true" if fault.should_retry else "false"
        body = error_body(fault.message, type=fault.error_type, code=fault.code)
        return self._error(fault.status, body, headers)

    def _pace(self, reply: Reply) -> tuple[float, float]:
        ttft = self.time_to_first_token if reply.time_to_first_token is None else reply.time_to_first_token
        rate = self.tokens_per_second if reply.tokens_per_second is None else reply.tokens_per_second
        return ttft, (0.0 if not rate else 1.0 / rate)

    async def _complete(
        self,
        builder: CompletionBuilder,
        reply: Reply,
        headers: dict[str, str],
        fault: Fault | None,
        record: RecordedRequest,
    ) -> web.Response:
        ttft, interval = self._pace(reply)
        if fault is not None and fault.kind in ("stall_headers", "stall_first_token", "stall_mid_stream"):
            if await self._pause(fault.seconds):
                return self._error(503, error_body("fake is shutting down", type="server_error"))
        await self._pause(ttft + interval * max(0, len(builder.token_events()) - 1))
        if fault is not None and fault.kind in ("drop", "close_without_done", "error_event", "malformed_event"):
            return self._error(500, error_body(fault.message or "fake fault", type="server_error"), headers)
        record.tokens_sent = builder.completion_tokens
        record.completed = True
        return web.json_response(builder.completion(), headers=headers)

    async def _stream(
        self,
        request: web.Request,
        builder: CompletionBuilder,
        reply: Reply,
        headers: dict[str, str],
        fault: Fault | None,
        record: RecordedRequest,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        ttft, interval = self._pace(reply)
        if fault is not None and fault.kind == "stall_headers" and await self._pause(fault.seconds):
            return self._error(503, error_body("fake is shutting down", type="server_error"))
        response = web.StreamResponse(
            status=200,
            headers={**headers, "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"},
        )
        await response.prepare(request)
        record.status = 200

        async def send(data: bytes) -> None:
            try:
                await response.write(data)
            except ConnectionError as exc:
                raise _ClientGone from exc

        try:
            if fault is not None and fault.kind == "stall_first_token" and await self._pause(fault.seconds):
                return response
            start = loop.time()
            events = builder.token_events()
            for index, event in enumerate(events):
                if (
                    fault is not None
                    and fault.after_tokens == index
                    and await self._mid_stream_fault(fault, request, send)
                ):
                    return response
                due = start + ttft + index * interval
                if due > loop.time() and await self._pause(due - loop.time()):
                    return response
                chunk = encode_sse(event)
                await send(encode_sse(builder.role_chunk()) + chunk if index == 0 else chunk)
                record.tokens_sent += 1
            if not events:
                await send(encode_sse(builder.role_chunk()))
            if fault is not None and fault.after_tokens >= len(events) and fault.kind != "close_without_done":
                if await self._mid_stream_fault(fault, request, send):
                    return response
            await send(encode_sse(builder.finish_chunk()))
            if builder.include_usage:
                await send(encode_sse(builder.usage_chunk()))
            if fault is not None and fault.kind == "close_without_done":
                await response.write_eof()
                return response
            await send(SSE_DONE)
            record.completed = True
            await response.write_eof()
        except _ClientGone:
            record.disconnected = True
        return response

    async def _mid_stream_fault(
        self, fault: Fault, request: web.Request, send: Callable[[bytes], Awaitable[None]]
    ) -> bool:
        """Apply a mid-stream fault; True when the stream must end here."""
        if fault.kind == "stall_mid_stream":
            return await self._pause(fault.seconds)
        if fault.kind == "error_event":
            await send(encode_sse(error_body(fault.message, type=fault.error_type or "server_error")))
            return True
        if fault.kind == "malformed_event":
            if fault.data is None:
                await send(b'data: {"id": "chatcmpl-broken", "choices": [{"delta": \n\n')
            else:
                await send(b"data: " + fault.data.encode() + b"\n\n")
            return True
        if fault.kind == "close_without_done":
            return True
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            return True
        return False
