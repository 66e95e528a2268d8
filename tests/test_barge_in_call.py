"""Barge-in on whole faked phone calls: backchannels, real interruptions,
false interruptions and resume, each policy (see tests/barge_in_stack.py)."""

from __future__ import annotations

import pytest

from tests.barge_in_stack import PITCH, barge_in_stack, noise, word_end, words_in_recording
from vantum_pipeline.settings import InterruptionSettings
from vantum_pipeline.testing.callee import BargeIn, HangUp, Listen, Pause, Say
from vantum_pipeline.testing.signals import speech

pytestmark = pytest.mark.timeout(90)

ANSWER = "It is forty nine dollars a month."
CHUNK = 0.02


def bot_audio_after(callee, at: float) -> float | None:
    """When the callee next heard bot audio after ``at``."""
    return next((c.at for c in callee.heard if c.at > at), None)


async def test_backchannels_during_the_pitch_neither_cut_it_nor_reach_the_model():
    script = [
        BargeIn(speech(0.45, 8000, seed=1), after=1.0),  # "mm-hmm"
        Pause(1.2),
        Say(speech(0.35, 8000, seed=2)),  # "right"
        Listen(quiet=0.8),
        HangUp(),
    ]
    async with barge_in_stack(["Mm-hmm.", "Right."], [PITCH, "Anything else?"]) as stack:
        call, callee = await stack.call("+14155550101", script)
        requests = len(stack.openai.chat_requests)
    assert callee.clears == []
    assert requests == 1  # the pitch; none for the backchannels
    # Both were heard, and marked: not turns.
    assert [(t.text, t.backchannel) for t in call.turns] == [("Mm-hmm.", True), ("Right.", True)]
    assert call.user.backchannels == 2
    assert [m.value for m in call.metric("interruption.backchannel")] == [1, 1]
    decisions = call.metric("latency.barge_in_decision")
    assert [m.labels["decision"] for m in decisions] == ["backchannel", "backchannel"]
    # The pitch was played whole, every word of it, and remembered whole.
    recording = callee.heard_audio()
    assert words_in_recording(recording, PITCH) == {w: PITCH.split().count(w) for w in PITCH.split()}
    [pitch] = [m for m in call.context.messages if m.role == "assistant"]
    assert (pitch.content, pitch.interrupted) == (PITCH, False)
    assert [m.role for m in call.context.messages] == ["system", "assistant"]
    # The call record keeps them, marked, inside the one bot turn.
    record = await call.recorder.finish()
    turns = [(t["role"], t["text"], t.get("backchannel", False)) for t in record["turns"]]
    assert turns == [
        ("assistant", PITCH, False),
        ("user", "Mm-hmm.", True),
        ("user", "Right.", True),
    ], turns
    assert record["turns"][0]["heard"] == PITCH and not record["turns"][0]["interrupted"]


async def test_a_real_question_cuts_the_bot_right_after_its_second_word():
    script = [BargeIn(speech(1.6, 8000, seed=4), after=1.5), Listen(quiet=0.8), HangUp()]
    async with barge_in_stack(["Wait, how much is it?"], [PITCH, ANSWER]) as stack:
        call, callee = await stack.call("+14155550102", script)
        requests = len(stack.openai.chat_requests)
    assert len(callee.clears) == 1
    clear_at = callee.clears[0]
    assert callee.barge_in_at is not None
    # The bot went on while the policy listened, and stopped after the second word (0.63 s in; the
    # interim results come every 0.1 s), before a third could have been counted (0.97 s in).
    assert callee.barge_in_at + 0.3 < clear_at < callee.barge_in_at + word_end(2), clear_at - callee.barge_in_at
    assert callee.heard_seconds(clear_at + CHUNK, callee.spoke[0][1]) == 0.0
    assert requests == 2
    # The context holds what the callee heard of the pitch, flagged, then the question and the answer.
    roles = [(m.role, m.interrupted) for m in call.context.messages[1:]]
    assert roles == [("assistant", True), ("user", False), ("assistant", False)]
    cut = call.context.messages[1]
    assert cut.content == call.heard(call.tts_contexts[0])
    assert cut.content and PITCH.startswith(cut.content) and cut.content != PITCH
    assert call.context.messages[2].content == "Wait, how much is it?"
    assert call.context.messages[3].content == ANSWER
    assert call.turns[0].backchannel is False
    assert call.violations == []
    [decision] = call.metric("latency.barge_in_decision")
    assert decision.labels["decision"] == "interrupt" and 0.3 < decision.value < 1.0


async def test_a_noise_burst_pauses_the_bot_which_resumes_at_the_first_unheard_word():
    settings = InterruptionSettings(policy="at_once")
    script = [BargeIn(noise(0.3), after=1.6), Listen(quiet=0.8), HangUp()]
    async with barge_in_stack([""], [PITCH], settings) as stack:
        call, callee = await stack.call("+14155550103", script)
        requests = len(stack.openai.chat_requests)
    assert len(callee.clears) == 1  # the bot paused
    noise_end = callee.spoke[0][1]
    resumed_at = bot_audio_after(callee, callee.clears[0] + CHUNK)
    assert resumed_at is not None and resumed_at - noise_end <= 1.0, resumed_at - noise_end
    # Every word of the reply is in the recording once; at most one (the lead-in) twice.
    counts = words_in_recording(callee.heard_audio(), PITCH)
    expected = {w: PITCH.split().count(w) for w in PITCH.split()}
    extra = {w: counts[w] - expected[w] for w in expected if counts[w] != expected[w]}
    assert all(n == 1 for n in extra.values()) and len(extra) <= 1, extra
    # One reply in the context, whole, not flagged; the model was asked once.
    [reply] = [m for m in call.context.messages if m.role == "assistant"]
    assert (reply.content, reply.interrupted) == (PITCH, False)
    assert requests == 1
    assert call.user.resumed == 1
    assert [m.value for m in call.metric("interruption.false")] == [1]
    assert call.violations == []  # the stream grammar holds around both transports
    # The call record shows what happened: the cut reply, then its resumed rest.
    record = await call.recorder.finish()
    bot = [(t["interrupted"], t.get("resumed", False)) for t in record["turns"] if t["role"] == "assistant"]
    assert bot == [(True, False), (False, True)]


async def test_the_phone_default_does_not_even_pause_for_a_short_noise():
    script = [BargeIn(noise(0.3), after=1.6), Listen(quiet=0.8), HangUp()]
    async with barge_in_stack([""], [PITCH]) as stack:
        call, callee = await stack.call("+14155550104", script)
    assert callee.clears == []
    assert words_in_recording(callee.heard_audio(), PITCH) == {w: PITCH.split().count(w) for w in PITCH.split()}
    assert call.turns == []  # noise is no turn
    assert call.metric("interruption.false") == []


async def test_a_backchannel_that_cut_the_bot_at_once_is_a_false_interruption():
    settings = InterruptionSettings(policy="at_once")
    script = [BargeIn(speech(0.45, 8000, seed=1), after=1.6), Listen(quiet=0.8), HangUp()]
    async with barge_in_stack(["Mm-hmm."], [PITCH, ANSWER], settings) as stack:
        call, callee = await stack.call("+14155550105", script)
        requests = len(stack.openai.chat_requests)
    assert len(callee.clears) == 1
    assert requests == 1
    assert [(t.text, t.backchannel) for t in call.turns] == [("Mm-hmm.", True)]
    [reply] = [m for m in call.context.messages if m.role == "assistant"]
    assert (reply.content, reply.interrupted) == (PITCH, False)


async def test_at_once_without_resume_is_the_behaviour_before_policies():
    settings = InterruptionSettings(policy="at_once", resume_after_false_interruption=False)
    script = [BargeIn(speech(0.45, 8000, seed=1), after=1.6), Listen(quiet=0.8), HangUp()]
    async with barge_in_stack(["Mm-hmm."], [PITCH, ANSWER], settings) as stack:
        call, callee = await stack.call("+14155550106", script)
        requests = len(stack.openai.chat_requests)
    # Cut as soon as speech started (Deepgram's SpeechStarted), and the "mm-hmm" answered as a turn:
    # well before a second word (0.63 s in), where the phone policy would have cut.
    assert len(callee.clears) == 1
    assert callee.barge_in_at is not None and callee.clears[0] - callee.barge_in_at < 0.5
    assert requests == 2
    assert [(t.text, t.backchannel) for t in call.turns] == [("Mm-hmm.", False)]
    roles = [(m.role, m.interrupted) for m in call.context.messages[1:]]
    assert roles == [("assistant", True), ("user", False), ("assistant", False)]
    assert call.metric("interruption.false") == [] and call.user.resumed == 0
