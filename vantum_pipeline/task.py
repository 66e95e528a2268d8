"""PipelineTask runs one pipeline; PipelineRunner adds signal handling.

Lifecycle: ``idle`` → ``running`` → ``finished``. ``run()`` pushes a
StartFrame, then feeds the frames queued with ``queue_frame(s)`` to the head,
until one of:

- an ``EndFrame`` reaches the tail (graceful: everything ahead of it was
  processed); a processor asks for one by pushing an ``EndTaskFrame``
  upstream, and the task queues the ``EndFrame`` at the head;
- ``cancel()`` is called, a ``CancelFrame`` is queued, a ``CancelTaskFrame``
  reaches the head, or a
  fatal ``ErrorFrame`` reaches the head (a ``CancelFrame`` then travels the
  pipeline so processors drop what they hold);
- the idle timeout passes with no frame moving.

Then every processor's tasks are cancelled and its ``cleanup()`` runs, all
within ``stop_timeout``: ``run()`` returns even when a processor is stuck in
an await that never completes, and leaves no task of its own behind.
"""

from __future__ import annotations

import asyncio
import contextvars
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from loguru import logger

from vantum_pipeline.errors import PipelineError
from vantum_pipeline.frames import (
    UNSTAMPED,
    CancelFrame,
    CancelTaskFrame,
    EndFrame,
    EndTaskFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor, PipelineState, _handling_epoch

__all__ = ["PipelineRunner", "PipelineTask"]

FrameObserver = Callable[[Frame, FrameDirection], Awaitable[None] | None]


class _Edge:
    """What lies beyond the first (or last) processor: the task itself."""

    def __init__(self, on_frame: Callable[[Frame], Awaitable[None]]) -> None:
        self._on_frame = on_frame

    async def _receive(self, frame: Frame, direction: FrameDirection) -> None:
        await self._on_frame(frame)


class PipelineTask:
    """Runs ``pipeline`` (any processor) once.

    ``queue_size`` bounds the frames waiting to enter the head (``queue_frame``
    waits when it is full); ``idle_timeout`` cancels a run in which no frame
    moved for that many seconds; ``end_timeout`` cancels a graceful end that
    does not reach the tail in time; ``stop_timeout`` bounds the whole
    shutdown; ``interruption_timeout`` bounds each processor's handling of an
    interruption.
    """

    def __init__(
        self,
        pipeline: FrameProcessor,
        *,
        audio_in_sample_rate: int = 16000,
        audio_out_sample_rate: int = 16000,
        allow_interruptions: bool = True,
        queue_size: int = 256,
        idle_timeout: float | None = None,
        end_timeout: float | None = 30.0,
        stop_timeout: float = 0.9,
        interruption_timeout: float = 1.0,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._processors = pipeline._leaves()
        self._state = PipelineState(self._processors, interruption_timeout=interruption_timeout)
        self._state.allow_interruptions = allow_interruptions
        for processor in self._processors:
            processor._vp_state = self._state
        self._head = pipeline._first_leaf()
        self._tail = pipeline._last_leaf()
        self._head._vp_prev = _Edge(self._at_head)
        self._tail._vp_next = _Edge(self._at_tail)
        self._start = StartFrame(
            audio_in_sample_rate=audio_in_sample_rate,
            audio_out_sample_rate=audio_out_sample_rate,
            allow_interruptions=allow_interruptions,
            metadata=dict(metadata or {}),
        )
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_size)
        self._idle_timeout = idle_timeout
        self._end_timeout = end_timeout
        self._stop_timeout = stop_timeout
        self._status = "idle"
        self._done = asyncio.Event()
        self._stopped = asyncio.Event()
        self._reason: str | None = None
        self._graceful = False
        self._expected = False  # the cancel is the usual end of a session (CancelFrame.expected)
        self._activity = 0
        self._queued_interruptions = 0
        self._end_requested = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._observers: list[FrameObserver] = []
        self.error: ErrorFrame | None = None

    # ---------------------------------------------------------------- API

    @property
    def state(self) -> PipelineState:
        """Shared counters: ``epoch``, ``interruptions``, ``stale_dropped``."""
        return self._state

    @property
    def finish_reason(self) -> str | None:
        """``"end"``, ``"cancel"``, ``"error"``, ``"idle"`` or None while running."""
        return self._reason

    def has_finished(self) -> bool:
        return self._status == "finished"

    def add_observer(self, observer: FrameObserver) -> None:
        """Call ``observer(frame, direction)`` for every frame leaving either end."""
        self._observers.append(observer)

    async def queue_frame(self, frame: Frame) -> None:
        """Queue ``frame`` for the head. Waits while the queue is full.

        A ``CancelFrame`` cancels the run; an ``InterruptionFrame`` interrupts
        from the head once the frames queued before it have entered.
        """
        if self._status == "finished":
            raise PipelineError(f"{self.pipeline.name} has finished; {frame.tag} was not queued")
        if isinstance(frame, CancelFrame):
            await self.cancel(frame.reason or "cancel frame queued", expected=frame.expected)
            return
        self._activity += 1
        if type(frame) is InterruptionFrame:
            self._queued_interruptions += 1
        elif frame.epoch == UNSTAMPED:
            # A frame belongs to the turn it was queued in, however long it
            # waits here: one queued before an interruption is stale after it,
            # one queued behind a queued InterruptionFrame belongs to the next.
            frame.epoch = self._state.epoch + self._queued_interruptions
        await self._queue.put(frame)

    async def queue_frames(self, frames: Iterable[Frame]) -> None:
        for frame in frames:
            await self.queue_frame(frame)

    async def run(self) -> None:
        """Run until the pipeline ends or is cancelled. Call once.

        Cancelling the task that awaits ``run()`` cancels the pipeline too.
        """
        if self._status != "idle":
            raise PipelineError(f"PipelineTask.run() may be called once ({self.pipeline.name} is {self._status})")
        self._status = "running"
        feeder = self._spawn(self._feed(), "feed")
        try:
            await self._watch()
        except asyncio.CancelledError:
            self._finish("cancel", "run() was cancelled")
            raise
        finally:
            await self._shutdown(feeder)

    async def cancel(self, reason: str = "cancelled", *, expected: bool = False) -> None:
        """Stop the pipeline now. Returns once ``run()`` has stopped (bounded).

        ``expected``: the usual end of a session (a hang-up), logged at INFO; the
        ``CancelFrame`` the processors receive says so too."""
        if self._status == "idle":
            self._status = "finished"
            self._reason = "cancel"
            self._stopped.set()
            return
        self._finish("cancel", reason, expected=expected)
        try:
            async with asyncio.timeout(self._stop_timeout + 0.5):
                await self._stopped.wait()
        except TimeoutError:
            logger.error("{}: run() did not stop within {:.1f}s of cancel()", self.pipeline.name, self._stop_timeout)

    # ---------------------------------------------------------- internals

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        context = contextvars.copy_context()
        context.run(_handling_epoch.set, None)
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.pipeline.name}:{name}", context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _finish(self, reason: str, detail: str = "", *, expected: bool = False) -> None:
        if self._reason is None:
            self._reason = reason
            self._graceful = reason == "end"
            self._expected = expected
            level = "DEBUG" if reason == "end" else "INFO" if expected else "WARNING"
            logger.log(level, "{} finishing: {}{}", self.pipeline.name, reason, f" ({detail})" if detail else "")
        self._done.set()

    async def _watch(self) -> None:
        if self._idle_timeout is None:
            await self._done.wait()
            return
        last = -1
        while not self._done.is_set():
            try:
                async with asyncio.timeout(self._idle_timeout):
                    await self._done.wait()
            except TimeoutError:
                if self._activity == last:
                    self._finish("idle", f"no frame moved for {self._idle_timeout:.1f}s")
                last = self._activity

    async def _feed(self) -> None:
        state = self._state
        self._start.epoch = state.epoch
        await self._head._receive(self._start, FrameDirection.DOWNSTREAM)
        while True:
            frame = await self._queue.get()
            if type(frame) is InterruptionFrame:
                self._queued_interruptions -= 1
                await state.interrupt(None)
                continue
            if state.is_stale(frame):
                state.stale_dropped += 1
                continue
            if frame.epoch > state.epoch:
                frame.epoch = state.epoch  # its queued interruption was disabled or merged
            await self._head._receive(frame, FrameDirection.DOWNSTREAM)
            if isinstance(frame, EndFrame):
                break
        if self._end_timeout is not None:
            await asyncio.sleep(self._end_timeout)
            self._finish("cancel", f"EndFrame did not reach the tail within {self._end_timeout:.1f}s")

    async def _notify(self, frame: Frame, direction: FrameDirection) -> None:
        for observer in self._observers:
            result = observer(frame, direction)
            if result is not None:
                await result

    async def _at_tail(self, frame: Frame) -> None:
        self._activity += 1
        if self._observers:
            await self._notify(frame, FrameDirection.DOWNSTREAM)
        if isinstance(frame, EndFrame):
            self._finish("end", frame.reason)

    async def _at_head(self, frame: Frame) -> None:
        self._activity += 1
        if self._observers:
            await self._notify(frame, FrameDirection.UPSTREAM)
        if isinstance(frame, ErrorFrame):
            if frame.fatal:
                self.error = frame
                self._finish("error", frame.error)
            else:
                logger.debug("{}: non-fatal error reached the head: {}", self.pipeline.name, frame.error)
        elif isinstance(frame, EndTaskFrame | EndFrame):
            # A processor asks for a graceful end (the call is over).
            if self._status == "running" and self._reason is None and not self._end_requested:
                self._end_requested = True
                self._spawn(self._queue_end(frame.reason), "end")
        elif isinstance(frame, CancelFrame):
            self._finish("cancel", frame.reason, expected=frame.expected)
        elif isinstance(frame, CancelTaskFrame):
            self._finish("cancel", frame.reason)

    async def _queue_end(self, reason: str) -> None:
        await self._queue.put(EndFrame(reason=reason))

    async def _shutdown(self, feeder: asyncio.Task[Any]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout

        def left(share: float = 1.0) -> float:
            return max(0.01, (deadline - loop.time()) * share)

        try:
            pending = [t for t in self._tasks if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=left(0.3))
            if not self._graceful:
                cancel = CancelFrame(reason=self._reason or "cancel", expected=self._expected)
                cancel.epoch = self._state.epoch
                delivery = self._spawn(self._head._receive(cancel, FrameDirection.DOWNSTREAM), "cancel")
                done, _ = await asyncio.wait({delivery}, timeout=left(0.4))
                if not done:
                    logger.error("{}: CancelFrame still travelling at the deadline; abandoned", self.pipeline.name)
                    delivery.cancel()
            stops = [self._spawn(p._stop(left(0.8)), f"stop:{p.name}") for p in self._processors]
            await asyncio.wait(stops, timeout=left())
            leftovers = [t for t in self._tasks if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                await asyncio.wait(leftovers, timeout=0.1)
            for task in leftovers:
                if not task.done():
                    logger.error("{}: task {} ignored cancellation", self.pipeline.name, task.get_name())
        finally:
            self._status = "finished"
            self._stopped.set()
            logger.debug(
                "{} finished ({}): {} interruptions, {} stale frames dropped",
                self.pipeline.name,
                self._reason,
                self._state.interruptions,
                self._state.stale_dropped,
            )


class PipelineRunner:
    """Runs a task; SIGINT/SIGTERM cancel it (when running in the main thread)."""

    def __init__(self, *, handle_sigint: bool = True) -> None:
        self._handle_sigint = handle_sigint
        self._cancelling: asyncio.Task[None] | None = None

    async def run(self, task: PipelineTask) -> None:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if self._handle_sigint:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self._on_signal, task, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread, or no signals on this platform
        try:
            await task.run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self._cancelling is not None:
                await asyncio.wait({self._cancelling}, timeout=2.0)

    def _on_signal(self, task: PipelineTask, sig: signal.Signals) -> None:
        logger.warning("{} received: cancelling {}", sig.name, task.pipeline.name)
        if self._cancelling is None:
            self._cancelling = asyncio.get_running_loop().create_task(task.cancel(f"{sig.name} received"))
