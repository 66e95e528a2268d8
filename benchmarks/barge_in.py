"""Barge-in policies on scripted interjections: false cuts and time to silence.

    python benchmarks/barge_in.py [--calls-at-once 6] [--only "phone default"]

Each interjection is one whole faked phone call (FakeTwilio's callee ⇄ our
server; Deepgram, OpenAI and Cartesia on their SDKs against the fakes, the
stack of ``tests/barge_in_stack.py``): the bot starts its pitch, and 1.5 s
into it the callee makes one interjection (a backchannel, a real
interruption, or a noise), then listens. For each policy the program prints:

- false cuts: backchannels and noises that sent Twilio a ``clear`` (the bot
  stopped for nothing; with resume on it comes back, see ``resumed``);
- answered: backchannels and noises that reached the model as a user turn;
- real interruptions: how many cut the bot, and the time to silence, from
  the start of the callee's speech to the ``clear`` (the callee's side stops
  playing bot audio at once);
- resumed: false interruptions after which the bot went on with its reply;
- decision to interrupt: the STT's ``latency.barge_in_decision`` metric on
  the real interruptions, from the speech start it reported to its decision.

Beside pipecat-ai: the transcripts each call's STT produced (interim and
final, in order) are replayed through pipecat's
``MinWordsUserTurnStartStrategy(min_words=2)``, its counterpart of our
"min words 2" (it counts every word, backchannels included), to count which
interjections it would have interrupted on.

The callee's speech is speech-like noise at -18 dBFS; the fake Deepgram's
``ScriptedRecognizer`` reveals the scripted words at ``WORDS_PER_SECOND``
(3 a second: conversational English) in interim results every 0.1 s of
audio, and ends an utterance after 300 ms of silence (``endpointing``).
Noises are white-noise bursts at various levels; the fake transcribes them
as nothing, as Deepgram does. Figures depend on those models of speech and
of the STT; what they compare is the policies, on the same calls.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loguru import logger

from tests.barge_in_stack import WORDS_PER_SECOND, BargeInStack, barge_in_stack, noise
from vantum_pipeline.frames import InterimTranscriptionFrame, TranscriptionFrame
from vantum_pipeline.services.interruptions import (
    InterruptionPolicy,
    MinSpeechDuration,
    MinWords,
    NeverOnBackchannel,
)
from vantum_pipeline.settings import InterruptionSettings
from vantum_pipeline.testing.callee import BargeIn, HangUp, Pause
from vantum_pipeline.testing.deepgram import ScriptedRecognizer
from vantum_pipeline.testing.openai import last_user_text
from vantum_pipeline.testing.signals import speech

PITCH = (
    "Great to hear from you, let me tell you about our offer today. Vantum answers every call "
    "your team misses, day and night, and books the meetings for you. Would a short demo next week be useful?"
)
ANSWER = "Sure, go ahead."
BARGE_AFTER = 1.5
LISTEN_AFTER = 2.8
SECONDS_PER_WORD = 1 / WORDS_PER_SECOND


@dataclass(frozen=True)
class Interjection:
    kind: str  # "backchannel", "real", "noise", "long noise"
    label: str
    text: str  # what the STT hears ("" for noise)
    seconds: float
    level_dbfs: float = -18.0

    def audio(self, seed: int) -> bytes:
        if self.kind in ("noise", "long noise"):
            return noise(self.seconds, level_dbfs=self.level_dbfs, seed=seed)
        return speech(self.seconds, 8000, level_dbfs=self.level_dbfs, seed=seed)


def said(text: str, *, pace: float = 1.0) -> Interjection:
    """Words said at the recognizer's pace (the last one fully voiced)."""
    words = len(text.split())
    return Interjection("real", text, text, round(words * SECONDS_PER_WORD * pace + 0.05, 2))


def backchannel(text: str, seconds: float) -> Interjection:
    return Interjection("backchannel", text, text, seconds)


def sound(label: str, seconds: float, level: float = -18.0, *, long: bool = False) -> Interjection:
    return Interjection("long noise" if long else "noise", label, "", seconds, level)


INTERJECTIONS: tuple[Interjection, ...] = (
    backchannel("Mm-hmm.", 0.45),
    backchannel("Right.", 0.35),
    backchannel("Yeah.", 0.3),
    backchannel("Uh-huh.", 0.45),
    backchannel("Okay.", 0.4),
    backchannel("Sure.", 0.35),
    backchannel("I see.", 0.5),
    backchannel("Got it.", 0.5),
    backchannel("Yeah, yeah.", 0.7),
    backchannel("Mhm.", 0.3),
    backchannel("Right, right.", 0.75),
    backchannel("Oh, okay.", 0.6),
    backchannel("Yes.", 0.3),
    backchannel("Cool.", 0.35),
    backchannel("All right.", 0.55),
    backchannel("Makes sense.", 0.65),
    said("Wait, how much is it?"),
    said("Sorry, who is this?"),
    said("I'm not interested."),
    said("Can you call back later?"),
    said("Hold on a second."),
    said("How did you get my number?"),
    said("No thanks, bye."),
    said("What company is this?"),
    said("Stop, please."),
    said("Is this a sales call?"),
    said("We already have a provider."),
    said("Send me an email instead."),
    said("What does it cost?"),
    said("Not a good time, sorry."),
    sound("cough", 0.3),
    sound("line click", 0.05, -12.0),
    sound("knock", 0.15, -15.0),
    sound("dog bark", 0.4, -14.0),
    sound("breath", 0.25, -30.0),
    sound("double cough", 0.45),
    sound("door", 0.5, -16.0),
    sound("chair", 0.2, -24.0),
    sound("typing", 0.35, -28.0),
    sound("sneeze", 0.5, -14.0),
    sound("line pop", 0.08, -10.0),
    sound("clatter", 0.3, -16.0),
    sound("TV in the room", 1.0, -24.0, long=True),
    sound("street noise", 1.5, -22.0, long=True),
)

#: name → (settings, a policy object replacing the named one)
POLICIES: dict[str, tuple[InterruptionSettings, InterruptionPolicy | None]] = {
    "at once (before)": (InterruptionSettings(policy="at_once", resume_after_false_interruption=False), None),
    "at once + resume": (InterruptionSettings(policy="at_once"), None),
    "min words 2": (InterruptionSettings(policy="min_words"), None),
    "min speech 0.6 s": (InterruptionSettings(policy="min_duration"), None),
    "phone default": (InterruptionSettings(), None),
    # The phone default, plus: one content word and 0.35 s of speech.
    "phone + early word": (
        InterruptionSettings(),
        NeverOnBackchannel(MinWords(2) | MinSpeechDuration(0.6) | (MinWords(1) & MinSpeechDuration(0.35))),
    ),
}


@dataclass
class Outcome:
    policy: str
    interjection: Interjection
    cut: bool
    time_to_silence: float | None
    answered: bool
    resumed: bool
    decision: float | None
    transcripts: tuple[tuple[bool, str], ...] = ()  # (final, text), as the STT pushed them
    pipecat_cut: bool | None = None
    error: str = ""


def respond(body: dict[str, Any]) -> str:
    return ANSWER if last_user_text(body) else PITCH


async def run_one(stack: BargeInStack, policy: str, interjection: Interjection, number: str, seed: int) -> Outcome:
    stack.interruptions, stack.policy = POLICIES[policy]
    stack.deepgram.recognizer = ScriptedRecognizer([interjection.text], words_per_second=WORDS_PER_SECOND)
    before = len(stack.openai.chat_requests)
    script = [BargeIn(interjection.audio(seed), after=BARGE_AFTER), Pause(LISTEN_AFTER), HangUp()]
    try:
        call, callee = await stack.call(number, script, within=30.0)
    except Exception as exc:  # one failed call is reported, not fatal to the run
        return Outcome(policy, interjection, False, None, False, False, None, f"{type(exc).__name__}: {exc}")
    requests = len(stack.openai.chat_requests) - before
    onset = callee.barge_in_at
    cut = bool(callee.clears)
    silence = callee.clears[0] - onset if cut and onset is not None else None
    decisions = [m.value for m in call.metric("latency.barge_in_decision")]
    transcripts = tuple(
        (isinstance(f, TranscriptionFrame), f.text)
        for f, _direction in call.sink.frames
        if isinstance(f, InterimTranscriptionFrame | TranscriptionFrame)
    )
    return Outcome(
        policy,
        interjection,
        cut,
        silence,
        answered=requests > 1,
        resumed=bool(call.user.resumed),
        decision=decisions[0] if decisions else None,
        transcripts=transcripts,
    )


async def pipecat_min_words(transcripts: tuple[tuple[bool, str], ...], min_words: int = 2) -> bool:
    """Whether pipecat's min-words strategy interrupts the speaking bot on these transcripts."""
    from pipecat.frames import frames as pipecat_frames
    from pipecat.turns.types import ProcessFrameResult
    from pipecat.turns.user_start.min_words_user_turn_start_strategy import MinWordsUserTurnStartStrategy

    strategy = MinWordsUserTurnStartStrategy(min_words=min_words)
    await strategy.process_frame(pipecat_frames.BotStartedSpeakingFrame())
    for final, text in transcripts:
        cls = pipecat_frames.TranscriptionFrame if final else pipecat_frames.InterimTranscriptionFrame
        if await strategy.process_frame(cls(text, "", "")) is ProcessFrameResult.STOP:
            return True
    return False


def beside_pipecat(results: list[Outcome], sample: list[Outcome]) -> str:
    """Our min-words and phone rows against pipecat's strategy on the transcripts of ``sample``."""
    kinds = ("backchannel", "noise", "long noise", "real")
    lines = [
        "| on the same transcripts | " + " | ".join(f"{k} cut" for k in kinds) + " |",
        "|---" * (len(kinds) + 1) + "|",
    ]

    def row(name: str, outcomes: list[Outcome], cut: str) -> str:
        cells = []
        for kind in kinds:
            group = [r for r in outcomes if r.interjection.kind == kind]
            cells.append(f"{sum(bool(getattr(r, cut)) for r in group)}/{len(group)}")
        return f"| {name} | " + " | ".join(cells) + " |"

    for policy in ("min words 2", "phone default"):
        lines.append(row(f"ours: {policy}", [r for r in results if r.policy == policy and not r.error], "cut"))
    lines.append(row("pipecat 1.14 MinWordsUserTurnStartStrategy(2)", sample, "pipecat_cut"))
    return "\n".join(lines)


async def worker(jobs: asyncio.Queue[tuple[str, Interjection, int]], results: list[Outcome], index: int) -> None:
    async with barge_in_stack([], []) as stack:
        stack.openai.responder = respond
        while True:
            try:
                policy, interjection, seed = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            number = f"+1415556{index:02d}{len(results) % 100:02d}"
            results.append(await run_one(stack, policy, interjection, number, seed))
            print(".", end="", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(results: list[Outcome], policies: list[str]) -> str:
    header = (
        "| policy | backchannel false cuts | noise false cuts | long noise cuts | answered by the LLM "
        "| real cut | time to silence median / p90 / max (s) | ≤ 0.5 s | resumed after a false cut "
        "| decision to interrupt, median (s) |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for policy in policies:
        rows = [r for r in results if r.policy == policy and not r.error]

        def of(kind: str, rows: list[Outcome] = rows) -> list[Outcome]:
            return [r for r in rows if r.interjection.kind == kind]

        def cuts(kind: str) -> str:
            group = of(kind)
            return f"{sum(r.cut for r in group)}/{len(group)}"

        silent = [r.time_to_silence for r in of("real") if r.time_to_silence is not None]
        false = [r for r in rows if r.interjection.kind != "real" and r.cut]
        answered = [r for r in rows if r.interjection.kind != "real" and r.answered]
        timing = (
            f"{statistics.median(silent):.2f} / {percentile(silent, 0.9):.2f} / {max(silent):.2f}" if silent else "-"
        )
        quick = f"{sum(t <= 0.5 for t in silent)}/{len(of('real'))}"
        decisions = [r.decision for r in of("real") if r.decision is not None]
        decision = f"{statistics.median(decisions):.2f}" if decisions else "-"
        lines.append(
            f"| {policy} | {cuts('backchannel')} | {cuts('noise')} | {cuts('long noise')} | "
            f"{len(answered)}/{len(rows) - len(of('real'))} | {cuts('real')} | {timing} | {quick} | "
            f"{sum(r.resumed for r in false)}/{len(false)} | {decision} |"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    policies = [args.only] if args.only else list(POLICIES)
    jobs: asyncio.Queue[tuple[str, Interjection, int]] = asyncio.Queue()
    for policy in policies:
        for seed, interjection in enumerate(INTERJECTIONS):
            jobs.put_nowait((policy, interjection, seed + 1))
    kinds = {k: sum(i.kind == k for i in INTERJECTIONS) for k in ("backchannel", "real", "noise", "long noise")}
    print(f"{len(INTERJECTIONS)} interjections {kinds} x {len(policies)} policies, {args.calls_at_once} calls at once")
    results: list[Outcome] = []
    started = time.monotonic()
    await asyncio.gather(*(worker(jobs, results, i) for i in range(args.calls_at_once)))
    print(f"\n{len(results)} calls in {time.monotonic() - started:.0f} s")
    for failed in [r for r in results if r.error]:
        print(f"  call failed: {failed.policy} / {failed.interjection.label}: {failed.error}")
    print(table(results, policies))
    # Transcripts do not depend on the policy: one call of each interjection is enough.
    sample = list({r.interjection.label: r for r in results if not r.error and r.policy == policies[-1]}.values())
    for outcome in sample:
        outcome.pipecat_cut = await pipecat_min_words(outcome.transcripts)
    print()
    print(beside_pipecat(results, sample))
    if args.verbose:
        for r in sorted(results, key=lambda r: (r.policy, r.interjection.kind)):
            silence = f"{r.time_to_silence:.2f}" if r.time_to_silence is not None else "-"
            print(f"  {r.policy:18} {r.interjection.kind:11} {r.interjection.label:28} cut={r.cut!s:5} "
                  f"silence={silence:5} answered={r.answered!s:5} resumed={r.resumed}")  # fmt: skip
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls-at-once", type=int, default=6)
    parser.add_argument("--only", choices=list(POLICIES), help="one policy only")
    parser.add_argument("--verbose", action="store_true", help="one line per call")
    sys.exit(asyncio.run(main(parser.parse_args())))
