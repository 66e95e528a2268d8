"""Transport bases: how audio enters and leaves a pipeline.

Every transport (the Twilio media stream, the local microphone and speaker,
the WAV recorder) is a pair of processors built on these two classes.

InputTransport
--------------
The head of a pipeline. A real-time source (a websocket, a sound card
callback) must never block on a slow pipeline, so it hands frames to
``offer(frame)``, which never waits: frames wait in a bounded buffer
(``max_pending``) and a task owned by the processor pushes them downstream
in order. When the buffer is full the overflow policy decides
(``"drop_oldest"``, the default: keep the freshest audio; or
``"drop_newest"``); every dropped frame is counted in ``dropped`` and logged
(at most once a second). ``offer`` must be called on the event loop's thread
(from another thread: ``loop.call_soon_threadsafe(transport.offer, frame)``).

Subclass hooks: ``open_input(start)`` at StartFrame, ``close_input()`` at
cleanup. At ``EndFrame`` the buffered frames go first and ``offer`` refuses
anything later (nothing in band follows an EndFrame). Everything else
passes through.

OutputTransport
---------------
Plays the bot's audio and reports what the listener heard.

- Audio frames (``OutputAudioRawFrame``, ``TTSAudioRawFrame``; pcm16 at any
  rate, or mulaw) are queued (at most ``max_buffer`` seconds: beyond that
  ``process_frame`` waits, which slows the producer) and cut into chunks of
  ``chunk_duration``; smaller frames of one context queued back to back are
  written together, up to ``chunk_duration``. A task writes them paced on an
  absolute clock: a chunk is written once at most ``lead`` seconds are
  buffered ahead of real time (so never more than ``lead`` plus one chunk
  is), so that a barge-in has little to throw away. Audio frames are
  consumed, not passed on.
- ``BotStartedSpeakingFrame`` goes both upstream and downstream when the
  first chunk is written to an idle line; ``BotStoppedSpeakingFrame`` when
  the line has been idle for ``stop_hangover`` seconds, or at once on an
  interruption or at the end.
- For each TTS context (``TTSStartedFrame`` … ``TTSStoppedFrame``) the
  transport tracks the audio actually played (``playback.py``) and pushes
  ``HeardTextFrame(text=all heard so far, context_id)`` downstream as it
  grows, mapped through ``TTSWordTimestampsFrame`` word timings, or
  estimated by characters without them (``heard.py``). The last one of a
  context, when it has played to the end, holds its whole text.
- Devices that confirm playback (Twilio ``mark``) set ``uses_markers``: a
  marker is written every ``marker_interval`` seconds of audio and after each
  context, and the subclass calls ``marker_played(name)`` on each echo.
  Without markers, the clock (plus ``latency``) says what played.
- ``InterruptionFrame``: stop writing, drop the queued audio, ``clear_output()``
  (the device drops what it holds), push the final ``HeardTextFrame`` of each
  cut context (possibly empty), then ``BotStoppedSpeakingFrame``: upstream at
  once, downstream once the interruption has reached every processor (a
  processor downstream sees the interruption before the stop it caused).
- ``EndFrame``: wait until everything queued has played (markers echoed),
  bounded by the queued duration plus ``end_timeout``; then the final heard
  texts, ``BotStoppedSpeakingFrame``, and the EndFrame goes on.
- ``CancelFrame``: push the final heard text of each unfinished context,
  drop everything and pass it on.

Subclass hooks (all awaited with ``io_timeout``; writes never overlap):
``write_audio(chunk)`` (required), ``write_marker(name)`` (with
``uses_markers``), ``clear_output()``, ``open_output(start)``,
``close_output()`` (at cleanup). A hook that raises or times out ends the
pipeline with a fatal error: the device is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Literal

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    HeardTextFrame,
    InterruptionFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSWordTimestampsFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.transports.heard import HeardTextTracker, HeardUpdate
from vantum_pipeline.transports.playback import PlaybackTimeline

__all__ = ["AudioChunk", "InputTransport", "OutputTransport", "OverflowPolicy"]

OverflowPolicy = Literal["drop_oldest", "drop_newest"]


class InputTransport(FrameProcessor):
    """Head of a pipeline fed by a real-time source; see the module docstring."""

    def __init__(
        self,
        *,
        max_pending: int = 100,
        overflow: OverflowPolicy = "drop_oldest",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if max_pending < 1:
            raise ConfigurationError(f"max_pending must be >= 1, got {max_pending}")
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ConfigurationError(f"overflow must be 'drop_oldest' or 'drop_newest', got {overflow!r}")
        self.max_pending = max_pending
        self.overflow: OverflowPolicy = overflow
        #: Frames thrown away because the buffer was full.
        self.dropped = 0
        self._pending: deque[Frame] = deque()
        self._available = _Alarm()
        self._last_drop_log = 0.0
        self._started = False
        self._closed = False

    # ---------------------------------------------------------- subclass hooks

    async def open_input(self, start: StartFrame) -> None:
        """Open the source (called at StartFrame, before frames are pumped)."""

    async def close_input(self) -> None:
        """Release the source (called at cleanup)."""

    # -------------------------------------------------------------- feeding

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame`` for the pipeline without waiting.

        Returns False when the frame (or, with ``drop_oldest``, an older one
        instead) was dropped because the buffer was full.
        """
        if self._closed:
            return False  # the pipeline is ending: nothing in band may follow its EndFrame
        accepted = True
        if len(self._pending) >= self.max_pending:
            accepted = False
            self._count_drop()
            if self.overflow == "drop_newest":
                return False
            self._pending.popleft()
        self._pending.append(frame)
        self._available.set()
        return accepted

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _count_drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            logger.warning(
                "{}: input buffer full ({} frames): {} frame(s) dropped so far ({})",
                self.name,
                self.max_pending,
                self.dropped,
                self.overflow,
            )

    async def _pump(self) -> None:
        while not self._closed:
            await self._available.sleep(None, self._vp_loop)
            self._available.clear()
            while self._pending and not self._closed:
                await self.push_frame(self._pending.popleft())

    # ------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            await self.open_input(frame)
            await self.push_frame(frame, direction)
            if not self._started:
                self._started = True
                self.create_task(self._pump(), "input-pump", essential=True)
            return
        if isinstance(frame, EndFrame) and direction is FrameDirection.DOWNSTREAM:
            # What the source gave so far goes first; nothing follows the end.
            self._closed = True
            while self._pending:
                await self.push_frame(self._pending.popleft())
        elif isinstance(frame, CancelFrame):
            self._closed = True
            self._pending.clear()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        self._pending.clear()
        await self.close_input()


@dataclass(slots=True)
class AudioChunk:
    """A piece of output audio, as handed to ``OutputTransport.write_audio``."""

    audio: bytes
    sample_rate: int
    encoding: str
    num_channels: int
    context_id: str | None
    duration: float


@dataclass(slots=True)
class _ContextEnd:
    context_id: str


_Item = AudioChunk | _ContextEnd


class _Alarm:
    """One task's wake-up (the playout loop's, the input pump's): ``set()`` from anywhere, or the deadline.

    What ``Event.wait()`` under ``asyncio.timeout()`` does, for the one task
    that sleeps on it, without a timeout context and a cancellation per
    sleep: the playout loop sleeps once or twice per chunk, 25 to 50 times a
    second for every call, and the input pump once per inbound frame.
    """

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def sleep(self, seconds: float | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Until ``set()`` is called (at once if it was since the last ``clear()``), or ``seconds`` pass.

        ``loop`` is the running loop, when the caller knows it (finding it costs a system call on Python 3.11).
        """
        if self._flag:
            return
        if loop is None:
            loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, _ring, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _ring(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class OutputTransport(FrameProcessor):
    """Paced audio output with playback tracking; see the module docstring."""

    #: Whether the device echoes playback markers (then implement ``write_marker``).
    uses_markers: ClassVar[bool] = False

    def __init__(
        self,
        *,
        chunk_duration: float = 0.02,
        lead: float = 0.1,
        max_buffer: float = 30.0,
        marker_interval: float = 0.5,
        stop_hangover: float = 0.3,
        end_timeout: float = 3.0,
        io_timeout: float = 2.0,
        progress_interval: float = 0.05,
        latency: float = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if chunk_duration <= 0 or lead < 0 or max_buffer <= 0:
            raise ConfigurationError("chunk_duration and max_buffer must be > 0 and lead >= 0")
        if max_buffer < chunk_duration:
            raise ConfigurationError(f"max_buffer ({max_buffer}s) is shorter than one chunk ({chunk_duration}s)")
        self.chunk_duration = chunk_duration
        self.lead = lead
        self.max_buffer = max_buffer
        self.marker_interval = marker_interval
        self.stop_hangover = stop_hangover
        self.end_timeout = end_timeout
        self.io_timeout = io_timeout
        self.progress_interval = progress_interval
        self.sample_rate = 16000
        self.timeline = PlaybackTimeline(uses_markers=self.uses_markers, latency=latency)
        self.tracker = HeardTextTracker()
        self._queue: deque[_Item] = deque()
        self._queued_seconds = 0.0
        self._room = asyncio.Event()
        self._room.set()
        self._wake = _Alarm()
        self._idle = asyncio.Event()
        self._idle.set()
        self._io_lock = asyncio.Lock()
        self._generation = 0
        self._speaking = False
        self._stop_after_interruption = False
        self._idle_since: float | None = None
        self._last_marker_at = 0.0
        self._markers = 0
        self._playout: asyncio.Task[None] | None = None
        self._broken = False

    # ------------------------------------------------------ subclass hooks

    async def open_output(self, start: StartFrame) -> None:
        """Open the device (called at StartFrame)."""

    async def write_audio(self, chunk: AudioChunk) -> None:
        """Send one chunk to the device."""
        raise NotImplementedError

    async def write_marker(self, name: str) -> None:
        """Send a playback marker (devices with ``uses_markers``)."""

    async def clear_output(self) -> None:
        """Make the device drop the audio it holds."""

    async def close_output(self) -> None:
        """Release the device (called at cleanup)."""

    def marker_played(self, name: str) -> None:
        """The device echoed marker ``name``: the audio before it has played."""
        if self.timeline.marker_echoed(name, self._now()):
            self._wake.set()
        else:
            logger.debug("{}: marker {} echoed after a clear (not heard)", self.name, name)

    # ------------------------------------------------------------- state

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def queued_seconds(self) -> float:
        """Audio waiting to be written."""
        return self._queued_seconds

    def _now(self) -> float:
        return (self._vp_loop or asyncio.get_running_loop()).time()

    # ------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, OutputAudioRawFrame):
            await self._enqueue(frame)
        elif isinstance(frame, TTSStartedFrame):
            if frame.context_id is not None:
                self.tracker.open(frame.context_id)
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSWordTimestampsFrame):
            if frame.context_id is not None:
                self.tracker.add_words(frame.context_id, frame.words)
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStoppedFrame):
            if frame.context_id is not None:
                self.tracker.stop_text(frame.context_id)
                self._put(_ContextEnd(frame.context_id), 0.0)
            await self.push_frame(frame, direction)
        elif isinstance(frame, TextFrame | TTSSpeakFrame):
            if not isinstance(frame, LLMTextFrame):
                self.tracker.add_text(frame.text)
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
        elif isinstance(frame, StartFrame):
            self.sample_rate = frame.audio_out_sample_rate
            await self.open_output(frame)
            await self.push_frame(frame, direction)
            if self._playout is None:
                self._playout = self.create_task(self._play(), "playout", essential=True)
        elif isinstance(frame, EndFrame):
            await self._finish()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            # The call is over (hung up, failed): say what was heard, drop the rest.
            heard = self.timeline.heard_position(self._now())
            self._drop_queue()
            await self._push_heard(self.tracker.cut(heard))
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        self._drop_queue()
        await self.close_output()

    # ------------------------------------------------------------ queueing

    async def _enqueue(self, frame: OutputAudioRawFrame) -> None:
        if self._broken:
            return
        if frame.encoding not in (PCM16, MULAW) or frame.sample_rate <= 0 or frame.num_channels < 1:
            logger.warning(
                "{}: cannot play {} ({} at {} Hz, {} channel(s)): dropped",
                self.name,
                frame.tag,
                frame.encoding,
                frame.sample_rate,
                frame.num_channels,
            )
            return
        width = (2 if frame.encoding == PCM16 else 1) * frame.num_channels
        audio = frame.audio[: len(frame.audio) - len(frame.audio) % width]
        if not audio:
            return
        context_id = frame.context_id if isinstance(frame, TTSAudioRawFrame) else None
        if context_id is not None:
            self.tracker.open(context_id)
        bytes_per_second = frame.sample_rate * width
        step = max(width, int(bytes_per_second * self.chunk_duration) // width * width)
        for offset in range(0, len(audio), step):
            while self._queued_seconds >= self.max_buffer:
                self._room.clear()
                await self._room.wait()
                if self.is_stale(frame) or self._broken:
                    return
            piece = audio[offset : offset + step]
            chunk = AudioChunk(
                piece, frame.sample_rate, frame.encoding, frame.num_channels, context_id, len(piece) / bytes_per_second
            )
            self._put(chunk, chunk.duration)

    def _put(self, item: _Item, duration: float) -> None:
        self._queue.append(item)
        self._queued_seconds += duration
        self._idle.clear()
        self._wake.set()

    def _drop_queue(self) -> None:
        self._generation += 1
        self._queue.clear()
        self._queued_seconds = 0.0
        self._room.set()
        self._wake.set()

    # ------------------------------------------------------------- playout

    async def _play(self) -> None:
        while True:
            # Cleared at the top of each pass, not just before sleeping: a wake-up given while
            # this pass awaits (a heard-text push on a full lane) must end this pass's sleep.
            self._wake.clear()
            if self._stop_after_interruption:
                await self._announce_stop_after_interruption()
            now = self._now()
            await self._check_progress(now)
            if self._broken:
                return
            if self._queue:
                item = self._queue[0]
                if isinstance(item, _ContextEnd):
                    await self._end_context(item)
                    continue
                due = self.timeline.next_write_time(self.lead)
                if now >= due:
                    await self._write(item)
                    continue
                await self._sleep(min(due - now, self.progress_interval))
            else:
                busy = self._speaking or self.tracker.active or not self.timeline.drained(now)
                await self._sleep(self.progress_interval if busy else None)

    async def _sleep(self, seconds: float | None) -> None:
        await self._wake.sleep(seconds, self._vp_loop)

    async def _write(self, chunk: AudioChunk) -> None:
        generation = self._generation
        started = False
        async with self._io_lock:
            if generation != self._generation or not self._queue or self._queue[0] is not chunk:
                return
            self._queue.popleft()
            if self._queue:
                chunk = self._join_queued(chunk)
            self._queued_seconds = max(0.0, self._queued_seconds - chunk.duration)
            if self._queued_seconds < self.max_buffer:
                self._room.set()
            segment = self.timeline.write(chunk.duration, self._now())
            if chunk.context_id is not None:
                self.tracker.place(chunk.context_id, segment)
            if not await self._io(self.write_audio(chunk), "write_audio"):
                return
            if self.uses_markers and segment.end - self._last_marker_at >= self.marker_interval:
                await self._marker()
            if not self._speaking:
                self._speaking = started = True
            self._idle_since = None
        if started:
            await self._both_ways(BotStartedSpeakingFrame)

    def _join_queued(self, chunk: AudioChunk) -> AudioChunk:
        """``chunk`` with the queued chunks of the same audio that follow it, up to ``chunk_duration``:
        a TTS that streams small frames fills fewer, larger writes (on the phone: fewer media
        messages, each a JSON text, a base64 payload and a socket write)."""
        pieces: list[bytes] | None = None
        duration = chunk.duration
        limit = self.chunk_duration + 1e-9
        queue = self._queue
        while queue:
            item = queue[0]
            if (
                not isinstance(item, AudioChunk)
                or duration + item.duration > limit
                or item.context_id != chunk.context_id
                or item.sample_rate != chunk.sample_rate
                or item.encoding != chunk.encoding
                or item.num_channels != chunk.num_channels
            ):
                break
            queue.popleft()
            if pieces is None:
                pieces = [chunk.audio]
            pieces.append(item.audio)
            duration += item.duration
        if pieces is None:
            return chunk
        audio = b"".join(pieces)
        return AudioChunk(audio, chunk.sample_rate, chunk.encoding, chunk.num_channels, chunk.context_id, duration)

    async def _end_context(self, end: _ContextEnd) -> None:
        generation = self._generation
        async with self._io_lock:
            if generation != self._generation or not self._queue or self._queue[0] is not end:
                return
            self._queue.popleft()
            self.tracker.complete(end.context_id)
            if self.uses_markers and self.timeline.written > self._last_marker_at:
                await self._marker()

    async def _marker(self) -> None:
        self._markers += 1
        name = f"m{self._markers}"
        self._last_marker_at = self.timeline.add_marker(name)
        await self._io(self.write_marker(name), "write_marker")

    async def _io(self, operation: object, what: str) -> bool:
        """Await a device hook with ``io_timeout``; a failure breaks the output."""
        try:
            async with self._timeout(self.io_timeout):
                await operation  # type: ignore[misc]
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"{what} did not finish within {self.io_timeout:.1f}s")
            self._broken = True
            self._drop_queue()
            logger.warning("{}: {} failed: {}: {}", self.name, what, type(exc).__name__, exc)
            await self.push_error(f"{self.name}: output failed: {exc}", fatal=True, exception=exc)
            return False

    async def _check_progress(self, now: float) -> None:
        """Heard-text updates, bot-stopped detection and the idle flag."""
        generation = self._generation
        updates = self.tracker.progress(self.timeline.heard_position(now))
        await self._push_heard(updates, generation)
        if self._queue:
            self._idle_since = None
            return
        if self.timeline.drained(now):
            self._idle.set()
        if self._speaking and self.timeline.ahead(now) <= 0:
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= self.stop_hangover:
                self._speaking = False
                self._idle_since = None
                await self._both_ways(BotStoppedSpeakingFrame)

    async def _push_heard(self, updates: list[HeardUpdate], generation: int | None = None) -> None:
        for update in updates:
            if generation is not None and generation != self._generation:
                return  # an interruption pushed the final texts meanwhile
            await self.push_frame(HeardTextFrame(update.text, context_id=update.context_id))

    async def _both_ways(self, cls: type[BotStartedSpeakingFrame] | type[BotStoppedSpeakingFrame]) -> None:
        await self.push_frame(cls(), FrameDirection.UPSTREAM)
        await self.push_frame(cls(), FrameDirection.DOWNSTREAM)

    # ------------------------------------------------- interruption and end

    async def _interrupt(self) -> None:
        self._drop_queue()
        try:
            async with asyncio.timeout(self.io_timeout):
                await self._io_lock.acquire()
        except TimeoutError:
            logger.warning("{}: a write is stuck; clearing without the device lock", self.name)
            locked = False
        else:
            locked = True
        try:
            had_audio = self.timeline.written > 0
            heard = self.timeline.clear(self._now())
            self._last_marker_at = 0.0
            if had_audio and not self._broken:
                await self._io(self.clear_output(), "clear_output")
        finally:
            if locked:
                self._io_lock.release()
        await self._push_heard(self.tracker.cut(heard))
        self._idle_since = None
        self._idle.set()
        if self._speaking:
            self._speaking = False
            # Upstream at once (the STT and VAD judge barge-ins by it);
            # downstream only once every processor has seen the interruption,
            # so the tail never takes this stop for the end of a played turn.
            await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)
            self._stop_after_interruption = True
            self._wake.set()

    async def _announce_stop_after_interruption(self) -> None:
        self._stop_after_interruption = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.io_timeout):
                await self.interruption_settled()
        await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.DOWNSTREAM)

    async def _finish(self) -> None:
        """Let queued audio play out (bounded), then settle the heard texts."""
        budget = self._queued_seconds + self.timeline.ahead(self._now()) + self.lead + self.end_timeout
        self._wake.set()
        try:
            async with asyncio.timeout(budget):
                while self._queue or not self.timeline.drained(self._now()):
                    self._idle.clear()
                    self._wake.set()
                    await self._idle.wait()
        except TimeoutError:
            logger.warning(
                "{}: playback did not finish within {:.1f}s of the end ({:.2f}s queued, {} marker(s) unconfirmed)",
                self.name,
                budget,
                self._queued_seconds,
                self.timeline.pending_markers,
            )
        now = self._now()
        heard = self.timeline.heard_position(now)
        self._drop_queue()
        await self._push_heard(self.tracker.progress(heard) + self.tracker.cut(heard))
        if self._speaking:
            self._speaking = False
            await self._both_ways(BotStoppedSpeakingFrame)
