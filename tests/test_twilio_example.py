"""examples/twilio_outbound.py, end to end against the fakes: real SDKs, real wire protocols."""

from __future__ import annotations

import pytest

from tests.twilio_scripted import load_example
from vantum_pipeline.frames import HeardTextFrame, TTSWordTimestampsFrame
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.telephony.outcome import CallOutcome

pytestmark = pytest.mark.timeout(90)

CHUNK = 0.02


def test_the_example_runs_against_the_fakes(capsys):
    example = load_example()
    status = example.main(["--fake"], configure_logging=False)
    out = capsys.readouterr().out
    assert status == 0, out[-2000:]
    assert "callee: Yes, who is this?" in out
    assert "(interrupted: only what was heard)" in out
    assert "[calls end_call]" in out
    assert "-- outcome: completed" in out


async def test_the_conversation_holds_exactly_what_the_callee_heard():
    example = load_example()
    seen: list = []

    def observe(frame, direction):
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, TTSWordTimestampsFrame | HeardTextFrame):
            seen.append(frame)

    async with example.fakes() as (twilio, services, stand_ins):
        record, contexts = await example.run_call(
            twilio, services, "+14155550123", host="127.0.0.1", port=0, observer=observe
        )
        callee = next(iter(stand_ins["twilio"].calls.values())).callee
    assert record.outcome is CallOutcome.COMPLETED
    [context] = contexts
    [cut] = [m for m in context.messages if m.interrupted]
    pitch_id = next(f.context_id for f in seen if isinstance(f, HeardTextFrame) and f.text == cut.content)
    words = [w for f in seen if isinstance(f, TTSWordTimestampsFrame) and f.context_id == pitch_id for w in f.words]

    # What the callee's side played of the pitch: from the end of the callee's
    # answer to the clear (plus the chunk in flight).
    [clear_at] = callee.clears
    played = callee.heard_seconds(callee.spoke[0][1], clear_at + CHUNK)
    assert 0.5 < played < words[-1][2]

    def heard_by(seconds: float) -> str:
        return " ".join(w for w, _start, end in words if end <= seconds)

    assert cut.content in {heard_by(played - 0.06), heard_by(played + 0.06)}
    assert cut.content and callee.heard_seconds(clear_at + CHUNK, callee.spoke[1][1]) == 0.0
