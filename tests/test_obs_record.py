"""The call record: turns with heard/interrupted markers, latencies, cost,
errors, outcome; JSON-lines sink."""

import asyncio
import json

import pytest
from obs_fakes import Reply, ScriptedLLM, ScriptedOutput, ScriptedSTT, ScriptedTTS, SentenceSplitter, speech

from vantum_pipeline import FrameDirection
from vantum_pipeline.frames import EndFrame, ErrorFrame, HeardTextFrame, StartFrame
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.record import CallRecorder, JsonLinesSink, MemorySink, RecordSinkSettings
from vantum_pipeline.observability.redact import MASK
from vantum_pipeline.testing import PipelineHarness

UTTERANCES = ["Yes, who is this?", "Okay, go on.", "Actually, wait.", "No thanks."]
REPLIES = [
    Reply("Hi, this is Sam from Vantum. Do you have a minute?", 500, 14),
    Reply("We help small teams answer every single call without hiring.", 600, 11),
    Reply("Of course, what would you like to know?", 700, 9),
    Reply("No problem, have a great day!", 800, 7),
]


async def run_call(recorder: CallRecorder, tracker: CostTracker) -> PipelineHarness:
    # The second reply's playback stalls after 3 words; the callee barges in there.
    processors = [
        ScriptedSTT(UTTERANCES, barge_in=frozenset({2})),
        recorder.user_tap(),
        ScriptedLLM(REPLIES),
        SentenceSplitter(),
        ScriptedTTS(),
        ScriptedOutput(call_seconds=64.0, stall={3: 3}),
    ]
    harness = PipelineHarness(processors, metadata={"call_id": "CA0001", "campaign": "spring", "lead": {"x": 1}})
    MetricsCollector(tracker=tracker).attach(harness.task)
    recorder.attach(harness.task)
    async with harness:
        await harness.send(speech(2.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text.endswith("minute?"))
        await harness.send(speech(1.5))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text == "We help small")
        await harness.send(speech(1.0))  # barge-in
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text.endswith("know?"))
        await harness.send(speech(1.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text.endswith("day!"))
    return harness


async def test_record_of_a_call_with_a_barge_in():
    sink, tracker = MemorySink(), CostTracker()
    recorder = CallRecorder(sink=sink, tracker=tracker)
    harness = await run_call(recorder, tracker)
    record = await recorder.finish()
    assert harness.task.state.interruptions == 1
    assert json.loads(json.dumps(record)) == record  # JSON-serializable as is
    assert sink.records[-1] == record
    assert record["record_version"] == 1
    assert record["call_id"] == "CA0001"
    assert record["ids"] == {"call_id": "CA0001", "campaign": "spring"}  # scalars only
    assert record["outcome"] == "completed" and record["end_reason"] == ""
    assert record["started_at"].endswith("Z") and record["ended_at"] >= record["started_at"]

    turns = [(t["role"], t["text"]) for t in record["turns"]]
    assert turns == [
        ("user", "Yes, who is this?"),
        ("assistant", "Hi, this is Sam from Vantum. Do you have a minute?"),
        ("user", "Okay, go on."),
        ("assistant", "We help small teams answer every single call without hiring."),
        ("user", "Actually, wait."),
        ("assistant", "Of course, what would you like to know?"),
        ("user", "No thanks."),
        ("assistant", "No problem, have a great day!"),
    ]
    bots = [t for t in record["turns"] if t["role"] == "assistant"]
    assert [b["interrupted"] for b in bots] == [False, True, False, False]
    assert bots[0]["heard"] == "Hi, this is Sam from Vantum. Do you have a minute?"
    assert bots[1]["heard"] == "We help small"  # what the callee heard before cutting in
    assert bots[3]["heard"] == bots[3]["text"]
    users = [t for t in record["turns"] if t["role"] == "user"]
    assert users[0]["confidence"] == 0.95 and users[0]["low_confidence"] is False

    # Latencies, per turn and for the call.
    assert [u["latencies"]["latency.stt_final"] for u in users] == [0.2, 0.21, 0.22, 0.23]
    assert [b["latencies"]["latency.llm_ttft"] for b in bots] == [0.3, 0.31, 0.32, 0.33]
    assert all(b["latencies"]["latency.voice_to_voice"] == 0.9 for b in bots)
    assert record["latencies"]["latency.llm_ttft"] == {"count": 4, "mean": 0.315, "p50": 0.31, "p95": 0.33, "max": 0.33}

    # Cost by service, billed on 64 s of call.
    cost = record["cost"]
    assert cost["final"] and cost["duration_seconds"] == 64.0 and record["duration_seconds"] == 64.0
    assert cost["by_service"]["twilio"] == pytest.approx(64 / 60 * 0.014, abs=1e-6)
    assert cost["by_service"]["openai"] == pytest.approx(2600 * 2.5e-6 + 41 * 10e-6, abs=1e-6)
    assert cost["usage"]["deepgram"]["usage.stt_seconds"] == pytest.approx(5.5)
    assert record["counts"]["interruptions"] == 1
    assert record["counts"]["service.request"] == {"deepgram": 4.0, "openai": 4.0, "cartesia": 5.0}
    assert record["errors"] == [] and record["truncated"] == {"turns": 0, "errors": 0}


async def test_finish_writes_once():
    sink = MemorySink()
    recorder = CallRecorder(sink=sink, call_id="c-1")
    first = await recorder.finish()
    assert await recorder.finish() is first
    assert len(sink.records) == 1
    assert first["outcome"] == "unknown" and first["turns"] == []


async def test_user_turns_reaching_an_end_are_recorded_once_even_with_the_tap():
    recorder = CallRecorder(sink=MemorySink(), call_id="c-2")
    harness = PipelineHarness([ScriptedSTT(["one", "two"]), recorder.user_tap()])
    recorder.attach(harness.task)
    async with harness:
        await harness.send(speech(1.0))
        await harness.send(speech(1.0))
    record = await recorder.finish()
    assert [(t["role"], t["text"]) for t in record["turns"]] == [("user", "one"), ("user", "two")]


async def test_errors_are_recorded_redacted_and_counted():
    recorder = CallRecorder(sink=MemorySink(), call_id="c-3")
    processors = [
        ScriptedSTT(["hello", "again"]),
        ScriptedLLM([Reply("Hi.", 1, 1), Reply("unused", 1, 1)], fail_turns=frozenset({1})),
        SentenceSplitter(),
        ScriptedTTS(),
        ScriptedOutput(call_seconds=5.0),
    ]
    harness = PipelineHarness(processors)
    recorder.attach(harness.task)
    async with harness:
        await harness.send(speech(1.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text == "Hi.")
        await harness.send(speech(1.0))
        await harness.wait_for(ErrorFrame, direction=FrameDirection.UPSTREAM)
        leaky = ErrorFrame("openai: 401 for Authorization: Bearer sk-abcdefghijklmnopqrstuvwx", processor="llm")
        await processors[1].push_frame(leaky, FrameDirection.UPSTREAM)
    record = await recorder.finish()
    errors = record["errors"]
    assert len(errors) == 2 and errors[0]["error"] == "openai: 500 Internal Server Error"
    assert errors[1]["error"] == f"openai: 401 for Authorization: Bearer {MASK}" and errors[1]["processor"] == "llm"
    assert all(e["fatal"] is False for e in errors)
    assert record["counts"]["service.error"] == {"openai": 1.0}


async def test_outcomes():
    # Cancelled by the app.
    recorder = CallRecorder(sink=MemorySink())
    harness = PipelineHarness([ScriptedSTT(["x"])])
    recorder.attach(harness.task)
    async with harness:
        await harness.wait_for(StartFrame)
        await harness.task.cancel("callee hung up")
    record = await recorder.finish()
    assert record["outcome"] == "cancelled"
    # A fatal error.
    recorder = CallRecorder(sink=MemorySink())
    stt = ScriptedSTT(["x"])
    harness = PipelineHarness([stt])
    recorder.attach(harness.task)
    async with harness:
        await harness.wait_for(StartFrame)
        await stt.push_error("deepgram: 401 unauthorized", fatal=True)
        await harness.wait_finished(2.0)
    record = await recorder.finish()
    assert record["outcome"] == "error" and record["end_reason"] == "deepgram: 401 unauthorized"
    # The app's word wins (telephony knows it was a voicemail).
    recorder = CallRecorder(sink=MemorySink())
    recorder.set_outcome("voicemail", "answering machine detected")
    record = await recorder.finish()
    assert (record["outcome"], record["end_reason"]) == ("voicemail", "answering machine detected")


async def test_run_runs_the_task_then_writes(tmp_path):
    sink = JsonLinesSink(tmp_path / "calls.jsonl")
    recorder = CallRecorder(sink=sink, call_id="c-run")
    harness = PipelineHarness([ScriptedSTT(["hi"])])
    await harness.task.queue_frames([speech(1.0)])
    await harness.task.queue_frame(EndFrame(reason="done"))
    record = await asyncio.wait_for(recorder.run(harness.task), 5)
    assert record["outcome"] == "completed" and record["end_reason"] == "done"
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == ["c-run"]


async def test_json_lines_sink_is_async_safe_bounded_and_redacted(tmp_path):
    path = tmp_path / "records" / "calls.jsonl"
    sink = JsonLinesSink(path, max_bytes=4000, backups=2)
    records = [{"call_id": f"call-{n}", "text": "x" * 300, "note": f"api_key=Op4queT0kenValue{n}"} for n in range(40)]
    await asyncio.gather(*(sink.write(r) for r in records))
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["calls.jsonl", "calls.jsonl.1", "calls.jsonl.2"]  # rotated, the oldest dropped
    total = 0
    for file in path.parent.iterdir():
        assert file.stat().st_size <= 4000
        for line in file.read_text().splitlines():
            record = json.loads(line)  # every line whole: writes never interleave
            assert record["note"] == f"api_key={MASK}"
            total += 1
    assert 0 < total < 40
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["call_id"] == "call-39"


async def test_a_stuck_or_broken_sink_does_not_block_the_end_of_a_call():
    class Stuck:
        async def write(self, record):
            await asyncio.Event().wait()

    class Broken:
        async def write(self, record):
            raise OSError("disk full")

    for sink in (Stuck(), Broken()):
        recorder = CallRecorder(sink=sink, call_id="c-x", write_timeout=0.05)
        record = await asyncio.wait_for(recorder.finish(), 2)
        assert record["call_id"] == "c-x"


def test_sink_settings_from_env():
    assert RecordSinkSettings.from_env({}) == RecordSinkSettings()
    settings = RecordSinkSettings.from_env(
        {"CALL_RECORD_PATH": "/var/log/calls.jsonl", "CALL_RECORD_MAX_BYTES": "2048"}
    )
    assert settings == RecordSinkSettings("/var/log/calls.jsonl", 2048)
    assert JsonLinesSink.from_settings(settings).max_bytes == 2048
