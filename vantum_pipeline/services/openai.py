"""OpenAI chat completions (gpt-4o), streamed into the pipeline.

    LLMContextFrame → LLMFullResponseStartFrame, LLMTextFrame*, LLMFullResponseEndFrame

An engine of the ``LLMService`` skeleton (``services/llm.py``: the turn task,
the response bracket, fillers and fallback phrases, ``end_call``, outcomes,
the answer cache). Any OpenAI-compatible chat endpoint (Azure OpenAI, Groq, a
self-hosted vLLM) is this service with its ``base_url``, key and ``model``
(and ``service_label`` and prices, so its costs are its own).

Each ``LLMContextFrame`` starts a turn in a turn task (``create_turn_task``):
a streaming request with the context's history window, every content delta
pushed as an ``LLMTextFrame`` as soon as it arrives.

Interruption: the next interruption cancels the turn task; the stream is
closed at once (``await stream.close()``, bounded by ``close_timeout``), so
no further token is read and the HTTP connection is released; frames of the
old turn still in flight carry its epoch and are dropped by the framework.

Function calling: registered ``Tool``\\ s are offered to the model; tool-call
deltas are assembled per index; the calls run (in processor-owned tasks, so
an interruption does not cut a booking in half), their results go into the
context right after the call, and the model is asked to continue, all
within the same response. A result that completes after an interruption is
recorded but never spoken: the turn that would have continued is gone.
``end_call`` makes the bot say goodbye (the model's, or the goodbye phrase),
then asks the task to end the call (``EndTaskFrame`` upstream): the task
queues an ``EndFrame`` at the head, every processor flushes, and the transport
hangs up after playing the goodbye. ``record_outcome`` stores the call's result in
``self.outcomes`` and calls ``on_outcome``.

Errors (the product's policy, ``settings.retry``, a ``RetryPolicy``): a 429
waits for ``retry-after-ms`` / ``retry-after`` (or backs off) and retries
within the turn's budget (``retry.total_timeout``), speaking the
``rate_limited`` phrase while it waits; 5xx, timeouts and connection errors
before the first token retry with backoff; 401/400/quota errors do not
retry. No first token within ``first_token_timeout`` (10 s) gives up on the
request and speaks the ``timeout`` phrase; an error for good speaks the
``error`` phrase (``greeting`` on the opening turn); a slow first token
first gets the ``thinking`` filler. Phrases go out as
``TTSSpeakFrame(text, category)``. Once tokens were spoken a failure ends
the reply where it is: retrying would repeat them.

The SDK's own retries are disabled (``AsyncOpenAI(max_retries=0)``) so that
this policy is the only one in force, and the SDK gets an explicit timeout
(``openai.Timeout``, the httpx timeout class the SDK uses: connect
``connect_timeout``, read ``read_timeout``) instead of its 10-minute default.

The request goes out through the client's own ``post`` (the SDK's documented
way to send a request it does not model), to the same path, with the same
authentication, options and stream class as ``chat.completions.create``,
which would first pass the body through the SDK's ``transform``: a walk of
every message of the history against the parameters' type hints that
returns a plain JSON body such as ours unchanged, and took 4 ms for a
21-message history on this library's test machine, on every request, on the
turn's path. A test checks that the transform leaves the bodies this service
builds unchanged, so an SDK release that starts changing them shows up.
The stream is the SDK's ``AsyncStream`` (its SSE decoding, its error events
raised as ``APIError``), asked for each event's decoded JSON rather than a
``ChatCompletionChunk`` model: building the model took about 110 µs per
token. ``_Chunk`` reads the fields used here and checks their types; an event
that is JSON but not a chunk counts as malformed, like one that is not JSON.

Metrics (``MetricsFrame`` downstream, ``labels={"service": "openai"}``):
``latency.llm_ttft`` (request sent → first token, per request),
``usage.llm_prompt_tokens`` / ``usage.llm_completion_tokens`` (the usage
chunk), ``service.request`` / ``service.error`` / ``service.rate_limited`` /
``service.retry`` / ``protocol.malformed`` (an event that is not JSON) (1 each).

The openai SDK is imported here and nowhere else in the library.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import openai
from loguru import logger
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import MetricsFrame
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processors.context import FunctionCall, LLMContext
from vantum_pipeline.processors.phrases import FallbackPhrases
from vantum_pipeline.processors.tools import (
    OutcomeCallback,
    Tool,
    ToolResult,
    decode_arguments,
    end_call_tool,
    record_outcome_tool,
    result_text,
)
from vantum_pipeline.services.answer_cache import AnswerCache
from vantum_pipeline.services.llm import FirstTokenTimeout, LLMReply, LLMService
from vantum_pipeline.services.shared_clients import shared_client
from vantum_pipeline.settings import Secret, load_env, optional_env, require_secret
from vantum_pipeline.warmup import http_stacks, register

__all__ = ["FirstTokenTimeout", "OpenAILLMService", "OpenAISettings"]

SERVICE = "openai"
_LABELS = {"service": SERVICE}
_PATH = "/chat/completions"
#: The stream yields each event's JSON as the SDK decoded it (``_Chunk`` reads it), not a model.
_STREAM = AsyncStream[object]


def _default_retry() -> RetryPolicy:
    # The product's 2 s / 4 s / 8 s schedule, inside a 30 s budget per turn.
    return RetryPolicy(max_retries=3, base_delay=2.0, total_timeout=30.0)


@dataclass(frozen=True, slots=True)
class OpenAISettings:
    """The product's OpenAI configuration; see the module docstring.

    A campaign's phrases: ``settings.with_fallbacks({"greeting": "..."})``.
    """

    api_key: Secret
    model: str = "gpt-4o"
    temperature: float = 0.7
    max_tokens: int = 150
    top_p: float = 1.0
    frequency_penalty: float = 0.3
    presence_penalty: float = 0.2
    include_usage: bool = True
    base_url: str = "https://api.openai.com/v1"
    #: Give up on a request with no first token after this long.
    first_token_timeout: float = 10.0
    #: Give up on a stream that goes silent for this long after its first token.
    chunk_timeout: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    retry: RetryPolicy = field(default_factory=_default_retry)
    #: Speak the rate_limited phrase when a 429 makes us wait at least this long.
    announce_wait_after: float = 1.0
    #: Speak the thinking filler when the first token is this late (None: never).
    thinking_after: float | None = 4.0
    #: Bound on one whole turn (requests, retries, tools).
    turn_timeout: float = 45.0
    max_tool_rounds: int = 3
    close_timeout: float = 1.0
    input_price_per_million: float = 2.50
    output_price_per_million: float = 10.0
    #: The metric label of this endpoint ("openai" when None): name another
    #: OpenAI-compatible provider ("groq", "azure") so costs stay apart.
    service_label: str | None = None
    fallback_phrases: FallbackPhrases = field(default_factory=FallbackPhrases)

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, Secret) or not self.api_key:
            raise ConfigurationError("OpenAISettings.api_key must be a non-empty Secret (OPENAI_API_KEY)")
        checks = {
            "temperature": 0 <= self.temperature <= 2,
            "top_p": 0 <= self.top_p <= 1,
            "frequency_penalty": -2 <= self.frequency_penalty <= 2,
            "presence_penalty": -2 <= self.presence_penalty <= 2,
            "max_tokens": self.max_tokens >= 1,
            "first_token_timeout": self.first_token_timeout > 0,
            "chunk_timeout": self.chunk_timeout > 0,
            "connect_timeout": self.connect_timeout > 0,
            "read_timeout": self.read_timeout > 0,
            "turn_timeout": self.turn_timeout > 0,
            "close_timeout": self.close_timeout > 0,
            "max_tool_rounds": self.max_tool_rounds >= 0,
            "announce_wait_after": self.announce_wait_after >= 0,
            "thinking_after": self.thinking_after is None or self.thinking_after > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigurationError(f"OpenAISettings.{name} is out of range: {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> OpenAISettings:
        """``OPENAI_API_KEY`` (required), ``OPENAI_MODEL`` and ``OPENAI_BASE_URL`` (optional)."""
        values = load_env(env)
        options: dict[str, Any] = {}
        model = optional_env(values, "OPENAI_MODEL")
        if model:
            options["model"] = model
        base_url = optional_env(values, "OPENAI_BASE_URL")
        if base_url:
            options["base_url"] = base_url
        options.update(overrides)
        return cls(api_key=require_secret(values, "OPENAI_API_KEY"), **options)

    def with_fallbacks(self, overrides: Mapping[str, str]) -> OpenAISettings:
        """These settings with a campaign's fallback phrases."""
        import dataclasses

        return dataclasses.replace(self, fallback_phrases=self.fallback_phrases.with_overrides(overrides))

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for that many tokens."""
        return (prompt_tokens * self.input_price_per_million + completion_tokens * self.output_price_per_million) / 1e6


@dataclass(eq=False)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the service asked us to wait: ``retry-after-ms``, then
    ``retry-after`` as seconds or an HTTP date."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if seconds == seconds and seconds >= 0:  # not NaN
            return seconds
    value = headers.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when - time.time())
    return None


def _service_error(exc: BaseException) -> ServiceError:
    """An SDK exception as our ServiceError, with retryable and retry_after
    set the way the product's policy reads them."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        headers = exc.response.headers
        retryable = status in (408, 409, 429) or status >= 500
        if status == 429 and exc.code == "insufficient_quota":
            retryable = False  # out of credit: waiting will not help
        should_retry = headers.get("x-should-retry")
        if should_retry in ("true", "false"):
            retryable = should_retry == "true"
        if status == 401:
            # The API echoes part of the key in this message: never repeat it.
            message = "authentication failed: check OPENAI_API_KEY"
        else:
            message = f"{type(exc).__name__}: {exc.message}"
        return ServiceError(
            message, service=SERVICE, retryable=retryable, status=status, retry_after=_retry_after(headers)
        )
    if isinstance(exc, openai.APITimeoutError):
        return ServiceError("request timed out", service=SERVICE, retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return ServiceError(f"connection error{detail}", service=SERVICE, retryable=True)
    if isinstance(exc, openai.APIError):
        # An error event inside a 200 stream: the server failed mid-way.
        return ServiceError(f"error in stream: {exc.message}", service=SERVICE, retryable=True)
    return ServiceError(f"{type(exc).__name__}: {exc}", service=SERVICE, retryable=False)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ServiceError) and exc.retryable


class _MalformedChunk(ValueError):
    """A stream event that is JSON but not a chat-completion chunk."""


@dataclass(slots=True)
class _Chunk:
    """What one streamed ``chat.completion.chunk`` says, read from its JSON.

    The SDK would build a ``ChatCompletionChunk`` model of every event
    (``construct_type``: about 110 µs each on this library's test machine,
    for every token of every reply); the fields this service uses are read
    from the decoded JSON instead, with their types checked.
    """

    content: str = ""
    #: (index, id, name, arguments) of each tool-call delta.
    calls: list[tuple[int, str, str, str]] = field(default_factory=list)
    finish: str | None = None
    #: (prompt, completion) tokens, from the usage chunk; None on the others.
    usage: tuple[int, int] | None = None

    @property
    def carries_output(self) -> bool:
        return bool(self.content or self.calls or self.finish)

    @classmethod
    def read(cls, data: object) -> _Chunk:
        if not isinstance(data, dict):
            raise _MalformedChunk(f"an event that is not a JSON object: {type(data).__name__}")
        chunk = cls()
        usage = data.get("usage")
        if usage is not None:
            if not isinstance(usage, dict):
                raise _MalformedChunk("usage that is not an object")
            chunk.usage = (_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))
        choices = data.get("choices")
        if choices is None:
            return chunk
        if not isinstance(choices, list):
            raise _MalformedChunk("choices that are not a list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise _MalformedChunk("a choice that is not an object")
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if content:
                    chunk.content += _text(content, "delta content")
                calls = delta.get("tool_calls")
                if calls:
                    if not isinstance(calls, list):
                        raise _MalformedChunk("tool_calls that are not a list")
                    chunk.calls.extend(_call_delta(call) for call in calls)
            elif delta is not None:
                raise _MalformedChunk("a delta that is not an object")
            finish = choice.get("finish_reason")
            if finish:
                chunk.finish = _text(finish, "finish_reason")
        return chunk


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _MalformedChunk(f"{what} that is not a string")
    return value


def _count(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise _MalformedChunk("a token count that is not an integer")
    return value


def _call_delta(call: object) -> tuple[int, str, str, str]:
    if not isinstance(call, dict):
        raise _MalformedChunk("a tool-call delta that is not an object")
    index = call.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int):
        raise _MalformedChunk("a tool-call delta without an integer index")
    function = call.get("function") or {}
    if not isinstance(function, dict):
        raise _MalformedChunk("a tool-call function that is not an object")
    return (
        index,
        _text(call.get("id") or "", "a tool-call id"),
        _text(function.get("name") or "", "a function name"),
        _text(function.get("arguments") or "", "function arguments"),
    )


class OpenAILLMService(LLMService):
    """Streams replies from OpenAI (or any OpenAI-compatible endpoint: set
    ``base_url``, ``api_key`` and ``model``); see the module docstring.

    ``tools``: extra functions for the model; ``call_tools`` registers
    ``end_call`` and ``record_outcome`` (``on_outcome`` hears each outcome).
    """

    service: ClassVar[str] = SERVICE

    def __init__(
        self,
        settings: OpenAISettings,
        *,
        tools: Sequence[Tool] = (),
        call_tools: bool = True,
        on_outcome: OutcomeCallback | None = None,
        answer_cache: AnswerCache | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            fallback_phrases=settings.fallback_phrases,
            thinking_after=settings.thinking_after,
            turn_timeout=settings.turn_timeout,
            answer_cache=answer_cache,
            on_outcome=on_outcome,
            name=name,
        )
        self.settings = settings
        self._labels = {"service": settings.service_label or SERVICE}
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register_tool(tool)
        if call_tools:
            for tool in (end_call_tool(), record_outcome_tool(self.record_outcome)):
                if tool.name not in self._tools:
                    self.register_tool(tool)
        self._client: AsyncOpenAI | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    # ------------------------------------------------------------ public

    def register_tool(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ConfigurationError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    @property
    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    @property
    def cost(self) -> float:
        """Dollars spent by this service so far (from the usage chunks)."""
        return self.settings.cost(self.prompt_tokens, self.completion_tokens)

    async def metric(self, metric: str, value: float, unit: str = "") -> None:
        frame = MetricsFrame(metric=metric, value=float(value), unit=unit, processor=self.name)
        frame.labels = dict(self._labels)
        await self._host.push_frame(frame)

    async def engine_start(self) -> None:
        self._client = self._client or self._make_client()

    async def abandoned(self, context: LLMContext, reply: LLMReply) -> None:
        """A hedged request we cancelled never got its usage chunk: the prompt
        is billed anyway, so estimate it (four characters a token) and count it."""
        characters = sum(len(str(m.get("content") or "")) for m in context.api_messages())
        prompt = max(1, round(characters / 4))
        completion = round(len(reply.content) / 4)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        for metric, value in (("usage.llm_prompt_tokens", prompt), ("usage.llm_completion_tokens", completion)):
            frame = MetricsFrame(metric=metric, value=float(value), unit="tokens", processor=self.name)
            frame.labels = {**self._labels, "estimated": "true"}
            await self._host.push_frame(frame)

    async def engine_close(self) -> None:
        self._client = None  # shared with the process's other calls: not ours to close

    # ------------------------------------------------------------- turns

    def _make_client(self) -> AsyncOpenAI:
        """The process's client for these settings (see ``shared_clients``)."""
        s = self.settings
        key = s.api_key.reveal()
        return shared_client(
            ("openai", key, s.base_url, s.read_timeout, s.connect_timeout),
            lambda: AsyncOpenAI(
                api_key=key,
                base_url=s.base_url,
                max_retries=0,  # our RetryPolicy is the one in force
                timeout=openai.Timeout(s.read_timeout, connect=s.connect_timeout),
            ),
        )

    async def respond(self, context: LLMContext, reply: LLMReply) -> None:
        if self._client is None:
            self._client = self._make_client()
        rounds = self.settings.max_tool_rounds
        group_text: dict[str, str] = {}
        for round_no in range(rounds + 1):
            allow_tools = round_no < rounds and not reply.end_call
            calls = await self._round(context, reply, allow_tools, group_text)
            if not calls:
                return
            if not allow_tools:
                logger.warning("{}: the model called functions when it was told not to; ignored", self.name)
                return
            await reply.wait_released()  # a hedged request runs functions only once it has won
            if not await self._run_tools(context, calls, reply):
                return

    # ------------------------------------------------------------ requests

    def _params(self, context: LLMContext, group_text: dict[str, str], allow_tools: bool) -> dict[str, Any]:
        s = self.settings
        messages = context.api_messages()
        for message in messages:
            calls = message.get("tool_calls")
            if calls and message.get("content") is None:
                # What the bot said in this turn before calling: the model
                # must not say it again (the assistant aggregator records it
                # with the rest of the reply).
                said = group_text.get(calls[0]["id"])
                if said:
                    message["content"] = said
        params: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "top_p": s.top_p,
            "frequency_penalty": s.frequency_penalty,
            "presence_penalty": s.presence_penalty,
            "stream": True,
        }
        if s.include_usage:
            params["stream_options"] = {"include_usage": True}
        schemas = {tool.name: tool.schema() for tool in self._tools.values()}
        for schema in context.tools:
            schemas.setdefault(schema.get("function", {}).get("name", ""), schema)
        if schemas:
            params["tools"] = list(schemas.values())
            if not allow_tools:
                params["tool_choice"] = "none"
        return params

    async def _open_stream(self, params: dict[str, Any], reply: LLMReply) -> tuple[Any, list[_Chunk]]:
        """Send the request and wait for its first token, retrying as the
        policy says. Returns the stream and the chunks read so far."""
        s = self.settings
        client = self._client
        assert client is not None
        loop = asyncio.get_running_loop()
        attempts = 0

        async def attempt() -> tuple[Any, list[_Chunk]]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                await self.metric("service.retry", 1)
            await self.metric("service.request", 1)
            started = loop.time()
            stream: Any = None
            buffered: list[_Chunk] = []
            try:
                async with asyncio.timeout(s.first_token_timeout):
                    # chat.completions.create without its transform of the body (see the module docstring).
                    stream = await client.post(
                        _PATH,
                        cast_to=ChatCompletion,
                        body=params,
                        options={"security": {"bearer_auth": True}},
                        stream=True,
                        stream_cls=_STREAM,
                    )
                    while True:
                        try:
                            chunk = _Chunk.read(await stream.__anext__())
                        except StopAsyncIteration:
                            break  # an empty reply, or a body closed early
                        buffered.append(chunk)
                        if chunk.carries_output:
                            break
            except TimeoutError:
                await self._close(stream)
                await self.metric("service.error", 1)
                raise FirstTokenTimeout(
                    f"no first token within {s.first_token_timeout:.1f}s", service=SERVICE, retryable=False
                ) from None
            except (json.JSONDecodeError, _MalformedChunk) as exc:
                await self._close(stream)
                await self.metric("protocol.malformed", 1)
                await self.metric("service.error", 1)
                raise ServiceError(f"malformed event in stream: {exc}", service=SERVICE, retryable=True) from exc
            except openai.OpenAIError as exc:
                await self._close(stream)
                error = _service_error(exc)
                await self.metric("service.error", 1)
                if error.status == 429:
                    await self.metric("service.rate_limited", 1)
                raise error from exc
            except BaseException:
                await self._close(stream)
                raise
            reply.started(self.name)
            await self.metric("latency.llm_ttft", loop.time() - started, "s")
            return stream, buffered

        def on_retry(retry: int, exc: BaseException, wait: float) -> None:
            if (
                isinstance(exc, ServiceError)
                and exc.status == 429
                and wait >= s.announce_wait_after
                and "rate_limited" not in reply.said
                and not reply.spoke
            ):
                reply.said.add("rate_limited")
                reply.host.create_turn_task(reply.say("rate_limited"), "rate-limited")

        def retryable(exc: BaseException) -> bool:
            # Rate limited with the answer cached: the cache answers now, no waiting.
            cached = reply.cache_ready and isinstance(exc, ServiceError) and exc.status == 429
            return _retryable(exc) and not cached

        result: tuple[Any, list[_Chunk]] = await s.retry.run(
            attempt, retryable=retryable, service=SERVICE, on_retry=on_retry
        )
        return result

    async def _close(self, stream: Any) -> None:
        """Release the stream's connection, bounded; never raises."""
        if stream is None:
            return
        try:
            async with asyncio.timeout(self.settings.close_timeout):
                await stream.close()
        except (TimeoutError, Exception) as exc:
            logger.debug("{}: closing the stream: {}", self.name, exc)

    async def _round(
        self, context: LLMContext, reply: LLMReply, allow_tools: bool, group_text: dict[str, str]
    ) -> list[FunctionCall]:
        """One request: stream its text out, return the calls it made."""
        params = self._params(context, group_text, allow_tools)
        stream, buffered = await self._open_stream(params, reply)
        partial: dict[int, _PartialCall] = {}
        finish: str | None = None
        said = ""
        try:
            chunks = iter(buffered)
            while True:
                chunk = next(chunks, None)
                if chunk is None:
                    try:
                        async with asyncio.timeout(self.settings.chunk_timeout):
                            chunk = _Chunk.read(await stream.__anext__())
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise ServiceError(
                            f"stream stalled for {self.settings.chunk_timeout:.1f}s", service=SERVICE, retryable=False
                        ) from None
                    except (json.JSONDecodeError, _MalformedChunk) as exc:
                        await self.metric("protocol.malformed", 1)
                        await self.metric("service.error", 1)
                        raise ServiceError(
                            f"malformed event in stream: {exc}", service=SERVICE, retryable=False
                        ) from exc
                    except openai.OpenAIError as exc:
                        await self.metric("service.error", 1)
                        raise _service_error(exc) from exc
                if chunk.usage is not None:
                    await self._usage(*chunk.usage)
                if chunk.content:
                    said += chunk.content
                    await reply.token(chunk.content, self.name)
                for index, call_id, name, arguments in chunk.calls:
                    part = partial.setdefault(index, _PartialCall())
                    part.id = part.id or call_id
                    part.name += name
                    part.arguments.append(arguments)
                if chunk.finish:
                    finish = chunk.finish
        finally:
            await self._close(stream)
        if finish is None:
            logger.warning("{}: the stream ended without a finish_reason (closed early)", self.name)
            await self.metric("service.error", 1)
            if not reply.spoke:
                raise ServiceError("the stream ended before a complete reply", service=SERVICE, retryable=False)
            return []
        if finish == "length":
            logger.info("{}: reply cut at max_tokens={}", self.name, self.settings.max_tokens)
        calls = [
            FunctionCall(part.id or f"call_{index}", part.name, "".join(part.arguments))
            for index, part in sorted(partial.items())
            if part.name
        ]
        if calls:
            group_text[calls[0].id] = said
        return calls

    async def _usage(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        await self.metric("usage.llm_prompt_tokens", prompt, "tokens")
        await self.metric("usage.llm_completion_tokens", completion, "tokens")

    # ------------------------------------------------------------- tools

    async def _run_tools(self, context: LLMContext, calls: list[FunctionCall], reply: LLMReply) -> bool:
        """Run the calls; True when the model should continue."""
        reply.tool_calls += len(calls)
        reply.started(self.name)
        context.add_tool_calls(calls)
        tasks = [self.create_task(self._invoke(context, call), f"tool:{call.name}") for call in calls]
        # Shielded: an interruption cancels this turn, not the functions
        # (each records its own result when it completes).
        gathered = asyncio.gather(*tasks)
        # Nobody awaits it once this turn is interrupted: retrieve its outcome anyway.
        gathered.add_done_callback(lambda future: future.cancelled() or future.exception())
        results: list[ToolResult | None] = await asyncio.shield(gathered)
        done = [result for result in results if result is not None]
        if any(result.end_call for result in done):
            reply.end_call = True
        if reply.end_call:
            return not reply.spoke  # ask the model for a goodbye only if it said nothing yet
        wishes = [result.continue_model for result in done if result.continue_model is not None]
        return not wishes or any(wishes)

    async def _invoke(self, context: LLMContext, call: FunctionCall) -> ToolResult:
        tool = self._tools.get(call.name)
        try:
            if tool is None:
                raise ValueError(f"unknown function {call.name!r}")
            arguments = decode_arguments(tool, call.arguments)
            async with asyncio.timeout(tool.timeout):
                produced = await tool.handler(arguments)
            result = produced if isinstance(produced, ToolResult) else ToolResult(produced)
        except TimeoutError:
            logger.error("{}: function {} timed out", self.name, call.name)
            result = ToolResult({"error": f"{call.name} did not finish in time"})
        except Exception as exc:
            logger.warning("{}: function {} failed: {}", self.name, call.name, exc)
            result = ToolResult({"error": str(exc)})
        context.add_tool_result(call.id, result_text(result.content))
        return result


register("http", http_stacks)
