"""Pipecat's services hosted one at a time against the fakes: user turns, the LLM context, tools."""

from __future__ import annotations

import pytest

pytest.importorskip("pipecat")

from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.openai.llm import OpenAILLMService

from vantum_pipeline.frames import (
    EndOfTurnFrame,
    EndTaskFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.interop.pipecat import PipecatProcessor
from vantum_pipeline.interop.pipecat_context import system_instruction, to_pipecat_context
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.tools import Tool, ToolResult, end_call_tool
from vantum_pipeline.testing.deepgram import FakeDeepgram, ScriptedRecognizer
from vantum_pipeline.testing.openai import FakeOpenAI
from vantum_pipeline.testing.openai_wire import Reply, ToolCall
from vantum_pipeline.testing.pipeline import PipelineHarness
from vantum_pipeline.testing.signals import frames, silence, speech

pytestmark = pytest.mark.timeout(60)

RATE = 16000


async def say(harness: PipelineHarness, audio: bytes) -> None:
    for chunk in frames(audio, RATE):
        await harness.send(InputAudioRawFrame(chunk, RATE))


def deepgram(fake: FakeDeepgram) -> PipecatProcessor:
    return PipecatProcessor(DeepgramSTTService(api_key="dg-key", base_url=fake.ws_url, sample_rate=RATE))


async def test_a_local_vad_stop_finalizes_and_ends_the_turn():
    async with FakeDeepgram(api_key="dg-key", recognizer=ScriptedRecognizer(["sounds good"])) as fake:
        stt = deepgram(fake)
        async with PipelineHarness([stt]) as harness:
            await harness.send(UserStartedSpeakingFrame(source="vad"))
            await say(harness, silence(0.2) + speech(0.6))
            await harness.send(UserStoppedSpeakingFrame(source="vad"))
            turn = await harness.wait_for(EndOfTurnFrame, timeout=10)
        connection = fake.connections[0]
    assert turn.text == "Sounds good."
    assert connection.received_of_type("Finalize")  # pipecat's Deepgram service finalized on our VAD's stop
    assert [f.text for f in harness.collected.of_type(TranscriptionFrame)] == ["Sounds good."]
    interims = harness.collected.of_type(InterimTranscriptionFrame)
    assert interims and all("sounds good".startswith(f.text.lower().rstrip(".")) for f in interims)
    assert {f.metric for f in harness.collected.of_type(MetricsFrame)} >= {"usage.stt_seconds"}
    assert len(harness.collected.of_type(EndOfTurnFrame)) == 1
    assert stt.pipecat_tasks == []


async def test_without_a_vad_a_turn_ends_after_the_turn_timeout():
    async with FakeDeepgram(api_key="dg-key", recognizer=ScriptedRecognizer(["one moment", "go on"])) as fake:
        stt = deepgram(fake)
        stt.turn_timeout = 0.3
        async with PipelineHarness([stt]) as harness:
            await say(harness, silence(0.2) + speech(0.6) + silence(0.8))
            first = await harness.wait_for(EndOfTurnFrame, timeout=10)
            await say(harness, speech(0.5, seed=2) + silence(0.8))
            second = await harness.wait_for(EndOfTurnFrame, count=2, timeout=10)
    assert (first.text, second.text) == ("One moment.", "Go on.")


def test_our_context_becomes_pipecats_without_our_flags():
    context = LLMContext("Be brief.", tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}])
    context.add_user("Hello?")
    context.add_assistant("Hi, this is", interrupted=True)
    context.add_user("Who?")
    converted = to_pipecat_context(context, [end_call_tool()])
    messages = converted.get_messages()
    assert messages == context.api_messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert all(set(m) <= {"role", "content", "name", "tool_calls", "tool_call_id"} for m in messages)
    assert sorted(tool.name for tool in converted.tools.standard_tools) == ["end_call", "lookup"]
    # For a pipecat LLM service the prompt goes to its system instruction, not into the context.
    assert system_instruction(context) == "Be brief."
    apart = to_pipecat_context(context, system_in_context=False).get_messages()
    assert apart == context.api_messages()[1:]
    assert system_instruction(LLMContext()) is None


async def test_a_changed_system_prompt_reaches_the_next_request_and_only_it():
    async with FakeOpenAI(api_key="sk-key") as fake:
        fake.script(Reply("One."), Reply("Two."), Reply("Three."))
        llm = PipecatProcessor(
            OpenAILLMService(
                api_key="sk-key", base_url=fake.base_url, settings=OpenAILLMService.Settings(model="gpt-4o")
            )
        )
        context = LLMContext("Be brief.")
        context.add_user("Hello?")
        async with PipelineHarness([llm]) as harness:
            await harness.send(LLMContextFrame(context))
            await harness.wait_for(LLMFullResponseEndFrame, count=1, timeout=10)
            context.system_prompt = "Be very brief."
            await harness.send(LLMContextFrame(context))
            await harness.wait_for(LLMFullResponseEndFrame, count=2, timeout=10)
            await harness.send(LLMContextFrame(context))
            await harness.wait_for(LLMFullResponseEndFrame, count=3, timeout=10)
        requests = list(fake.requests)
    systems = [[m["content"] for m in r.body["messages"] if m["role"] == "system"] for r in requests]
    assert systems == [["Be brief."], ["Be very brief."], ["Be very brief."]]


async def test_a_pipecat_llm_answers_our_aggregators_and_runs_our_tools():
    booked: list[dict] = []

    async def book(args: dict) -> ToolResult:
        booked.append(args)
        return ToolResult({"booked": args["day"]})

    tool = Tool(
        "book_demo",
        "Book a demo",
        {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
        book,
    )
    async with FakeOpenAI(api_key="sk-key") as fake:
        fake.script(
            Reply("Let me book that.", tool_calls=[ToolCall("book_demo", {"day": "Tuesday"})]),
            Reply("You're booked for Tuesday. Goodbye!", tool_calls=[ToolCall("end_call", {})]),
        )
        llm = PipecatProcessor(
            OpenAILLMService(
                api_key="sk-key", base_url=fake.base_url, settings=OpenAILLMService.Settings(model="gpt-4o")
            ),
            tools=[tool, end_call_tool()],
        )
        context = LLMContext("Book demos.")
        context.add_user("Tuesday works")
        async with PipelineHarness([llm]) as harness:
            await harness.send(LLMContextFrame(context))
            await harness.wait_for(EndTaskFrame, direction=FrameDirection.UPSTREAM, timeout=10)
            await harness.wait_for(LLMFullResponseEndFrame, count=2, timeout=5)
        requests = list(fake.requests)
    assert booked == [{"day": "Tuesday"}]
    text = "".join(f.text for f in harness.collected.of_type(LLMTextFrame))
    assert text == "Let me book that.You're booked for Tuesday. Goodbye!"
    calls = [call for m in context.messages for call in m.tool_calls]
    assert [c.name for c in calls] == ["book_demo", "end_call"]
    results = [m for m in context.messages if m.role == "tool"]
    assert [m.tool_call_id for m in results] == [c.id for c in calls]
    # The second request carried the first round's call and result; no third was made.
    assert len(requests) == 2
    second = requests[1].body["messages"]
    assert [m["role"] for m in second][-2:] == ["assistant", "tool"]
    # Our system prompt reached both requests once, as the service's system instruction.
    for request in requests:
        system = [m for m in request.body["messages"] if m["role"] == "system"]
        assert system == [{"role": "system", "content": "Book demos."}]
        assert request.body["messages"][0] == system[0]
    assert {t["function"]["name"] for t in requests[0].body["tools"]} == {"book_demo", "end_call"}
    metrics = {f.metric for f in harness.collected.of_type(MetricsFrame)}
    assert {"latency.llm_ttft", "usage.llm_prompt_tokens", "usage.llm_completion_tokens"} <= metrics, metrics


async def test_a_context_that_is_not_a_conversation_is_an_error_not_a_silent_turn():
    from vantum_pipeline.frames import ErrorFrame

    async with FakeOpenAI(api_key="sk-key") as fake:
        llm = PipecatProcessor(
            OpenAILLMService(
                api_key="sk-key", base_url=fake.base_url, settings=OpenAILLMService.Settings(model="gpt-4o")
            )
        )
        async with PipelineHarness([llm]) as harness:
            await harness.send(LLMContextFrame({"messages": []}))
            error = await harness.wait_for(ErrorFrame, direction=FrameDirection.UPSTREAM)
        assert list(fake.requests) == []
    assert "LLMContextFrame.context must be an LLMContext, got dict" in error.error


async def test_a_rejected_key_ends_the_run_with_an_error_without_the_key():
    from vantum_pipeline.frames import ErrorFrame

    async with FakeDeepgram(api_key="dg-key") as fake:
        stt = PipecatProcessor(DeepgramSTTService(api_key="wrong-key-123", base_url=fake.ws_url, sample_rate=RATE))
        async with PipelineHarness([stt]) as harness:
            error = await harness.wait_for(ErrorFrame, direction=FrameDirection.UPSTREAM, timeout=15)
            await harness.wait_finished(5)
    assert "401" in error.error and "wrong-key-123" not in error.error
    assert error.fatal and harness.task.finish_reason == "error"  # a deaf call ends
    assert stt.pipecat_tasks == []


async def test_fake_cartesia_checks_the_x_api_key_header_pipecat_sends():
    import websockets

    from vantum_pipeline.testing.cartesia import FakeCartesia

    async with FakeCartesia(api_key="sk_car_key") as fake:
        url = f"{fake.ws_url}/tts/websocket"
        async with websockets.connect(
            url, additional_headers={"X-API-Key": "sk_car_key", "Cartesia-Version": "2025-04-16"}
        ):
            pass
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, additional_headers={"X-API-Key": "wrong", "Cartesia-Version": "2025-04-16"})
    assert refused.value.response.status_code == 401
    assert [upgrade["status"] for upgrade in fake.upgrades] == [200, 401]
