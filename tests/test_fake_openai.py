"""FakeOpenAI against the real openai SDK (and raw HTTP where the wire
itself is the point): streaming, tools, validation, and every fault seen
the way the SDK would see it from the real API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from tests.standalone import standalone_fake
from vantum_pipeline.testing.openai import FakeOpenAI, Fault, Reply, ToolCall, last_user_text
from vantum_pipeline.testing.openai_wire import split_tokens

KEY = "sk-test-0123456789"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is this?"}]
END_CALL = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "End the call.",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    },
}
BOOK = {
    "type": "function",
    "function": {"name": "book_demo", "parameters": {"type": "object", "properties": {"day": {"type": "string"}}}},
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as server:
        yield server


def client_for(fake: FakeOpenAI, *, retries: int = 0, read: float = 5.0, key: str = KEY) -> AsyncOpenAI:
    return AsyncOpenAI(
        api_key=key, base_url=fake.base_url, max_retries=retries, timeout=openai.Timeout(read, connect=2.0)
    )


async def stream_chunks(client: AsyncOpenAI, **extra: Any) -> list[Any]:
    params: dict[str, Any] = {"model": "gpt-4o", "messages": MESSAGES, "stream": True, **extra}
    stream = await client.chat.completions.create(**params)
    return [chunk async for chunk in stream]


# --------------------------------------------------------------- streaming


async def test_stream_role_first_then_tokens_finish_and_usage(fake: FakeOpenAI) -> None:
    text = "Hi! This is Sarah from Vantum, calling about logistics software."
    fake.script(text)
    async with client_for(fake) as client:
        chunks = await stream_chunks(client, stream_options={"include_usage": True})
    first, *middle, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    contents = [c.choices[0].delta.content for c in middle if c.choices[0].delta.content is not None]
    assert contents == split_tokens(text) and len(contents) > 5
    assert "".join(contents) == text
    assert finish.choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == len(contents)
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + usage.usage.completion_tokens
    assert usage.usage.prompt_tokens > len(split_tokens("Be brief. Who is this?"))
    record = fake.requests[0]
    assert record.headers["Authorization"] == "Bearer ***" and KEY not in json.dumps(record.headers)
    assert record.body["messages"] == MESSAGES and record.completed and record.tokens_sent == len(contents)


async def test_without_include_usage_there_is_no_usage_chunk(fake: FakeOpenAI) -> None:
    fake.script("Hello.")
    async with client_for(fake) as client:
        chunks = await stream_chunks(client)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_sse_framing_and_rate_limit_headers_on_the_wire(fake: FakeOpenAI) -> None:
    fake.script("One two.")
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{fake.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    for name in ("limit-requests", "limit-tokens", "remaining-requests", "remaining-tokens", "reset-requests"):
        assert response.headers[f"x-ratelimit-{name}"]
    events = response.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert (
        payloads[0]["object"] == "chat.completion.chunk" and payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    )
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 3


async def test_tool_calls_stream_by_index_with_fragmented_arguments(fake: FakeOpenAI) -> None:
    fake.script(
        Reply(
            text="Let me book that.",
            tool_calls=[ToolCall("book_demo", {"day": "Tuesday at 10 am"}), ToolCall("end_call", {"reason": "done"})],
        )
    )
    async with client_for(fake) as client:
        chunks = await stream_chunks(client, tools=[BOOK, END_CALL])
    calls: dict[int, dict[str, Any]] = {}
    fragments = 0
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            if call.id:
                assert entry["id"] is None, "the id comes once, on the first delta of a call"
                entry["id"] = call.id
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
            fragments += 1
    assert [calls[i]["name"] for i in sorted(calls)] == ["book_demo", "end_call"]
    assert json.loads(calls[0]["arguments"]) == {"day": "Tuesday at 10 am"}
    assert json.loads(calls[1]["arguments"]) == {"reason": "done"}
    assert all(calls[i]["id"].startswith("call_") for i in calls)
    assert fragments > 4  # the arguments really arrive in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Let me book that."


async def test_non_streaming_completion(fake: FakeOpenAI) -> None:
    fake.script("Sure.", Reply(tool_calls=[ToolCall("end_call", {"reason": "bye"})]))
    async with client_for(fake) as client:
        completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert completion.choices[0].message.content == "Sure."
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens == 2
        with_tool = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=[END_CALL])
    message = with_tool.choices[0].message
    assert message.content is None and with_tool.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and json.loads(message.tool_calls[0].function.arguments) == {"reason": "bye"}


async def test_max_tokens_cuts_the_reply_with_finish_reason_length(fake: FakeOpenAI) -> None:
    fake.script("one two three four five six seven")
    async with client_for(fake) as client:
        chunks = await stream_chunks(client, max_tokens=3)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_pacing_first_token_and_rate() -> None:
    async with FakeOpenAI(time_to_first_token=0.3, tokens_per_second=20) as fake:
        fake.script("a b c d e")  # five tokens: four intervals of 50 ms after the first
        async with client_for(fake, key="any-key") as client:
            start = time.monotonic()
            stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
            first_token_at = None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first_token_at is None:
                    first_token_at = time.monotonic() - start
            total = time.monotonic() - start
    assert first_token_at is not None and first_token_at >= 0.29
    assert total >= 0.29 + 0.19


async def test_responder_sees_the_request_sync_or_async(fake: FakeOpenAI) -> None:
    seen: list[dict[str, Any]] = []

    async def responder(request: dict[str, Any]) -> str:
        seen.append(request)
        await asyncio.sleep(0)
        return f"You said: {last_user_text(request)}"

    fake.responder = responder
    async with client_for(fake) as client:
        chunks = await stream_chunks(client, temperature=0.7)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: Who is this?"
        fake.responder = lambda request: Reply(tool_calls=[ToolCall("end_call")])
        chunks = await stream_chunks(client, tools=[END_CALL])
    assert seen[0]["temperature"] == 0.7 and seen[0]["messages"] == MESSAGES
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_scripted_replies_come_before_the_responder_then_the_default(fake: FakeOpenAI) -> None:
    fake.script("scripted")
    fake.responder = lambda request: "from the responder"
    async with client_for(fake) as client:
        texts = []
        for _ in range(2):
            chunks = await stream_chunks(client)
            texts.append("".join(c.choices[0].delta.content or "" for c in chunks))
        fake.responder = None
        chunks = await stream_chunks(client)
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks))
    assert texts == ["scripted", "from the responder", fake.default_reply]


async def test_client_closing_a_stream_early_is_recorded(fake: FakeOpenAI) -> None:
    fake.tokens_per_second = 20
    fake.script(" ".join(["word"] * 40))
    async with client_for(fake) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        received = 0
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                received += 1
            if received == 3:
                await stream.close()
                break
        (record,) = await fake.wait_for_requests(1, finished=True, timeout=5)
    assert record.disconnected and not record.completed
    assert 3 <= record.tokens_sent <= 5


# -------------------------------------------------------------- validation


async def test_unauthorized_without_the_configured_key(fake: FakeOpenAI) -> None:
    async with client_for(fake, key="sk-wrong-key-xyz") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await stream_chunks(client)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert "sk-wrong-key-xyz" not in str(caught.value)
    assert caught.value.response.headers["x-ratelimit-limit-requests"]
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{fake.base_url}/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES})
    assert response.status_code == 401 and "didn't provide an API key" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("messages", "extra", "expected"),
    [
        ([{"role": "user", "content": "hi", "interrupted": True}], {}, "'interrupted' was unexpected"),
        ([{"role": "bot", "content": "hi"}], {}, "Invalid value: 'bot'"),
        ([{"role": "tool", "content": "x", "tool_call_id": "c1"}], {}, "must be a response to a preceeding"),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "user", "content": "hello?"},
            ],
            {},
            "did not have response messages: c1",
        ),
        ([], {}, "too short"),
        (MESSAGES, {"temperature": 3}, "temperature"),
        (MESSAGES, {"stream_options": {"include_usage": True}}, "only allowed when 'stream' is enabled"),
    ],
)
async def test_bad_requests_are_refused_like_the_api_does(
    fake: FakeOpenAI, messages: list[dict[str, Any]], extra: dict[str, Any], expected: str
) -> None:
    async with client_for(fake) as client:
        with pytest.raises(openai.BadRequestError, match=expected) as caught:
            await client.chat.completions.create(model="gpt-4o", messages=messages, **extra)
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"


async def test_unknown_argument_malformed_json_and_unknown_path(fake: FakeOpenAI) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with httpx.AsyncClient() as http:
        unknown = await http.post(
            f"{fake.base_url}/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES, "foo": 1}, headers=auth
        )
        malformed = await http.post(f"{fake.base_url}/chat/completions", content=b"{not json", headers=auth)
        missing = await http.get(f"{fake.base_url}/embeddingz", headers=auth)
    assert unknown.status_code == 400 and "Unrecognized request argument supplied: foo" in unknown.text
    assert malformed.status_code == 400 and "could not parse the JSON body" in malformed.json()["error"]["message"]
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Invalid URL (GET /v1/embeddingz)"


async def test_a_scripted_call_to_a_tool_the_request_lacks_is_a_loud_error(fake: FakeOpenAI) -> None:
    fake.script(Reply(tool_calls=[ToolCall("book_demo")]))
    async with client_for(fake) as client:
        with pytest.raises(openai.InternalServerError, match="book_demo"):
            await stream_chunks(client, tools=[END_CALL])


# ------------------------------------------------------------------ faults


async def test_429_carries_retry_after_and_the_api_error_shape(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.rate_limited(retry_after=1, retry_after_ms=1000))
    async with client_for(fake) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await stream_chunks(client)
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded" and error.type == "requests"
    assert error.response.headers["retry-after"] == "1" and error.response.headers["retry-after-ms"] == "1000"
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "Rate limit reached" in error.message


async def test_sdk_waits_out_retry_after_ms_then_succeeds(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.rate_limited(retry_after=30, retry_after_ms=300))
    fake.script("Back again.")
    async with client_for(fake, retries=1) as client:
        chunks = await stream_chunks(client)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Back again."
    first, second = fake.requests
    assert second.received_at - first.received_at >= 0.29  # retry-after-ms wins over retry-after
    assert first.headers["x-stainless-retry-count"] == "0" and second.headers["x-stainless-retry-count"] == "1"


async def test_quota_429_is_insufficient_quota(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.rate_limited(quota=True))
    async with client_for(fake) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await stream_chunks(client)
    assert caught.value.code == "insufficient_quota"


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors(fake: FakeOpenAI, status: int) -> None:
    fake.fail_next(Fault.server_error(status))
    async with client_for(fake) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await stream_chunks(client)
    assert caught.value.status_code == status and caught.value.type == "server_error"


async def test_n_failures_then_success(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.server_error(503), times=2)
    fake.script("Finally.")
    async with client_for(fake, retries=2) as client:
        chunks = await stream_chunks(client)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Finally."
    assert [r.status for r in fake.requests] == [503, 503, 200]


async def test_x_should_retry_false_stops_the_sdk_retrying(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.http_error(503, "busy", should_retry=False), times=3)
    async with client_for(fake, retries=2) as client:
        with pytest.raises(openai.InternalServerError):
            await stream_chunks(client)
    assert len(fake.requests) == 1


async def test_injected_401(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.unauthorized())
    async with client_for(fake, retries=2) as client:
        with pytest.raises(openai.AuthenticationError):
            await stream_chunks(client)
    assert len(fake.requests) == 1  # the SDK never retries a 401


@pytest.mark.parametrize("headers_sent", [True, False])
async def test_stall_before_first_token_is_a_read_timeout(fake: FakeOpenAI, headers_sent: bool) -> None:
    fake.fail_next(Fault.stall_before_first_token(headers_sent=headers_sent))
    async with client_for(fake, read=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            await stream_chunks(client)
    (record,) = await fake.wait_for_requests(1, finished=True, timeout=5)
    assert record.tokens_sent == 0 and record.disconnected


async def test_stall_mid_stream_is_a_read_timeout_after_some_tokens(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.stall_mid_stream(after_tokens=2))
    fake.script("one two three four")
    received: list[str] = []
    async with client_for(fake, read=0.3) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APITimeoutError):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one two"


async def test_error_event_mid_stream_raises_api_error(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.error_event(after_tokens=2, message="Something broke mid-way."))
    fake.script("one two three four")
    received: list[str] = []
    async with client_for(fake) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match=r"Something broke mid-way\.") as caught:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert not isinstance(caught.value, openai.APIStatusError)  # it came inside a 200
    assert "".join(received) == "one two"


async def test_close_without_done_ends_the_iteration_silently(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.close_without_done(after_tokens=2))
    fake.script("one two three four")
    async with client_for(fake) as client:
        chunks = await stream_chunks(client)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two"
    assert all(c.choices[0].finish_reason is None for c in chunks)


async def test_close_without_done_after_every_chunk(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.close_without_done())
    fake.script("one two")
    async with client_for(fake) as client:
        chunks = await stream_chunks(client, stream_options={"include_usage": True})
    assert chunks[-1].usage is not None and not fake.requests[0].completed


async def test_dropped_connection_is_a_connection_error(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.drop_connection(after_tokens=1))
    fake.script("one two three")
    async with client_for(fake) as client:
        with pytest.raises(openai.APIConnectionError) as caught:
            await stream_chunks(client)
    assert not isinstance(caught.value, openai.APITimeoutError)


# -------------------------------------------------------------- standalone


async def test_command_line_runs_the_fake_standalone() -> None:
    async with standalone_fake("openai") as (line, urls):
        assert line.startswith("FakeOpenAI listening:"), line
        base_url = urls["base_url"]
        assert base_url.startswith("http://127.0.0.1:") and not base_url.startswith("http://127.0.0.1:0/")
        client = AsyncOpenAI(api_key="anything", base_url=base_url, max_retries=0, timeout=openai.Timeout(5.0))
        async with client:
            completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert completion.choices[0].message.content


async def test_malformed_event_mid_stream_is_a_json_error_in_the_sdk(fake: FakeOpenAI) -> None:
    fake.fail_next(Fault.malformed_event(after_tokens=1))
    fake.script("one two three")
    async with client_for(fake) as client:
        with pytest.raises(json.JSONDecodeError):
            await stream_chunks(client)
