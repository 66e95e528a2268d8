"""FailoverLLMService: two OpenAI-compatible endpoints (two FakeOpenAI, the real SDK)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    EndOfTurnFrame,
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TTSSpeakFrame,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.services.answer_cache import AnswerCache, normalize_question
from vantum_pipeline.services.circuit import BreakerSettings, BreakerState
from vantum_pipeline.services.failover import FailoverSettings
from vantum_pipeline.services.failover_llm import CONTINUE_INSTRUCTION, FailoverLLMService, FailoverLLMSettings
from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.openai import FakeOpenAI, Fault
from vantum_pipeline.testing.openai_wire import split_tokens

pytestmark = pytest.mark.timeout(60)

SYSTEM = "You are Sarah from Vantum. Be brief."


@pytest.fixture
async def primary() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-primary", default_reply="Primary here, happy to help.") as server:
        yield server


@pytest.fixture
async def backup() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="gsk-backup", default_reply="Backup here, happy to help.") as server:
        yield server


def openai_on(fake: FakeOpenAI, key: str, name: str, **overrides: Any) -> OpenAILLMService:
    options: dict[str, Any] = {
        "api_key": Secret(key),
        "base_url": fake.base_url,
        "retry": RetryPolicy(max_retries=0, base_delay=0.05, total_timeout=5.0),
        "thinking_after": None,
        "first_token_timeout": 3.0,
        "chunk_timeout": 0.5,
        "read_timeout": 5.0,
    }
    options.update(overrides)
    return OpenAILLMService(OpenAISettings(**options), call_tools=False, name=name)


def pair(
    primary: FakeOpenAI, backup: FakeOpenAI, **settings: Any
) -> tuple[FailoverLLMService, OpenAILLMService, OpenAILLMService]:
    first = openai_on(primary, "sk-primary", "openai")
    second = openai_on(backup, "gsk-backup", "groq", model="llama-3.3-70b", service_label="groq")
    breaker = settings.pop("breaker", BreakerSettings(failure_threshold=2, open_seconds=60.0))
    options = FailoverLLMSettings(failover=FailoverSettings(breaker=breaker), thinking_after=None, **settings)
    llm = FailoverLLMService([first, second], options)
    return llm, first, second


def texts(frames: list[Frame]) -> str:
    return "".join(f.text for f in frames if isinstance(f, LLMTextFrame))


def metric_frames(frames: list[Frame], name: str) -> list[MetricsFrame]:
    return [f for f in frames if isinstance(f, MetricsFrame) and f.metric == name]


def brackets(frames: list[Frame]) -> list[str]:
    return [
        type(f).__name__
        for f in frames
        if isinstance(f, LLMFullResponseStartFrame | LLMFullResponseEndFrame | TTSSpeakFrame)
    ]


async def ask(llm: FailoverLLMService, context: LLMContext, *questions: str) -> tuple[PipelineHarness, LLMContext]:
    async with PipelineHarness([UserAggregator(context), llm, AssistantAggregator(context)], end_timeout=10) as h:
        for count, question in enumerate(questions, 1):
            await h.send(EndOfTurnFrame(question))
            await h.wait_for(LLMFullResponseEndFrame, count=count, timeout=15)
    return h, context


async def test_a_failing_primary_is_reasked_on_the_backup_with_the_same_context(
    primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    primary.fail_next(Fault.server_error(503))
    llm, _, second = pair(primary, backup)
    harness, context = await ask(llm, LLMContext(SYSTEM), "Hello, who is this?")
    frames = harness.downstream
    assert texts(frames) == "Backup here, happy to help."
    assert brackets(frames) == ["LLMFullResponseStartFrame", "LLMFullResponseEndFrame"]
    assert primary.chat_requests[0].messages == backup.chat_requests[0].messages  # the same context
    assert backup.chat_requests[0].body["model"] == "llama-3.3-70b"
    assert context.messages[-1].role == "assistant" and context.messages[-1].provider == "groq"
    switch = metric_frames(frames, "provider.switch")
    assert [(f.labels["from"], f.labels["to"], f.labels["service"]) for f in switch] == [("openai", "groq", "groq")]
    usage = [f for f in metric_frames(frames, "usage.llm_prompt_tokens")]
    assert [f.labels["service"] for f in usage] == ["groq"] and second.prompt_tokens > 0


async def test_an_open_breaker_sends_turns_straight_to_the_backup_until_the_probe(
    primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    primary.fail_next(Fault.server_error(500), times=2)
    llm, first, _ = pair(primary, backup)
    await ask(llm, LLMContext(SYSTEM), "One?", "Two?", "Three?")
    assert len(primary.chat_requests) == 2 and len(backup.chat_requests) == 3
    assert llm.state_of(first) is BreakerState.OPEN


async def test_hedged_request_backup_answers_while_the_primary_stalls(primary: FakeOpenAI, backup: FakeOpenAI) -> None:
    primary.fail_next(Fault.stall_before_first_token())
    llm, first, second = pair(primary, backup, hedge_after=0.2)
    harness, context = await ask(llm, LLMContext(SYSTEM), "Hello, who is this?")
    frames = harness.downstream
    assert texts(frames) == "Backup here, happy to help."
    assert [f.text for f in frames if isinstance(f, LLMTextFrame)] == split_tokens("Backup here, happy to help.")
    await primary.wait_for_requests(1)
    (stalled,) = primary.chat_requests
    await stalled.done.wait()
    assert stalled.disconnected and stalled.tokens_sent == 0  # the primary's stream was closed
    assert llm.hedges == 1 and [f.labels["service"] for f in metric_frames(frames, "llm.hedge_won")] == ["groq"]
    # Both costs are counted: the backup's from its usage chunk, the cancelled primary's estimated.
    assert first.prompt_tokens > 0 and second.prompt_tokens > 0
    assert llm.cost == pytest.approx(first.cost + second.cost) and first.cost > 0
    estimated = [f for f in metric_frames(frames, "usage.llm_prompt_tokens") if f.labels.get("estimated")]
    assert [f.labels["service"] for f in estimated] == ["openai"]
    assert context.messages[-1].provider == "groq"


async def test_hedge_not_sent_when_the_primary_answers_in_time(primary: FakeOpenAI, backup: FakeOpenAI) -> None:
    llm, _, _ = pair(primary, backup, hedge_after=2.0)
    harness, context = await ask(llm, LLMContext(SYSTEM), "Hello?")
    assert texts(harness.downstream) == "Primary here, happy to help."
    assert not backup.chat_requests and llm.hedges == 0
    assert context.messages[-1].provider == "openai"


async def test_both_hedged_requests_failing_moves_on_and_plays_the_fallback(
    primary: FakeOpenAI, backup: FakeOpenAI
) -> None:
    primary.time_to_first_token = 0.4
    primary.fail_next(Fault.server_error(500))
    backup.fail_next(Fault.server_error(500))
    llm, _, _ = pair(primary, backup, hedge_after=0.1)
    harness, _ = await ask(llm, LLMContext(SYSTEM), "Hello?")
    spoken = [f for f in harness.downstream if isinstance(f, TTSSpeakFrame)]
    assert [f.category for f in spoken] == ["error"] and texts(harness.downstream) == ""
    assert len(primary.chat_requests) == 1 and len(backup.chat_requests) == 1


async def test_a_reply_cut_mid_stream_is_continued_by_the_backup(primary: FakeOpenAI, backup: FakeOpenAI) -> None:
    primary.script("Our plans start at forty dollars a month and include every feature.")
    primary.fail_next(Fault.stall_mid_stream(after_tokens=4))
    backup.script("dollars a month, with every feature included.")
    llm, _, _ = pair(primary, backup)
    harness, context = await ask(llm, LLMContext(SYSTEM), "What does it cost?")
    spoken_before = "".join(split_tokens("Our plans start at forty dollars a month and include every feature.")[:4])
    assert texts(harness.downstream) == spoken_before + "dollars a month, with every feature included."
    messages = backup.chat_requests[0].messages
    assert {"role": "assistant", "content": spoken_before} in messages
    assert any(m["role"] == "system" and m["content"] == CONTINUE_INSTRUCTION for m in messages)
    assert brackets(harness.downstream) == ["LLMFullResponseStartFrame", "LLMFullResponseEndFrame"]
    assert context.messages[-1].content == (spoken_before + "dollars a month, with every feature included.").strip()


# ------------------------------------------------------------------ answer cache


async def test_the_answer_cache_serves_only_while_rate_limited(primary: FakeOpenAI) -> None:
    cache = AnswerCache("campaign-1").for_call(["Dana", "Acme Logistics"])
    llm = openai_on(primary, "sk-primary", "openai", retry=RetryPolicy(max_retries=0))
    llm.answer_cache = cache
    primary.script(
        "It is forty dollars a month.",  # stored
        "Still forty dollars a month, per seat.",  # answered by the model: the cache is not read
    )
    context = LLMContext(SYSTEM)
    async with PipelineHarness([UserAggregator(context), llm, AssistantAggregator(context)], end_timeout=10) as h:
        await h.send(EndOfTurnFrame("What is the price?"))
        await h.wait_for(LLMFullResponseEndFrame, timeout=10)
        await h.send(EndOfTurnFrame("what is the PRICE"))
        await h.wait_for(LLMFullResponseEndFrame, count=2, timeout=10)
        primary.fail_next(Fault.rate_limited(retry_after=20))
        await h.send(EndOfTurnFrame("What is the price?!"))
        await h.wait_for(LLMFullResponseEndFrame, count=3, timeout=10)
    replies = [m.content for m in context.messages if m.role == "assistant"]
    assert replies == [
        "It is forty dollars a month.",
        "Still forty dollars a month, per seat.",
        "Still forty dollars a month, per seat.",  # the latest good answer, from the cache
    ]
    assert len(primary.chat_requests) == 3 and cache.hits == 1
    assert context.messages[-1].provider == "cache"
    assert not [f for f in h.downstream if isinstance(f, TTSSpeakFrame)]


async def test_the_answer_cache_never_keeps_what_is_personal(primary: FakeOpenAI) -> None:
    cache = AnswerCache("campaign-1", personal_patterns=[r"\baccount\b"]).for_call(["Dana"])
    llm = openai_on(primary, "sk-primary", "openai")
    llm.answer_cache = cache
    primary.script("Sure Dana, it is forty dollars.", "Your account is active.")
    context = LLMContext(SYSTEM)
    async with PipelineHarness([UserAggregator(context), llm, AssistantAggregator(context)], end_timeout=10) as h:
        await h.send(EndOfTurnFrame("What is the price?"))
        await h.wait_for(LLMFullResponseEndFrame, timeout=10)
        await h.send(EndOfTurnFrame("Is my account active?"))
        await h.wait_for(LLMFullResponseEndFrame, count=2, timeout=10)
        primary.fail_next(Fault.rate_limited(quota=True))
        await h.send(EndOfTurnFrame("What is the price?"))
        await h.wait_for(LLMFullResponseEndFrame, count=3, timeout=10)
    assert len(cache) == 0 and cache.refused == 2
    assert [f.category for f in h.downstream if isinstance(f, TTSSpeakFrame)] == ["error"]


def test_answer_cache_is_shared_per_campaign_bounded_and_expires() -> None:
    now = [0.0]
    cache = AnswerCache("c", max_entries=2, ttl=10.0, clock=lambda: now[0])
    call_a, call_b = cache.for_call(["Ann"]), cache.for_call(["Bob"])
    assert call_a.store("Where are you based?", "In Austin.")
    assert call_b.lookup("where are you BASED") == "In Austin."  # the campaign's store
    assert not call_b.store("Hi, is Bob there?", "Yes.")  # Bob is personal to call B
    call_a.store("q2", "a2")
    call_a.store("q3", "a3")
    assert len(cache) == 2 and call_a.lookup("Where are you based?") is None  # the oldest went first
    now[0] = 11.0
    assert call_a.lookup("q3") is None
    assert normalize_question("  What's the PRICE?! ") == "what's the price"
    with pytest.raises(ConfigurationError):
        AnswerCache("")


async def test_a_fake_context_is_checked(primary: FakeOpenAI, backup: FakeOpenAI) -> None:
    llm, _, _ = pair(primary, backup)
    async with PipelineHarness([llm], end_timeout=5) as harness:
        await harness.send(LLMContextFrame(context="not a context"))  # type: ignore[arg-type]
    assert any("LLMContext" in getattr(f, "error", "") for f in harness.upstream)
    with pytest.raises(ConfigurationError):
        FailoverLLMService([llm])  # type: ignore[list-item]


async def test_both_hedged_requests_are_in_the_calls_cost(primary: FakeOpenAI, backup: FakeOpenAI) -> None:
    from vantum_pipeline.observability.collector import MetricsCollector
    from vantum_pipeline.observability.cost import CostTracker, Prices
    from vantum_pipeline.observability.metrics import MetricsRegistry

    primary.fail_next(Fault.stall_before_first_token())
    llm, first, second = pair(primary, backup, hedge_after=0.2)
    groq = {("groq", "usage.llm_prompt_tokens"): 0.59e-6, ("groq", "usage.llm_completion_tokens"): 0.79e-6}
    tracker = CostTracker(Prices(extra=groq))
    context = LLMContext(SYSTEM)
    harness = PipelineHarness([UserAggregator(context), llm, AssistantAggregator(context)], end_timeout=10)
    MetricsCollector(MetricsRegistry(), tracker).attach(harness.task)
    async with harness:
        await harness.send(EndOfTurnFrame("Hello?"))
        await harness.wait_for(LLMFullResponseEndFrame, timeout=10)
    costs = tracker.cost_by_service()
    assert costs["openai"] == pytest.approx(first.cost) and first.cost > 0  # the cancelled request, estimated
    expected = second.prompt_tokens * 0.59e-6 + second.completion_tokens * 0.79e-6
    assert costs["groq"] == pytest.approx(expected) and expected > 0


async def test_a_hedged_pair_runs_a_function_once_whoever_asks_for_it(primary: FakeOpenAI, backup: FakeOpenAI) -> None:
    from vantum_pipeline.processors.tools import Tool
    from vantum_pipeline.testing.openai import Reply, ToolCall

    booked: list[str] = []

    async def book(_: dict[str, Any]) -> str:
        booked.append("demo")
        return "booked for Tuesday 10:00"

    def with_tool(fake: FakeOpenAI, key: str, name: str) -> OpenAILLMService:
        service = openai_on(fake, key, name)
        service.register_tool(Tool("book_demo", "Book a demo", {"type": "object", "properties": {}}, book))
        return service

    # Both models ask for the booking at about the same moment, after the hedge went out.
    for fake in (primary, backup):
        fake.script(Reply(tool_calls=[ToolCall("book_demo")], time_to_first_token=0.3), "You are booked.")
    llm = FailoverLLMService(
        [with_tool(primary, "sk-primary", "openai"), with_tool(backup, "gsk-backup", "groq")],
        FailoverLLMSettings(hedge_after=0.05, thinking_after=None),
    )
    harness, context = await ask(llm, LLMContext(SYSTEM), "Book me in.")
    assert booked == ["demo"]  # the losing request never ran it
    assert texts(harness.downstream) == "You are booked."
    assert [m.role for m in context.messages].count("tool") == 1


async def test_a_held_reply_runs_no_function_until_it_is_released(primary: FakeOpenAI) -> None:
    import asyncio

    from vantum_pipeline.processors.tools import Tool
    from vantum_pipeline.services.llm import LLMReply
    from vantum_pipeline.testing.openai import Reply, ToolCall

    booked: list[str] = []

    async def book(_: dict[str, Any]) -> str:
        booked.append("demo")
        return "booked"

    service = openai_on(primary, "sk-primary", "openai")
    service.register_tool(Tool("book_demo", "Book a demo", {"type": "object", "properties": {}}, book))
    primary.script(Reply(tool_calls=[ToolCall("book_demo")]), "You are booked.")
    context = LLMContext(SYSTEM)
    context.add_user("Book me in.")
    await service.engine_start()
    try:
        reply = LLMReply(service, context, held=True)  # a hedged request that has not won yet
        answering = asyncio.ensure_future(service.respond(context, reply))
        await asyncio.wait_for(reply.first_token.wait(), 5)
        await asyncio.sleep(0.3)
        assert booked == [] and not answering.done()  # the call is known, the function not run
        await reply.release()
        await asyncio.wait_for(answering, 5)
        assert booked == ["demo"] and reply.content == "You are booked."
    finally:
        await service.engine_close()


async def test_rate_limited_with_the_answer_cached_answers_at_once_instead_of_waiting(primary: FakeOpenAI) -> None:
    cache = AnswerCache("campaign-1")
    cache.store("What is the price?", "It is forty dollars a month.")
    # The product's policy: a 429 waits and retries; here the cache answers instead.
    llm = openai_on(primary, "sk-primary", "openai", retry=RetryPolicy(max_retries=3, base_delay=0.05))
    llm.answer_cache = cache
    primary.fail_next(Fault.rate_limited(retry_after=0.2))
    primary.script("The model would have said this after the wait.")
    context = LLMContext(SYSTEM)
    async with PipelineHarness([UserAggregator(context), llm, AssistantAggregator(context)], end_timeout=10) as h:
        await h.send(EndOfTurnFrame("What is the price?"))
        await h.wait_for(LLMFullResponseEndFrame, timeout=10)
        primary.fail_next(Fault.rate_limited(retry_after=0.2))
        await h.send(EndOfTurnFrame("And the setup fee?"))  # not cached: the policy waits and retries
        await h.wait_for(LLMFullResponseEndFrame, count=2, timeout=10)
    replies = [m.content for m in context.messages if m.role == "assistant"]
    assert replies == ["It is forty dollars a month.", "The model would have said this after the wait."]
    assert len(primary.chat_requests) == 3  # one for the cached question (no retry), two for the other
