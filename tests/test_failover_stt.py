"""FailoverSTTService: two FakeDeepgram servers through the real deepgram-sdk."""

from __future__ import annotations

from typing import Any

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    EndOfTurnFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    MetricsFrame,
    TranscriptionFrame,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.services.circuit import BreakerSettings
from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
from vantum_pipeline.services.failover import FailoverSettings
from vantum_pipeline.services.failover_stt import FailoverSTTService, FailoverSTTSettings
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing.deepgram import DeepgramFaults, FakeDeepgram, ScriptedRecognizer
from vantum_pipeline.testing.pipeline import PipelineHarness
from vantum_pipeline.testing.signals import frames, silence, speech

pytestmark = pytest.mark.timeout(40)

RATE = 16000
BPS = 2 * RATE
TURN1 = silence(0.3) + speech(1.0) + silence(1.2)
TURN2 = speech(1.2, seed=3) + silence(1.5)


def deepgram(fake: FakeDeepgram, name: str, **overrides: Any) -> DeepgramSTTService:
    options: dict[str, Any] = {
        "api_key": Secret("dg-key"),
        "url": fake.ws_url,
        "retry": RetryPolicy(max_retries=3, base_delay=0.5),
        "close_timeout": 2.0,
    }
    options.update(overrides)
    return DeepgramSTTService(DeepgramSettings(**options), name=name)


async def say(harness: PipelineHarness, pcm: bytes) -> None:
    for chunk in frames(pcm, RATE):
        await harness.send(InputAudioRawFrame(chunk, RATE))


def texts(frames_: list[Frame], kind: type[Any]) -> list[str]:
    return [f.text for f in frames_ if isinstance(f, kind)]


def metric_frames(frames_: list[Frame], name: str) -> list[MetricsFrame]:
    return [f for f in frames_ if isinstance(f, MetricsFrame) and f.metric == name]


async def test_a_drop_mid_utterance_moves_to_the_backup_and_keeps_every_final() -> None:
    primary_words = ScriptedRecognizer(["first turn here", "never heard from the primary"])
    backup_words = ScriptedRecognizer(["second turn after the drop"])
    async with FakeDeepgram(recognizer=primary_words) as one, FakeDeepgram(recognizer=backup_words) as two:
        one.inject(DeepgramFaults(drop_after_audio_bytes=len(TURN1) + int(0.6 * BPS)))
        first, second = deepgram(one, "deepgram"), deepgram(two, "deepgram-eu")
        stt = FailoverSTTService([first, second])
        async with PipelineHarness([stt]) as harness:
            assert not two.connections  # a backup is not started before it is needed
            await say(harness, TURN1)
            await harness.wait_for(EndOfTurnFrame)
            await say(harness, TURN2)  # the primary's socket drops 0.6 s into this turn
            await harness.wait_for(EndOfTurnFrame, count=2, timeout=15)
        (dropped,) = one.connections
        (backup,) = two.connections
    assert texts(harness.downstream, TranscriptionFrame) == ["First turn here.", "Second turn after the drop."]
    assert texts(harness.downstream, EndOfTurnFrame) == ["First turn here.", "Second turn after the drop."]
    assert dropped.closed_by == "dropped" and len(one.attempts) == 1  # the primary was not retried
    # The backup got the unconfirmed audio (from the last word of the first final: the pause after it,
    # and turn 2 from its start) and the rest live: not the first turn's speech.
    assert len(TURN2) < len(backup.audio) <= len(TURN1) + len(TURN2) - int(1.2 * BPS)
    assert stt.replayed_seconds > 0.5 and stt.active is second
    # The backup's words are on the call's clock (its own starts at the replay, after turn 1's last word).
    later = harness.collected.of_type(TranscriptionFrame)[1]
    assert 1.2 <= later.words[0][1] and later.words[-1][2] <= (len(TURN1) + len(TURN2)) / BPS
    switch = metric_frames(harness.downstream, "provider.switch")
    assert [(f.labels["from"], f.labels["to"]) for f in switch] == [("deepgram", "deepgram-eu")]
    assert stt.pool.breaker(first).failures == 1  # one failure: below the default threshold of 2
    assert not [f for f in harness.upstream if isinstance(f, ErrorFrame) and f.fatal]


async def test_the_fatal_error_of_a_replaced_provider_does_not_end_the_call() -> None:
    async with (
        FakeDeepgram(recognizer=ScriptedRecognizer(["lost"])) as one,
        FakeDeepgram(recognizer=ScriptedRecognizer(["the backup heard it"])) as two,
    ):
        one.refuse(5, status=503)
        first = deepgram(one, "primary", retry=RetryPolicy(max_retries=1, base_delay=0.05))
        stt = FailoverSTTService([first, deepgram(two, "backup")], FailoverSTTSettings(switch_after_errors=None))
        async with PipelineHarness([stt]) as harness:
            await say(harness, TURN1)
            await harness.wait_for(EndOfTurnFrame, timeout=15)
    assert texts(harness.downstream, EndOfTurnFrame) == ["The backup heard it."]
    errors = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert errors and not any(e.fatal for e in errors) and "moved to the next provider" in errors[-1].error
    assert harness.collected.finish_reason == "end"


async def test_when_every_provider_fails_the_last_fatal_error_ends_the_call() -> None:
    async with FakeDeepgram() as one, FakeDeepgram() as two:
        one.refuse(5, status=503)
        two.refuse(5, status=503)
        retry = RetryPolicy(max_retries=0, base_delay=0.05)
        stt = FailoverSTTService([deepgram(one, "a", retry=retry), deepgram(two, "b", retry=retry)])
        harness = PipelineHarness([stt])
        async with harness:
            await say(harness, speech(1.0))
            await harness.wait_finished(15)
    assert harness.collected.finish_reason == "error"


async def test_an_open_breaker_starts_the_next_call_on_the_backup() -> None:
    board = FailoverSettings(breaker=BreakerSettings(failure_threshold=1, open_seconds=60.0))
    async with FakeDeepgram() as one, FakeDeepgram(recognizer=ScriptedRecognizer(["hello"])) as two:
        first = deepgram(one, "a")
        stt = FailoverSTTService([first, deepgram(two, "b")], FailoverSTTSettings(failover=board))
        stt.pool.breaker(first).record_failure()  # as another call's failure would
        async with PipelineHarness([stt]) as harness:
            await say(harness, TURN1)
            await harness.wait_for(EndOfTurnFrame, timeout=10)
    assert not one.connections and texts(harness.downstream, EndOfTurnFrame) == ["Hello."]


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        FailoverSTTSettings(switch_after_errors=0)
    with pytest.raises(ConfigurationError):
        FailoverSTTService([])


async def test_a_backup_defers_to_the_local_vad_as_the_primary_did() -> None:
    from vantum_pipeline.frames import UserStartedSpeakingFrame

    primary_words = ScriptedRecognizer(["first turn here"])
    backup_words = ScriptedRecognizer(["second turn after the drop"])
    async with FakeDeepgram(recognizer=primary_words) as one, FakeDeepgram(recognizer=backup_words) as two:
        one.inject(DeepgramFaults(drop_after_audio_bytes=len(TURN1) + int(0.6 * BPS)))
        backup = deepgram(two, "deepgram-eu")
        stt = FailoverSTTService([deepgram(one, "deepgram"), backup])
        async with PipelineHarness([stt]) as harness:
            await harness.send(UserStartedSpeakingFrame(source="vad"))  # a local VAD leads
            await say(harness, TURN1)
            await harness.wait_for(EndOfTurnFrame)
            await say(harness, TURN2)
            await harness.wait_for(EndOfTurnFrame, count=2, timeout=15)
    own = [f for f in harness.downstream if isinstance(f, UserStartedSpeakingFrame) and f.source == "deepgram"]
    assert not own and stt.active is backup  # neither provider doubled the VAD's speaking frames
    assert len(two.connections[0].audio) > 0
