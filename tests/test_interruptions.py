"""Interruption policies, the barge-in judge (sans I/O), and the conversation
layer's side of backchannels and resume, in real pipelines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vantum_pipeline.audio.mulaw import ulaw2lin
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    EndOfTurnFrame,
    FalseInterruptionFrame,
    HeardTextFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    ResumeSpeakFrame,
    TextFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator, split_heard
from vantum_pipeline.processors.context import LLMContext, Message
from vantum_pipeline.services.interruptions import (
    PHONE_DEFAULT,
    Backchannels,
    BargeInJudge,
    InterruptAtOnce,
    MinSpeechDuration,
    MinWords,
    NeverOnBackchannel,
    SpeechSoFar,
    Verdict,
    level_dbfs,
    policy_from_settings,
)
from vantum_pipeline.settings import InterruptionSettings
from vantum_pipeline.testing.pipeline import run_pipeline
from vantum_pipeline.testing.signals import mulaw, silence, speech

LOUD, QUIET = -18.0, -90.0

# ---------------------------------------------------------------- backchannels


@pytest.mark.parametrize(
    ("text", "content", "backchannel"),
    [
        ("Mm-hmm.", 0, 2),
        ("MM HMM!", 0, 2),
        ("uh-huh", 0, 2),
        ("Right, right.", 0, 2),
        ("All right", 0, 2),
        ("Yeah, I see.", 0, 3),
        ("Wait, how much is it?", 5, 0),
        ("Right away please", 2, 1),
        ("", 0, 0),
    ],
)
def test_backchannels_are_matched_without_case_or_punctuation(text: str, content: int, backchannel: int) -> None:
    assert Backchannels().split(text) == (content, backchannel)


def test_backchannel_list_is_configurable_and_checked() -> None:
    custom = Backchannels(["d'accord", "ouais"])
    assert custom.is_backchannel("Ouais, d'accord.")
    assert not custom.is_backchannel("Mm-hmm")
    with pytest.raises(ConfigurationError, match="no words"):
        Backchannels(["..."])


# --------------------------------------------------------------------- policies


def test_policies_and_their_composition() -> None:
    short = SpeechSoFar(seconds=0.3, text="Mm-hmm", content_words=0, backchannel_words=2)
    long_backchannel = SpeechSoFar(seconds=0.9, text="Mm-hmm", content_words=0, backchannel_words=2)
    long_noise = SpeechSoFar(seconds=0.7)
    two_words = SpeechSoFar(seconds=0.4, text="wait how", content_words=2)
    assert InterruptAtOnce().triggered(short) and InterruptAtOnce().immediate
    assert MinSpeechDuration(0.6).triggered(long_noise) and not MinSpeechDuration(0.6).triggered(short)
    assert MinWords(2).triggered(two_words) and not MinWords(2).triggered(long_noise)
    assert [PHONE_DEFAULT.triggered(s) for s in (short, long_backchannel, long_noise, two_words)] == [
        False,
        False,  # a backchannel never interrupts alone, however long
        True,
        True,
    ]
    both = MinWords(2) & MinSpeechDuration(0.5)
    assert not both.triggered(two_words) and both.triggered(SpeechSoFar(seconds=0.5, content_words=2))
    assert (MinWords(1) | InterruptAtOnce()).immediate and not (MinWords(1) & InterruptAtOnce()).immediate
    assert repr(PHONE_DEFAULT) == "NeverOnBackchannel(MinWords(2) | MinSpeechDuration(0.6))"
    with pytest.raises(ConfigurationError):
        MinWords(0)
    with pytest.raises(ConfigurationError):
        MinSpeechDuration(-1)


def test_settings_name_the_policies_and_refuse_bad_values() -> None:
    assert repr(policy_from_settings(InterruptionSettings())) == repr(PHONE_DEFAULT)
    assert policy_from_settings(InterruptionSettings(policy="at_once")).immediate
    assert repr(policy_from_settings(InterruptionSettings(policy="min_words", min_words=3))) == (
        "NeverOnBackchannel(MinWords(3))"
    )
    for bad in ({"policy": "sometimes"}, {"min_words": 0}, {"min_speech_seconds": -0.1}, {"backchannels": ("",)}):
        with pytest.raises(ConfigurationError, match="InterruptionSettings"):
            InterruptionSettings(**bad)  # type: ignore[arg-type]
    env = {
        "INTERRUPTION_POLICY": "min_duration",
        "INTERRUPTION_BACKCHANNELS": "yeah, uh huh",
        "INTERRUPTION_RESUME": "no",
    }
    settings = InterruptionSettings.from_env(env)
    assert (settings.policy, settings.backchannels, settings.resume_after_false_interruption) == (
        "min_duration",
        ("yeah", "uh huh"),
        False,
    )
    with pytest.raises(ConfigurationError, match="INTERRUPTION_MIN_WORDS"):
        InterruptionSettings.from_env({"INTERRUPTION_MIN_WORDS": "two"})


def test_level_of_pcm_and_mulaw_audio() -> None:
    loud = speech(0.02, 8000)
    assert level_dbfs(loud, "pcm16") == pytest.approx(-18.0, abs=0.5)
    assert level_dbfs(mulaw(loud), "mulaw") == pytest.approx(-18.0, abs=0.5)
    assert level_dbfs(silence(0.02, 8000), "pcm16") == float("-inf")


@given(st.binary(max_size=400))
def test_mulaw_level_equals_the_level_of_its_decoded_samples(audio: bytes) -> None:
    """The mu-law level is read from a table of powers, without decoding: it must be the decoded audio's."""
    expected = level_dbfs(ulaw2lin(audio), "pcm16")
    got = level_dbfs(audio, "mulaw")
    assert got == pytest.approx(expected, abs=1e-9) if expected != float("-inf") else got == expected


# ------------------------------------------------------------------- the judge


def feed(judge: BargeInJudge, start: float, end: float, level: float, step: float = 0.02) -> list[Verdict]:
    """Audio at ``level`` from ``start`` to ``end``; the verdicts, acted on like the STT does."""
    verdicts = []
    t = start
    while t < end - 1e-9:
        t += step
        verdict = judge.audio(round(t, 3), level, step)
        if verdict is Verdict.INTERRUPT:
            judge.interrupted(round(t, 3))
        verdicts.append(verdict)
    return [v for v in verdicts if v is not Verdict.NONE]


def test_speech_over_the_bot_interrupts_once_the_policy_fires() -> None:
    judge = BargeInJudge(PHONE_DEFAULT)
    judge.bot_started()
    assert feed(judge, 0.0, 0.1, LOUD) == []
    assert judge.speech_started(0.1) is Verdict.NONE  # deciding: the bot keeps talking
    assert judge.transcript("Mm", final=False, now=0.3) is Verdict.NONE
    assert feed(judge, 0.1, 0.5, LOUD) == []
    assert judge.transcript("Wait how", final=False, now=0.5) is Verdict.INTERRUPT
    judge.interrupted(0.5)
    assert judge.state == "confirmed"
    assert judge.turn_ended("Wait, how much is it?", 1.5) is Verdict.NONE
    assert judge.state == "idle"


def test_long_speech_without_words_interrupts_on_duration_and_then_proves_false() -> None:
    judge = BargeInJudge(PHONE_DEFAULT, false_interruption_timeout=0.5)
    judge.bot_started()
    assert judge.speech_started(0.0) is Verdict.NONE
    assert feed(judge, 0.0, 0.7, LOUD) == [Verdict.INTERRUPT]
    assert judge.state == "interrupted"
    judge.bot_stopped()
    # No words, and quiet for the timeout: a false alarm.
    assert feed(judge, 0.7, 1.1, QUIET) == []
    assert feed(judge, 1.1, 1.3, QUIET) == [Verdict.FALSE_INTERRUPTION]
    assert judge.state == "idle"


def test_a_backchannel_turn_is_no_turn_and_empty_speech_no_verdict() -> None:
    judge = BargeInJudge(PHONE_DEFAULT)
    judge.bot_started()
    judge.speech_started(0.0)
    assert judge.turn_is_backchannel("Mm-hmm.")
    assert judge.turn_ended("Mm-hmm.", 0.8) is Verdict.BACKCHANNEL
    judge.speech_started(2.0)
    assert judge.turn_ended("", 2.5) is Verdict.NONE  # noise the policy let pass: nothing happened


def test_a_short_real_answer_interrupts_when_its_turn_ends() -> None:
    judge = BargeInJudge(NeverOnBackchannel(MinWords(3)))
    judge.bot_started()
    judge.speech_started(0.0)
    assert judge.transcript("No thanks", final=False, now=0.4) is Verdict.NONE
    assert judge.turn_ended("No thanks.", 0.9) is Verdict.INTERRUPT


def test_speech_after_the_bot_stopped_is_a_plain_turn() -> None:
    judge = BargeInJudge(PHONE_DEFAULT)
    assert judge.speech_started(0.0) is Verdict.NONE and judge.state == "idle"
    judge.bot_started()
    judge.speech_started(1.0)
    judge.bot_stopped()  # the reply ended while the callee started to talk
    assert judge.transcript("Sounds good to me", final=True, now=1.5) is Verdict.NONE
    assert judge.turn_ended("Sounds good to me", 1.8) is Verdict.NONE


def test_at_once_interrupts_on_speech_start_and_a_backchannel_then_resumes() -> None:
    judge = BargeInJudge(InterruptAtOnce())
    judge.bot_started()
    feed(judge, 0.0, 0.06, LOUD)
    assert judge.speech_started(0.06) is Verdict.INTERRUPT
    judge.interrupted(0.06)
    assert judge.turn_is_backchannel("Mm-hmm.")
    assert judge.turn_ended("Mm-hmm.", 0.9) is Verdict.FALSE_INTERRUPTION
    quiet = BargeInJudge(InterruptAtOnce(), resume=False)
    quiet.bot_started()
    feed(quiet, 0.0, 0.06, LOUD)
    quiet.speech_started(0.06)
    quiet.interrupted(0.06)
    assert not quiet.turn_is_backchannel("Mm-hmm.")  # the behaviour before policies: a turn
    assert quiet.turn_ended("Mm-hmm.", 0.9) is Verdict.NONE


def test_an_interruption_nobody_spoke_for_is_not_judged() -> None:
    judge = BargeInJudge(PHONE_DEFAULT, false_interruption_timeout=0.3)
    judge.bot_started()
    feed(judge, 0.0, 1.0, QUIET)
    judge.interrupted(1.0)  # the app cut the bot itself
    assert feed(judge, 1.0, 2.0, QUIET) == [] and judge.state == "idle"


# ------------------------------------------------------------ heard → resume


@given(st.lists(st.sampled_from(["hi,", "there", "we", "help.", "you", "book", "mm-hmm", "it's"]), max_size=12))
def test_split_heard_cuts_after_the_heard_words(words: list[str]) -> None:
    text = " ".join(words)
    for count in range(len(words) + 1):
        heard = " ".join(words[:count])
        said, rest = split_heard(text, heard)
        assert said == heard
        assert rest == " ".join(words[count:])


async def test_a_backchannel_turn_asks_nothing_of_the_model_and_does_not_end_the_bot_turn() -> None:
    context = LLMContext("system")
    out = await run_pipeline(
        [UserAggregator(context), AssistantAggregator(context)],
        [
            TTSSpeakFrame("Hello there, I am calling about your fleet."),
            EndOfTurnFrame("Mm-hmm.", confidence=0.9, backchannel=True),
        ],
    )
    assert not out.of_type(LLMContextFrame)
    assert [(m.role, m.content) for m in context.messages[1:]] == [
        ("assistant", "Hello there, I am calling about your fleet.")
    ]


async def test_a_false_interruption_resumes_the_reply_into_the_same_message() -> None:
    context = LLMContext("system")
    reply = "Great to hear from you, let me tell you about our offer. It is new."
    frames = [
        LLMFullResponseStartFrame(),
        TextFrame("Great to hear from you, let me tell you about our offer."),
        TTSStartedFrame(context_id="c1"),
        TextFrame("It is new."),
        LLMFullResponseEndFrame(),
        HeardTextFrame("Great to hear from you, let", context_id="c1"),
        0.05,
        InterruptionFrame(),
        HeardTextFrame("Great to hear from you, let me", context_id="c1"),
        0.05,
        FalseInterruptionFrame(),
        0.05,
    ]
    user, assistant = UserAggregator(context), AssistantAggregator(context)
    out = await run_pipeline([user, assistant], frames)
    [resume] = out.of_type(ResumeSpeakFrame)
    assert (resume.text, resume.lead_in) == ("me tell you about our offer. It is new.", "me")
    message = context.messages[-1]
    assert (message.content, message.interrupted, message.full_text) == ("Great to hear from you, let me", True, reply)
    # The resumed words are heard: the same message grows back to the whole reply.
    tail = AssistantAggregator(context)
    await run_pipeline(
        [tail],
        [
            resume,
            TTSStartedFrame(context_id="r1"),
            HeardTextFrame("me tell you", context_id="r1"),
            0.02,
            HeardTextFrame("me tell you about our offer. It is new.", context_id="r1"),
            TTSStoppedFrame(context_id="r1"),
        ],
    )
    assert [m.role for m in context.messages] == ["system", "assistant"]
    assert (message.content, message.interrupted) == (reply, False)


async def test_nothing_is_resumed_after_a_new_user_turn_or_with_resume_off() -> None:
    context = LLMContext("system")
    cut = context.add(Message("assistant", "We help", interrupted=True, full_text="We help teams."))
    out = await run_pipeline([UserAggregator(context, resume=False)], [FalseInterruptionFrame()])
    assert out.of_type(ResumeSpeakFrame) == []
    context.add_user("Who is this?")
    out = await run_pipeline([UserAggregator(context)], [FalseInterruptionFrame()])
    assert out.of_type(ResumeSpeakFrame) == [] and cut.interrupted
    # At a sentence end there is no lead-in.
    context = LLMContext("system")
    context.add(Message("assistant", "We help teams.", interrupted=True, full_text="We help teams. Ask me how."))
    out = await run_pipeline([UserAggregator(context)], [FalseInterruptionFrame()])
    assert [(f.text, f.lead_in) for f in out.of_type(ResumeSpeakFrame)] == [("Ask me how.", "")]


def test_the_start_of_a_backchannel_phrase_is_not_yet_a_content_word() -> None:
    backchannels = Backchannels()
    assert backchannels.split("Makes", partial=True) == (0, 1)
    assert backchannels.split("Makes") == (1, 0)  # a final "makes" alone is a word
    judge = BargeInJudge(PHONE_DEFAULT)
    judge.bot_started()
    judge.speech_started(0.0)
    feed(judge, 0.0, 0.5, LOUD)
    assert judge.transcript("Makes", final=False, now=0.5) is Verdict.NONE
    assert feed(judge, 0.5, 0.62, LOUD) == []  # 0.6 s of speech, but only a backchannel so far


def test_interim_words_revised_into_a_backchannel_make_a_false_interruption() -> None:
    judge = BargeInJudge(NeverOnBackchannel(MinWords(1)))
    judge.bot_started()
    judge.speech_started(0.0)
    assert judge.transcript("Mix", final=False, now=0.3) is Verdict.INTERRUPT  # the STT misheard at first
    judge.interrupted(0.3)
    assert judge.state == "confirmed"
    assert judge.turn_is_backchannel("Mm-hmm.")
    assert judge.turn_ended("Mm-hmm.", 0.9) is Verdict.FALSE_INTERRUPTION


def test_speech_never_transcribed_nor_closed_is_forgotten() -> None:
    judge = BargeInJudge(NeverOnBackchannel(MinWords(2)), false_interruption_timeout=0.5)
    judge.bot_started()
    feed(judge, 0.0, 0.3, LOUD)
    judge.speech_started(0.3)
    assert judge.state == "deciding"
    assert feed(judge, 0.3, 1.2, QUIET) == [] and judge.state == "deciding"
    feed(judge, 1.2, 1.4, QUIET)
    assert judge.state == "idle"


def test_continuous_speech_counts_from_the_start_of_its_first_chunk() -> None:
    judge = BargeInJudge(MinSpeechDuration(0.6))
    feed(judge, 0.0, 0.6, LOUD)
    assert judge.speech(0.6).seconds == pytest.approx(0.6)
    feed(judge, 0.6, 0.7, QUIET)  # a 0.1 s pause does not break it
    feed(judge, 0.7, 0.8, LOUD)
    assert judge.speech(0.8).seconds == pytest.approx(0.8)
    feed(judge, 0.8, 1.1, QUIET)
    assert judge.speech(1.1).seconds == 0.0


EVENTS = st.one_of(
    st.tuples(st.just("audio"), st.sampled_from([LOUD, QUIET]), st.floats(0.01, 0.5)),
    st.tuples(st.just("speech_started")),
    st.tuples(st.just("transcript"), st.sampled_from(["", "Mm-hmm", "yeah", "wait how", "makes"]), st.booleans()),
    st.tuples(st.just("turn_ended"), st.sampled_from(["", "Mm-hmm.", "Wait, how much is it?", "Right."])),
    st.tuples(st.just("interrupted")),
    st.tuples(st.just("bot_started")),
    st.tuples(st.just("bot_stopped")),
)


@given(st.lists(EVENTS, max_size=60), st.sampled_from(["phone", "at_once", "min_words", "min_duration"]))
def test_any_sequence_of_events_keeps_the_judge_consistent(events: list[tuple[object, ...]], policy: str) -> None:
    judge = BargeInJudge(policy_from_settings(InterruptionSettings(policy=policy)), false_interruption_timeout=0.4)
    now = 0.0
    interrupted_since_idle = False
    for event in events:
        kind = event[0]
        verdict = Verdict.NONE
        if kind == "audio":
            now += float(event[2])  # type: ignore[arg-type]
            verdict = judge.audio(now, float(event[1]), float(event[2]))  # type: ignore[arg-type]
        elif kind == "speech_started":
            verdict = judge.speech_started(now)
        elif kind == "transcript":
            verdict = judge.transcript(str(event[1]), final=bool(event[2]), now=now)
        elif kind == "turn_ended":
            verdict = judge.turn_ended(str(event[1]), now)
        elif kind == "interrupted":
            judge.interrupted(now)
        elif kind == "bot_started":
            judge.bot_started()
        else:
            judge.bot_stopped()
        if verdict is Verdict.INTERRUPT:
            assert judge.bot_speaking  # the bot is never "cut" while silent
            judge.interrupted(now)
        if judge.state in ("interrupted", "confirmed"):
            interrupted_since_idle = True
        if verdict is Verdict.FALSE_INTERRUPTION:
            assert interrupted_since_idle  # only an interruption can be false
        if judge.state == "idle":
            interrupted_since_idle = False
