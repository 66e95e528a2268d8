"""FrameProcessor: the unit of a pipeline, and how frames move between units.

How frames move
---------------
There is no task per processor. ``push_frame`` hands the frame to the next
processor's *lane* (one per direction). If that lane is idle, the frame is
processed at once, in the pusher's task: a hop costs a few function calls, not
a task switch. If the lane is busy (another task is inside ``process_frame``
for that direction, or the pusher re-entered it), the frame is appended to the
lane's bounded deque and the task already draining the lane processes it next.
Hence, per direction:

- in-band frames reach ``process_frame`` one at a time and in order;
- a full deque makes the pusher wait (backpressure), unless the pusher is the
  very task draining that lane (it would wait for itself), in which case the
  frame is appended beyond the bound and counted in ``overflows``;
- system frames skip the lanes: they are handled at once, in the pusher's
  task, even while an in-band frame of the same processor is in progress.

Interruption (barge-in) is a two-phase flush driven by an epoch counter shared
by the pipeline:

1. ``push_interruption()`` increments the epoch and, without awaiting, purges
   every lane of every processor of in-band frames of older epochs (frames
   whose class ``survives_interruption`` are kept: ``EndFrame`` and the user's
   input) and cancels every *turn task* of an older epoch. From then on
   ``push_frame`` drops old-epoch frames: late work never reaches anyone.
2. One ``InterruptionFrame`` is delivered to every processor's
   ``process_frame``, downstream of the caller first, then upstream. Until a
   processor has handled it, frames of the new epoch wait in its lanes; then
   its lanes resume.

A frame's epoch is stamped when it is first pushed: with the epoch of the frame
being handled when it was pushed (tracked in a ``contextvars`` variable, so
turn tasks spawned by a handler inherit it), or the pipeline's current epoch
when nothing is being handled (long-lived tasks started with ``create_task``).
A receive loop that answers work of a given turn stamps ``frame.epoch`` itself.

Tasks
-----
``create_task`` starts a long-lived task owned by the processor (a socket's
receive loop); ``create_turn_task`` starts one bound to the current epoch,
cancelled by the next interruption (an LLM stream). Both are cancelled and
awaited, with a timeout, when the pipeline stops; an exception in either
becomes an ``ErrorFrame`` pushed upstream. That error is fatal (the pipeline
ends at once) for a task started with ``create_task(..., essential=True)``:
one whose loss leaves the processor useless (a transport's receive loop, an
STT connection), where going on would leave the call deaf or mute until a
timeout. A turn task that is cancelled before it ever ran has its coroutine
closed, so nothing warns that it was never awaited.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import itertools
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, ClassVar, Protocol

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    UNSTAMPED,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
)

__all__ = ["FrameDirection", "FrameProcessor", "PipelineState", "link"]


class FrameDirection(enum.IntEnum):
    DOWNSTREAM = 1
    UPSTREAM = 2


_DOWN = FrameDirection.DOWNSTREAM
_UP = FrameDirection.UPSTREAM

#: Epoch of the frame being handled in this context; None outside handlers
#: and in long-lived tasks.
_handling_epoch: contextvars.ContextVar[int | None] = contextvars.ContextVar("vantum_handling_epoch", default=None)

_current_task = asyncio.current_task
#: The task running on each loop, as asyncio keeps it. On Python 3.11, asyncio.current_task()
#: finds the running loop with a getpid() system call each time (0.5-0.8 us here, twice per
#: frame and processor); a processor knows its loop, so it reads this instead where it exists.
_TASKS_BY_LOOP: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)
_names = itertools.count(1)


class _Receiver(Protocol):
    async def _receive(self, frame: Frame, direction: FrameDirection) -> None: ...


class _Lane:
    """One direction's entry of a processor: a bounded deque and its drainer.

    The deque is made when a frame first has to wait (most lanes of most
    processors never queue anything: a deque costs ~760 bytes), and the rare
    pushers waiting for room sit in a plain list."""

    __slots__ = ("busy", "maxsize", "owner", "queue", "waiters")

    def __init__(self, maxsize: int) -> None:
        self.queue: deque[Frame] | None = None
        self.busy = False
        self.owner: asyncio.Task[Any] | None = None
        self.waiters: list[asyncio.Future[None]] = []
        self.maxsize = maxsize

    def append(self, frame: Frame) -> None:
        if self.queue is None:
            self.queue = deque()
        self.queue.append(frame)

    def wake_waiters(self) -> None:
        room = self.maxsize - (len(self.queue) if self.queue else 0)
        while self.waiters and room > 0:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                room -= 1


class _Deadline:
    """``asyncio.timeout(delay)`` for a task and loop the caller already knows.

    The same semantics: at the deadline the task is cancelled, and the
    cancellation leaves the block as ``TimeoutError`` unless someone else
    cancelled the task too. asyncio's own looks the loop up three times per
    use, each a getpid() system call on Python 3.11; the transports and the
    STT send under one every few frames of every call.
    """

    __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], delay: float) -> None:
        self._loop = loop
        self._task = task
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    async def __aenter__(self) -> None:
        self._cancelling = self._task.cancelling()
        self._handle = self._loop.call_at(self._loop.time() + self._delay, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Expired: take back our cancellation; it is a timeout if no other one is pending.
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class _DropEdge:
    """Where frames go past the ends of a processor that is not in a task."""

    async def _receive(self, frame: Frame, direction: FrameDirection) -> None:
        logger.trace("{} fell off the end of an unlinked processor", frame.tag)


_DROP_EDGE = _DropEdge()


class PipelineState:
    """What all processors of one running pipeline share: the epoch, the
    processor list (for interruptions) and counters."""

    def __init__(self, processors: Iterable[FrameProcessor] = (), *, interruption_timeout: float = 1.0) -> None:
        self.epoch = 0
        self.processors: list[FrameProcessor] = list(processors)
        self.interruption_timeout = interruption_timeout
        self.allow_interruptions = True
        self.stale_dropped = 0
        self.interruptions = 0
        self._interrupting: asyncio.Future[None] | None = None

    def is_stale(self, frame: Frame) -> bool:
        return not frame.survives_interruption and 0 <= frame.epoch < self.epoch

    async def interrupt(self, origin: FrameProcessor | None) -> None:
        """Run an interruption raised by ``origin`` (None: at the head)."""
        if not self.allow_interruptions:
            logger.debug("interruption ignored: interruptions are disabled")
            return
        if self._interrupting is not None:
            # Two detectors (local VAD, STT event) firing for one barge-in make
            # one interruption: wait for the one in progress.
            await asyncio.shield(self._interrupting)
            return
        self._interrupting = asyncio.get_running_loop().create_future()
        self.epoch += 1
        self.interruptions += 1
        epoch = self.epoch
        pending = list(self.processors)
        try:
            for processor in self.processors:
                processor._flush(epoch)
            frame = InterruptionFrame()
            frame.epoch = epoch
            start = self.processors.index(origin) if origin in self.processors else 0
            order = [(p, _DOWN) for p in self.processors[start:]]
            order += [(p, _UP) for p in reversed(self.processors[:start])]
            await self._deliver(frame, order, pending)
        finally:
            # Never leave a processor gated on an interruption it will not see
            # (the interrupting task was cancelled mid-delivery).
            for processor in pending:
                processor._open_gate(epoch)
            self._interrupting.set_result(None)
            self._interrupting = None
        current = asyncio.current_task()
        if current is not None:
            for processor in self.processors:
                task_epoch = processor._vp_turn_tasks.get(current)
                if task_epoch is not None and task_epoch < epoch:
                    current.cancel()  # the interrupter was itself a stale turn task
                    break

    async def _deliver(
        self,
        frame: InterruptionFrame,
        order: list[tuple[FrameProcessor, FrameDirection]],
        pending: list[FrameProcessor],
    ) -> None:
        """Phase 2: each processor handles the interruption in ``order``.

        One deadline (``interruption_timeout``) bounds the whole delivery: a
        timer per processor would cost more than most processors' handling.
        A processor still busy at the deadline is abandoned (logged); those
        after it then get ``interruption_timeout`` each.
        """
        epoch = frame.epoch
        done = 0
        try:
            async with asyncio.timeout(self.interruption_timeout):
                for processor, direction in order:
                    await processor._handle(frame, direction)
                    processor._open_gate(epoch)
                    pending.remove(processor)
                    done += 1
        except TimeoutError:
            slow = order[done][0]
            logger.error("{} took over {:.1f}s to handle an interruption", slow.name, self.interruption_timeout)
            slow._open_gate(epoch)
            pending.remove(slow)
            for processor, direction in order[done + 1 :]:
                await processor._deliver_interruption(frame, direction, self.interruption_timeout)
                pending.remove(processor)


class FrameProcessor:
    """Base of every processor.

    Override ``process_frame``; push what you produce (and the frames you do
    not handle) with ``push_frame``. The default ``process_frame`` passes every
    frame on in its direction.

    ``max_queue`` bounds each lane (frames waiting while the processor is busy).
    Subclasses must call ``super().__init__()``.
    """

    #: Methods the framework calls on every processor; a subclass that defined
    #: one by accident would silently break frame delivery or interruptions.
    _INTERNAL_METHODS: ClassVar[frozenset[str]] = frozenset(
        {
            "_receive", "_handle", "_drain", "_drain_detached", "_release", "_spawn_drain",
            "_open_gate", "_flush", "_deliver_interruption", "_stop", "_report", "_guard",
            "_forget_turn_task", "_leaves", "_first_leaf", "_last_leaf", "_running_task", "_timeout",
        }
    )  # fmt: skip
    #: Set by the core's own subclasses that override internals on purpose (Pipeline).
    _overrides_internals: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("_overrides_internals", False):
            return
        clashes = sorted(FrameProcessor._INTERNAL_METHODS.intersection(cls.__dict__))
        if clashes:
            raise TypeError(
                f"{cls.__name__} defines {', '.join(clashes)}, which FrameProcessor uses internally; rename it"
            )

    def __init__(self, *, name: str | None = None, max_queue: int = 256) -> None:
        if max_queue < 1:
            raise ConfigurationError(f"max_queue must be >= 1, got {max_queue}")
        self.name = name or f"{type(self).__name__}#{next(_names)}"
        self._vp_next: _Receiver = _DROP_EDGE
        self._vp_prev: _Receiver = _DROP_EDGE
        self._vp_down = _Lane(max_queue)
        self._vp_up = _Lane(max_queue)
        self._vp_state = PipelineState([self])
        # -1 until StartFrame is handled: in-band frames wait for the start.
        self._vp_seen_epoch = -1
        self._vp_tasks: set[asyncio.Task[Any]] = set()
        self._vp_turn_tasks: dict[asyncio.Task[Any], int] = {}
        self._vp_stopped = False
        #: The loop of the current run, from its StartFrame on.
        self._vp_loop: asyncio.AbstractEventLoop | None = None
        #: In-band frames queued beyond ``max_queue`` by re-entrant pushes.
        self.overflows = 0

    def __repr__(self) -> str:
        return f"<{self.name}>"

    # ------------------------------------------------------------ override

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Handle one frame. The default passes it on."""
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        """Release resources when the pipeline stops (after End or Cancel).

        Called once, with a timeout, after the processor's tasks are cancelled.
        """

    # ---------------------------------------------------------- public API

    @property
    def epoch(self) -> int:
        """The pipeline's current interruption epoch."""
        return self._vp_state.epoch

    @property
    def handling_epoch(self) -> int:
        """Epoch of the frame being handled (the current one outside handlers)."""
        epoch = _handling_epoch.get()
        return self._vp_state.epoch if epoch is None else epoch

    def is_stale(self, frame: Frame) -> bool:
        """True when ``frame`` belongs to an interrupted turn."""
        return self._vp_state.is_stale(frame)

    async def push_frame(self, frame: Frame, direction: FrameDirection = _DOWN) -> None:
        """Send ``frame`` to the neighbour in ``direction``.

        Stamps an unstamped frame's epoch; drops an in-band frame of an
        interrupted epoch. Pushing a new ``InterruptionFrame`` is the same as
        ``push_interruption()``. May wait while the neighbour's lane is full.
        Cancel-safe: a cancelled push has either delivered the frame or not.
        """
        state = self._vp_state
        epoch = frame.epoch
        if epoch == UNSTAMPED:
            if type(frame) is InterruptionFrame:
                await state.interrupt(self)
                return
            handling = _handling_epoch.get()
            frame.epoch = state.epoch if handling is None else handling
            if frame.epoch < state.epoch and not frame.survives_interruption:
                state.stale_dropped += 1
                return
        elif epoch < state.epoch and not frame.survives_interruption:
            state.stale_dropped += 1
            return
        elif type(frame) is InterruptionFrame:
            return  # the framework delivers it to every processor itself
        await (self._vp_next if direction is _DOWN else self._vp_prev)._receive(frame, direction)

    async def push_interruption(self) -> None:
        """Interrupt the bot's current turn across the whole pipeline.

        Returns when every processor has seen the InterruptionFrame.
        """
        await self._vp_state.interrupt(self)

    async def interruption_settled(self) -> None:
        """Return once the interruption being delivered, if any, has reached
        every processor (at once when none is in progress). Cancel-safe."""
        delivering = self._vp_state._interrupting
        if delivering is not None and not delivering.done():
            await asyncio.shield(delivering)

    async def push_error(self, error: str, *, fatal: bool = False, exception: BaseException | None = None) -> None:
        """Send an ErrorFrame upstream, towards the task."""
        await self.push_frame(ErrorFrame(error, fatal=fatal, processor=self.name, exception=exception), _UP)

    def create_task(
        self, coro: Coroutine[Any, Any, Any], name: str | None = None, *, essential: bool = False
    ) -> asyncio.Task[Any]:
        """Start a long-lived task owned by this processor (e.g. a receive loop).

        Frames it pushes are stamped with the pipeline's epoch at push time.
        It is cancelled when the pipeline stops. An exception it raises is
        pushed upstream as an ``ErrorFrame``, a fatal one if ``essential``
        (the processor is useless without this task: the call must end).
        """
        context = contextvars.copy_context()
        context.run(_handling_epoch.set, None)
        task = asyncio.get_running_loop().create_task(
            self._guard(coro, essential=essential), name=f"{self.name}:{name or 'task'}", context=context
        )
        task.add_done_callback(lambda _: coro.close())
        self._vp_tasks.add(task)
        task.add_done_callback(self._vp_tasks.discard)
        return task

    def create_turn_task(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Start a task that belongs to the current turn (e.g. an LLM stream).

        Frames it pushes carry the epoch it was started in, and the next
        interruption cancels it.
        """
        task = asyncio.get_running_loop().create_task(self._guard(coro), name=f"{self.name}:{name or 'turn'}")
        # Cancelled before its first step (an interruption right away), the task never started
        # ``coro``: closing it spares a "never awaited" warning; a no-op once it has run.
        task.add_done_callback(lambda _: coro.close())
        self._vp_turn_tasks[task] = self.handling_epoch
        task.add_done_callback(self._forget_turn_task)
        return task

    async def cancel_tasks(self, timeout: float = 1.0) -> None:
        """Cancel and await every task this processor owns, within ``timeout``."""
        current = _current_task()
        tasks = [t for t in (*self._vp_tasks, *self._vp_turn_tasks) if not t.done() and t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                logger.error("{}: task {} did not stop within {:.1f}s", self.name, task.get_name(), timeout)

    # ----------------------------------------------------------- internals

    def _running_task(self) -> asyncio.Task[Any] | None:
        """``asyncio.current_task()``, without looking the loop up once the processor has started."""
        loop = self._vp_loop
        task = _TASKS_BY_LOOP.get(loop) if loop is not None and _TASKS_BY_LOOP is not None else None
        # None: not started, outside a task, or the loop of an earlier run: ask asyncio.
        return task if task is not None else _current_task()

    def _timeout(self, seconds: float | None) -> AbstractAsyncContextManager[Any]:
        """``asyncio.timeout(seconds)``, cheaper in a started processor's own tasks (see :class:`_Deadline`)."""
        loop = self._vp_loop
        # A task found under the kept loop is running on it now (not a loop of an earlier run).
        task = _TASKS_BY_LOOP.get(loop) if loop is not None and _TASKS_BY_LOOP is not None else None
        if seconds is None or loop is None or task is None:
            return asyncio.timeout(seconds)
        return _Deadline(loop, task, seconds)

    def _forget_turn_task(self, task: asyncio.Task[Any]) -> None:
        self._vp_turn_tasks.pop(task, None)

    async def _guard(self, coro: Coroutine[Any, Any, Any], *, essential: bool = False) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._report(exc, None, fatal=essential)
            return None

    async def _report(self, exc: Exception, frame: Frame | None, *, fatal: bool = False) -> None:
        where = f" on {frame.tag}" if frame is not None else ""
        logger.opt(exception=exc).error("{} failed{}: {}: {}", self.name, where, type(exc).__name__, exc)
        try:
            await self.push_error(f"{self.name}: {type(exc).__name__}: {exc}", fatal=fatal, exception=exc)
        except Exception:  # the error path itself must not raise into the caller
            logger.opt(exception=True).error("{} could not report an error", self.name)

    async def _handle(self, frame: Frame, direction: FrameDirection) -> None:
        token = _handling_epoch.set(frame.epoch)
        try:
            await self.process_frame(frame, direction)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._report(exc, frame, fatal=type(frame) is StartFrame)
        finally:
            _handling_epoch.reset(token)

    async def _receive(self, frame: Frame, direction: FrameDirection) -> None:
        if not frame.in_band:
            if type(frame) is StartFrame:
                self._vp_loop = asyncio.get_running_loop()
            await self._handle(frame, direction)
            if type(frame) is StartFrame:
                self._open_gate(frame.epoch)
            return
        lane = self._vp_down if direction is _DOWN else self._vp_up
        while lane.busy or lane.queue or frame.epoch > self._vp_seen_epoch:
            if lane.queue is None or len(lane.queue) < lane.maxsize:
                lane.append(frame)
                return
            if lane.owner is self._running_task():
                self.overflows += 1  # re-entrant push: waiting would deadlock
                lane.append(frame)
                return
            await _wait_for_room(lane)
            if self._vp_state.is_stale(frame):
                self._vp_state.stale_dropped += 1
                return
        lane.busy = True
        lane.owner = self._running_task()
        try:
            await self._handle(frame, direction)
            if lane.queue:
                await self._drain(lane, direction)
        finally:
            self._release(lane, direction)

    async def _drain(self, lane: _Lane, direction: FrameDirection) -> None:
        queue = lane.queue
        if queue is None:
            return
        state = self._vp_state
        while queue:
            frame = queue[0]
            if frame.epoch > self._vp_seen_epoch:
                return  # new epoch: wait until this processor saw the interruption
            queue.popleft()
            if lane.waiters:
                lane.wake_waiters()
            if state.is_stale(frame):
                state.stale_dropped += 1
                continue
            await self._handle(frame, direction)

    async def _drain_detached(self, direction: FrameDirection) -> None:
        lane = self._vp_down if direction is _DOWN else self._vp_up
        if lane.busy or not lane.queue:
            return
        lane.busy = True
        lane.owner = self._running_task()
        try:
            await self._drain(lane, direction)
        finally:
            self._release(lane, direction)

    def _release(self, lane: _Lane, direction: FrameDirection) -> None:
        lane.busy = False
        lane.owner = None
        if lane.queue and lane.queue[0].epoch <= self._vp_seen_epoch:
            # The drainer was cancelled with frames still queued: someone must
            # drain them, and it can't be the cancelled task.
            self._spawn_drain(direction)

    def _spawn_drain(self, direction: FrameDirection) -> None:
        if not self._vp_stopped:
            self.create_task(self._drain_detached(direction), "drain")

    def _open_gate(self, epoch: int) -> None:
        """Let frames of ``epoch`` in: the processor has seen its start/interruption."""
        if self._vp_seen_epoch < epoch:
            self._vp_seen_epoch = epoch
        for direction, lane in ((_DOWN, self._vp_down), (_UP, self._vp_up)):
            if lane.waiters:
                lane.wake_waiters()
            if lane.queue and not lane.busy and lane.queue[0].epoch <= self._vp_seen_epoch:
                self._spawn_drain(direction)

    def _flush(self, epoch: int) -> None:
        """Phase 1 of an interruption: synchronous, no await."""
        state = self._vp_state
        for lane in (self._vp_down, self._vp_up):
            if lane.queue:
                kept = [f for f in lane.queue if f.survives_interruption or f.epoch >= epoch]
                state.stale_dropped += len(lane.queue) - len(kept)
                lane.queue.clear()
                lane.queue.extend(kept)
            if lane.waiters:
                lane.wake_waiters()
        current = _current_task()
        for task, task_epoch in list(self._vp_turn_tasks.items()):
            if task_epoch < epoch and task is not current:
                task.cancel()

    async def _deliver_interruption(self, frame: InterruptionFrame, direction: FrameDirection, timeout: float) -> None:
        """Phase 2 of an interruption, for this processor."""
        try:
            async with asyncio.timeout(timeout):
                await self._handle(frame, direction)
        except TimeoutError:
            logger.error("{} took over {:.1f}s to handle an interruption", self.name, timeout)
        self._open_gate(frame.epoch)

    async def _stop(self, timeout: float) -> None:
        """Cancel owned tasks and run ``cleanup``, all within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._vp_stopped = True
        await self.cancel_tasks(timeout=timeout / 2)
        try:
            async with asyncio.timeout(max(0.01, deadline - loop.time())):
                await self.cleanup()
        except TimeoutError:
            logger.error("{}: cleanup did not finish within {:.1f}s", self.name, timeout)
        except Exception as exc:
            logger.opt(exception=exc).error("{}: cleanup failed: {}", self.name, exc)

    # ------------------------------------------------------------- linking

    def members(self) -> Sequence[FrameProcessor]:
        """Processors this one drives itself, outside the chain (a failover's
        providers). The task runs them with the pipeline: they share its
        epoch, see its interruptions and are stopped with it. None by default."""
        return ()

    def _leaves(self) -> list[FrameProcessor]:
        members = self.members()
        if not members:
            return [self]
        return [self, *(leaf for member in members for leaf in member._leaves())]

    def _first_leaf(self) -> FrameProcessor:
        return self

    def _last_leaf(self) -> FrameProcessor:
        return self

    def link(self, other: FrameProcessor) -> FrameProcessor:
        """Make ``other`` the downstream neighbour of this processor; returns ``other``."""
        link(self, other)
        return other


async def _wait_for_room(lane: _Lane) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    lane.waiters.append(waiter)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter in lane.waiters:
            lane.waiters.remove(waiter)
        raise


def link(upstream: FrameProcessor, downstream: FrameProcessor) -> None:
    """Connect two processors (or pipelines) so frames flow between them."""
    tail = upstream._last_leaf()
    head = downstream._first_leaf()
    tail._vp_next = head
    head._vp_prev = tail
