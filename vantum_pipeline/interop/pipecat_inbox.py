"""The way into a hosted pipecat processor: a bound on what it holds, and the short way in.

A pipecat processor queues what it is given in two unbounded queues: an input
queue, drained by a task that handles system frames itself and moves the other
frames to a process queue, drained by a second task. Nothing there ever makes
the sender wait. ``HostedInbox`` is what ``PipecatProcessor`` hands frames
through instead of calling ``queue_frame`` blindly:

- **A bound.** Each frame of ours is handed over with pipecat's frame callback,
  which pipecat calls once the hosted processor has processed it; until then
  the frame is *outstanding*. With ``limit`` frames outstanding, ``put``
  makes the adapter wait until no more than half of them are (one wake-up
  lets many frames in), so our lane stops taking frames and the producer
  upstream waits in turn (our lanes are bounded): a slow hosted processor
  slows the pipeline down instead of growing memory. Frames pipecat drops on an
  interruption never get their callback: ``forget_interruptible`` stops
  counting them once an interruption has gone through.
- **Overruns.** When room does not come within ``timeout`` (the hosted
  processor is stuck), the frame is handed over anyway; and pipecat's own
  queues may hold frames we did not send (the processor queues some to
  itself). Either way the hand-over is an *overrun*: counted in ``overruns``
  and logged, at most once every ``_WARN_EVERY`` seconds with the count so far.
- **The short way in.** When the hosted processor's input task is idle (parked
  on an empty input queue, system frames not paused), it would take the next
  frame at once: a non-system frame straight into its process queue, a system
  frame processed then and there. So a non-system frame goes straight into
  the process queue, and a system frame is processed in the sender's task
  while the input task's parked getter is held aside (whatever is queued
  meanwhile waits, as behind a system frame in progress; the input task is
  woken for it after). That is one task switch less per frame, and two queue
  operations. Otherwise, and for pipecat's start, cancel and interruption
  frames, ``queue_frame`` as usual. This reads pipecat's private queues and its ``__process_frame``
  (pipecat-ai 1.x, a ``FrameProcessor`` with pipecat's ``queue_frame``) and
  asyncio's queue of getters; a processor built differently (its own
  ``queue_frame``, another layout) always takes ``queue_frame``, as does any
  with ``short_way=False``; ``short_way`` says which applies. A processor in
  direct mode has no queues: a frame other than its start is processed as its
  ``queue_frame`` would (unless it is cancelling), without that call.

Importing this module imports pipecat: only ``interop/pipecat.py`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from pipecat.frames import frames as pc
    from pipecat.processors.frame_processor import FrameDirection as PipecatDirection
    from pipecat.processors.frame_processor import FrameProcessor as PipecatFrameProcessor
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    from vantum_pipeline.interop import PIPECAT_MISSING

    raise ImportError(PIPECAT_MISSING) from exc

from loguru import logger

__all__ = ["HostedInbox"]

# Pipecat's FrameProcessor keeps its queues in name-mangled attributes.
_INPUT_QUEUE = "_FrameProcessor__input_queue"
_PROCESS_QUEUE = "_FrameProcessor__process_queue"
_SYSTEM_PAUSED = "_FrameProcessor__should_block_system_frames"
_PROCESS_FRAME = "_FrameProcessor__process_frame"
#: System frames always handed to pipecat's input task: pipecat's start, and the frames that
#: stop its work, which must not be cut short by a timeout of the task that sends them.
_QUEUED = (pc.StartFrame, pc.CancelFrame, pc.InterruptionFrame)
#: Seconds between two warnings about overruns.
_WARN_EVERY = 10.0


def _pipecat_queues(processor: PipecatFrameProcessor) -> tuple[asyncio.Queue[Any], asyncio.Queue[Any]] | None:
    """The input and process queues of ``processor`` when frames may take the short way in."""
    if type(processor).queue_frame is not PipecatFrameProcessor.queue_frame or processor._enable_direct_mode:
        return None
    inputs = getattr(processor, _INPUT_QUEUE, None)
    process = getattr(processor, _PROCESS_QUEUE, None)
    if not isinstance(inputs, asyncio.Queue) or not isinstance(process, asyncio.Queue):
        return None
    if not hasattr(inputs, "_getters") or not hasattr(inputs, "_queue"):
        return None  # asyncio's queue is not the one the short way knows
    if not isinstance(getattr(processor, _SYSTEM_PAUSED, None), bool):
        return None
    return inputs, process


class HostedInbox:
    """Hands frames to one hosted pipecat processor; see the module docstring."""

    def __init__(
        self,
        processor: PipecatFrameProcessor,
        *,
        name: str,
        limit: int,
        timeout: float,
        is_stale: Callable[[Any], bool],
        short_way: bool = True,
    ) -> None:
        self.processor = processor
        self.name = name
        self.limit = limit
        self.timeout = timeout
        #: Hand-overs beyond the bound (room did not come in time, or pipecat's queues were full).
        self.overruns = 0
        #: The most frames outstanding at once.
        self.peak = 0
        self._outstanding: dict[int, pc.Frame] = {}  # by pipecat's frame id
        self._room = asyncio.Event()
        self._waiting = 0
        self._warned_at: float | None = None
        self._queues = _pipecat_queues(processor) if short_way else None
        self._is_stale = is_stale
        self._low_water = limit // 2
        self._callback = self._processed
        process_frame = getattr(processor, _PROCESS_FRAME, None)
        if not callable(process_frame):
            self._queues = None  # not the layout the short way knows
        self._process_frame: Callable[..., Awaitable[None]] = process_frame or processor.queue_frame
        # Direct mode: pipecat's queue_frame only checks for a cancel and a start, then processes.
        self._direct = (
            short_way
            and callable(process_frame)
            and type(processor).queue_frame is PipecatFrameProcessor.queue_frame
            and getattr(processor, "_enable_direct_mode", False) is True
        )

    @property
    def short_way(self) -> bool:
        """Whether frames may skip the hosted processor's input task when it is idle."""
        return self._queues is not None

    @property
    def outstanding(self) -> int:
        """Frames handed over (and counted) that the hosted processor has not processed yet."""
        return len(self._outstanding)

    @property
    def waiting(self) -> int:
        """Senders waiting for room (the adapter's lanes, held back by the bound)."""
        return self._waiting

    @property
    def queued(self) -> int | None:
        """Frames waiting in pipecat's own queues of the hosted processor (None when unreadable)."""
        if self._queues is None:
            return None
        inputs, process = self._queues
        return inputs.qsize() + process.qsize()

    async def put(self, frame: pc.Frame, direction: PipecatDirection, origin: Any = None) -> bool:
        """Hand ``frame`` to the hosted processor; False when it was not handed over.

        With ``origin`` (our in-band frame it stands for), the frame is outstanding
        until processed, and waits for room first: if ``origin`` became stale
        meanwhile (an interruption came), the frame is dropped instead."""
        callback = None
        if origin is not None:
            outstanding = self._outstanding
            if len(outstanding) >= self.limit:
                await self._wait_for_room()
                if self._is_stale(origin):
                    return False
            outstanding[frame.id] = frame
            if len(outstanding) > self.peak:
                self.peak = len(outstanding)
            callback = self._callback
        queues = self._queues
        if queues is not None:
            inputs, process = queues
            held = len(inputs._queue) + len(process._queue)  # type: ignore[attr-defined]
            if origin is not None and held >= self.limit and len(self._outstanding) <= self.limit:
                # Ours are within the bound: the others are frames the processor queued to itself.
                self._overrun(f"pipecat's queues hold {held} frames")
            processor = self.processor
            if (
                not inputs._queue  # type: ignore[attr-defined]
                and inputs._getters  # type: ignore[attr-defined]  # its input task is parked on it
                and not getattr(processor, _SYSTEM_PAUSED)
                and not processor._cancelling
            ):
                if not isinstance(frame, pc.SystemFrame):
                    # What the input task would do with it at once: no other frame can come between.
                    process.put_nowait((frame, direction, callback))
                    return True
                if not isinstance(frame, _QUEUED):
                    await self._process_system_frame(inputs, frame, direction, callback)
                    return True
        if self._direct and not self.processor._cancelling and not isinstance(frame, pc.StartFrame):
            # What pipecat's queue_frame does with it in direct mode, one call less; processed
            # when the call returns, so ours is settled then, not by a frame callback.
            if callback is None:
                await self._process_frame(frame, direction, None)
                return True
            try:
                await self._process_frame(frame, direction, None)
            finally:
                self._settle(frame)
            return True
        await self.processor.queue_frame(frame, direction, callback)
        return True

    async def _process_system_frame(
        self, inputs: asyncio.Queue[Any], frame: pc.Frame, direction: PipecatDirection, callback: Any
    ) -> None:
        """Process a system frame here, as the idle input task would: its parked getter is held
        meanwhile, so frames queued in the meantime (by us or by the processor itself) wait,
        as they would behind a system frame in progress, and it is woken for them after."""
        getters = inputs._getters  # type: ignore[attr-defined]
        held = list(getters)
        getters.clear()
        try:
            await self._process_frame(frame, direction, callback)
        finally:
            for getter in held:
                if getter.done():
                    continue  # its task was cancelled meanwhile
                if inputs.empty():
                    getters.append(getter)
                else:
                    getter.set_result(None)  # what put() would have done

    async def _wait_for_room(self) -> None:
        """Wait until the hosted processor holds no more than half the bound (so one wake-up
        lets many frames in, not one), or ``timeout`` (an overrun)."""
        self._waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                while len(self._outstanding) > self._low_water:
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            self._overrun(f"{len(self._outstanding)} frames still outstanding after {self.timeout:.1f}s")
        finally:
            self._waiting -= 1

    def forget_interruptible(self) -> None:
        """An interruption went through the hosted processor: it dropped the interruptible
        frames it held, whose callbacks will never come."""
        for key, frame in list(self._outstanding.items()):
            if frame.interruptible and not isinstance(frame, pc.SystemFrame):
                del self._outstanding[key]
        self._made_room()

    def clear(self) -> None:
        """The hosted processor was cancelled: nothing it holds will be processed."""
        self._outstanding.clear()
        self._made_room()

    async def _processed(self, processor: Any, frame: pc.Frame, direction: Any) -> None:
        """Pipecat's frame callback: the hosted processor is done with ``frame``."""
        self._settle(frame)

    def _settle(self, frame: pc.Frame) -> None:
        """The hosted processor is done with ``frame``: it is no longer outstanding, and neither
        is any frame of the same queue handed over before it. Pipecat takes each of its queues
        in order (system frames in one, the others in another), so those were processed too,
        or failed: a frame the processor raised on never gets its callback, and without this
        each failure would hold a place in the bound for ever."""
        outstanding = self._outstanding
        if frame.id not in outstanding:
            return
        system = isinstance(frame, pc.SystemFrame)
        earlier = []
        for key, held in outstanding.items():
            if key == frame.id:
                break
            if isinstance(held, pc.SystemFrame) == system:
                earlier.append(key)
        for key in earlier:
            del outstanding[key]
        del outstanding[frame.id]
        if self._waiting and len(outstanding) <= self._low_water:
            self._made_room()

    def _made_room(self) -> None:
        if self._waiting:
            self._room.set()

    def _overrun(self, why: str) -> None:
        self.overruns += 1
        now = asyncio.get_running_loop().time()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            logger.warning(
                "{}: the hosted processor is behind ({}, limit {}); handing frames over anyway ({} so far)",
                self.name,
                why,
                self.limit,
                self.overruns,
            )
