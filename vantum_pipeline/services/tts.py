"""What every text-to-speech service shares, whatever its engine.

``TTSService`` is the turn skeleton; a provider subclass is its *engine*: how
one attempt at a turn reaches the provider (open a context, send a sentence,
end the context, abandon it) and how the provider's answer comes back (audio,
word timings, done, failure). The skeleton does the rest, once for all:

Turns
-----
The sentences of one LLM response (between ``LLMFullResponseStartFrame`` and
``LLMFullResponseEndFrame``) are one turn: they are sent as they arrive, so
the first sentence is spoken before the LLM has finished. A TextFrame
outside a response, and every ``TTSSpeakFrame``, is a turn by itself.
Downstream, a turn is::

    TTSStartedFrame(cid)  (TTSAudioRawFrame(cid) | TTSWordTimestampsFrame(cid))*  TTSStoppedFrame(cid)

with ``cid`` the turn's id, stable across attempts. Turns are output strictly
one after the other: audio of a later turn that arrives early is held until
the earlier turn is done. Each TextFrame is passed on downstream once queued
for synthesis; a ``TTSSpeakFrame`` is passed on (as itself, or as a
TextFrame: ``speak_passed_as``) so the assistant aggregator knows the text.
Frames of a turn carry the epoch of the turn that opened it.

Attempts, retries, fallback (the product's rule: retry once, then fall back)
---------------------------------------------------------------------------
A turn is an explicit state machine (``TurnState``)::

    LIVE ──failure──▶ RECOVERING ──retry──▶ LIVE
      │                    └──given up──▶ FINISHED (a pre-recorded phrase played)
      ├──done──▶ FINISHED
      └──interruption──▶ CANCELLED   (from any state)

An attempt fails when its engine reports an error, when no audio comes
``first_audio_timeout`` seconds after it started, or when nothing comes for
``stall_timeout`` seconds after its end was sent (``TTSTiming``). A
retryable failure is retried ``max_retries`` times after ``retry_delay`` (or
the provider's Retry-After unless longer than ``max_retry_wait``), resuming
at the first sentence not fully spoken: the one not covered by word
timestamps, or by the engine's per-sentence completions for engines without
timestamps. When retries are exhausted the pre-recorded phrase for the
situation plays (``greeting`` / ``goodbye`` for a TTSSpeakFrame of that
category, else ``error``) as its own context ``<cid>-fallback``, announced
by a ``TTSSpeakFrame``; the text not spoken is recorded in ``unspoken`` and
reported upstream as a non-fatal ErrorFrame.

``choose_retry`` picks where the next attempt runs; the failover service
(``services/failover_tts.py``) overrides it to move the turn to the next
provider, which is how a turn changes provider mid-way at the point it stopped.

Audio
-----
Engines hand audio in their own format (``audio_format()``); the skeleton
converts it to the service's output format (``output_format()``): μ-law is
decoded or encoded, other rates resampled with a per-attempt stream
resampler, and an odd trailing byte of PCM kept for the next chunk.

Cache
-----
``TTSSpeakFrame`` phrases are cached once synthesized cleanly in one attempt
(``TTSCache``; keyed by ``cache_key``); a cached phrase plays at once.

Metrics (labels ``service=<engine>``): ``latency.tts_ttfb`` per turn,
``usage.tts_characters`` per transcript sent (retries included: billed),
``service.request`` per attempt, ``service.error``, ``service.rate_limited``,
``service.retry``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import deque
from typing import Any, ClassVar

from loguru import logger

from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ServiceError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.observability.metrics import (
    LATENCY_TTS_TTFB,
    SERVICE_ERROR,
    SERVICE_RATE_LIMITED,
    SERVICE_REQUEST,
    SERVICE_RETRY,
    USAGE_TTS_CHARACTERS,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.services.fallback_audio import fallback_audio, fallback_text
from vantum_pipeline.services.tts_cache import CachedAudio, TTSCache, TTSCacheKey
from vantum_pipeline.services.tts_turn import TTSTiming, TTSTurn, TurnState, UnspokenText

__all__ = ["TTSService", "TTSTiming", "TTSTurn", "TurnState", "UnspokenText"]

_AUDIO_FRAME_SECONDS = 0.1  # cached / fallback audio is pushed in frames of this length


class TTSService(FrameProcessor):
    """Base of the text-to-speech services; see the module docstring.

    A subclass sets ``service``, ``timing`` and implements the engine:
    ``output_format``, ``audio_format``, ``cache_key``, ``open_attempt``,
    ``send_text``, ``send_end``, ``abandon_attempt`` and, when it needs them,
    ``engine_start`` / ``engine_stop`` / ``engine_close``. Its receive path
    reports to ``turn.host``: ``tts_audio``, ``tts_words``,
    ``tts_sentence_done``, ``tts_done``, ``tts_failed``.
    """

    #: The metric label and the prefix of turn ids.
    service: ClassVar[str] = "tts"
    #: What a TTSSpeakFrame is passed on as: "speak" (itself, before its
    #: TTSStartedFrame) or "text" (a TextFrame of its text, once queued).
    speak_passed_as: ClassVar[str] = "speak"

    def __init__(
        self,
        *,
        timing: TTSTiming,
        cache_size: int = 32,
        cache_max_bytes: int = 8_000_000,
        cache: TTSCache | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.timing = timing
        # One cache may serve the services of many calls (a campaign's voicemail, synthesized once).
        self.cache = cache if cache is not None else TTSCache(cache_size, cache_max_bytes)
        self.unspoken: deque[UnspokenText] = deque(maxlen=100)
        self.characters_sent = 0
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self._policy = RetryPolicy(max_retries=timing.max_retries, base_delay=timing.retry_delay)
        self._ids = itertools.count(1)
        self._prefix = f"{self.service}-{uuid.uuid4().hex[:8]}"
        self._host: TTSService = self
        self._out_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._live: set[TTSTurn] = set()  # turns with an attempt running
        self._order: list[TTSTurn] = []  # turns with output pending, in speaking order
        self._open: TTSTurn | None = None  # the LLM turn receiving sentences
        self._in_response = False
        self._quiet = asyncio.Event()
        self._quiet.set()
        self.stopping = False

    # ------------------------------------------------------------ engine (override)

    def output_format(self) -> tuple[int, str]:
        """(sample rate, encoding) of the frames this service pushes."""
        raise NotImplementedError

    def audio_format(self) -> tuple[int, str]:
        """(sample rate, encoding) of the audio the engine hands to ``tts_audio``."""
        return self.output_format()

    def cache_key(self, text: str) -> TTSCacheKey:
        raise NotImplementedError

    async def engine_start(self) -> None:
        """At StartFrame (or when a failover starts its members)."""

    async def engine_stop(self) -> None:
        """At the end of the call, once speech has drained."""

    async def engine_close(self) -> None:
        """At cleanup: release clients and sockets; never raises."""

    async def open_attempt(self, turn: TTSTurn) -> None:
        """Prepare an attempt (a context on a healthy connection). Raises ServiceError."""
        raise NotImplementedError

    async def send_text(self, turn: TTSTurn, transcript: str) -> None:
        """Send one sentence of the attempt (more may follow). Raises ServiceError."""
        raise NotImplementedError

    async def send_end(self, turn: TTSTurn) -> None:
        """The attempt's text is complete. Raises ServiceError."""
        raise NotImplementedError

    def abandon_attempt(self, turn: TTSTurn, error: ServiceError | None) -> None:
        """Forget the attempt (failed with ``error``, or cancelled when None) and
        stop its work at the provider. Synchronous: may start a task."""
        raise NotImplementedError

    # ------------------------------------------------------------ public

    @property
    def cost_usd(self) -> float:
        """What this provider's usage cost so far (free unless a subclass prices it)."""
        return 0.0

    def attach(self, host: TTSService) -> None:
        """Run this engine for ``host``'s turns (a failover): its metrics and
        errors go out through the host."""
        self._host = host

    async def metric(self, name: str, value: float, *, unit: str = "") -> None:
        frame = MetricsFrame(name, float(value), unit, self.name, {"service": self.service})
        await self._host.push_frame(frame)

    # ------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, TextFrame):
            await self._on_text(frame)
            return
        if isinstance(frame, TTSSpeakFrame):
            await self._on_speak(frame)
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            self._in_response = True
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._in_response = False
            await self._close_open_turn()
        elif isinstance(frame, InterruptionFrame):
            self._open = None
            self._in_response = False
            self._cancel_all()
        elif isinstance(frame, StartFrame):
            await self.on_start(frame)
            self.create_task(self._watchdog(), "watchdog")
        elif isinstance(frame, EndFrame):
            await self._end_of_call()
        elif isinstance(frame, CancelFrame):
            self.stopping = True
            self._cancel_all()
        await self.push_frame(frame, direction)

    async def on_start(self, frame: StartFrame) -> None:
        """At StartFrame; starts the engine by default."""
        await self.engine_start()

    async def cleanup(self) -> None:
        self.stopping = True
        await self.engine_close()

    async def _on_text(self, frame: TextFrame) -> None:
        if not frame.text.strip():
            await self.push_frame(frame)
            return
        turn = self._open
        if turn is None or turn.epoch != self.handling_epoch or turn.state is TurnState.CANCELLED:
            turn = self.new_turn(closing=not self._in_response)
            if self._in_response:
                self._open = turn
            turn.sentences.append(frame.text)
            await self._begin(turn)
        elif turn.state is TurnState.FINISHED:
            # The turn fell back to a pre-recorded phrase: the rest of the reply is not spoken either.
            self.unspoken.append(UnspokenText(turn.turn_id, frame.text, "the turn had already failed", "none"))
        else:
            turn.sentences.append(frame.text)
            if turn.state is TurnState.LIVE:
                await self._pump(turn)
        if not self.is_stale(frame):
            await self.push_frame(frame)

    async def _on_speak(self, frame: TTSSpeakFrame) -> None:
        if not frame.text.strip():
            return
        key = self.cache_key(frame.text)
        cached = self.cache.get(key)
        turn = self.new_turn(closing=True, category=frame.category, cache_key=key)
        turn.sentences.append(frame.text)
        if self.speak_passed_as == "speak":
            # The assistant aggregator takes the phrase from the TTSSpeakFrame
            # itself; it must see it before the phrase's TTSStartedFrame.
            await self.push_frame(frame)
        if cached is None:
            await self._begin(turn)
        else:
            async with self._out_lock:
                self._order.append(turn)
            self._quiet.clear()
            await self._emit(turn, TTSStartedFrame(context_id=turn.turn_id))
            turn.started_out = True
            await self._play(turn, turn.turn_id, cached)
            await self._finish(turn)
        if self.speak_passed_as == "text" and not self.is_stale(frame):
            await self.push_frame(TextFrame(frame.text))

    async def _close_open_turn(self) -> None:
        turn, self._open = self._open, None
        if turn is not None and not turn.closing:
            turn.closing = True
            if turn.state is TurnState.LIVE:
                await self._pump(turn)

    def _cancel_all(self) -> None:
        """Cancel every turn: provider-side work, recoveries, held output.

        Synchronous on purpose: a receive loop may be blocked pushing audio
        into a full output transport (which sees the interruption after us),
        holding the output lock; waiting for it here would stall the
        interruption.
        """
        turns = [t for t in {*self._live, *self._order} if t.state is not TurnState.CANCELLED]
        for turn in turns:
            was_live = turn.state is TurnState.LIVE
            turn.state = TurnState.CANCELLED
            self._live.discard(turn)
            if was_live:
                turn.provider.abandon_attempt(turn, None)
            if turn.recovery is not None and turn.recovery is not asyncio.current_task():
                turn.recovery.cancel()
        self._order.clear()
        self._quiet.set()

    async def _end_of_call(self) -> None:
        """At EndFrame: end the open turn and let queued speech finish (bounded)."""
        await self._close_open_turn()
        try:
            async with asyncio.timeout(self.timing.drain_timeout):
                await self._quiet.wait()
        except TimeoutError:
            logger.warning("{}: speech still pending after {:.1f}s at the end", self.name, self.timing.drain_timeout)
            self._cancel_all()
        self.stopping = True
        await self.engine_stop()

    # ------------------------------------------------------------ attempts

    def new_turn(self, *, closing: bool, **fields: Any) -> TTSTurn:
        epoch = fields.pop("epoch", self.handling_epoch)
        provider = fields.pop("provider", None) or self.first_provider()
        return TTSTurn(f"{self._prefix}-{next(self._ids)}", epoch, self, provider, closing=closing, **fields)

    def first_provider(self) -> TTSService:
        """The engine a new turn starts on."""
        return self

    async def _begin(self, turn: TTSTurn) -> None:
        """Open a new turn: TTSStartedFrame, then its first attempt."""
        if not turn.silent:
            async with self._out_lock:
                self._order.append(turn)
            self._quiet.clear()
            await self._emit(turn, TTSStartedFrame(context_id=turn.turn_id))
            turn.started_out = True
        turn.first_sent_at = time.monotonic()
        try:
            await self._attempt(turn)
        except ServiceError as exc:
            self.tts_failed(turn, exc)

    async def _attempt(self, turn: TTSTurn) -> None:
        """Start an attempt on ``turn.provider``, resuming at ``turn.resume_from``."""
        provider = turn.provider
        await self.before_attempt(turn)
        turn.tried.append(provider)
        turn.state = TurnState.LIVE
        turn.engine_ref = None
        turn.sent = turn.resume_from
        turn.close_sent = False
        turn.got_audio = False
        turn.words_done = 0
        turn.sentences_done = 0
        turn.carry = b""
        turn.resampler = None
        turn.attempt_offset = turn.audio_seconds
        turn.attempt_sent_at = turn.last_event_at = time.monotonic()
        self._live.add(turn)
        await provider.open_attempt(turn)
        if turn.state is not TurnState.LIVE:
            return
        provider.requests += 1
        await provider.metric(SERVICE_REQUEST, 1)
        await self._pump(turn)

    async def _pump(self, turn: TTSTurn) -> None:
        """Send the turn's unsent sentences, and its end once the text is complete."""
        provider = turn.provider
        try:
            async with self._send_lock:
                while turn.sent < len(turn.sentences) and turn.state is TurnState.LIVE:
                    text = turn.sentences[turn.sent]
                    transcript = text if text.endswith((" ", "\n")) else text + " "
                    await provider.send_text(turn, transcript)
                    turn.sent += 1
                    provider.characters_sent += len(transcript)
                    await provider.metric(USAGE_TTS_CHARACTERS, len(transcript), unit="characters")
                if turn.closing and not turn.close_sent and turn.state is TurnState.LIVE:
                    turn.close_sent = True
                    turn.last_event_at = time.monotonic()
                    await provider.send_end(turn)
        except ServiceError as exc:
            self.tts_failed(turn, exc)

    def tts_failed(self, turn: TTSTurn, error: ServiceError) -> None:
        """An attempt failed: recover in a task (retry, move, or fall back)."""
        if turn.state is not TurnState.LIVE:
            return
        turn.state = TurnState.RECOVERING
        self._live.discard(turn)
        turn.provider.abandon_attempt(turn, error)
        turn.recovery = self.create_task(self._recover(turn, error), f"recover:{turn.turn_id}")

    def choose_retry(self, turn: TTSTurn, error: ServiceError) -> tuple[TTSService, float] | None:
        """Where and after how long the failed turn tries again; None: give up.

        Default: the same provider, per its ``timing`` and Retry-After.
        """
        timing = turn.provider.timing
        if turn.silent or not error.retryable or turn.attempt >= timing.max_retries:
            return None
        if error.retry_after is not None and error.retry_after > timing.max_retry_wait:
            return None
        wait = turn.provider._policy.delay(turn.attempt + 1, error.retry_after)
        return turn.provider, min(wait, timing.max_retry_wait)

    async def _recover(self, turn: TTSTurn, error: ServiceError) -> None:
        while True:
            provider = turn.provider
            provider.errors += 1
            logger.warning(
                "{}: {} attempt {} ({}) failed: {}", self.name, turn.turn_id, turn.attempt + 1, provider.name, error
            )
            await provider.metric(SERVICE_ERROR, 1)
            if error.status == 429:
                await provider.metric(SERVICE_RATE_LIMITED, 1)
            await self.attempt_failed(turn, error)
            choice = self.choose_retry(turn, error)
            if choice is None:
                break
            next_provider, wait = choice
            turn.attempt += 1
            next_provider.retries += 1
            await next_provider.metric(SERVICE_RETRY, 1)
            if wait > 0:
                await asyncio.sleep(wait)
            if turn.state is not TurnState.RECOVERING:
                return
            turn.resume_from = self._resume_point(turn)
            turn.audio.clear()  # a stitched reply is not cached
            turn.cache_key = None if turn.resume_from or turn.audio_seconds else turn.cache_key
            turn.provider = next_provider
            try:
                await self._attempt(turn)
                return
            except ServiceError as exc:
                if _cancelled(turn):  # interrupted while the attempt was opening
                    return
                self._live.discard(turn)
                turn.state = TurnState.RECOVERING
                error = exc
        if turn.state is TurnState.RECOVERING:
            await self._fall_back(turn, str(error))

    async def before_attempt(self, turn: TTSTurn) -> None:
        """Hook: an attempt of ``turn`` is about to start on ``turn.provider``."""

    async def attempt_failed(self, turn: TTSTurn, error: ServiceError) -> None:
        """Hook: an attempt of ``turn`` failed (before choosing a retry)."""

    async def attempt_succeeded(self, turn: TTSTurn) -> None:
        """Hook: an attempt of ``turn`` completed its text."""

    async def first_audio(self, turn: TTSTurn, ttfb: float) -> None:
        """Hook: the first audio of an attempt arrived ``ttfb`` seconds after it started."""

    def _resume_point(self, turn: TTSTurn) -> int:
        """First sentence not fully spoken: not all its words covered by
        timestamps, and not reported done by the engine."""
        covered = turn.words_done
        index = turn.resume_from
        while index < turn.sent and covered >= len(turn.sentences[index].split()):
            covered -= len(turn.sentences[index].split())
            index += 1
        return min(turn.sent, max(index, turn.resume_from + turn.sentences_done))

    async def _fall_back(self, turn: TTSTurn, reason: str) -> None:
        if turn.silent:
            turn.state = TurnState.FINISHED
            return
        start = self._resume_point(turn) if turn.got_audio or turn.sentences_done else turn.resume_from
        text = " ".join(turn.sentences[start:]).strip()
        category = turn.category if turn.category in ("greeting", "goodbye") else "error"
        self.unspoken.append(UnspokenText(turn.turn_id, text, reason, category))
        logger.error(
            "{}: {} characters of {} not spoken ({}); playing the {!r} fallback",
            self.name,
            len(text),
            turn.turn_id,
            reason,
            category,
        )
        await self.push_error(
            f"{self.name}: text of {turn.turn_id} not spoken ({len(text)} characters): {reason}; "
            f"played the pre-recorded {category!r} phrase"
        )
        rate, encoding = self.output_format()
        audio = fallback_audio(category, rate, encoding)
        if turn.started_out:
            await self._emit(turn, TTSStoppedFrame(context_id=turn.turn_id))
            turn.started_out = False
        fallback_id = f"{turn.turn_id}-fallback"
        await self._emit(turn, TTSSpeakFrame(fallback_text(category), category=category))
        await self._emit(turn, TTSStartedFrame(context_id=fallback_id))
        await self._play(turn, fallback_id, audio)
        await self._emit(turn, TTSStoppedFrame(context_id=fallback_id))
        await self._finish(turn)

    # ------------------------------------------------------------ engine reports

    async def tts_audio(self, turn: TTSTurn, audio: bytes, sample_rate: int, encoding: str) -> None:
        """Audio of the turn's current attempt, in the engine's format."""
        if turn.state is not TurnState.LIVE:
            return
        now = time.monotonic()
        turn.last_event_at = now
        if not turn.got_audio:
            turn.got_audio = True
            await self.first_audio(turn, now - turn.attempt_sent_at)
            if not turn.ttfb_reported and not turn.silent:
                turn.ttfb_reported = True
                await turn.provider.metric(LATENCY_TTS_TTFB, now - turn.first_sent_at, unit="s")
        audio = self._convert(turn, audio, sample_rate, encoding)
        if audio:
            await self._push_audio(turn, audio)

    async def _push_audio(self, turn: TTSTurn, audio: bytes) -> None:
        if turn.cache_key is not None:
            if len(turn.audio) + len(audio) > self.cache.max_bytes // 4:
                turn.cache_key = None  # too long to cache: stop keeping it
                turn.audio = bytearray()
            else:
                turn.audio += audio
        rate, encoding = self.output_format()
        turn.audio_seconds += len(audio) / (1 if encoding == MULAW else 2) / rate
        if not turn.silent:
            await self._emit(turn, self._audio_frame(audio, turn.turn_id))

    def _convert(self, turn: TTSTurn, audio: bytes, sample_rate: int, encoding: str) -> bytes:
        rate, out_encoding = self.output_format()
        if encoding == PCM16:
            audio = turn.carry + audio
            cut = len(audio) - len(audio) % 2
            audio, turn.carry = audio[:cut], audio[cut:]
        if sample_rate == rate and encoding == out_encoding:
            return audio
        pcm = ulaw2lin(audio) if encoding == MULAW else audio
        if sample_rate != rate:
            if turn.resampler is None:
                turn.resampler = StreamResampler(sample_rate, rate)
            pcm = turn.resampler.resample(pcm)
        return lin2ulaw(pcm) if out_encoding == MULAW else pcm

    async def tts_words(self, turn: TTSTurn, words: tuple[tuple[str, float, float], ...]) -> None:
        """Word timings of the current attempt, in seconds from its first audio."""
        if turn.state is not TurnState.LIVE or not words:
            return
        turn.last_event_at = time.monotonic()
        offset = turn.attempt_offset
        shifted = tuple((w, round(s + offset, 4), round(e + offset, 4)) for w, s, e in words)
        turn.words_done += len(shifted)
        if turn.cache_key is not None:
            turn.words.extend(shifted)
        if not turn.silent:
            await self._emit(turn, TTSWordTimestampsFrame(words=shifted, context_id=turn.turn_id))

    def tts_sentence_done(self, turn: TTSTurn) -> None:
        """The engine has produced all the audio of the attempt's next sentence."""
        if turn.state is TurnState.LIVE:
            turn.sentences_done += 1
            turn.last_event_at = time.monotonic()

    async def tts_done(self, turn: TTSTurn) -> None:
        """The current attempt has produced all its audio."""
        if turn.state is not TurnState.LIVE:
            return
        self._live.discard(turn)
        if turn.resampler is not None:
            tail = turn.resampler.flush()
            turn.resampler = None
            encoding = self.output_format()[1]
            if tail:
                await self._push_audio(turn, lin2ulaw(tail) if encoding == MULAW else tail)
        await self.attempt_succeeded(turn)
        self._store(turn)
        await self._finish(turn)

    def _store(self, turn: TTSTurn) -> None:
        if turn.cache_key is None or turn.attempt_offset or not turn.audio:
            return
        rate, encoding = self.output_format()
        self.cache.put(turn.cache_key, CachedAudio(bytes(turn.audio), rate, encoding, tuple(turn.words)))
        turn.audio = bytearray()

    # ------------------------------------------------------------ output

    def _audio_frame(self, audio: bytes, context_id: str) -> TTSAudioRawFrame:
        rate, encoding = self.output_format()
        return TTSAudioRawFrame(audio, rate, 1, encoding, context_id=context_id)

    async def _emit(self, turn: TTSTurn, frame: Frame) -> None:
        """Push a frame of ``turn`` now if it is the turn being spoken, else hold it."""
        if turn.silent:
            return
        frame.epoch = turn.epoch
        async with self._out_lock:
            if turn.state is TurnState.CANCELLED:  # checked under the lock: an interruption may come while waiting
                return
            if self._order and self._order[0] is not turn:
                turn.backlog.append(frame)
                return
            await self.push_frame(frame)

    async def _play(self, turn: TTSTurn, context_id: str, cached: CachedAudio) -> None:
        """Cached or pre-recorded audio, with its word timings, in frames of 100 ms."""
        width = 1 if cached.encoding == MULAW else 2
        step = max(width, int(cached.sample_rate * _AUDIO_FRAME_SECONDS) * width)
        if cached.words:
            await self._emit(turn, TTSWordTimestampsFrame(words=cached.words, context_id=context_id))
        for start in range(0, len(cached.audio), step):
            await self._emit(turn, self._audio_frame(cached.audio[start : start + step], context_id))

    async def _finish(self, turn: TTSTurn) -> None:
        """The turn's output is complete: TTSStopped; if it was being spoken,
        the turns after it speak (their held frames go out now)."""
        if turn.state is TurnState.CANCELLED:
            return
        self._live.discard(turn)
        if turn.started_out:
            await self._emit(turn, TTSStoppedFrame(context_id=turn.turn_id))
            turn.started_out = False
        turn.state = TurnState.FINISHED
        if turn.silent:
            return
        async with self._out_lock:
            if self._order and self._order[0] is turn:
                self._order.pop(0)
                while self._order:
                    head = self._order[0]
                    backlog, head.backlog = head.backlog, []
                    for frame in backlog:
                        await self.push_frame(frame)
                    # An interruption may have cleared the order meanwhile.
                    if head.state is not TurnState.FINISHED or not self._order or self._order[0] is not head:
                        break
                    self._order.pop(0)
            if not self._order:
                self._quiet.set()

    # ------------------------------------------------------------ timers

    async def _watchdog(self) -> None:
        """Fail attempts whose audio does not come: every wait on a peer has a timeout."""
        while True:
            await asyncio.sleep(self._watch_tick())
            now = time.monotonic()
            for turn in list(self._live):
                if turn.state is not TurnState.LIVE:
                    continue
                timing = turn.provider.timing
                first, stall = timing.first_audio_timeout, timing.stall_timeout
                if first is not None and not turn.got_audio and now - turn.attempt_sent_at > first:
                    message = f"no audio {first:.1f}s after the text was sent"
                elif stall is not None and turn.close_sent and now - turn.last_event_at > stall:
                    message = f"no message for {stall:.1f}s before the end of the context"
                else:
                    continue
                self.tts_failed(turn, ServiceError(message, service=turn.provider.service, retryable=True))

    def _watch_tick(self) -> float:
        limits = [t for t in (self.timing.first_audio_timeout, self.timing.stall_timeout) if t is not None]
        return max(0.02, min(limits) / 8) if limits else 0.25


def _cancelled(turn: TTSTurn) -> bool:
    return turn.state is TurnState.CANCELLED
