"""FailoverTTSService: Cartesia (FakeCartesia, real SDK) with espeak behind it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from tests.waiting import until
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    MULAW,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
from vantum_pipeline.services.circuit import BreakerSettings, BreakerState
from vantum_pipeline.services.failover import FailoverSettings
from vantum_pipeline.services.failover_tts import FailoverTTSService, FailoverTTSSettings
from vantum_pipeline.services.offline.tts import EspeakTTSService
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.cartesia import FakeCartesia, ToneSynthesizer, encode_audio
from vantum_pipeline.testing.grammar import check_stream
from vantum_pipeline.testing.playout import PlayoutMeter

pytestmark = pytest.mark.timeout(60)

SENTENCES = [
    "Hi, this is Alex from Vantum.",
    "We help sales teams call more people.",
    "Do you have a minute to talk?",
]
#: The longest silence the callee may hear while a turn moves to the backup.
GAP_BOUND = 2.0


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[FakeCartesia]:
    async with FakeCartesia(chunk_ms=20) as server:
        yield server


def cartesia(fake: FakeCartesia, **overrides: Any) -> CartesiaTTSService:
    settings = CartesiaSettings(
        api_key=Secret("test-key"),
        voice_id="voice-1",
        base_url=fake.http_url,
        websocket_base_url=fake.ws_url,
        retry_delay=0.05,
        first_audio_timeout=1.0,
        stall_timeout=1.0,
        connect_timeout=2.0,
    )
    return CartesiaTTSService(replace(settings, **overrides), name="cartesia")


def failover(
    fake: FakeCartesia, *, clock: ManualClock | None = None, open_seconds: float = 30.0, **settings: Any
) -> tuple[FailoverTTSService, CartesiaTTSService, EspeakTTSService]:
    primary, backup = cartesia(fake), EspeakTTSService(name="espeak")
    breaker = BreakerSettings(failure_threshold=1, open_seconds=open_seconds)
    tts = FailoverTTSService(
        [primary, backup],
        FailoverTTSSettings(failover=FailoverSettings(breaker=breaker), **settings),
        clock=clock or ManualClock(),
    )
    return tts, primary, backup


def reply(*sentences: str) -> list[Frame]:
    return [LLMFullResponseStartFrame(), *(TextFrame(s) for s in sentences), LLMFullResponseEndFrame()]


def words_of(frames: list[Frame], context_id: str) -> list[str]:
    return [
        w for f in frames if isinstance(f, TTSWordTimestampsFrame) and f.context_id == context_id for w, _, _ in f.words
    ]


def metric_frames(frames: list[Frame], name: str) -> list[MetricsFrame]:
    return [f for f in frames if isinstance(f, MetricsFrame) and f.metric == name]


def chunks_of(text: str, rate: int = 16000, chunk_ms: int = 20) -> int:
    """How many chunks FakeCartesia sends for ``text`` (its default synthesizer)."""
    audio = encode_audio(ToneSynthesizer().synthesize(text, rate).audio, "pcm_s16le")
    return math.ceil(len(audio) / (rate * chunk_ms // 1000 * 2))


async def speak(harness: PipelineHarness, frames: list[Frame], stops: int = 1, timeout: float = 15.0) -> None:
    for frame in frames:
        await harness.send(frame)
    await harness.wait_for(TTSStoppedFrame, count=stops, timeout=timeout)


async def test_cartesia_failing_mid_turn_hands_the_rest_of_the_turn_to_the_backup(fake: FakeCartesia) -> None:
    # Cartesia streams at about real time; its socket drops right after the first sentence.
    fake.faults.chunk_delay = 0.02
    fake.faults.drop_after_chunks = chunks_of(SENTENCES[0] + " ")
    fake.faults.drop_close_code = None
    tts, primary, backup = failover(fake)
    meter = PlayoutMeter()
    async with PipelineHarness([tts, meter], end_timeout=15) as harness:
        await speak(harness, reply(*SENTENCES))
    frames = harness.downstream
    started = [f for f in frames if isinstance(f, TTSStartedFrame)]
    assert len(started) == 1  # one turn downstream, whoever spoke it
    cid = started[0].context_id
    # Every word once, in order: the first sentence by Cartesia, the rest by espeak.
    assert [w.strip(",.?") for w in words_of(frames, cid)] == [w.strip(",.?") for w in " ".join(SENTENCES).split()]
    assert fake.contexts[cid].transcript.startswith(SENTENCES[0])
    assert backup.characters_sent == len(SENTENCES[1]) + len(SENTENCES[2]) + 2  # resumed at sentence 2, not repeated
    starts = [s for f in frames if isinstance(f, TTSWordTimestampsFrame) for _, s, _ in f.words]
    assert starts == sorted(starts)  # the backup's timings continue the turn's clock
    assert all(f.context_id == cid and f.sample_rate == 16000 for f in frames if isinstance(f, TTSAudioRawFrame))
    assert not tts.unspoken and check_stream(frames) == []
    switch = metric_frames(frames, "provider.switch")
    assert [(f.labels["from"], f.labels["to"]) for f in switch] == [("cartesia", "espeak")]
    assert [f.value for f in metric_frames(frames, "provider.state")] == [BreakerState.OPEN]
    assert tts.state_of(primary) is BreakerState.OPEN and tts.switches == 1
    # The callee's recording: the silence while the turn moved is bounded.
    assert meter.longest_gap() < GAP_BOUND, meter.gaps


async def test_a_sentence_cut_in_the_middle_is_said_again_whole_by_the_backup(fake: FakeCartesia) -> None:
    fake.faults.drop_after_chunks = chunks_of(SENTENCES[0] + " ") + 3  # inside sentence 2
    fake.faults.drop_close_code = 1011
    tts, _, backup = failover(fake)
    async with PipelineHarness([tts], end_timeout=15) as harness:
        await speak(harness, reply(*SENTENCES))
    assert backup.characters_sent == len(SENTENCES[1]) + len(SENTENCES[2]) + 2
    assert not tts.unspoken and check_stream(harness.downstream) == []


async def test_recovered_primary_is_probed_half_open_then_used_again(fake: FakeCartesia) -> None:
    clock = ManualClock()
    tts, primary, _ = failover(fake, clock=clock, open_seconds=20.0)
    async with PipelineHarness([tts], end_timeout=15) as harness:
        fake.faults.error_requests = 1
        await speak(harness, [TextFrame("The primary fails this one.")], stops=1)
        assert tts.state_of(primary) is BreakerState.OPEN
        contexts = len(fake.contexts)
        await speak(harness, [TextFrame("Open: straight to the backup.")], stops=2)
        assert len(fake.contexts) == contexts  # no request while open
        clock.now += 21.0
        await speak(harness, [TextFrame("Half open: a probe.")], stops=3)
        assert tts.state_of(primary) is BreakerState.CLOSED
        await speak(harness, [TextFrame("Closed again: the primary.")], stops=4)
    states = [f.value for f in metric_frames(harness.downstream, "provider.state")]
    assert states == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    transcripts = [c.transcript.strip() for c in fake.contexts.values() if c.done]
    assert transcripts == ["Half open: a probe.", "Closed again: the primary."]
    assert check_stream(harness.downstream) == []


async def test_a_failed_probe_reopens_and_moves_the_turn(fake: FakeCartesia) -> None:
    clock = ManualClock()
    tts, primary, backup = failover(fake, clock=clock, open_seconds=5.0)
    async with PipelineHarness([tts], end_timeout=15) as harness:
        fake.faults.error_requests = 2
        await speak(harness, [TextFrame("First failure.")])
        clock.now += 6.0
        await speak(harness, [TextFrame("The probe fails too.")], stops=2)
    assert tts.state_of(primary) is BreakerState.OPEN and tts.pool.breaker(primary).trips == 2
    assert backup.characters_sent == len("First failure. The probe fails too. ")
    assert not tts.unspoken


async def test_phone_output_is_mulaw_8k_from_every_provider(fake: FakeCartesia) -> None:
    fake.faults.drop_after_chunks = chunks_of(SENTENCES[0] + " ", rate=8000)
    tts = FailoverTTSService(
        [
            cartesia(fake, encoding="pcm_mulaw", sample_rate=8000),
            EspeakTTSService(name="espeak"),  # 22,050 Hz PCM: resampled and encoded
        ],
        FailoverTTSSettings().for_twilio(),
    )
    async with PipelineHarness([tts], end_timeout=15) as harness:
        await speak(harness, reply(*SENTENCES[:2]))
    audio = [f for f in harness.downstream if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.encoding == MULAW and f.sample_rate == 8000 for f in audio)
    assert tts.switches == 1 and sum(f.duration for f in audio) > 2.0


async def test_every_provider_failing_plays_the_fallback_and_records_the_text(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 5
    tts = FailoverTTSService([cartesia(fake), cartesia(fake, voice_id="voice-2")])
    async with PipelineHarness([tts], end_timeout=15) as harness:
        await speak(harness, [TextFrame("Nobody can say this.")], stops=2)
    assert [u.text for u in tts.unspoken] == ["Nobody can say this."]
    assert any(isinstance(f, TTSSpeakFrame) and f.category == "error" for f in harness.downstream)
    assert check_stream(harness.downstream) == []


async def test_interruption_after_a_switch_stops_the_backup(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 1
    tts, _, _backup = failover(fake)
    long_text = " ".join(["This sentence is long enough to be interrupted while it is spoken."] * 4)
    async with PipelineHarness([tts], end_timeout=15) as harness:
        await harness.send(LLMFullResponseStartFrame())
        await harness.send(TextFrame(long_text))
        first = await harness.wait_for(TTSAudioRawFrame, timeout=10)
        await harness.send(InterruptionFrame())
        await until(lambda: harness.task.state.interruptions > 0)  # begun: old frames are stale from then on
        await asyncio.sleep(0.1)  # and has reached every processor
        cut = len(harness.downstream)
        await asyncio.sleep(0.4)
        assert not [f for f in harness.downstream[cut:] if getattr(f, "context_id", None) == first.context_id]
        await speak(harness, [TextFrame("A new turn.")])
    assert tts.switches == 1
    after = [f for f in harness.downstream[cut:] if isinstance(f, TTSStartedFrame | TTSStoppedFrame)]
    assert len(after) == 2 and after[0].context_id == after[1].context_id != first.context_id


async def test_slow_first_bytes_open_the_breaker_without_failing_turns(fake: FakeCartesia) -> None:
    fake.faults.first_chunk_delay = 0.3
    breaker = BreakerSettings(slow_first_byte=0.1, slow_threshold=2, open_seconds=60.0)
    primary = cartesia(fake)
    tts = FailoverTTSService(
        [primary, EspeakTTSService(name="espeak")], FailoverTTSSettings(failover=FailoverSettings(breaker=breaker))
    )
    async with PipelineHarness([tts], end_timeout=15) as harness:
        for count in (1, 2, 3):
            await speak(harness, [TextFrame(f"Turn number {count}.")], stops=count)
    assert tts.state_of(primary) is BreakerState.OPEN
    assert len(fake.contexts) == 2 and tts.switches == 0  # the third turn went straight to the backup
    assert not tts.unspoken


def test_failover_lists_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        FailoverTTSService([])
    espeak = EspeakTTSService()
    with pytest.raises(ConfigurationError):
        FailoverTTSService([espeak, espeak])
    with pytest.raises(ConfigurationError):
        FailoverTTSSettings(encoding="mulaw", sample_rate=16000)


async def test_a_turn_walks_down_three_providers_and_each_sentence_is_said_once(fake: FakeCartesia) -> None:
    from vantum_pipeline.services.deepgram_tts import DeepgramTTSService, DeepgramTTSSettings
    from vantum_pipeline.testing.deepgram_speak import FakeDeepgramSpeak

    fake.faults.drop_after_chunks = chunks_of(SENTENCES[0] + " ")
    fake.faults.drop_close_code = None
    async with FakeDeepgramSpeak() as aura_fake:
        aura = DeepgramTTSService(DeepgramTTSSettings(api_key=Secret("k"), url=aura_fake.ws_url), name="aura")
        espeak = EspeakTTSService(name="espeak")
        breaker = BreakerSettings(failure_threshold=1)
        tts = FailoverTTSService(
            [cartesia(fake), aura, espeak], FailoverTTSSettings(failover=FailoverSettings(breaker=breaker))
        )
        meter = PlayoutMeter()
        async with PipelineHarness([tts, meter], end_timeout=15) as harness:
            await harness.send(LLMFullResponseStartFrame())
            await harness.send(TextFrame(SENTENCES[0]))
            await harness.send(TextFrame(SENTENCES[1]))
            await harness.wait_for(
                MetricsFrame, where=lambda f: f.metric == "provider.switch" and f.labels["to"] == "aura", timeout=10
            )
            second = len(ToneSynthesizer().synthesize(SENTENCES[1] + " ", 16000).audio)
            for _ in range(500):  # until Aura has sent all of sentence 2
                if aura_fake.connections and aura_fake.connections[0].audio_bytes >= second:
                    break
                await asyncio.sleep(0.01)
            aura_fake.faults.warning_on_flush = True  # Aura refuses the next sentence
            await speak(harness, [TextFrame(SENTENCES[2]), LLMFullResponseEndFrame()])
        assert aura_fake.texts == [SENTENCES[1] + " ", SENTENCES[2] + " "]
    # Cartesia said sentence 1, Aura sentence 2, espeak sentence 3 (Aura's refusal of it moved it on).
    assert espeak.characters_sent == len(SENTENCES[2]) + 1
    switches = [(f.labels["from"], f.labels["to"]) for f in metric_frames(harness.downstream, "provider.switch")]
    assert switches == [("cartesia", "aura"), ("aura", "espeak")]
    started = [f for f in harness.downstream if isinstance(f, TTSStartedFrame)]
    assert len(started) == 1 and not tts.unspoken and check_stream(harness.downstream) == []


async def test_a_burst_of_turns_during_an_outage_is_spoken_in_order_once_each(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 2  # the first two contexts fail; the breaker opens at the second
    primary, backup = cartesia(fake), EspeakTTSService(name="espeak")
    breaker = BreakerSettings(failure_threshold=2, open_seconds=60.0)
    tts = FailoverTTSService([primary, backup], FailoverTTSSettings(failover=FailoverSettings(breaker=breaker)))
    lines = [f"Line number {n} of the burst." for n in range(1, 7)]
    async with PipelineHarness([tts], end_timeout=20) as harness:
        for line in lines:
            await harness.send(TextFrame(line))
        await harness.wait_for(TTSStoppedFrame, count=len(lines), timeout=20)
    frames = harness.downstream
    started = [f.context_id for f in frames if isinstance(f, TTSStartedFrame)]
    stopped = [f.context_id for f in frames if isinstance(f, TTSStoppedFrame)]
    assert started == stopped and len(set(started)) == len(lines)  # one bracket per line, in order, no overlap
    order = [f.context_id for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert order == sorted(order, key=started.index)
    cartesia_said = [c.transcript.strip() for c in fake.contexts.values() if c.done]
    espeak_said = backup.characters_sent
    # All six were on their way to Cartesia before it failed twice: the two failed lines moved, the rest stayed.
    assert len(cartesia_said) == 4 and tts.switches == 2
    assert espeak_said == sum(len(line) + 1 for line in lines if line not in cartesia_said)
    assert not tts.unspoken and check_stream(frames) == []


async def test_retry_before_switch_tries_the_same_provider_first(fake: FakeCartesia) -> None:
    fake.faults.error_requests = 1
    primary, backup = cartesia(fake), EspeakTTSService(name="espeak")
    breaker = BreakerSettings(failure_threshold=3)
    settings = FailoverTTSSettings(failover=FailoverSettings(breaker=breaker), retry_before_switch=True)
    tts = FailoverTTSService([primary, backup], settings)
    async with PipelineHarness([tts], end_timeout=15) as harness:
        await speak(harness, [TextFrame("A transient error, then Cartesia again.")])
    cid = next(f.context_id for f in harness.downstream if isinstance(f, TTSStartedFrame))
    assert fake.contexts[f"{cid}-r1"].done and tts.switches == 0 and backup.characters_sent == 0
    assert primary.retries == 1 and not tts.unspoken


@pytest.mark.parametrize("early", [False, True])
async def test_a_backup_is_started_when_first_needed_unless_asked_early(fake: FakeCartesia, early: bool) -> None:
    async with FakeCartesia() as other:
        backup = CartesiaTTSService(
            CartesiaSettings(api_key=Secret("k"), base_url=other.http_url, websocket_base_url=other.ws_url),
            name="cartesia-2",
        )
        tts = FailoverTTSService([cartesia(fake), backup], FailoverTTSSettings(start_backups_early=early))
        async with PipelineHarness([tts], end_timeout=15) as harness:
            await speak(harness, [TextFrame("The primary speaks this.")])
            assert len(other.upgrades) == (1 if early else 0)  # no socket for a backup nobody needed
            fake.faults.error_requests = 1
            await speak(harness, [TextFrame("The backup speaks this.")], stops=2)
        assert len(other.upgrades) == 1 and tts.switches == 1
        assert [c.transcript.strip() for c in other.contexts.values()] == ["The backup speaks this."]
