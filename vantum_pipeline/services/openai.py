"""OpenAI chat completions (gpt-4o), streamed into the pipeline.

    LLMContextFrame → LLMFullResponseStartFrame, LLMTextFrame*, LLMFullResponseEndFrame

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
from typing import Any

import openai
from loguru import logger
from openai import AsyncOpenAI

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    EndTaskFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    StartFrame,
    TTSSpeakFrame,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.context import FunctionCall, LLMContext
from vantum_pipeline.processors.phrases import FallbackPhrases
from vantum_pipeline.processors.tools import (
    OutcomeCallback,
    SalesOutcome,
    Tool,
    ToolResult,
    decode_arguments,
    end_call_tool,
    record_outcome_tool,
    result_text,
)
from vantum_pipeline.services.shared_clients import shared_client
from vantum_pipeline.settings import Secret, load_env, optional_env, require_secret

__all__ = ["FirstTokenTimeout", "OpenAILLMService", "OpenAISettings"]

SERVICE = "openai"
_LABELS = {"service": SERVICE}


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


class FirstTokenTimeout(ServiceError):
    """No first token within ``first_token_timeout``: the product gives up on
    the request and speaks a fallback rather than retrying."""


@dataclass(eq=False)
class _Turn:
    opening: bool
    spoke: bool = False  # the model's text went out
    output_started: bool = False
    end_call: bool = False
    said: set[str] = field(default_factory=set)  # fallback categories spoken
    group_text: dict[str, str] = field(default_factory=dict)  # first call id → text said before it


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


def _carries_output(chunk: Any) -> bool:
    return any(
        (choice.delta is not None and (choice.delta.content or choice.delta.tool_calls)) or choice.finish_reason
        for choice in chunk.choices
    )


class OpenAILLMService(FrameProcessor):
    """Streams replies from OpenAI; see the module docstring.

    ``tools``: extra functions for the model; ``call_tools`` registers
    ``end_call`` and ``record_outcome`` (``on_outcome`` hears each outcome).
    """

    def __init__(
        self,
        settings: OpenAISettings,
        *,
        tools: Sequence[Tool] = (),
        call_tools: bool = True,
        on_outcome: OutcomeCallback | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.settings = settings
        self._tools: dict[str, Tool] = {}
        self._on_outcome = on_outcome
        self.outcomes: list[SalesOutcome] = []
        for tool in tools:
            self.register_tool(tool)
        if call_tools:
            for tool in (end_call_tool(), record_outcome_tool(self._record_outcome)):
                if tool.name not in self._tools:
                    self.register_tool(tool)
        self._client: AsyncOpenAI | None = None
        self._turn_task: asyncio.Task[Any] | None = None
        self._bracket_open = False
        self._ending = False
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

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, LLMContextFrame):
            await self._start_turn(frame.context)
            return
        if isinstance(frame, StartFrame):
            self._client = self._client or self._make_client()
        elif isinstance(frame, InterruptionFrame):
            await self._stop_turn(cancel=True)
            self._bracket_open = False  # the interruption closes it implicitly
        elif isinstance(frame, CancelFrame):
            await self._stop_turn(cancel=True)
        elif isinstance(frame, EndFrame):
            await self._stop_turn(cancel=False)
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
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

    async def _start_turn(self, context: Any) -> None:
        if not isinstance(context, LLMContext):
            raise ConfigurationError(f"LLMContextFrame.context must be an LLMContext, got {type(context).__name__}")
        if self._ending:
            logger.debug("{}: the call is ending; context ignored", self.name)
            return
        await self._stop_turn(cancel=True)
        if self._bracket_open:
            # A newer context replaced a reply in progress: close its bracket.
            self._bracket_open = False
            await self.push_frame(LLMFullResponseEndFrame())
        if self._client is None:
            self._client = self._make_client()
        self._turn_task = self.create_turn_task(self._run_turn(context), "turn")

    async def _stop_turn(self, *, cancel: bool) -> None:
        task, self._turn_task = self._turn_task, None
        if task is None or task.done():
            return
        if cancel:
            task.cancel()
        timeout = self.settings.close_timeout + 0.5 if cancel else self.settings.turn_timeout
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.error("{}: turn did not stop within {:.1f}s; cancelling", self.name, timeout)
            task.cancel()

    async def _run_turn(self, context: LLMContext) -> None:
        s = self.settings
        turn = _Turn(opening=not context.has_conversation)
        await self.push_frame(LLMFullResponseStartFrame())
        self._bracket_open = True
        filler = None
        if s.thinking_after is not None and not turn.opening:
            filler = self.create_turn_task(self._filler(turn, s.thinking_after), "thinking")
        try:
            async with asyncio.timeout(s.turn_timeout):
                await self._converse(context, turn)
        except FirstTokenTimeout as exc:
            logger.warning("{}: {}", self.name, exc)
            await self._fallback(turn, "timeout")
        except (ServiceError, TimeoutError) as exc:
            logger.error("{}: reply failed: {}", self.name, str(exc) or f"turn took over {s.turn_timeout:.1f}s")
            await self._fallback(turn, "error")
        except Exception as exc:
            # A bug, not the service: still, the callee must not hear dead air.
            logger.opt(exception=exc).error("{}: reply failed: {}: {}", self.name, type(exc).__name__, exc)
            await self._fallback(turn, "error")
        finally:
            if filler is not None:
                filler.cancel()
        if turn.end_call and not turn.spoke:
            await self._say(turn, "goodbye")
        await self.push_frame(LLMFullResponseEndFrame())
        self._bracket_open = False
        if turn.end_call:
            self._ending = True
            await self.push_frame(EndTaskFrame(reason="end_call"), FrameDirection.UPSTREAM)

    async def _converse(self, context: LLMContext, turn: _Turn) -> None:
        rounds = self.settings.max_tool_rounds
        for round_no in range(rounds + 1):
            allow_tools = round_no < rounds and not turn.end_call
            calls = await self._round(context, turn, allow_tools)
            if not calls:
                return
            if not allow_tools:
                logger.warning("{}: the model called functions when it was told not to; ignored", self.name)
                return
            if not await self._run_tools(context, calls, turn):
                return

    async def _filler(self, turn: _Turn, delay: float) -> None:
        await asyncio.sleep(delay)
        if not turn.output_started:
            await self._say(turn, "thinking")

    async def _say(self, turn: _Turn, category: str) -> None:
        turn.said.add(category)
        text = self.settings.fallback_phrases.phrase(category)
        await self.push_frame(TTSSpeakFrame(text, category=category))

    async def _fallback(self, turn: _Turn, category: str) -> None:
        if turn.spoke:
            return  # a reply cut short ends where it is
        if turn.opening:
            category = "greeting"
        await self._say(turn, category)

    # ------------------------------------------------------------ requests

    def _params(self, context: LLMContext, turn: _Turn, allow_tools: bool) -> dict[str, Any]:
        s = self.settings
        messages = context.api_messages()
        for message in messages:
            calls = message.get("tool_calls")
            if calls and message.get("content") is None:
                # What the bot said in this turn before calling: the model
                # must not say it again (the assistant aggregator records it
                # with the rest of the reply).
                said = turn.group_text.get(calls[0]["id"])
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

    async def _open_stream(self, params: dict[str, Any], turn: _Turn) -> tuple[Any, list[Any]]:
        """Send the request and wait for its first token, retrying as the
        policy says. Returns the stream and the chunks read so far."""
        s = self.settings
        client = self._client
        assert client is not None
        loop = asyncio.get_running_loop()
        attempts = 0

        async def attempt() -> tuple[Any, list[Any]]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                await self._metric("service.retry", 1)
            await self._metric("service.request", 1)
            started = loop.time()
            stream: Any = None
            buffered: list[Any] = []
            try:
                async with asyncio.timeout(s.first_token_timeout):
                    stream = await client.chat.completions.create(**params)
                    while True:
                        try:
                            chunk = await stream.__anext__()
                        except StopAsyncIteration:
                            break  # an empty reply, or a body closed early
                        buffered.append(chunk)
                        if _carries_output(chunk):
                            break
            except TimeoutError:
                await self._close(stream)
                await self._metric("service.error", 1)
                raise FirstTokenTimeout(
                    f"no first token within {s.first_token_timeout:.1f}s", service=SERVICE, retryable=False
                ) from None
            except json.JSONDecodeError as exc:
                await self._close(stream)
                await self._metric("protocol.malformed", 1)
                await self._metric("service.error", 1)
                raise ServiceError(f"malformed event in stream: {exc}", service=SERVICE, retryable=True) from exc
            except openai.OpenAIError as exc:
                await self._close(stream)
                error = _service_error(exc)
                await self._metric("service.error", 1)
                if error.status == 429:
                    await self._metric("service.rate_limited", 1)
                raise error from exc
            except BaseException:
                await self._close(stream)
                raise
            turn.output_started = True
            await self._metric("latency.llm_ttft", loop.time() - started, "s")
            return stream, buffered

        def on_retry(retry: int, exc: BaseException, wait: float) -> None:
            if (
                isinstance(exc, ServiceError)
                and exc.status == 429
                and wait >= s.announce_wait_after
                and "rate_limited" not in turn.said
                and not turn.spoke
            ):
                turn.said.add("rate_limited")
                self.create_turn_task(self._say(turn, "rate_limited"), "rate-limited")

        result: tuple[Any, list[Any]] = await s.retry.run(
            attempt, retryable=_retryable, service=SERVICE, on_retry=on_retry
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

    async def _round(self, context: LLMContext, turn: _Turn, allow_tools: bool) -> list[FunctionCall]:
        """One request: stream its text out, return the calls it made."""
        params = self._params(context, turn, allow_tools)
        stream, buffered = await self._open_stream(params, turn)
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
                            chunk = await stream.__anext__()
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise ServiceError(
                            f"stream stalled for {self.settings.chunk_timeout:.1f}s", service=SERVICE, retryable=False
                        ) from None
                    except json.JSONDecodeError as exc:
                        await self._metric("protocol.malformed", 1)
                        await self._metric("service.error", 1)
                        raise ServiceError(
                            f"malformed event in stream: {exc}", service=SERVICE, retryable=False
                        ) from exc
                    except openai.OpenAIError as exc:
                        await self._metric("service.error", 1)
                        raise _service_error(exc) from exc
                if chunk.usage is not None:
                    await self._usage(chunk.usage)
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        turn.spoke = True
                        said += delta.content
                        await self.push_frame(LLMTextFrame(delta.content))
                    for call in (delta.tool_calls if delta is not None else None) or ():
                        part = partial.setdefault(call.index, _PartialCall())
                        part.id = part.id or (call.id or "")
                        if call.function is not None:
                            part.name += call.function.name or ""
                            part.arguments.append(call.function.arguments or "")
                    if choice.finish_reason:
                        finish = choice.finish_reason
        finally:
            await self._close(stream)
        if finish is None:
            logger.warning("{}: the stream ended without a finish_reason (closed early)", self.name)
            await self._metric("service.error", 1)
            if not turn.spoke:
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
            turn.group_text[calls[0].id] = said
        return calls

    async def _usage(self, usage: Any) -> None:
        prompt = int(usage.prompt_tokens or 0)
        completion = int(usage.completion_tokens or 0)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        await self._metric("usage.llm_prompt_tokens", prompt, "tokens")
        await self._metric("usage.llm_completion_tokens", completion, "tokens")

    async def _metric(self, metric: str, value: float, unit: str = "") -> None:
        await self.push_frame(
            MetricsFrame(metric=metric, value=float(value), unit=unit, processor=self.name, labels=dict(_LABELS))
        )

    # ------------------------------------------------------------- tools

    async def _run_tools(self, context: LLMContext, calls: list[FunctionCall], turn: _Turn) -> bool:
        """Run the calls; True when the model should continue."""
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
            turn.end_call = True
        if turn.end_call:
            return not turn.spoke  # ask the model for a goodbye only if it said nothing yet
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

    async def _record_outcome(self, outcome: SalesOutcome) -> None:
        self.outcomes.append(outcome)
        logger.info("{}: call outcome recorded: {}", self.name, outcome.outcome)
        if self._on_outcome is not None:
            produced = self._on_outcome(outcome)
            if asyncio.iscoroutine(produced):
                await produced
