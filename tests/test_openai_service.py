"""OpenAILLMService with the real openai SDK against FakeOpenAI, in real
pipelines: UserAggregator → LLM → (a stand-in for TTS + output transport)
→ AssistantAggregator."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    HeardTextFrame,
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
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.tools import Tool
from vantum_pipeline.services.llm import LLMReply, LLMService
from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing.openai import FakeOpenAI, Fault, Reply, ToolCall
from vantum_pipeline.testing.openai_wire import split_tokens
from vantum_pipeline.testing.pipeline import PipelineHarness, run_pipeline

KEY = "sk-test-service"
SYSTEM = "You are Sarah, a sales representative for Vantum. Be brief."


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as server:
        yield server


def settings_for(fake: FakeOpenAI, **overrides: Any) -> OpenAISettings:
    options: dict[str, Any] = {
        "api_key": Secret(KEY),
        "base_url": fake.base_url,
        "retry": RetryPolicy(max_retries=3, base_delay=0.05, total_timeout=10.0),
        "thinking_after": None,
        "first_token_timeout": 5.0,
        "read_timeout": 5.0,
    }
    options.update(overrides)
    return OpenAISettings(**options)


class HeardEcho(FrameProcessor):
    """Stands in for TTS + output transport: everything that passes is
    "played" at once and reported as heard (cumulative, one TTS context per
    reply)."""

    def __init__(self) -> None:
        super().__init__()
        self.replies = 0
        self.heard = ""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, LLMFullResponseStartFrame):
            self.replies += 1
            self.heard = ""
        await self.push_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self.heard += frame.text
            await self.push_frame(HeardTextFrame(self.heard.strip(), context_id=f"reply-{self.replies}"))


def texts(frames: list[Frame]) -> str:
    return "".join(f.text for f in frames if isinstance(f, LLMTextFrame))


def metrics(frames: list[Frame], name: str) -> list[MetricsFrame]:
    return [f for f in frames if isinstance(f, MetricsFrame) and f.metric == name]


def kinds(frames: list[Frame]) -> list[str]:
    """Frame class names, without the pipeline's start and the metrics."""
    return [type(f).__name__ for f in frames if not isinstance(f, MetricsFrame | StartFrame)]


def conversation(system: str = SYSTEM) -> LLMContext:
    return LLMContext(system)


# ---------------------------------------------------------------- streaming


async def test_tokens_reach_the_next_processor_in_order(fake: FakeOpenAI) -> None:
    reply = "Hi! This is Sarah from Vantum. Do you have a minute to talk about your dispatch costs?"
    fake.script(reply)
    fake.tokens_per_second = 200
    context = conversation()
    llm = OpenAILLMService(settings_for(fake))
    out = await run_pipeline(
        [UserAggregator(context), llm, AssistantAggregator(context)],
        [EndOfTurnFrame("Hello, who is this?")],
        timeout=10,
    )
    tokens = [f.text for f in out.downstream if isinstance(f, LLMTextFrame)]
    assert tokens == split_tokens(reply)
    names = kinds(out.downstream)
    start, end = names.index("LLMFullResponseStartFrame"), names.index("LLMFullResponseEndFrame")
    assert set(names[start + 1 : end]) == {"LLMTextFrame"} and end - start - 1 == len(tokens)
    assert [(m.role, m.content) for m in context.messages[1:]] == [
        ("user", "Hello, who is this?"),
        ("assistant", reply),
    ]
    (request,) = fake.chat_requests
    body = request.body
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hello, who is this?"},
    ]
    assert (body["model"], body["temperature"], body["max_tokens"], body["top_p"]) == ("gpt-4o", 0.7, 150, 1.0)
    assert (body["frequency_penalty"], body["presence_penalty"]) == (0.3, 0.2)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert {t["function"]["name"] for t in body["tools"]} == {"end_call", "record_outcome"}
    assert request.headers["x-stainless-retry-count"] == "0"
    completion = metrics(out.downstream, "usage.llm_completion_tokens")
    assert [m.value for m in completion] == [len(tokens)]
    prompt = metrics(out.downstream, "usage.llm_prompt_tokens")
    assert len(prompt) == 1 and prompt[0].value > 10 and prompt[0].labels == {"service": "openai"}
    assert llm.cost == pytest.approx((prompt[0].value * 2.5 + len(tokens) * 10) / 1e6)
    (ttft,) = metrics(out.downstream, "latency.llm_ttft")
    assert ttft.unit == "s" and ttft.value >= 0
    assert len(metrics(out.downstream, "service.request")) == 1
    assert not metrics(out.downstream, "service.error")


async def test_interruption_mid_stream_stops_within_one_token_and_keeps_what_was_heard(fake: FakeOpenAI) -> None:
    reply = "Great to hear from you today, let me tell you about our new routing product for fleets."
    fake.script(reply, "Sure, go ahead.")
    fake.tokens_per_second = 2  # one token every 500 ms: the stop has that long to land, even on a loaded machine
    context = conversation()
    echo = HeardEcho()
    async with PipelineHarness(
        [UserAggregator(context), OpenAILLMService(settings_for(fake)), echo, AssistantAggregator(context)]
    ) as harness:
        await harness.send(EndOfTurnFrame("Tell me more."))
        await harness.wait_for(LLMTextFrame, count=3, timeout=10)
        await harness.send(InterruptionFrame())
        (request,) = await fake.wait_for_requests(1, finished=True, timeout=5)
        delivered = [f.text for f in harness.downstream if isinstance(f, LLMTextFrame)]
        assert request.disconnected and not request.completed
        assert request.tokens_sent <= len(delivered) + 1  # the stream stopped within one token
        await asyncio.sleep(1.2)  # over two more token intervals: nothing old comes through
        assert [f.text for f in harness.downstream if isinstance(f, LLMTextFrame)] == delivered

        cut = context.messages[-1]
        assert cut.role == "assistant" and cut.interrupted
        assert cut.content == "".join(delivered).strip() and reply.startswith(cut.content)
        assert len(cut.content) < len(reply)

        await harness.send(EndOfTurnFrame("Actually, what does it cost?"))
        await harness.wait_for(LLMFullResponseEndFrame, timeout=10)
    second = fake.chat_requests[1].body["messages"]
    assert second[-2] == {"role": "assistant", "content": cut.content}  # the heard part, no flag
    assert second[-1] == {"role": "user", "content": "Actually, what does it cost?"}
    assert fake.chat_requests[1].status == 200


async def test_new_context_replaces_a_reply_in_progress(fake: FakeOpenAI) -> None:
    fake.script(Reply("one two three four five six seven eight nine ten", tokens_per_second=10), "Second answer.")
    context = conversation()
    async with PipelineHarness([OpenAILLMService(settings_for(fake))]) as harness:
        context.add_user("First question?")
        await harness.send(LLMContextFrame(context))
        await harness.wait_for(LLMTextFrame, count=2, timeout=10)
        context.add_user("Second question?")
        await harness.send(LLMContextFrame(context))
        await harness.wait_for(LLMFullResponseEndFrame, count=2, timeout=10)
        (first, second) = await fake.wait_for_requests(2, finished=True, timeout=5)
    names = kinds(harness.downstream)
    assert names.count("LLMFullResponseStartFrame") == names.count("LLMFullResponseEndFrame") == 2
    assert texts(harness.downstream).endswith("Second answer.")
    assert first.disconnected and second.completed


# ------------------------------------------------------------------ errors


async def test_429_retry_after_is_waited_out_and_retried(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.rate_limited(retry_after=1))
    fake.script("Thanks for waiting.")
    context = conversation()
    context.add_user("Hi.")
    context.add_assistant("Hello!")
    context.add_user("What do you sell?")
    out = await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)], timeout=10)
    first, second = fake.chat_requests
    assert first.status == 429 and second.status == 200
    assert second.headers["x-stainless-retry-count"] == "0"  # our retry, not the SDK's
    # The backoff alone would have retried after 0.05 s: the wait was the server's.
    assert second.received_at - first.received_at >= 0.95
    assert texts(out.downstream) == "Thanks for waiting."
    notice = [f for f in out.downstream if isinstance(f, TTSSpeakFrame)]
    assert [(f.category, f.text) for f in notice] == [("rate_limited", "I need a moment to think. One second...")]
    assert len(metrics(out.downstream, "service.rate_limited")) == 1
    assert len(metrics(out.downstream, "service.retry")) == 1
    assert len(metrics(out.downstream, "service.request")) == 2


async def test_rate_limit_longer_than_the_turn_budget_gives_up_with_the_error_phrase(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.rate_limited(retry_after=20))
    context = conversation()
    context.add_user("Hi.")
    retry = RetryPolicy(max_retries=3, base_delay=0.05, total_timeout=2.0)
    out = await run_pipeline([OpenAILLMService(settings_for(fake, retry=retry))], [LLMContextFrame(context)])
    assert len(fake.chat_requests) == 1
    assert [f.category for f in out.of_type(TTSSpeakFrame)] == ["error"]


@pytest.mark.parametrize(
    "fault",
    [Fault.server_error(500), Fault.server_error(503), Fault.drop_connection(0), Fault.malformed_event(0)],
    ids=["500", "503", "dropped", "malformed"],
)
async def test_server_errors_are_retried_with_backoff(fake: FakeOpenAI, fault: Fault) -> None:
    fake.fail_next(fault, times=2)
    fake.script("Here I am.")
    context = conversation()
    context.add_user("Hello?")
    out = await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)], timeout=10)
    assert len(fake.chat_requests) == 3
    assert texts(out.downstream) == "Here I am."
    assert not out.of_type(TTSSpeakFrame)
    assert len(metrics(out.downstream, "service.error")) == 2
    assert len(metrics(out.downstream, "service.retry")) == 2


NOT_CHUNKS = [
    '"just a string"',
    '{"choices": "abc"}',
    '{"choices": [7]}',
    '{"choices": [{"delta": "hi"}]}',
    '{"choices": [{"delta": {"content": 5}}]}',
    '{"choices": [{"delta": {"tool_calls": 5}}]}',
    '{"choices": [{"delta": {"tool_calls": [{"index": "0"}]}}]}',
    '{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": 1}}]}}]}',
    '{"choices": [], "usage": {"prompt_tokens": "many"}}',
]


async def reply_with_a_bad_event(fake: FakeOpenAI, data: str, after_tokens: int, reply: str) -> Any:
    """One turn whose stream carries ``data`` after ``after_tokens`` tokens (then a clean reply)."""
    fake.fail_next(Fault.malformed_event(after_tokens, data=data))
    fake.script(reply)
    context = conversation()
    context.add_user("Hello?")
    return await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)], timeout=10)


@pytest.mark.parametrize("data", NOT_CHUNKS)
async def test_an_event_that_is_not_a_chunk_before_the_first_token_is_retried(fake: FakeOpenAI, data: str) -> None:
    out = await reply_with_a_bad_event(fake, data, 0, "Here I am.")
    assert len(fake.chat_requests) == 2
    assert texts(out.downstream) == "Here I am."
    assert len(metrics(out.downstream, "protocol.malformed")) == 1


@pytest.mark.parametrize("data", NOT_CHUNKS)
async def test_an_event_that_is_not_a_chunk_mid_reply_ends_the_reply_where_it_is(fake: FakeOpenAI, data: str) -> None:
    out = await reply_with_a_bad_event(fake, data, 2, "One two three four five six.")
    assert len(fake.chat_requests) == 1  # tokens were spoken: a retry would repeat them
    said = texts(out.downstream)
    assert said and "One two three four five six.".startswith(said) and said != "One two three four five six."
    assert len(metrics(out.downstream, "protocol.malformed")) == 1
    assert len(out.of_type(LLMFullResponseStartFrame)) == len(out.of_type(LLMFullResponseEndFrame)) == 1


@pytest.mark.parametrize(
    "fault",
    [Fault.unauthorized(), Fault.rate_limited(quota=True), Fault.http_error(503, "busy", should_retry=False)],
    ids=["401", "quota", "x-should-retry-false"],
)
async def test_errors_that_retrying_cannot_fix_are_not_retried(fake: FakeOpenAI, fault: Fault) -> None:
    fake.fail_next(fault, times=3)
    context = conversation()
    context.add_user("Hello?")
    out = await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)])
    assert len(fake.chat_requests) == 1
    assert [f.category for f in out.of_type(TTSSpeakFrame)] == ["error"]
    assert not metrics(out.downstream, "service.retry")


async def test_retries_exhausted_speak_the_error_phrase(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.server_error(500), times=10)
    context = conversation()
    context.add_user("Hello?")
    retry = RetryPolicy(max_retries=2, base_delay=0.01)
    out = await run_pipeline([OpenAILLMService(settings_for(fake, retry=retry))], [LLMContextFrame(context)])
    assert len(fake.chat_requests) == 3
    speak = out.of_type(TTSSpeakFrame)
    assert [(f.category, f.text) for f in speak] == [
        ("error", "I'm experiencing technical difficulties. Let me transfer you to a human.")
    ]
    assert kinds(out.downstream)[:3] == ["LLMFullResponseStartFrame", "TTSSpeakFrame", "LLMFullResponseEndFrame"]


async def test_stalled_first_token_gives_the_timeout_fallback_after_the_timeout(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.stall_before_first_token())
    context = conversation()
    context.add_user("Are you there?")
    llm = OpenAILLMService(settings_for(fake, first_token_timeout=0.5))
    loop = asyncio.get_running_loop()
    async with PipelineHarness([llm]) as harness:
        started = loop.time()
        await harness.send(LLMContextFrame(context))
        speak = await harness.wait_for(TTSSpeakFrame, timeout=10)
        waited = loop.time() - started
        (request,) = await fake.wait_for_requests(1, finished=True, timeout=5)
    assert (speak.category, speak.text) == ("timeout", "I'm having trouble processing that. Could you repeat?")
    assert waited >= 0.5
    assert request.disconnected and len(fake.chat_requests) == 1  # given up, not retried


async def test_slow_first_token_gets_the_thinking_filler_then_the_reply(fake: FakeOpenAI) -> None:
    fake.script(Reply("Good question: about forty dollars a month.", time_to_first_token=0.6))
    context = conversation()
    context.add_user("Hi.")
    context.add_assistant("Hello!")
    context.add_user("What does it cost?")
    llm = OpenAILLMService(settings_for(fake, thinking_after=0.2))
    out = await run_pipeline([llm], [LLMContextFrame(context)], timeout=10)
    assert kinds(out.downstream)[:3] == ["LLMFullResponseStartFrame", "TTSSpeakFrame", "LLMTextFrame"]
    assert out.of_type(TTSSpeakFrame)[0].category == "thinking"
    assert texts(out.downstream) == "Good question: about forty dollars a month."


async def test_opening_turn_failure_speaks_the_campaign_greeting(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.unauthorized(), times=5)
    settings = settings_for(fake).with_fallbacks({"greeting": "Hi, this is Alex from Acme. Got a minute?"})
    out = await run_pipeline([OpenAILLMService(settings)], [LLMContextFrame(conversation())])
    assert len(fake.chat_requests) == 1  # a 401 is not retried
    assert [(f.category, f.text) for f in out.of_type(TTSSpeakFrame)] == [
        ("greeting", "Hi, this is Alex from Acme. Got a minute?")
    ]


async def test_error_event_after_tokens_ends_the_reply_where_it_is(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.error_event(after_tokens=3))
    fake.script("one two three four five")
    context = conversation()
    context.add_user("Count.")
    out = await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)])
    assert texts(out.downstream) == "one two three"
    assert not out.of_type(TTSSpeakFrame) and len(fake.chat_requests) == 1
    assert len(out.of_type(LLMFullResponseEndFrame)) == 1


# ------------------------------------------------------------------- tools


async def test_a_tool_call_runs_and_the_model_continues(fake: FakeOpenAI) -> None:
    calls: list[dict[str, Any]] = []

    async def check_calendar(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {"free": ["Tuesday 10:00"]}

    tool = Tool(
        "check_calendar",
        "Free demo slots on a day",
        {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
        check_calendar,
    )
    fake.script(
        Reply("Let me check.", tool_calls=[ToolCall("check_calendar", {"day": "Tuesday"})]),
        "Tuesday at ten works. Shall I book it?",
    )
    context = conversation()
    llm = OpenAILLMService(settings_for(fake), tools=[tool])
    out = await run_pipeline(
        [UserAggregator(context), llm, AssistantAggregator(context)], [EndOfTurnFrame("Can we meet Tuesday?")]
    )
    assert calls == [{"day": "Tuesday"}]
    assert texts(out.downstream) == "Let me check.Tuesday at ten works. Shall I book it?"
    assert len(out.of_type(LLMFullResponseStartFrame)) == len(out.of_type(LLMFullResponseEndFrame)) == 1
    _, second = fake.chat_requests
    call_message, result_message = second.body["messages"][-2:]
    call_id = call_message["tool_calls"][0]["id"]
    assert call_message["role"] == "assistant" and call_message["content"] == "Let me check."
    assert json.loads(call_message["tool_calls"][0]["function"]["arguments"]) == {"day": "Tuesday"}
    assert result_message == {"role": "tool", "content": '{"free": ["Tuesday 10:00"]}', "tool_call_id": call_id}
    roles = [m.role for m in context.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert context.messages[-1].content == "Let me check.Tuesday at ten works. Shall I book it?"


async def test_a_tool_result_after_an_interruption_is_dropped(fake: FakeOpenAI) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def book(args: dict[str, Any]) -> str:
        started.set()
        await asyncio.wait_for(release.wait(), timeout=5)
        return "booked for Tuesday 10:00"

    tool = Tool("book_demo", "Book a demo", {"type": "object", "properties": {}}, book)
    fake.script(Reply(tool_calls=[ToolCall("book_demo")]), "This continuation must never be spoken.", "Okay!")
    context = conversation()
    llm = OpenAILLMService(settings_for(fake), tools=[tool])
    async with PipelineHarness([UserAggregator(context), llm, HeardEcho(), AssistantAggregator(context)]) as harness:
        await harness.send(EndOfTurnFrame("Book me in."))
        await asyncio.wait_for(started.wait(), timeout=5)
        await harness.send(InterruptionFrame())
        await asyncio.sleep(0.05)
        release.set()
        for _ in range(100):  # the function still completes and records its result
            if any(m.role == "tool" for m in context.messages):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert len(fake.chat_requests) == 1  # the model was not asked to continue
        assert "never be spoken" not in texts(harness.downstream)
        result = next(m for m in context.messages if m.role == "tool")
        assert result.content == "booked for Tuesday 10:00"
        await harness.send(EndOfTurnFrame("So, are we booked?"))
        await harness.wait_for(LLMTextFrame, timeout=10)
    second = fake.chat_requests[1]
    assert second.status == 200  # the late result pairs with its call: a valid request
    assert texts(harness.downstream) == "This continuation must never be spoken."  # the answer to the new turn
    assert any(m.get("role") == "tool" for m in second.body["messages"])


async def test_end_call_says_goodbye_then_ends_the_call(fake: FakeOpenAI) -> None:
    fake.script(
        Reply(
            "Thanks for your time, have a great day!",
            tool_calls=[
                ToolCall("record_outcome", {"outcome": "not_interested", "notes": "Happy with current vendor."}),
                ToolCall("end_call", {"reason": "not interested"}),
            ],
        )
    )
    outcomes = []
    context = conversation()
    context.add_user("We're not interested, thanks.")
    llm = OpenAILLMService(settings_for(fake), on_outcome=outcomes.append)
    out = await run_pipeline([llm], [LLMContextFrame(context)], send_end=False, timeout=10)
    assert out.finish_reason == "end"  # the service ended the call by itself
    assert kinds(out.downstream)[-2:] == ["LLMFullResponseEndFrame", "EndFrame"]
    assert out.of_type(EndFrame)[0].reason == "end_call"
    assert texts(out.downstream) == "Thanks for your time, have a great day!"
    assert len(fake.chat_requests) == 1  # goodbye already said: no continuation
    assert [(o.outcome, o.notes) for o in outcomes] == [("not_interested", "Happy with current vendor.")]
    assert llm.outcomes == outcomes


async def test_end_call_without_words_asks_the_model_for_a_goodbye(fake: FakeOpenAI) -> None:
    fake.script(Reply(tool_calls=[ToolCall("end_call", {"reason": "done"})]), "Goodbye, and thanks!")
    context = conversation()
    context.add_user("Bye.")
    out = await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)], send_end=False)
    assert out.finish_reason == "end"
    assert texts(out.downstream) == "Goodbye, and thanks!"
    assert fake.chat_requests[1].body["tool_choice"] == "none"


async def test_bad_tool_arguments_go_back_to_the_model_as_an_error(fake: FakeOpenAI) -> None:
    fake.script(Reply(tool_calls=[ToolCall("record_outcome", '{"notes": "no outcome given"')]), "Let me try again.")
    context = conversation()
    context.add_user("Book it.")
    await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)])
    result = fake.chat_requests[1].body["messages"][-1]
    assert result["role"] == "tool" and "not valid JSON" in result["content"]


# ------------------------------------------------------------- the window


async def test_the_request_carries_the_history_window(fake: FakeOpenAI) -> None:
    context = LLMContext(SYSTEM, max_messages=10)
    for n in range(12):
        context.add_user(f"question {n}")
        context.add_assistant(f"answer {n}")
    context.add_user("last question")
    await run_pipeline([OpenAILLMService(settings_for(fake))], [LLMContextFrame(context)])
    sent = fake.chat_requests[0].body["messages"]
    assert len(sent) == 11 and sent[0] == {"role": "system", "content": SYSTEM}
    assert sent[-1] == {"role": "user", "content": "last question"} and sent[1]["content"] == "answer 7"


async def test_the_bodies_sent_are_what_the_sdks_create_would_send(fake: FakeOpenAI) -> None:
    # The service posts its body with the client's own post(), skipping create()'s transform of the
    # body (a walk of the whole history per request). That is only right while the transform leaves
    # every body this service builds unchanged: history, an interrupted reply, a call and its
    # result, tools offered and refused.
    from openai._utils import async_maybe_transform
    from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming

    async def check_calendar(args: dict[str, Any]) -> dict[str, Any]:
        return {"free": ["Tuesday 10:00"], "note": None}

    tool = Tool(
        "check_calendar",
        "Free demo slots on a day",
        {"type": "object", "properties": {"day": {"type": "string", "enum": ["Tuesday"]}}, "required": ["day"]},
        check_calendar,
    )
    fake.script(
        Reply("Let me check.", tool_calls=[ToolCall("check_calendar", {"day": "Tuesday"})]),
        "Tuesday at ten works.",
    )
    context = conversation()
    context.add_user("Hello?")
    context.add_assistant("Hi, this is Sarah from Vantum, do you", interrupted=True)
    context.add_user('Who is this? Ünïcödé, quotes " and a tab\t.')
    llm = OpenAILLMService(settings_for(fake, top_p=0.5), tools=[tool])
    await run_pipeline([UserAggregator(context), llm], [EndOfTurnFrame("Can we meet Tuesday?")])
    bodies = [request.body for request in fake.chat_requests]
    assert len(bodies) == 2 and "tools" in bodies[0] and bodies[1]["messages"][-1]["role"] == "tool"
    for body in bodies:
        assert await async_maybe_transform(body, CompletionCreateParamsStreaming) == body
    # create()'s authentication: the key as a bearer token, and nothing else.
    for request in fake.chat_requests:
        assert request.path == "/v1/chat/completions" and request.headers["Authorization"] == "Bearer ***"


# --------------------------------------------------------------- settings


def test_settings_defaults_are_the_products() -> None:
    settings = OpenAISettings(api_key=Secret("sk-live-secret"))
    assert (settings.model, settings.temperature, settings.max_tokens, settings.top_p) == ("gpt-4o", 0.7, 150, 1.0)
    assert (settings.frequency_penalty, settings.presence_penalty) == (0.3, 0.2)
    assert settings.first_token_timeout == 10.0 and settings.include_usage
    assert settings.retry.schedule() == [2.0, 4.0, 8.0]
    assert settings.cost(1_000_000, 1_000_000) == pytest.approx(12.5)
    assert "sk-live-secret" not in repr(settings)


def test_settings_from_env() -> None:
    settings = OpenAISettings.from_env({"OPENAI_API_KEY": "sk-abc", "OPENAI_MODEL": "gpt-4o-mini"})
    assert settings.api_key.reveal() == "sk-abc" and settings.model == "gpt-4o-mini"
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAISettings.from_env({})
    with pytest.raises(ConfigurationError, match="temperature"):
        OpenAISettings(api_key=Secret("k"), temperature=3.0)


# ------------------------------------------------------------ cancel


class SlowToStop(LLMService):
    """A reply that, once cancelled, needs the CancelFrame to have gone by before it can finish
    (as a stream whose connection closes slowly): a CancelFrame that waited for it would hang."""

    def __init__(self) -> None:
        super().__init__()
        self.replying = asyncio.Event()
        self.cancel_passed = asyncio.Event()
        self.cancel_passed_first = False

    async def respond(self, context: LLMContext, reply: LLMReply) -> None:
        self.replying.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.cancel_passed.wait()
            self.cancel_passed_first = self.cancel_passed.is_set()
            raise


async def test_a_cancel_goes_by_without_waiting_for_the_reply_to_stop():
    llm = SlowToStop()
    harness = PipelineHarness([llm], stop_timeout=10.0)

    def watch(frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, CancelFrame):
            llm.cancel_passed.set()

    harness.task.add_observer(watch)
    async with harness:
        await harness.send(LLMContextFrame(LLMContext("Be brief.")))
        async with asyncio.timeout(5):
            await llm.replying.wait()
        await harness.task.cancel()
    assert harness.collected.finish_reason == "cancel"
    assert llm.cancel_passed_first  # the reply stopped after the CancelFrame reached the tail
