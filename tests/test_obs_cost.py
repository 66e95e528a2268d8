"""Cost: prices, live and final figures of a scripted faked call, the budget cap."""

import pytest
from obs_fakes import Reply, ScriptedLLM, ScriptedOutput, ScriptedSTT, ScriptedTTS, SentenceSplitter, speech

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import HeardTextFrame, TextFrame, TTSSpeakFrame
from vantum_pipeline.observability.budget import BUDGET_EXCEEDED, BudgetGuard, BudgetSettings
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker, Prices
from vantum_pipeline.observability.metrics import MetricsRegistry
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.testing import PipelineHarness

UTTERANCES = ["Yes, I have a minute.", "Sure, tell me more.", "Tuesday works."]
REPLIES = [
    Reply("Great to hear. We help teams answer every call.", 1000, 20),
    Reply("Would a demo on Tuesday work?", 1200, 25),
    Reply("Perfect, I will send an invite. Thanks for your time!", 1400, 15),
]


def test_sentence_lengths_of_the_script():
    # The characters the TTS is billed for, counted by hand.
    assert [len(s) for s in ("Great to hear.", "We help teams answer every call.")] == [14, 32]
    assert len("Would a demo on Tuesday work?") == 29
    assert [len(s) for s in ("Perfect, I will send an invite.", "Thanks for your time!")] == [31, 21]


def call_processors(guard=None, stall=None):
    processors = [ScriptedSTT(UTTERANCES), ScriptedLLM(REPLIES), SentenceSplitter()]
    if guard is not None:
        processors.append(guard)
    tts = ScriptedTTS()
    processors += [tts, ScriptedOutput(call_seconds=150.0, stall=stall)]
    return processors, tts


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_cost_of_a_scripted_call_matches_the_hand_computed_figures():
    clock = FakeClock()
    tracker = CostTracker(Prices(), clock=clock)
    registry = MetricsRegistry()
    processors, _ = call_processors()
    harness = PipelineHarness(processors)
    MetricsCollector(registry, tracker).attach(harness.task)
    async with harness:
        for n, seconds in enumerate((30.0, 45.0, 15.0)):
            await harness.send(speech(seconds))
            last_words = ("call.", "work?", "time!")[n]
            await harness.wait_for(HeardTextFrame, where=lambda f, end=last_words: f.text.endswith(end))
            if n == 0:
                # Live figures after the first exchange: 30 s of STT, 1000 + 20
                # tokens, 14 + 32 characters; no call minutes reported yet.
                assert tracker.cost_by_service() == pytest.approx(
                    {"deepgram": 0.5 * 0.0043, "openai": 1000 * 2.5e-6 + 20 * 10e-6, "cartesia": 46 * 0.10 / 1000}
                )
                clock.now += 30.0  # half a minute into the call
                assert tracker.cost_per_minute() == pytest.approx((0.00215 + 0.0027 + 0.0046) / 0.5)
        clock.now += 60.0
    final = tracker.snapshot()
    assert final.final
    # By hand: Deepgram 90 s = 1.5 min x $0.0043 = $0.00645; OpenAI 3600 in x $2.50/1M = $0.009
    # and 60 out x $10/1M = $0.0006; Cartesia 127 chars x $0.10/1k = $0.0127; Twilio 150 s =
    # 2.5 min x $0.014 = $0.035. Total $0.06375, over 2.5 billed minutes = $0.0255 per minute.
    assert final.by_service == pytest.approx(
        {"deepgram": 0.00645, "openai": 0.0096, "cartesia": 0.0127, "twilio": 0.035}
    )
    assert final.total == pytest.approx(0.06375)
    assert final.duration_seconds == pytest.approx(150.0)
    assert final.per_minute == pytest.approx(0.0255)
    assert final.usage["openai"] == {"usage.llm_prompt_tokens": 3600, "usage.llm_completion_tokens": 60}
    assert final.usage["cartesia"] == {"usage.tts_characters": 127}
    assert final.usage["deepgram"]["usage.stt_seconds"] == pytest.approx(90.0)
    # The registry saw the same dollars.
    assert registry.value("cost.usd", "twilio") == pytest.approx(0.035)
    assert sum(registry.value("cost.usd", s) for s in ("deepgram", "openai", "cartesia", "twilio")) == pytest.approx(
        0.06375
    )
    as_dict = final.as_dict()
    assert as_dict["total"] == 0.06375 and as_dict["per_minute"] == 0.0255 and as_dict["currency"] == "USD"


def test_per_minute_is_none_before_the_call_lasted_and_live_duration_follows_the_clock():
    clock = FakeClock()
    tracker = CostTracker(clock=clock)
    assert tracker.cost_per_minute() is None
    tracker.start()
    tracker.add_usage("deepgram", "usage.stt_seconds", 60.0)
    assert tracker.cost_per_minute() is None  # no time has passed
    clock.now += 120.0
    assert tracker.duration_seconds() == 120.0
    assert tracker.cost_per_minute() == pytest.approx(0.0043 / 2)
    tracker.finish()
    clock.now += 500.0
    assert tracker.duration_seconds() == 120.0  # frozen, no call seconds reported


def test_free_and_unpriced_services_cost_nothing_but_their_usage_is_kept():
    tracker = CostTracker()
    assert tracker.add_usage("pocketsphinx", "usage.stt_seconds", 60.0) == 0.0
    assert tracker.add_usage("espeak", "usage.tts_characters", 1000) == 0.0
    assert tracker.add_usage("acme", "usage.tts_characters", 1000) == 0.0
    assert tracker.add_usage("cartesia", "usage.tts_characters", -5) == 0.0  # ignored
    assert tracker.total == 0.0
    assert tracker.usage_by_service() == {
        "pocketsphinx": {"usage.stt_seconds": 60.0},
        "espeak": {"usage.tts_characters": 1000},
        "acme": {"usage.tts_characters": 1000},
    }


def test_prices_from_env_and_validation():
    prices = Prices.from_env({"PRICE_CARTESIA_PER_1K_CHARACTERS": "0.05", "PRICE_TWILIO_PER_MINUTE": "0.02"})
    assert prices.cartesia_per_thousand_characters == 0.05
    assert prices.twilio_per_minute == 0.02
    assert prices.deepgram_per_minute == 0.0043  # the product's default
    assert Prices.from_env({}) == Prices()
    with pytest.raises(ConfigurationError, match="PRICE_DEEPGRAM_PER_MINUTE"):
        Prices.from_env({"PRICE_DEEPGRAM_PER_MINUTE": "cheap"})
    with pytest.raises(ConfigurationError, match="PRICE_TWILIO_PER_MINUTE must be >= 0"):
        Prices.from_env({"PRICE_TWILIO_PER_MINUTE": "-1"})
    tracker = CostTracker(prices)
    assert tracker.add_usage("cartesia", "usage.tts_characters", 2000) == pytest.approx(0.10)


async def test_budget_cap_wraps_up_politely_and_ends_the_call():
    tracker = CostTracker()
    guard = BudgetGuard(tracker, max_cost=0.01, wrap_up_phrase="Sorry, I have to go now. Goodbye!")
    sink = MemorySink()
    recorder = CallRecorder(sink=sink, tracker=tracker, call_id="call-budget")
    processors, tts = call_processors(guard=guard)
    processors.insert(1, recorder.user_tap())
    harness = PipelineHarness(processors)
    MetricsCollector(MetricsRegistry(), tracker).attach(harness.task)
    recorder.attach(harness.task)
    async with harness:
        await harness.send(speech(30.0))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text.endswith("call."))
        assert guard.exceeded is None  # $0.00945 so far
        # 45 s more of STT: $0.00945 + $0.003225 = $0.012675 > $0.01. Nothing else is sent:
        # the call must end by itself.
        await harness.send(speech(45.0))
        await harness.wait_finished(5.0)
    record = await recorder.finish()
    assert harness.task.finish_reason == "end"
    assert guard.exceeded is not None
    assert guard.exceeded.cost == pytest.approx(0.012675)
    # The reply to the second turn never reached the TTS; the wrap-up phrase did, and was heard.
    assert tts.spoken == ["Great to hear.", "We help teams answer every call.", "Sorry, I have to go now. Goodbye!"]
    assert guard.dropped_text == 1
    heard = [f.text for f in harness.collected.of_type(HeardTextFrame)]
    assert heard[-1] == "Sorry, I have to go now. Goodbye!"
    assert not [f for f in harness.collected.of_type(TextFrame) if "Tuesday" in f.text]
    # The record says why.
    assert record["outcome"] == "budget_exceeded"
    assert record["end_reason"].startswith(BUDGET_EXCEEDED)
    assert "$0.0127" in record["end_reason"] and "$0.0100" in record["end_reason"]
    assert sink.records[-1]["outcome"] == "budget_exceeded"
    assert record["turns"][-1]["text"] == "Sorry, I have to go now. Goodbye!"


async def test_a_call_within_budget_is_not_touched():
    tracker = CostTracker()
    guard = BudgetGuard(tracker, max_cost=1.00)
    processors, tts = call_processors(guard=guard)
    harness = PipelineHarness(processors)
    MetricsCollector(MetricsRegistry(), tracker).attach(harness.task)
    async with harness:
        for seconds in (30.0, 45.0, 15.0):
            await harness.send(speech(seconds))
        await harness.wait_for(HeardTextFrame, where=lambda f: f.text.endswith("time!"))
    assert guard.exceeded is None and guard.dropped_text == 0
    assert len(tts.spoken) == 5
    assert not harness.collected.of_type(TTSSpeakFrame)


def test_budget_settings_from_env():
    assert BudgetSettings.from_env({}).max_call_cost is None
    settings = BudgetSettings.from_env({"CALL_BUDGET_USD": "0.75", "BUDGET_WRAP_UP_PHRASE": "Bye now."})
    assert settings.max_call_cost == 0.75 and settings.wrap_up_phrase == "Bye now."
    assert BudgetGuard.from_settings(CostTracker(), BudgetSettings()) is None
    guard = BudgetGuard.from_settings(CostTracker(), settings)
    assert guard is not None and guard.max_cost == 0.75
    with pytest.raises(ConfigurationError, match="CALL_BUDGET_USD"):
        BudgetSettings.from_env({"CALL_BUDGET_USD": "lots"})
    with pytest.raises(ConfigurationError):
        BudgetGuard(CostTracker(), max_cost=-1)
