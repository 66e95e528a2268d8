"""DeepgramSTTService with the real deepgram-sdk against FakeDeepgram."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from deepgram.core.unchecked_base_model import construct_type
from deepgram.listen.v1.socket_client import V1SocketClientResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from tests.waiting import until
from vantum_pipeline.audio.vad import VADParams
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndOfTurnFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.processors.vad import VADProcessor
from vantum_pipeline.services.deepgram import AudioBacklog, DeepgramSettings, DeepgramSTTService, TurnAssembler
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing.deepgram import DeepgramFaults, FakeDeepgram, ScriptedLine, ScriptedRecognizer
from vantum_pipeline.testing.deepgram_stream import StreamTiming
from vantum_pipeline.testing.pipeline import PipelineHarness
from vantum_pipeline.testing.signals import frames, mulaw, silence, speech

pytestmark = pytest.mark.timeout(30)

KEY = "dg-secret-4f9a1c"
RATE = 16000
BPS = 2 * RATE
TURN_KINDS = (
    UserStartedSpeakingFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
    EndOfTurnFrame,
)


def settings_for(fake: FakeDeepgram, **overrides: Any) -> DeepgramSettings:
    base: dict[str, Any] = {
        "api_key": Secret(KEY),
        "url": fake.ws_url,
        "retry": RetryPolicy(base_delay=0.1),
        "close_timeout": 2.0,
    }
    return DeepgramSettings(**{**base, **overrides})


def audio(pcm: bytes, rate: int = RATE) -> list[InputAudioRawFrame]:
    return [InputAudioRawFrame(chunk, rate) for chunk in frames(pcm, rate)]


async def say(harness: PipelineHarness, pcm: bytes) -> None:
    for frame in audio(pcm):
        await harness.send(frame)


async def say_past_onset(
    harness: PipelineHarness, connection: Any, pcm: bytes, onset: int, *, timeout: float = 5.0
) -> list[int]:
    """Say ``pcm``: its first ``onset`` bytes, then the rest once the service has heard speech start;
    return the sizes of the audio messages ``connection`` got from then to the end of the turn."""
    await say(harness, pcm[:onset])
    await harness.wait_for(UserStartedSpeakingFrame)
    before = len(connection.audio_messages)
    await say(harness, pcm[onset:])
    await harness.wait_for(EndOfTurnFrame, timeout=timeout)
    return list(connection.audio_messages[before:])


def turn_frames(harness: PipelineHarness) -> list[Frame]:
    return [f for f in harness.downstream if isinstance(f, TURN_KINDS)]


def metrics(harness: PipelineHarness, name: str) -> list[MetricsFrame]:
    return [f for f in harness.downstream if isinstance(f, MetricsFrame) and f.metric == name]


def texts(harness: PipelineHarness, kind: type[Any]) -> list[str]:
    return [f.text for f in harness.downstream if isinstance(f, kind)]


def shape(sequence: list[Frame]) -> list[str]:
    """Frame kinds with runs of interims collapsed: the grammar of a turn."""
    names: list[str] = []
    for frame in sequence:
        name = type(frame).__name__.removesuffix("Frame")
        if not (names and names[-1] == name == "InterimTranscription"):
            names.append(name)
    return names


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="TRACE")
    yield lines
    logger.remove(sink)


# ------------------------------------------------------------- conversation


async def test_two_turn_conversation_gives_the_right_frames_in_order() -> None:
    recognizer = ScriptedRecognizer(["yes I am interested", "Tuesday works for me"])
    async with FakeDeepgram(api_key=KEY, recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await say(harness, silence(0.4) + speech(1.2) + silence(1.5))
            await harness.wait_for(EndOfTurnFrame)
            await say(harness, speech(1.0, seed=2) + silence(1.5))
            await harness.wait_for(EndOfTurnFrame, count=2)
        connection = fake.connections[0]

    turn = ["UserStartedSpeaking", "InterimTranscription", "Transcription", "UserStoppedSpeaking", "EndOfTurn"]
    assert shape(turn_frames(harness)) == turn + turn
    assert texts(harness, TranscriptionFrame) == ["Yes I am interested.", "Tuesday works for me."]
    assert texts(harness, EndOfTurnFrame) == ["Yes I am interested.", "Tuesday works for me."]
    first, second = harness.collected.of_type(TranscriptionFrame)
    assert first.confidence == pytest.approx(0.95) and first.language == "en-US"
    assert [w[0] for w in first.words] == ["Yes", "I", "am", "interested."]
    assert 0.4 <= first.words[0][1] < first.words[-1][2] <= 1.6
    assert 3.1 <= second.words[0][1] < 3.2  # seconds of call audio
    assert not any(e.low_confidence for e in harness.collected.of_type(EndOfTurnFrame))
    # Both speech_final and UtteranceEnd came for each turn: one end of turn each.
    assert len(connection.sent_of_type("UtteranceEnd")) == 2

    # One socket, opened with the product's parameters, closed with CloseStream.
    assert len(fake.connections) == 1
    assert connection.query == {
        "model": "nova-2", "language": "en-US", "encoding": "linear16", "sample_rate": "16000",
        "channels": "1", "interim_results": "true", "punctuate": "true", "smart_format": "true",
        "vad_events": "true", "utterance_end_ms": "1000", "endpointing": "300",
    }  # fmt: skip
    assert connection.received_of_type("CloseStream") and connection.closed_by == "close_stream"
    assert connection.sent[-1]["type"] == "Metadata"  # type: ignore[index]
    assert harness.collected.finish_reason == "end"

    # Metrics: latency per final, audio streamed for the cost.
    latencies = metrics(harness, "latency.stt_final")
    assert len(latencies) == 2 and all(m.value >= 0 and m.unit == "s" for m in latencies)
    assert sum(m.value for m in metrics(harness, "usage.stt_seconds")) == pytest.approx(5.6)
    assert connection.audio_seconds == pytest.approx(5.6)
    assert len(metrics(harness, "service.request")) == 1
    assert all(m.labels == {"service": "deepgram"} for m in metrics(harness, "usage.stt_seconds"))


async def test_quiet_audio_goes_in_larger_sends_and_speech_frame_by_frame() -> None:
    recognizer = ScriptedRecognizer(["yes I am interested"])
    async with FakeDeepgram(api_key=KEY, recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await until(lambda: fake.connections)
            connection = fake.connections[0]
            await say(harness, silence(1.0))
            await until(lambda: len(connection.audio) >= BPS)  # every byte of the quiet second, ...
            quiet = list(connection.audio_messages)
            # The first 0.3 s go in 100 ms sends, until Deepgram hears speech start.
            after_onset = await say_past_onset(harness, connection, speech(1.0) + silence(0.5), int(0.3 * BPS))
        total = len(connection.audio)
    assert quiet == [BPS // 10] * 10  # ... in ten sends of 100 ms
    # Once speech is heard (the bot silent): the loud speech in sends of 80 ms, ...
    loud = list(itertools.takewhile(lambda n: n > BPS // 50, after_onset))
    assert len(loud) >= 8 and set(loud[:-1]) == {int(0.08 * BPS)}
    # ... then the silence that ends the turn frame by frame (the end of the turn
    # is not delayed: Deepgram's endpointing waits 300 ms); everything arrived, in order.
    assert after_onset[len(loud) : len(loud) + 15] == [BPS // 50] * 15
    assert total == int(2.5 * BPS)


@pytest.mark.parametrize("tail", [0.32, 0.34, 0.36, 0.38])
async def test_the_end_of_a_turn_is_heard_without_more_audio_than_the_endpointing_needs(tail: float) -> None:
    recognizer = ScriptedRecognizer(["yes I am interested"])
    async with FakeDeepgram(api_key=KEY, recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            # Speech, then just the 300 ms of silence the endpointer waits for (and a frame or more),
            # then nothing: none of it may be waiting for a larger send.
            await until(lambda: fake.connections)
            pcm = silence(0.2) + speech(1.0) + silence(tail)
            await say_past_onset(harness, fake.connections[0], pcm, int(0.5 * BPS), timeout=3.0)
            held = len(pcm) - len(fake.connections[0].audio)
    assert texts(harness, EndOfTurnFrame) == ["Yes I am interested."]
    assert held == 0


_FRAME = BPS // 50
_LOUD = speech(0.02, seed=5)  # about -18 dBFS: above the speech threshold (-40)
_SOFT = speech(0.02, level_dbfs=-55.0, seed=6)  # line hiss: below it


@pytest.mark.timeout(120)
@settings(max_examples=20, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from(["loud", "soft", "silent", "bot starts", "bot stops"]), st.integers(1, 8)),
        max_size=10,
    )
)
async def test_speech_sends_lose_nothing_and_hold_nothing_anyone_waits_for(runs: list[tuple[str, int]]) -> None:
    """Any run of loud, soft and silent frames, the bot starting and stopping between them:
    every byte arrives once and in order; while the bot speaks, or from a frame at or below
    the threshold on, nothing fed is held back; no send is longer than 80 ms."""
    steps = [kind for kind, count in runs for _ in range(count)]
    fed = bytearray()
    bot_speaking = False
    # No endpointing, VAD events or utterance ends: the turn stays open (a local VAD opened it).
    async with FakeDeepgram(api_key=KEY, recognizer=ScriptedRecognizer([])) as fake:
        stt = DeepgramSTTService(
            settings_for(
                fake,
                endpointing=False,
                vad_events=False,
                utterance_end_ms=None,
                interrupt_on_speech_started=False,
            )
        )
        async with PipelineHarness([stt]) as harness:
            await until(lambda: fake.connections)
            connection = fake.connections[0]
            await harness.send(UserStartedSpeakingFrame(source="vad"))
            for step in steps:
                if step in ("bot starts", "bot stops"):
                    bot_speaking = step == "bot starts"
                    await harness.send(BotStartedSpeakingFrame() if bot_speaking else BotStoppedSpeakingFrame())
                    continue
                audio = {"loud": _LOUD, "soft": _SOFT, "silent": silence(0.02)}[step]
                fed += audio
                await harness.send(InputAudioRawFrame(audio, RATE))
                # Over the bot, or a frame that is not loud: everything fed arrives, with nothing
                # more fed. Loud speech with the bot silent: less than one 80 ms send held back.
                allowed = 0 if bot_speaking or step != "loud" else int(0.08 * BPS) - _FRAME
                needed = len(fed) - allowed
                await until(lambda n=needed: len(connection.audio) >= n, timeout=2.0)
            await harness.send(UserStoppedSpeakingFrame(source="vad"))  # Finalize: what is held goes first
            await until(lambda: len(connection.audio) == len(fed), timeout=2.0)
    assert bytes(connection.audio) == bytes(fed)
    assert all(0 < size <= int(0.08 * BPS) and size % _FRAME == 0 for size in connection.audio_messages)


@pytest.mark.parametrize("case", ["the bot speaks", "speech sends off"])
async def test_speech_goes_frame_by_frame_over_the_bot_or_with_speech_sends_off(case: str) -> None:
    recognizer = ScriptedRecognizer(["wait a moment please"])
    speech_send = 0.0 if case == "speech sends off" else 0.08
    async with FakeDeepgram(api_key=KEY, recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake, speech_send_seconds=speech_send))
        async with PipelineHarness([stt]) as harness:
            await until(lambda: fake.connections)
            connection = fake.connections[0]
            if case == "the bot speaks":
                await harness.send(BotStartedSpeakingFrame())
            after_onset = await say_past_onset(harness, connection, speech(1.0) + silence(0.5), int(0.3 * BPS))
    # Barge-in is judged on the results, which must not wait for a larger send.
    assert len(after_onset) >= 50 and set(after_onset[1:]) == {BPS // 50}


async def test_every_frame_goes_at_once_with_quiet_sends_off() -> None:
    async with FakeDeepgram(api_key=KEY, recognizer=ScriptedRecognizer([])) as fake:
        stt = DeepgramSTTService(settings_for(fake, quiet_send_seconds=0.0))
        async with PipelineHarness([stt]) as harness:
            await until(lambda: fake.connections)
            await say(harness, silence(0.4))
            await until(lambda: len(fake.connections[0].audio) >= int(0.4 * BPS))
        assert fake.connections[0].audio_messages == [BPS // 50] * 20


async def test_audio_held_for_a_quiet_send_goes_before_finalize_and_close_stream() -> None:
    async with FakeDeepgram(api_key=KEY, recognizer=ScriptedRecognizer([])) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await until(lambda: fake.connections)
            await say(harness, silence(0.06))  # less than one quiet send: held
            await asyncio.sleep(0.1)
            held = len(fake.connections[0].audio)
            await harness.send(UserStoppedSpeakingFrame(source="vad"))  # a local VAD: Finalize
            await until(lambda: fake.connections[0].received_of_type("Finalize"))
            await say(harness, silence(0.04))
        connection = fake.connections[0]
    assert held == 0
    assert connection.audio_messages[0] == int(0.06 * BPS)  # flushed just before the Finalize
    assert len(connection.audio) == int(0.1 * BPS)  # and the rest before CloseStream
    assert connection.received_of_type("CloseStream")


async def test_interim_then_final_without_duplicates_when_utterance_end_closes_the_turn() -> None:
    recognizer = ScriptedRecognizer(["I would like to hear more about it"])
    async with FakeDeepgram(recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake, endpointing=False))
        async with PipelineHarness([stt]) as harness:
            await say(harness, silence(0.2) + speech(2.0) + silence(1.6))
            await harness.wait_for(EndOfTurnFrame)
            await say(harness, silence(1.0))
        connection = fake.connections[0]

    assert connection.query["endpointing"] == "false"
    assert not any(m["speech_final"] for m in connection.sent_of_type("Results"))
    interims = texts(harness, InterimTranscriptionFrame)
    assert len(interims) >= 3 and interims == sorted(interims, key=len)  # growing revisions
    assert texts(harness, TranscriptionFrame) == ["I would like to hear more about it."]
    assert texts(harness, EndOfTurnFrame) == ["I would like to hear more about it."]
    kinds = shape(turn_frames(harness))
    assert kinds.index("Transcription") > kinds.index("InterimTranscription")


async def test_final_segments_of_one_turn_are_joined() -> None:
    recognizer = ScriptedRecognizer(["one two three four five six seven eight nine ten eleven twelve"])
    async with FakeDeepgram(recognizer=recognizer, timing=StreamTiming(max_segment=1.0)) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(3.5) + silence(1.5))
            await harness.wait_for(EndOfTurnFrame)
    segments = texts(harness, TranscriptionFrame)
    assert len(segments) >= 3
    [turn] = texts(harness, EndOfTurnFrame)
    assert turn == " ".join(segments)
    assert turn.replace(".", "").lower().split() == recognizer.recognized[0].split()


# ---------------------------------------------------------------- keepalive


async def test_silence_longer_than_the_idle_timeout_keeps_the_socket() -> None:
    """12 s of silence against a 10 s idle rule, scaled: 2.5 s against 1 s."""
    recognizer = ScriptedRecognizer(["hello", "I am back"])
    async with FakeDeepgram(recognizer=recognizer, idle_timeout=1.0) as fake:
        stt = DeepgramSTTService(settings_for(fake, keepalive_interval=0.3))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.6) + silence(0.6))
            await harness.wait_for(EndOfTurnFrame)
            await asyncio.sleep(2.5)  # the callee is on hold: no audio at all
            await say(harness, speech(0.8, seed=4) + silence(0.6))
            await harness.wait_for(EndOfTurnFrame, count=2)
        connection = fake.connections[0]
    assert len(fake.connections) == 1 and connection.closed_by == "close_stream"
    assert len(connection.received_of_type("KeepAlive")) >= 5
    assert texts(harness, EndOfTurnFrame) == ["Hello.", "I am back."]
    assert stt.reconnects == 0


async def test_without_keepalive_the_idle_close_is_survived_by_reconnecting() -> None:
    recognizer = ScriptedRecognizer(["hello", "I am back"])
    async with FakeDeepgram(recognizer=recognizer, idle_timeout=0.5) as fake:
        stt = DeepgramSTTService(settings_for(fake, keepalive_interval=30.0))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.6) + silence(0.6))
            await harness.wait_for(EndOfTurnFrame)
            await fake.wait_for_connection(2, timeout=5)
            await say(harness, speech(0.8, seed=4) + silence(0.6))
            await harness.wait_for(EndOfTurnFrame, count=2)
    assert fake.connections[0].closed_by == "idle" and fake.connections[0].received_of_type("KeepAlive") == []
    assert texts(harness, EndOfTurnFrame) == ["Hello.", "I am back."]
    assert len(metrics(harness, "service.retry")) == 1


# ----------------------------------------------------------------- reconnect


async def test_drop_mid_utterance_final_still_arrives_after_reconnect() -> None:
    recognizer = ScriptedRecognizer(["first turn here", "second turn after the drop"])
    turn1 = silence(0.3) + speech(1.0) + silence(1.2)  # 2.5 s
    turn2 = speech(1.2, seed=3) + silence(1.5)
    async with FakeDeepgram(recognizer=recognizer) as fake:
        fake.inject(DeepgramFaults(drop_after_audio_bytes=len(turn1) + int(0.6 * BPS)))
        stt = DeepgramSTTService(settings_for(fake, retry=RetryPolicy(base_delay=0.2)))
        async with PipelineHarness([stt]) as harness:
            await say(harness, turn1)
            await harness.wait_for(EndOfTurnFrame)
            await say(harness, turn2)  # the socket drops 0.6 s into this turn
            await harness.wait_for(EndOfTurnFrame, count=2, timeout=10)
        dropped, resumed = fake.connections

    assert dropped.closed_by == "dropped" and resumed.closed_by == "close_stream"
    assert dropped.closed_at is not None and resumed.opened_at - dropped.closed_at >= 0.2 - 0.02
    assert texts(harness, TranscriptionFrame) == ["First turn here.", "Second turn after the drop."]
    assert texts(harness, EndOfTurnFrame) == ["First turn here.", "Second turn after the drop."]
    # The new socket got the unconfirmed audio first: from the end of the
    # first turn's final, so no word of it is heard twice ...
    assert 0.9 * BPS <= len(resumed.audio) < len(turn1) + len(turn2) - 1.5 * BPS
    # ... and its times are shifted back onto the call's timeline.
    second = harness.collected.of_type(TranscriptionFrame)[1]
    assert 2.5 <= second.words[0][1] < 2.6 and second.words[-1][2] <= 3.7 + 0.01
    assert len(metrics(harness, "service.retry")) == 1 and stt.reconnects == 1
    # Audio billed: both sockets, the replay included.
    # (what went into the dead socket's buffers is billed too: we cannot know it was lost)
    billed = sum(m.value for m in metrics(harness, "usage.stt_seconds"))
    received = (len(dropped.audio) + len(resumed.audio)) / BPS
    assert received <= billed <= (len(turn1) + len(turn2) + len(resumed.audio)) / BPS + 1e-6


async def test_three_failed_reconnects_end_the_pipeline_with_a_fatal_error() -> None:
    async with FakeDeepgram(recognizer=ScriptedRecognizer(["lost"])) as fake:
        fake.inject(DeepgramFaults(drop_after_audio_bytes=BPS // 2))
        fake.refuse(3, status=503)
        stt = DeepgramSTTService(settings_for(fake, retry=RetryPolicy(base_delay=0.05)))
        harness = PipelineHarness([stt])
        async with harness:
            await say(harness, speech(1.0))
            await harness.wait_finished(10)
        dropped = fake.connections[0]

    assert harness.collected.finish_reason == "error"
    [error] = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert error.fatal and "3 reconnection attempts failed" in error.error
    assert len(fake.connections) == 1
    refused = [a for a in fake.attempts[1:]]
    assert [a.status for a in refused] == [503, 503, 503]
    # The 2/4/8 schedule, shortened to 0.05/0.1/0.2 (lower bounds: a slow machine only adds).
    assert dropped.closed_at is not None
    times = [dropped.closed_at] + [a.at for a in refused]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= want - 0.01 for gap, want in zip(gaps, [0.05, 0.1, 0.2], strict=True))
    assert len(metrics(harness, "service.retry")) == 3


async def test_401_fails_fast_naming_the_setting_but_never_the_key(log_lines: list[str]) -> None:
    async with FakeDeepgram(api_key="the-right-key") as fake:
        stt = DeepgramSTTService(settings_for(fake))
        harness = PipelineHarness([stt])
        async with harness:
            await say(harness, speech(0.5))
            await harness.wait_finished(5)
    assert harness.collected.finish_reason == "error"
    [error] = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert error.fatal and "401" in error.error and "DEEPGRAM_API_KEY" in error.error
    assert len(fake.attempts) == 1 and fake.attempts[0].status == 401  # no retry
    assert metrics(harness, "service.retry") == []
    everything = "\n".join(log_lines) + repr(error) + str(error.exception) + repr(stt.settings)
    assert KEY not in everything and "DEEPGRAM_API_KEY" in everything


async def test_400_is_fatal_at_once_and_names_the_parameter() -> None:
    async with FakeDeepgram() as fake:
        stt = DeepgramSTTService(settings_for(fake, model="nova-9000"))
        harness = PipelineHarness([stt])
        async with harness:
            await harness.wait_finished(5)
    [error] = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert error.fatal and "400" in error.error and "model" in error.error
    assert len(fake.attempts) == 1


async def test_429_is_retried_after_the_retry_after_delay() -> None:
    async with FakeDeepgram(recognizer=ScriptedRecognizer(["finally"])) as fake:
        fake.refuse(1, status=429, retry_after=0.3)
        stt = DeepgramSTTService(settings_for(fake, retry=RetryPolicy(base_delay=0.01)))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.6) + silence(0.5))
            await harness.wait_for(EndOfTurnFrame, timeout=10)
    refused, accepted = fake.attempts
    assert refused.status == 429 and accepted.at - refused.at >= 0.3 - 0.02
    assert len(metrics(harness, "service.rate_limited")) == 1
    assert texts(harness, EndOfTurnFrame) == ["Finally."]  # the audio sent while refused was replayed


# -------------------------------------------------------- what is heard


async def test_low_confidence_turn_takes_the_ask_to_repeat_path() -> None:
    recognizer = ScriptedRecognizer([ScriptedLine("mumble tuesday maybe", 0.3), "yes tuesday"])
    async with FakeDeepgram(recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(1.0) + silence(1.5) + speech(0.8, seed=5) + silence(1.5))
            await harness.wait_for(EndOfTurnFrame, count=2)
    unsure, sure = harness.collected.of_type(EndOfTurnFrame)
    assert unsure.low_confidence and unsure.confidence == pytest.approx(0.3)
    assert not sure.low_confidence and sure.text == "Yes tuesday."
    assert len(metrics(harness, "stt.low_confidence")) == 1
    assert harness.collected.of_type(TranscriptionFrame)[0].confidence == pytest.approx(0.3)


async def test_empty_results_produce_nothing() -> None:
    recognizer = ScriptedRecognizer(["", "", "now words"])  # noise, noise, then speech
    async with FakeDeepgram(recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.8) + silence(1.5) + speech(0.5, seed=9) + silence(1.5))
            await fake.wait_for_connection()
            await until(lambda: len(recognizer.recognized) >= 2)
            await asyncio.sleep(0.2)
            assert [f for f in harness.downstream if isinstance(f, TURN_KINDS[1:])] == [
                f for f in harness.downstream if isinstance(f, UserStoppedSpeakingFrame)
            ]
            await say(harness, speech(0.6, seed=7) + silence(1.5))
            await harness.wait_for(EndOfTurnFrame)
        connection = fake.connections[0]
    # The server did send the empty finals (speech_final included) ...
    empty = [m for m in connection.sent_of_type("Results") if m["is_final"] and m["speech_final"]][:2]
    assert [m["channel"]["alternatives"][0]["transcript"] for m in empty] == ["", ""]
    # ... which gave no transcript, only the speaking pairs.
    assert texts(harness, TranscriptionFrame) == ["Now words."]
    assert texts(harness, EndOfTurnFrame) == ["Now words."]
    assert texts(harness, InterimTranscriptionFrame) == ["Now"]
    assert len(harness.collected.of_type(UserStartedSpeakingFrame)) == 3
    assert len(harness.collected.of_type(UserStoppedSpeakingFrame)) == 3


async def test_malformed_server_messages_are_logged_counted_and_skipped(log_lines: list[str]) -> None:
    recognizer = ScriptedRecognizer(["still listening"])
    faults = DeepgramFaults(malformed_after_messages=1)
    async with FakeDeepgram(recognizer=recognizer, faults=faults) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            connection = await fake.wait_for_connection()
            await connection.send_message({"type": "Results", "channel_index": [0, 1], "start": "soon"})
            await connection.send_message({"type": "Gossip", "text": "x" * 1000})
            await say(harness, speech(0.8) + silence(1.5))
            await harness.wait_for(EndOfTurnFrame)
    assert texts(harness, EndOfTurnFrame) == ["Still listening."]
    assert stt.malformed == 3 and len(metrics(harness, "protocol.malformed")) == 3
    assert len(fake.connections) == 1 and stt.reconnects == 0
    warnings = [line for line in log_lines if "malformed Deepgram message" in line]
    assert len(warnings) == 3 and all(len(line) < 600 for line in warnings)


# ---------------------------------------------------------- VAD and barge-in


async def test_finalize_on_local_vad_stop_closes_the_turn_sooner() -> None:
    recognizer = ScriptedRecognizer(["quick answer"])
    async with FakeDeepgram(recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake, endpointing=3000))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.8) + silence(0.2))
            await harness.send(UserStoppedSpeakingFrame(source="vad"))
            await harness.wait_for(EndOfTurnFrame)
            await say(harness, silence(1.5))  # long enough for UtteranceEnd
            connection = fake.connections[0]
            await until(lambda: connection.sent_of_type("UtteranceEnd"))
    [final] = [m for m in connection.sent_of_type("Results") if m["is_final"] and m["from_finalize"]]
    assert final["channel"]["alternatives"][0]["transcript"] == "Quick answer." and not final["speech_final"]
    assert len(connection.received_of_type("Finalize")) == 1
    assert texts(harness, EndOfTurnFrame) == ["Quick answer."]


async def test_speech_started_interrupts_only_while_the_bot_speaks() -> None:
    recognizer = ScriptedRecognizer(["wait", "stop please", "ok"])
    async with FakeDeepgram(recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.5) + silence(1.2))
            await harness.wait_for(EndOfTurnFrame)
            assert harness.task.state.interruptions == 0
            await harness.send(BotStartedSpeakingFrame())
            await say(harness, speech(0.5, seed=1) + silence(1.2))
            await harness.wait_for(EndOfTurnFrame, count=2)
            assert harness.task.state.interruptions == 1
            await harness.send(BotStoppedSpeakingFrame())
            await say(harness, speech(0.5, seed=2) + silence(1.2))
            await harness.wait_for(EndOfTurnFrame, count=3)
            assert harness.task.state.interruptions == 1


async def test_interruption_on_speech_started_can_be_turned_off() -> None:
    recognizer = ScriptedRecognizer(["wait"])
    async with FakeDeepgram(recognizer=recognizer) as fake:
        stt = DeepgramSTTService(settings_for(fake, interrupt_on_speech_started=False, speaking_frames=False))
        async with PipelineHarness([stt]) as harness:
            await harness.send(BotStartedSpeakingFrame())
            await say(harness, speech(0.5) + silence(1.2))
            await harness.wait_for(EndOfTurnFrame)
            assert harness.task.state.interruptions == 0
    assert harness.collected.of_type(UserStartedSpeakingFrame) == []


class EnergyDetector:
    """A speech detector for the local VAD: loud is speech."""

    sample_rate = RATE
    frame_samples = 320

    def speech_probability(self, frame: Any) -> float:
        return 1.0 if float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) > 1000 else 0.0

    def reset(self) -> None:
        pass


async def test_with_a_local_vad_upstream_its_frames_lead_and_its_stop_finalizes() -> None:
    recognizer = ScriptedRecognizer(["sounds good"])
    async with FakeDeepgram(recognizer=recognizer) as fake:
        vad = VADProcessor(VADParams(start_secs=0.06, stop_secs=0.2), detector_factory=EnergyDetector)
        stt = DeepgramSTTService(settings_for(fake, endpointing=3000))
        async with PipelineHarness([vad, stt]) as harness:
            await say(harness, silence(0.3) + speech(0.8) + silence(0.5))
            await harness.wait_for(EndOfTurnFrame)
            await harness.send(BotStartedSpeakingFrame())
            await say(harness, speech(0.5, seed=3) + silence(0.5))
            await harness.wait_for(UserStartedSpeakingFrame, count=2)
        connection = fake.connections[0]
    starts = harness.collected.of_type(UserStartedSpeakingFrame)
    assert [f.source for f in starts] == ["vad", "vad"]  # none re-emitted from Deepgram's SpeechStarted
    assert connection.sent_of_type("SpeechStarted")
    assert connection.received_of_type("Finalize")
    [final] = [m for m in connection.sent_of_type("Results") if m["is_final"] and m["from_finalize"]][:1]
    assert final["channel"]["alternatives"][0]["transcript"] == "Sounds good."
    assert texts(harness, EndOfTurnFrame) == ["Sounds good."]
    assert harness.task.state.interruptions == 1  # the VAD's, not a second one from Deepgram


async def test_with_a_local_vad_its_speech_starts_are_the_ones_judged() -> None:
    recognizer = ScriptedRecognizer(["Mm-hmm.", "Wait, how much is it?"])
    async with FakeDeepgram(recognizer=recognizer) as fake:
        params = VADParams(start_secs=0.06, stop_secs=0.2)
        vad = VADProcessor(params, detector_factory=EnergyDetector, interrupt_bot=False)
        stt = DeepgramSTTService(settings_for(fake, endpointing=3000))
        async with PipelineHarness([vad, stt]) as harness:
            await harness.send(BotStartedSpeakingFrame())
            await say(harness, silence(0.2) + speech(0.45, seed=5) + silence(0.6))
            await harness.wait_for(EndOfTurnFrame)
            assert harness.task.state.interruptions == 0  # a backchannel: the bot goes on
            await say(harness, speech(1.6, seed=6) + silence(0.6))
            await harness.wait_for(EndOfTurnFrame, count=2)
            assert harness.task.state.interruptions == 1
    starts = harness.collected.of_type(UserStartedSpeakingFrame)
    assert {f.source for f in starts} == {"vad"}
    turns = harness.collected.of_type(EndOfTurnFrame)
    assert [(t.text, t.backchannel) for t in turns] == [("Mm-hmm.", True), ("Wait, how much is it?", False)]
    decisions = [f.labels["decision"] for f in metrics(harness, "latency.barge_in_decision")]
    assert decisions == ["backchannel", "interrupt"]


# ------------------------------------------------------- formats, lifecycle


async def test_mulaw_8k_phone_audio_passes_straight_through() -> None:
    recognizer = ScriptedRecognizer(["calling from the phone"])
    pcm = silence(0.3, 8000) + speech(1.0, 8000) + silence(1.2, 8000)
    sent = mulaw(pcm)
    async with FakeDeepgram(recognizer=recognizer) as fake:
        settings = settings_for(fake).for_phone()
        async with PipelineHarness([DeepgramSTTService(settings)], audio_in_sample_rate=8000) as harness:
            for chunk in frames(sent, 8000, sample_width=1):
                await harness.send(InputAudioRawFrame(chunk, 8000, encoding="mulaw"))
            await harness.wait_for(EndOfTurnFrame)
        connection = fake.connections[0]
    assert connection.query["encoding"] == "mulaw" and connection.query["sample_rate"] == "8000"
    assert bytes(connection.audio) == sent  # no decode, no resample
    assert texts(harness, EndOfTurnFrame) == ["Calling from the phone."]
    assert sum(m.value for m in metrics(harness, "usage.stt_seconds")) == pytest.approx(2.5)


async def test_audio_in_the_wrong_format_is_a_fatal_configuration_error() -> None:
    async with FakeDeepgram() as fake:
        harness = PipelineHarness([DeepgramSTTService(settings_for(fake))])
        async with harness:
            await harness.send(InputAudioRawFrame(silence(0.02, 8000), 8000))
            await harness.wait_finished(5)
    [error] = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert error.fatal and "16000" in error.error and "8000" in error.error


async def test_cancel_tears_the_socket_down_at_once() -> None:
    async with FakeDeepgram(recognizer=ScriptedRecognizer(["bye"])) as fake:
        stt = DeepgramSTTService(settings_for(fake))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.5))
            connection = await fake.wait_for_connection()
            await until(lambda: len(connection.audio) >= BPS // 2)
            await harness.task.cancel()
        await connection.wait_closed(timeout=2)
    assert connection.received_of_type("CloseStream") == [] and connection.closed_by == "client"
    assert harness.collected.finish_reason == "cancel"
    assert sum(m.value for m in metrics(harness, "usage.stt_seconds")) == pytest.approx(0.5)


async def test_cancel_does_not_wait_for_a_service_that_stopped_answering() -> None:
    # A frozen service never answers a close frame: the call's cancel must not
    # wait for it (it used to, past the task's stop deadline).
    problems: list[str] = []
    sink = logger.add(lambda m: problems.append(m.record["message"]), level="ERROR")
    try:
        async with FakeDeepgram(faults=DeepgramFaults(freeze_after_audio_bytes=BPS // 4)) as fake:
            stt = DeepgramSTTService(settings_for(fake))
            async with PipelineHarness([stt]) as harness:
                await say(harness, speech(0.5))
                connection = await fake.wait_for_connection()
                await until(lambda: len(connection.audio) >= BPS // 4)
                await harness.task.cancel()
            await connection.wait_closed(timeout=5)
    finally:
        logger.remove(sink)
    assert harness.collected.finish_reason == "cancel"
    assert connection.received_of_type("CloseStream") == []
    assert problems == []  # no "CancelFrame still travelling at the deadline", no task left running


async def test_end_waits_for_the_last_results_but_not_forever() -> None:
    async with FakeDeepgram(faults=DeepgramFaults(silent=True)) as fake:
        stt = DeepgramSTTService(settings_for(fake, close_timeout=0.3))
        loop = asyncio.get_running_loop()
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.5))
            connection = await fake.wait_for_connection()
            started = loop.time()
        assert loop.time() - started < 5
        assert connection.received_of_type("CloseStream")
    assert harness.collected.finish_reason == "end"


async def test_last_words_arrive_before_the_end_frame() -> None:
    async with FakeDeepgram(recognizer=ScriptedRecognizer(["goodbye now"])) as fake:
        stt = DeepgramSTTService(settings_for(fake, endpointing=5000, utterance_end_ms=None))
        async with PipelineHarness([stt]) as harness:
            await say(harness, speech(0.8))
            await fake.wait_for_connection()
    kinds = [type(f).__name__ for f in harness.downstream]
    assert texts(harness, TranscriptionFrame) == ["Goodbye now."]
    assert kinds.index("TranscriptionFrame") < kinds.index("EndFrame")


# ------------------------------------------------------------ no network


def test_settings_defaults_env_and_phone_mode() -> None:
    settings = DeepgramSettings.from_env({"DEEPGRAM_API_KEY": KEY})
    assert (settings.model, settings.language, settings.encoding, settings.sample_rate) == (
        "nova-2", "en-US", "linear16", 16000,
    )  # fmt: skip
    assert settings.utterance_end_ms == 1000 and settings.endpointing == 300 and settings.min_confidence == 0.5
    assert settings.retry.schedule() == [2.0, 4.0, 8.0] and settings.replay_seconds == 10.0
    assert settings.cost(60) == pytest.approx(0.0043)
    assert KEY not in repr(settings) and KEY not in str(settings)
    phone = settings.for_phone()
    assert (phone.encoding, phone.sample_rate) == ("mulaw", 8000)
    with pytest.raises(ConfigurationError, match="DEEPGRAM_API_KEY"):
        DeepgramSettings.from_env({})
    with pytest.raises(ConfigurationError, match="encoding"):
        dataclasses.replace(settings, encoding="opus")
    assert (settings.quiet_send_seconds, settings.speech_send_seconds) == (0.1, 0.08)
    for name in ("quiet_send_seconds", "speech_send_seconds"):
        for bad in (-0.01, 1.5):
            with pytest.raises(ConfigurationError, match=name):
                dataclasses.replace(settings, **{name: bad})
    assert settings.connect_options()["endpointing"] == 300
    assert dataclasses.replace(settings, endpointing=False).connect_options()["endpointing"] == "false"


def _message(data: dict[str, Any]) -> Any:
    return construct_type(type_=V1SocketClientResponse, object_=data)  # type: ignore[arg-type]


def _results(text: str, start: float, end: float, *, final: bool = True, speech_final: bool = False) -> Any:
    words = [{"word": w, "start": start, "end": end, "confidence": 0.9} for w in text.split()]
    return _message(
        {
            "type": "Results", "channel_index": [0, 1], "start": start, "duration": end - start,
            "is_final": final, "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": words}]},
            "metadata": {"request_id": "r", "model_uuid": "m",
                         "model_info": {"name": "n", "version": "v", "arch": "a"}},
        }
    )  # fmt: skip


def test_turn_assembler_ignores_an_utterance_end_about_an_earlier_turn() -> None:
    turns = TurnAssembler(language="en-US", min_confidence=0.5)
    turns.reset_connection(10.0)
    first = turns.on_results(_results("hello", 0.0, 1.0, speech_final=True))
    assert [type(f).__name__ for f in first] == ["TranscriptionFrame", "EndOfTurnFrame"]
    assert first[0].words == (("hello", 10.0, 11.0),)  # type: ignore[attr-defined]
    turns.on_results(_results("again", 2.0, 3.0))
    late = _message({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.0})
    assert turns.on_utterance_end(late) is None and turns.turn_open
    current = _message({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 3.0})
    end = turns.on_utterance_end(current)
    assert end is not None and end.text == "again" and not turns.turn_open
    assert turns.on_utterance_end(current) is None


def test_audio_backlog_is_bounded_and_addressed_absolutely() -> None:
    backlog = AudioBacklog(max_bytes=10)
    backlog.append(b"0123456789")
    backlog.append(b"abcd")
    assert (backlog.start, backlog.end) == (4, 14) and backlog.read(4, 3) == b"456"
    backlog.trim(8)
    assert backlog.read(8, 100) == b"89abcd"
    with pytest.raises(ValueError):
        backlog.read(2, 1)
