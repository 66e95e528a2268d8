"""Interruption policies: when does speech over the bot cut the bot off?

Today's barge-in ("at once") stops the bot on the first sign of speech. On a
sales call that is wrong most of the time: the callee says "mm-hmm" or
"right" while listening, coughs, or a dog barks, and each of those would kill
the pitch. A policy looks at what the STT reports while the bot speaks and
says when the speech is a real interruption; until it does, the bot keeps
talking.

What a policy sees (:class:`SpeechSoFar`): how long the callee has been
speaking without a pause (measured on the input audio's level), and the words
of the transcript so far (interim hypotheses included), split into content
words and backchannel words by a :class:`Backchannels` list.

Policies compose::

    MinWords(2) | MinSpeechDuration(0.6)          # either one
    MinWords(2) & MinSpeechDuration(0.4)          # both
    NeverOnBackchannel(MinWords(2) | MinSpeechDuration(0.6))   # PHONE_DEFAULT

- :class:`InterruptAtOnce` — any speech start interrupts (today's behaviour);
- :class:`MinSpeechDuration` — at least ``seconds`` of continuous speech;
- :class:`MinWords` — at least ``count`` content words (backchannel words do
  not count) in the transcript so far;
- :class:`NeverOnBackchannel` — vetoes its inner policy while everything
  transcribed so far is backchannel phrases;
- :class:`AnyOf` / :class:`AllOf` (``|`` / ``&``).

:class:`BargeInJudge` is the state machine around a policy, without I/O: the
STT service feeds it speech starts, audio levels, transcripts, ends of turns
and the interruptions it sees, and acts on the :class:`Verdict` it returns:
interrupt now; a backchannel (the turn is not a turn); a false interruption
(an interruption happened but no words followed: resume the cut reply).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np

from vantum_pipeline.audio.mulaw import ULAW_TO_PCM16, as_pcm16
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MULAW
from vantum_pipeline.settings import DEFAULT_BACKCHANNELS, InterruptionSettings

__all__ = [
    "DEFAULT_BACKCHANNELS",
    "PHONE_DEFAULT",
    "AllOf",
    "AnyOf",
    "Backchannels",
    "BargeInJudge",
    "InterruptAtOnce",
    "InterruptionPolicy",
    "MinSpeechDuration",
    "MinWords",
    "NeverOnBackchannel",
    "SpeechSoFar",
    "Verdict",
    "judge_from_settings",
    "level_dbfs",
    "policy_from_settings",
]

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def _tokens(text: str) -> list[str]:
    """Lower-case words without punctuation; a hyphen separates words ("mm-hmm" → mm, hmm)."""
    return _TOKEN.findall(text.lower())


class Backchannels:
    """A list of backchannel phrases, matched case- and punctuation-insensitively.

    ``split(text)`` returns (content words, backchannel words): the phrases
    are matched greedily, longest first, so "all right" is one backchannel and
    "right away" has one content word ("away").
    """

    def __init__(self, phrases: Iterable[str] = DEFAULT_BACKCHANNELS) -> None:
        self.phrases: tuple[str, ...] = tuple(phrases)
        self._by_first: dict[str, list[tuple[str, ...]]] = {}
        for phrase in self.phrases:
            if not isinstance(phrase, str):
                raise ConfigurationError(f"a backchannel phrase must be a string, got {phrase!r}")
            tokens = tuple(_tokens(phrase))
            if not tokens:
                raise ConfigurationError(f"backchannel phrase {phrase!r} has no words")
            self._by_first.setdefault(tokens[0], []).append(tokens)
        for candidates in self._by_first.values():
            candidates.sort(key=len, reverse=True)

    def split(self, text: str, *, partial: bool = False) -> tuple[int, int]:
        """(content words, backchannel words) of ``text``.

        ``partial``: ``text`` is an interim transcript that may go on, so
        its last words count as backchannel while they are the start of a
        phrase ("makes" of "makes sense", "all" of "all right").
        """
        tokens = _tokens(text)
        content = backchannel = 0
        i = 0
        while i < len(tokens):
            rest = tuple(tokens[i:])
            for phrase in self._by_first.get(tokens[i], ()):
                if rest[: len(phrase)] == phrase or (
                    partial and len(rest) < len(phrase) and phrase[: len(rest)] == rest
                ):
                    taken = min(len(phrase), len(rest))
                    backchannel += taken
                    i += taken
                    break
            else:
                content += 1
                i += 1
        return content, backchannel

    def is_backchannel(self, text: str) -> bool:
        """True when ``text`` has words and all of them are backchannel phrases."""
        content, backchannel = self.split(text)
        return content == 0 and backchannel > 0

    def __repr__(self) -> str:
        return f"Backchannels({len(self.phrases)} phrases)"


@dataclass(frozen=True, slots=True)
class SpeechSoFar:
    """What the callee has said over the bot so far."""

    #: Seconds of continuous speech (pauses shorter than the judge's ``gap`` do not break it).
    seconds: float = 0.0
    #: The transcript so far (finals and the latest interim).
    text: str = ""
    #: Words of ``text`` that are not backchannel phrases.
    content_words: int = 0
    #: Words of ``text`` that are.
    backchannel_words: int = 0

    @property
    def backchannel_only(self) -> bool:
        """Words were heard, and every one of them is a backchannel."""
        return self.content_words == 0 and self.backchannel_words > 0


class InterruptionPolicy:
    """Decides, from what was said so far, that speech over the bot interrupts it."""

    def triggered(self, speech: SpeechSoFar) -> bool:
        raise NotImplementedError

    @property
    def immediate(self) -> bool:
        """True when any speech start interrupts (nothing to evaluate)."""
        return False

    def __or__(self, other: InterruptionPolicy) -> AnyOf:
        return AnyOf(self, other)

    def __and__(self, other: InterruptionPolicy) -> AllOf:
        return AllOf(self, other)


class InterruptAtOnce(InterruptionPolicy):
    """Any speech start interrupts the bot (the behaviour without a policy)."""

    def triggered(self, speech: SpeechSoFar) -> bool:
        return True

    @property
    def immediate(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "InterruptAtOnce()"


class MinSpeechDuration(InterruptionPolicy):
    """At least ``seconds`` of continuous speech."""

    def __init__(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ConfigurationError(f"MinSpeechDuration needs seconds >= 0, got {seconds}")
        self.seconds = seconds

    def triggered(self, speech: SpeechSoFar) -> bool:
        return speech.seconds >= self.seconds

    def __repr__(self) -> str:
        return f"MinSpeechDuration({self.seconds:g})"


class MinWords(InterruptionPolicy):
    """At least ``count`` content words (backchannel words do not count)."""

    def __init__(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"MinWords needs a count >= 1, got {count!r}")
        self.count = count

    def triggered(self, speech: SpeechSoFar) -> bool:
        return speech.content_words >= self.count

    def __repr__(self) -> str:
        return f"MinWords({self.count})"


class NeverOnBackchannel(InterruptionPolicy):
    """``inner``, except while everything transcribed so far is backchannels."""

    def __init__(self, inner: InterruptionPolicy) -> None:
        self.inner = inner

    def triggered(self, speech: SpeechSoFar) -> bool:
        return not speech.backchannel_only and self.inner.triggered(speech)

    def __repr__(self) -> str:
        return f"NeverOnBackchannel({self.inner!r})"


class AnyOf(InterruptionPolicy):
    """Interrupts when any of ``policies`` would."""

    def __init__(self, *policies: InterruptionPolicy) -> None:
        if not policies:
            raise ConfigurationError("AnyOf needs at least one policy")
        self.policies: tuple[InterruptionPolicy, ...] = policies

    def triggered(self, speech: SpeechSoFar) -> bool:
        return any(p.triggered(speech) for p in self.policies)

    @property
    def immediate(self) -> bool:
        return any(p.immediate for p in self.policies)

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.policies))


class AllOf(InterruptionPolicy):
    """Interrupts when all of ``policies`` would."""

    def __init__(self, *policies: InterruptionPolicy) -> None:
        if not policies:
            raise ConfigurationError("AllOf needs at least one policy")
        self.policies: tuple[InterruptionPolicy, ...] = policies

    def triggered(self, speech: SpeechSoFar) -> bool:
        return all(p.triggered(speech) for p in self.policies)

    @property
    def immediate(self) -> bool:
        return all(p.immediate for p in self.policies)

    def __repr__(self) -> str:
        return "(" + " & ".join(map(repr, self.policies)) + ")"


#: The product's default on the phone: two content words, or 0.6 s of
#: continuous speech, and never a backchannel alone.
PHONE_DEFAULT: Final[InterruptionPolicy] = NeverOnBackchannel(MinWords(2) | MinSpeechDuration(0.6))


_FULL_SCALE_DB = 20 * math.log10(32768)


#: The power of each mu-law byte's sample, as Python ints: a phone call's level
#: without decoding it. Summed with map() over a 20 ms frame, 5 µs in a busy call
#: process (median), against 27 µs for numpy's take().sum() there (2.4 µs in a
#: warm loop: in a process doing everything else, numpy's machinery runs cold).
_MULAW_POWER: Final = [int(sample) ** 2 for sample in ULAW_TO_PCM16]
_mulaw_power = _MULAW_POWER.__getitem__


def level_dbfs(audio: bytes, encoding: str) -> float:
    """RMS level of a chunk of pcm16 or mu-law audio, in dB full scale."""
    if encoding == MULAW:
        if not audio:
            return -math.inf
        power = sum(map(_mulaw_power, audio)) / len(audio)
    else:
        samples = np.frombuffer(as_pcm16(audio, encoding), dtype="<i2").astype(np.float64)
        if samples.size == 0:
            return -math.inf
        power = float(np.dot(samples, samples)) / samples.size  # every 20 ms: a third of np.mean(np.square())
    return 10 * math.log10(power) - _FULL_SCALE_DB if power > 0 else -math.inf


# ------------------------------------------------------------------ the judge


class Verdict(enum.Enum):
    NONE = "none"
    #: Cut the bot off now.
    INTERRUPT = "interrupt"
    #: The turn that just ended was a backchannel: not a turn, the bot goes on.
    BACKCHANNEL = "backchannel"
    #: The last interruption was a false alarm: resume the cut reply.
    FALSE_INTERRUPTION = "false_interruption"


class _State(enum.Enum):
    IDLE = "idle"  # no speech over the bot being judged
    DECIDING = "deciding"  # speech started over the bot; the policy has not fired
    INTERRUPTED = "interrupted"  # the bot was cut; words must follow, or it was a false alarm
    CONFIRMED = "confirmed"  # cut, and words followed: a real turn, wait for its end


#: Which state each input may move to (others leave the state as is).
_TRANSITIONS: Final[dict[_State, frozenset[_State]]] = {
    _State.IDLE: frozenset({_State.DECIDING, _State.INTERRUPTED, _State.CONFIRMED}),
    _State.DECIDING: frozenset({_State.IDLE, _State.INTERRUPTED, _State.CONFIRMED}),
    _State.INTERRUPTED: frozenset({_State.IDLE, _State.CONFIRMED, _State.INTERRUPTED}),
    _State.CONFIRMED: frozenset({_State.IDLE, _State.INTERRUPTED}),
}


class BargeInJudge:
    """Speech over the bot → verdicts; see the module docstring.

    Times are seconds on the caller's clock (the STT uses seconds of input
    audio, so a busy event loop does not stretch them). ``gap``: a pause
    shorter than this does not break continuous speech.
    ``false_interruption_timeout``: after an interruption, once the speech has
    been quiet this long with no content word, it was a false alarm (the STT
    ending the turn without content words says so sooner). ``resume``: report
    false interruptions at all.
    """

    def __init__(
        self,
        policy: InterruptionPolicy,
        backchannels: Backchannels | None = None,
        *,
        resume: bool = True,
        false_interruption_timeout: float = 1.2,
        gap: float = 0.2,
        speech_threshold_dbfs: float = -40.0,
    ) -> None:
        if false_interruption_timeout <= 0 or gap < 0:
            raise ConfigurationError(
                f"BargeInJudge needs false_interruption_timeout > 0 and gap >= 0, "
                f"got {false_interruption_timeout} and {gap}"
            )
        self.policy = policy
        self.backchannels = backchannels if backchannels is not None else Backchannels()
        self.resume = resume
        self.false_interruption_timeout = false_interruption_timeout
        self.gap = gap
        self.speech_threshold_dbfs = speech_threshold_dbfs
        self.bot_speaking = False
        self._state = _State.IDLE
        self._started_at = 0.0  # when the speech being judged started
        self._finals: list[str] = []
        self._interim = ""
        self._run_start: float | None = None  # start of the current run of loud audio
        self._last_loud: float | None = None
        self._quiet_since = 0.0  # for the false-interruption timeout

    # ------------------------------------------------------------- queries

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def active(self) -> bool:
        """Judging speech (the STT should feed it audio levels)."""
        return self._state is not _State.IDLE

    @property
    def wants_audio(self) -> bool:
        """Audio levels matter now: the bot speaks, or speech is being judged."""
        return self.bot_speaking or self._state is not _State.IDLE

    @property
    def started_at(self) -> float:
        return self._started_at

    def speech(self, now: float) -> SpeechSoFar:
        text = " ".join(t for t in (*self._finals, self._interim) if t)
        content, backchannel = self.backchannels.split(text, partial=bool(self._interim))
        return SpeechSoFar(self._speech_seconds(now), text, content, backchannel)

    def _speech_seconds(self, now: float) -> float:
        if self._run_start is None or self._last_loud is None or now - self._last_loud > self.gap:
            return 0.0
        return self._last_loud - self._run_start

    def _move(self, state: _State) -> None:
        if state is not self._state and state not in _TRANSITIONS[self._state]:
            raise AssertionError(f"barge-in judge: no transition {self._state.value} → {state.value}")
        self._state = state

    def _reset_speech(self, now: float) -> None:
        self._finals.clear()
        self._interim = ""
        self._started_at = now

    # -------------------------------------------------------------- inputs

    def speech_started(self, now: float) -> Verdict:
        """The STT (or a VAD) heard speech start."""
        if self._state is _State.IDLE:
            if not self.bot_speaking:
                return Verdict.NONE
            self._reset_speech(self._run_start if self._run_start is not None else now)
            self._quiet_since = now
            self._move(_State.DECIDING)
        return self._evaluate(now)

    def audio(self, now: float, level_dbfs: float, seconds: float = 0.0) -> Verdict:
        """A chunk of input audio of ``seconds`` ending at ``now``, at ``level_dbfs``."""
        if level_dbfs > self.speech_threshold_dbfs:
            if self._run_start is None or self._last_loud is None or now - seconds - self._last_loud > self.gap:
                self._run_start = now - seconds
            self._last_loud = now
        elif self._last_loud is not None and now - self._last_loud > self.gap:
            self._run_start = None
        quiet_for = now - max(self._quiet_since, self._last_loud or 0.0)
        if self._state is _State.INTERRUPTED:
            if quiet_for >= self.false_interruption_timeout and self._content_words() == 0:
                return self._false_interruption()
            return Verdict.NONE
        if self._state is _State.DECIDING and quiet_for >= 2 * self.false_interruption_timeout:
            if not self._finals and not self._interim:
                self._move(_State.IDLE)  # speech the STT never transcribed nor closed: nothing happened
            return Verdict.NONE
        return self._evaluate(now)

    def transcript(self, text: str, *, final: bool, now: float) -> Verdict:
        """An interim (``final=False``: replaces the previous interim) or final transcript."""
        text = text.strip()
        if final:
            if text:
                self._finals.append(text)
            self._interim = ""
        else:
            self._interim = text
        if self._state is _State.INTERRUPTED and self._content_words() > 0:
            self._move(_State.CONFIRMED)
            return Verdict.NONE
        return self._evaluate(now)

    def turn_ended(self, text: str, now: float) -> Verdict:
        """The STT closed the user's turn (``text`` may be empty: noise)."""
        state = self._state
        if text.strip():
            self._finals = [text.strip()]
            self._interim = ""
        speech = self.speech(now)
        self._move(_State.IDLE)
        self._reset_speech(now)
        if state is _State.DECIDING:
            if speech.content_words == 0:
                return Verdict.BACKCHANNEL if speech.backchannel_words else Verdict.NONE
            # Real words, and the policy never fired (the turn was short):
            # the callee said something and is waiting for an answer.
            return Verdict.INTERRUPT if self.bot_speaking else Verdict.NONE
        if state in (_State.INTERRUPTED, _State.CONFIRMED) and speech.content_words == 0:
            # No words, or the final transcript revised the interim ones into backchannels.
            return Verdict.FALSE_INTERRUPTION if self.resume else Verdict.NONE
        return Verdict.NONE

    def turn_is_backchannel(self, text: str) -> bool:
        """Whether a turn ending now with ``text`` is a backchannel (asked before ``turn_ended``).

        Never with an immediate policy and no resume: that is the behaviour
        before policies, where every turn is answered."""
        if self.policy.immediate and not self.resume:
            return False
        return self._state is not _State.IDLE and self.backchannels.is_backchannel(text)

    def interrupted(self, now: float) -> None:
        """An interruption went through the pipeline (ours, or a VAD's)."""
        if self._state is _State.IDLE:
            if self._last_loud is None or now - self._last_loud > max(self.gap, 0.5):
                return  # nobody is speaking: not a barge-in, nothing to verify
            self._reset_speech(now)  # a VAD interrupted before the STT heard speech start
        self._quiet_since = now
        self._move(_State.CONFIRMED if self._content_words() > 0 else _State.INTERRUPTED)

    def bot_started(self) -> None:
        self.bot_speaking = True

    def bot_stopped(self) -> None:
        self.bot_speaking = False

    # ------------------------------------------------------------ internals

    def _content_words(self) -> int:
        text = " ".join(t for t in (*self._finals, self._interim) if t)
        return self.backchannels.split(text, partial=bool(self._interim))[0]

    def _evaluate(self, now: float) -> Verdict:
        if self._state is not _State.DECIDING or not self.bot_speaking:
            return Verdict.NONE
        if self.policy.triggered(self.speech(now)):
            return Verdict.INTERRUPT
        return Verdict.NONE

    def _false_interruption(self) -> Verdict:
        self._move(_State.IDLE)
        self._finals.clear()
        self._interim = ""
        return Verdict.FALSE_INTERRUPTION if self.resume else Verdict.NONE

    def reset(self) -> None:
        self._move(_State.IDLE)
        self._finals.clear()
        self._interim = ""


def policy_from_settings(settings: InterruptionSettings) -> InterruptionPolicy:
    """The policy ``settings.policy`` names, with the settings' thresholds."""
    words, seconds = MinWords(settings.min_words), MinSpeechDuration(settings.min_speech_seconds)
    if settings.policy == "at_once":
        return InterruptAtOnce()
    if settings.policy == "min_words":
        return NeverOnBackchannel(words)
    if settings.policy == "min_duration":
        return NeverOnBackchannel(seconds)
    return NeverOnBackchannel(words | seconds)


def judge_from_settings(settings: InterruptionSettings, policy: InterruptionPolicy | None = None) -> BargeInJudge:
    """A judge for ``settings`` (``policy``, when given, replaces the named one)."""
    return BargeInJudge(
        policy if policy is not None else policy_from_settings(settings),
        Backchannels(settings.backchannels),
        resume=settings.resume_after_false_interruption,
        false_interruption_timeout=settings.false_interruption_timeout,
        speech_threshold_dbfs=settings.speech_threshold_dbfs,
    )
