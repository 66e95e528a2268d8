"""``vantum demo`` headless: a whole simulated outbound call, judged by its call record and recording.

The call runs in real time (the phone line is paced like Twilio's), about
half a minute; this file holds that one run and looks at it from every side.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vantum_pipeline.audio.wav import read_wav
from vantum_pipeline.services.offline.agent import SalesScript
from vantum_pipeline.services.offline.espeak import espeak_available
from vantum_pipeline.services.offline.word_accuracy import normalize_words

pytest.importorskip("pocketsphinx")
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed (offline extra)"),
]

SCRIPT = SalesScript()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    # In a process of its own, as a new user runs it (README command 1). In a test worker the
    # callee's lines would be synthesized after whatever other tests had espeak-ng say: the library
    # keeps state from one synthesis to the next, so the same line comes out as a slightly
    # different waveform. In a fresh process the callee's lines are the first syntheses, so the
    # callee sounds the same on every run. (What the bot hears of them does not depend on the
    # call's timing either: see the recognizer's notes. Where the phone's 20 ms frames fell once
    # turned the barge-in line "What is the price?" into "what is right", even in a fresh process.)
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "vantum_pipeline", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    record = json.loads((out / "call.json").read_text())
    return record, out, result.stdout


def test_the_call_ends_with_an_outcome(demo: tuple[dict[str, Any], Path, str]) -> None:
    record, _, _ = demo
    assert record["outcome"] == "meeting_booked"
    assert record["simulation"]["outcomes"] == ["meeting_booked"]
    assert record["telephony"]["status"] == "completed"
    assert record["telephony"]["callbacks"][-1] == "completed"
    assert record["telephony"]["end_reason"] == "api hang-up"  # the bot hung up after its goodbye
    last_bot = [t for t in record["turns"] if t["role"] == "assistant"][-1]
    assert last_bot["text"].startswith("Perfect, I will send you an invite for Thursday")


def test_the_callee_recognized_the_greeting(demo: tuple[dict[str, Any], Path, str]) -> None:
    record, _, _ = demo
    sim = record["simulation"]
    assert sim["greeting_recognized_by_callee"]
    first = sim["callee_side_recognition"]["turns"][0]
    assert {"alex", "vantum", "minute"} <= set(first["recognized"].split())
    assert 0.0 <= sim["callee_side_recognition"]["word_accuracy"] <= 1.0


def test_the_bot_recognized_the_callee(demo: tuple[dict[str, Any], Path, str]) -> None:
    record, _, _ = demo
    sim = record["simulation"]
    users = [normalize_words(t["text"]) for t in record["turns"] if t["role"] == "user"]
    assert len(users) == len(sim["callee_lines"]) == 4
    for key_words, heard in zip(({"minute"}, {"price"}, {"book", "meeting"}, {"thursday"}), users, strict=True):
        assert key_words <= set(heard), heard
    assert sim["bot_side_recognition"]["word_accuracy"] >= 0.7


def test_the_barge_in_cut_the_bot_and_the_context_keeps_what_was_heard(
    demo: tuple[dict[str, Any], Path, str],
) -> None:
    record, _, _ = demo
    barge = record["simulation"]["barge_in"]
    assert barge["bot_cut_at"] is not None and barge["bot_cut_at"] >= barge["callee_started"]
    # Once the bot was cut (the line's clear), at most one 20 ms chunk of it still played.
    assert barge["chunks_played_after_cut"] <= 1
    assert record["counts"]["interruptions"] == 1
    # The context holds only the words the callee heard of the pitch, flagged.
    assert barge["context_message_interrupted"]
    heard = normalize_words(barge["context_message"])
    pitch = normalize_words(SCRIPT.pitch)
    assert 0 < len(heard) < len(pitch) and heard == pitch[: len(heard)]
    assert abs(len(heard) - barge["words_fully_played"]) <= 1
    cut = next(t for t in record["turns"] if t.get("interrupted"))
    assert normalize_words(cut["heard"]) == heard


def test_latencies_and_cost_are_reported(demo: tuple[dict[str, Any], Path, str]) -> None:
    record, _, printed = demo
    sim = record["simulation"]
    assert len(sim["turn_latencies"]) == 4 and sim["median_turn_latency"] is not None
    assert set(record["cost"]["by_service"]) == {"deepgram", "openai", "cartesia", "twilio"}
    assert record["cost"]["total"] > 0
    for expected in ("summary", "turn latency", "word accuracy", "barge-in", "cost", "CALLEE", "BOT"):
        assert expected in printed


def test_the_recording_has_the_callee_left_and_the_bot_right(demo: tuple[dict[str, Any], Path, str]) -> None:
    record, out, _ = demo
    wav = read_wav(out / "call.wav")
    assert wav.sample_rate == 8000 and wav.num_channels == 2
    samples = np.frombuffer(wav.pcm, "<i2").reshape(-1, 2).astype(np.float64)
    assert abs(len(samples) / 8000 - record["simulation"]["recording_seconds"]) < 0.01

    def loud(channel: int, start: float, end: float) -> float:
        part = samples[int(start * 8000) : int(end * 8000), channel]
        return float(np.sqrt(np.mean(part**2))) if len(part) else 0.0

    for line in record["simulation"]["callee_lines"]:
        assert loud(0, line["start"], line["end"]) > 300, line
    # The bot speaks while the callee listens (before the first answer), on its own channel.
    first = record["simulation"]["callee_lines"][0]
    assert loud(1, 0.0, first["start"]) > 300 and loud(0, 0.0, first["start"] - 0.5) < 100
