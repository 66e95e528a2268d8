"""The Twilio server as N worker processes behind one port.

One asyncio process uses one core. ``TwilioWorkerPool`` runs N
``TwilioServer``s, each in its own process (spawned: the pipeline factory
must be picklable, e.g. a module-level function or an instance of a
module-level class), behind one listening port owned by the pool's process.

Routing. Only the worker that placed a call knows it, so every URL a worker
gives Twilio for its calls (answer, status, AMD, dial action and the media
stream) starts with the worker's prefix ``/w<index>`` (``/w3/twilio/media``):
part of the path, so part of what Twilio signs. The pool accepts each
connection, reads its request line with ``MSG_PEEK`` (at most
``PEEK_BYTES``, within ``peek_timeout``; nothing is consumed), and hands the
socket to the worker its prefix names over a Unix socket (``SCM_RIGHTS``).
The worker serves it in its own aiohttp server (``TwilioServer.adopt``), so a
media stream costs the pool one peek, nothing per audio frame. A request
without a prefix of a running worker, or one that is malformed or too slow
to arrive, goes to any worker, which answers it as a single server would
(404 for an unknown path, 403 for a bad signature, 400 for garbage).
Workers answer every request with ``Connection: close``: a kept-alive
connection could carry the next request to another worker's call.
The pool speaks plain HTTP: terminate TLS in front of it (as for one server).

Limits. ``max_calls`` is global: each worker's open media streams are
counted in a small file-backed shared memory, and a stream is taken at the
accepted upgrade under an exclusive ``flock`` (the kernel releases it if the
holder dies, so a killed worker cannot wedge the others) and given back on
every exit path. A per-worker share would refuse a burst on one worker while
others have room; the shared count costs one uncontended lock per upgrade.

Metrics. Each worker writes its own row of counters (open streams, active
calls, streams accepted, refused signatures, calls placed, connections
adopted) into the same shared memory; ``stats()`` sums them. The pipelines'
own metrics (latencies, usage, errors per service) stay in each worker's
``process_registry()``, fed by a ``MetricsCollector`` the factory attaches;
``await metrics()`` asks every worker for its registry and sums them.

Crashes. A worker that exits unasked is logged; its streams are given back,
its live calls are hung up through the REST API and their records end with
outcome ``error`` (status ``worker exited``); it is restarted with the same
index, up to ``max_restarts`` times, after which the pool refuses new calls
and says so loudly. ``stop()`` asks every worker to stop (each stops its
server, bounded), then terminates and kills what is left: bounded by
``stop_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from multiprocessing.process import BaseProcess
from typing import Any

from loguru import logger

from vantum_pipeline.errors import ConfigurationError, PipelineError, ServiceError
from vantum_pipeline.observability.metrics import MetricsRegistry
from vantum_pipeline.telephony.client import TwilioRestClient
from vantum_pipeline.telephony.numbers import mask_number
from vantum_pipeline.telephony.outcome import CallOutcome, CallRecord
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.transports.twilio.pool_worker import (
    MAX_MESSAGE,
    STAT_FIELDS,
    STAT_LEVELS,
    SharedBoard,
    WorkerSpec,
    receive_message,
    send_message,
    worker_main,
)
from vantum_pipeline.transports.twilio.server import PipelineFactory, ServerPaths

__all__ = ["PEEK_BYTES", "PoolStats", "PooledCall", "TwilioWorkerPool", "route", "worker_paths"]

#: The most of a request the pool reads (peeks) to route it.
PEEK_BYTES = 2048
#: Connections being peeked at once; beyond this they go to any worker unread.
MAX_PENDING_PEEKS = 1024
_ROUTE = re.compile(rb"^[A-Z]{3,10} /w(\d{1,4})/")


def worker_paths(index: int, paths: ServerPaths | None = None) -> ServerPaths:
    """The paths of worker ``index``: ``paths`` under ``/w<index>``."""
    base = paths or ServerPaths()
    prefix = f"/w{index}"
    return ServerPaths(**{f.name: prefix + getattr(base, f.name) for f in fields(ServerPaths)})


def route(head: bytes, workers: int) -> int | None:
    """The worker a request starting with ``head`` belongs to, or None (any worker)."""
    match = _ROUTE.match(head)
    if match is None:
        return None
    index = int(match.group(1))
    return index if index < workers else None


# ------------------------------------------------------------ public types


@dataclass(slots=True)
class PoolStats:
    """The workers' counters summed, and each worker's own."""

    totals: dict[str, int]
    per_worker: list[dict[str, int]]
    restarts: int
    #: Connections routed by their prefix, and those sent to any worker.
    routed: int
    unrouted: int

    def __getitem__(self, name: str) -> int:
        return self.totals[name]


@dataclass(slots=True)
class PooledCall:
    """A call placed by one of the pool's workers; ``await wait()`` gives its record."""

    worker: int
    to: str
    token: str | None = None
    sid: str | None = None
    record: CallRecord | None = None
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _placed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def ended(self) -> bool:
        return self.record is not None

    async def wait(self) -> CallRecord:
        await self._done.wait()
        assert self.record is not None
        return self.record

    def _finish(self, record: CallRecord) -> None:
        if self.record is None:
            self.record = record
            self._done.set()
            self._placed.set()


# ------------------------------------------------------------ the pool


@dataclass(slots=True)
class _Handle:
    index: int
    process: BaseProcess
    handoff: socket.socket
    reader: asyncio.StreamReader
    ready: asyncio.Future[int]
    writer: asyncio.StreamWriter | None = None
    calls: dict[int, PooledCall] = field(default_factory=dict)
    listener: asyncio.Task[None] | None = None
    alive: bool = True
    #: Pipelines' metrics asked of the worker, by request number.
    metrics_asked: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)


def choose_worker(alive: list[_Handle], board: SharedBoard | None) -> _Handle:
    """The worker to place a call: of those not overloaded (their event loop on time, as they last
    wrote on the board), the one with the fewest calls; all overloaded, the one with the fewest calls
    (its server then refuses the call as ``retry_later``)."""
    on_time = [h for h in alive if board is None or not board.read_stats(h.index)["overloaded"]]
    return min(on_time or alive, key=lambda h: len(h.calls))


class TwilioWorkerPool:
    """``workers`` Twilio servers (one per core by default) behind one port; see the module docstring.

    ``server_options`` go to each worker's ``TwilioServer`` (``features``,
    ``transport_params``, ``outcome_timeout``...; picklable). ``max_calls``
    bounds the media streams of all workers together.
    """

    def __init__(
        self,
        settings: TwilioSettings,
        pipeline_factory: PipelineFactory,
        *,
        workers: int | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        public_base_url: str | None = None,
        max_calls: int = 100,
        paths: ServerPaths | None = None,
        server_options: Mapping[str, Any] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        peek_timeout: float = 2.0,
        max_restarts: int = 5,
    ) -> None:
        count = workers if workers is not None else (os.cpu_count() or 1)
        if count < 1 or count > 9999:
            raise ConfigurationError(f"workers must be between 1 and 9999, got {count}")
        if max_calls < 1:
            raise ConfigurationError(f"max_calls must be at least 1, got {max_calls}")
        self.settings = settings
        self.pipeline_factory = pipeline_factory
        self.workers = count
        self.host = host
        self.port = port
        self.public_base_url = public_base_url
        self.max_calls = max_calls
        self.paths = paths or ServerPaths()
        self.server_options = dict(server_options or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.peek_timeout = peek_timeout
        self.max_restarts = max_restarts
        self.restarts = 0
        self.routed = 0
        self.unrouted = 0
        #: Set when a worker could not be kept running: the pool refuses new calls.
        self.failure: str | None = None
        self._handles: list[_Handle | None] = [None] * count
        self._board: SharedBoard | None = None
        self._listener: socket.socket | None = None
        self._client: TwilioRestClient | None = None
        self._context = multiprocessing.get_context("spawn")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next = 0
        self._call_ids = 0
        self._metrics_requests = 0
        self._stopping = False

    # ----------------------------------------------------------- lifecycle

    async def __aenter__(self) -> TwilioWorkerPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def local_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen, start every worker and wait until each is ready (``start_timeout``)."""
        listener = socket.create_server((self.host, self.port), backlog=1024)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        if self.public_base_url is None:
            self.public_base_url = self.settings.public_base_url
        self._board = SharedBoard.create(self.workers)
        self._client = TwilioRestClient(self.settings)
        try:
            for index in range(self.workers):
                self._spawn(index)
            async with asyncio.timeout(self.start_timeout):
                for handle in self._handles:
                    assert handle is not None
                    await handle.ready
        except BaseException:
            await self.stop()
            raise
        self._own(self._accept_loop(), "accept")
        logger.info(
            "Twilio worker pool: {} workers on {} (public URL {}), max_calls {} in all",
            self.workers,
            self.local_url,
            self.public_base_url,
            self.max_calls,
        )

    def _spawn(self, index: int) -> None:
        assert self._board is not None and self.public_base_url is not None
        values = {f.name: getattr(self.settings, f.name) for f in fields(TwilioSettings)}
        values["auth_token"] = self.settings.auth_token.reveal()
        spec = WorkerSpec(
            index=index,
            settings=values,
            pipeline_factory=self.pipeline_factory,
            public_base_url=self.public_base_url,
            paths=worker_paths(index, self.paths),
            max_calls=self.max_calls,
            board_path=self._board.path,
            workers=self.workers,
            server_options=self.server_options,
        )
        handoff, child_handoff = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        control, child_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self._context.Process(
            target=worker_main,
            args=(spec, child_handoff, child_control),
            name=f"twilio-worker-{index}",
            daemon=True,
        )
        try:
            process.start()
        finally:
            child_handoff.close()
            child_control.close()
        handoff.setblocking(False)
        control.setblocking(False)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        handle = _Handle(index, process, handoff, reader, loop.create_future())
        self._handles[index] = handle
        handle.listener = loop.create_task(self._listen(handle, control, protocol), name=f"worker:{index}")
        loop.add_reader(process.sentinel, self._exited, handle)

    async def _listen(self, handle: _Handle, control: socket.socket, protocol: asyncio.StreamReaderProtocol) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, control)
        handle.writer = asyncio.StreamWriter(transport, protocol, handle.reader, loop)
        while (message := await receive_message(handle.reader)) is not None:
            kind = message[0]
            if kind == "ready" and not handle.ready.done():
                handle.ready.set_result(message[1])
            elif kind == "placed" and (call := handle.calls.get(message[1])) is not None:
                call.token, call.sid = message[2], message[3]
                call._placed.set()
            elif kind == "ended" and (call := handle.calls.pop(message[1], None)) is not None:
                call._finish(message[2])
            elif kind == "metrics" and (asked := handle.metrics_asked.pop(message[1], None)) is not None:
                if not asked.done():
                    asked.set_result(message[2])

    async def stop(self) -> None:
        """Stop listening, stop every worker (bounded by ``stop_timeout``), leave no process behind."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        handles = [h for h in self._handles if h is not None]
        for handle in handles:
            loop.remove_reader(handle.process.sentinel)
            if handle.writer is not None and handle.alive:
                with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
                    await send_message(handle.writer, ("stop",))
        deadline = loop.time() + self.stop_timeout
        for handle in handles:
            await self._join(handle, deadline)
        for handle in handles:
            if handle.listener is not None:
                handle.listener.cancel()
            if handle.writer is not None:
                handle.writer.close()
            handle.handoff.close()
            for call in handle.calls.values():
                call._finish(_lost_record(call, "pool stopped"))
            handle.calls.clear()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        if self._board is not None:
            board, self._board = self._board, None
            board.close(unlink=True)
        self._handles = [None] * self.workers

    async def _join(self, handle: _Handle, deadline: float) -> None:
        """Wait for the worker to exit; terminate, then kill it if it does not."""
        process = handle.process
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(process.join, max(0.0, deadline - loop.time()))
        for signal_it in (process.terminate, process.kill):
            if not process.is_alive():
                break
            logger.warning("worker {} (pid {}) did not stop in time: {}", handle.index, process.pid, signal_it.__name__)
            signal_it()
            await asyncio.to_thread(process.join, 2.0)
        process.join(0)
        if process.is_alive():
            logger.error("worker {} (pid {}) is still running after kill", handle.index, process.pid)
        else:
            process.close()

    def _own(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- calls

    async def place_call(
        self,
        to: str,
        *,
        campaign_id: str | None = None,
        prospect_id: str | None = None,
        machine_detection: str | None = None,
        worker: int | None = None,
    ) -> PooledCall:
        """Place a call from a worker (``worker``, or the one with the fewest calls of those whose event loop
        is on time; see ``TwilioServer``'s ``overload_lag``); see ``TwilioServer.place_call``.

        Returns once the worker has placed it (``sid`` set) or given up (``record`` set).
        """
        if self.failure is not None:
            raise PipelineError(f"the worker pool has failed: {self.failure}")
        alive = [h for h in self._handles if h is not None and h.alive and h.writer is not None]
        if not alive:
            raise PipelineError("no Twilio worker is running")
        if worker is not None:
            chosen = next((h for h in alive if h.index == worker), None)
            if chosen is None:
                raise ConfigurationError(f"worker {worker} is not running (workers 0..{self.workers - 1})")
        else:
            chosen = choose_worker(alive, self._board)
        self._call_ids += 1
        call_id = self._call_ids
        call = PooledCall(chosen.index, to)
        chosen.calls[call_id] = call
        options = {"campaign_id": campaign_id, "prospect_id": prospect_id, "machine_detection": machine_detection}
        assert chosen.writer is not None
        await send_message(chosen.writer, ("place", call_id, to, options))
        async with asyncio.timeout(self.settings.request_timeout * 4):
            await call._placed.wait()
        return call

    def worker_pids(self) -> list[int | None]:
        """Each worker's process id; None for one that is not running and ready (yet)."""
        return [
            h.process.pid if h is not None and h.alive and h.ready.done() and not h.ready.exception() else None
            for h in self._handles
        ]

    def stats(self) -> PoolStats:
        """Every worker's counters and their sums (read from the shared memory: no round trip)."""
        board = self._board
        empty = dict.fromkeys(STAT_FIELDS, 0)
        rows = [board.read_stats(i) if board is not None else dict(empty) for i in range(self.workers)]
        totals = {name: (max if name in STAT_LEVELS else sum)(row[name] for row in rows) for name in STAT_FIELDS}
        return PoolStats(totals, rows, self.restarts, self.routed, self.unrouted)

    async def metrics(self, timeout: float = 2.0) -> MetricsRegistry:
        """The pipelines' metrics of every running worker, summed into one registry.

        Each worker's pipelines report to that worker's ``process_registry()``
        (attach ``MetricsCollector(process_registry())`` in the pipeline
        factory). A worker that does not answer within ``timeout`` seconds is
        left out, with a warning; so is one that is not running.
        """
        total = MetricsRegistry()
        alive = [h for h in self._handles if h is not None and h.alive and h.writer is not None]
        asked: list[tuple[_Handle, int, asyncio.Future[dict[str, Any]]]] = []
        loop = asyncio.get_running_loop()
        for handle in alive:
            self._metrics_requests += 1
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            handle.metrics_asked[self._metrics_requests] = future
            assert handle.writer is not None
            try:
                await send_message(handle.writer, ("metrics", self._metrics_requests))
            except (ConnectionError, RuntimeError) as exc:
                handle.metrics_asked.pop(self._metrics_requests, None)
                logger.warning("Twilio worker {}: metrics not asked: {}", handle.index, exc)
                continue
            asked.append((handle, self._metrics_requests, future))
        if asked:
            await asyncio.wait([future for _, _, future in asked], timeout=timeout)
        for handle, number, future in asked:
            if future.done():
                total.merge(future.result())
            else:
                handle.metrics_asked.pop(number, None)
                future.cancel()
                logger.warning("Twilio worker {}: no metrics within {:.1f}s; not in the sum", handle.index, timeout)
        return total

    # ------------------------------------------------------------- crashes

    def _exited(self, handle: _Handle) -> None:
        asyncio.get_running_loop().remove_reader(handle.process.sentinel)
        handle.alive = False
        if not self._stopping:
            self._own(self._recover(handle), f"recover:{handle.index}")

    async def _recover(self, handle: _Handle) -> None:
        process = handle.process
        process.join(1.0)
        logger.error(
            "Twilio worker {} (pid {}) exited unasked (exit code {}); its {} calls end",
            handle.index,
            process.pid,
            process.exitcode,
            len(handle.calls),
        )
        if self._board is not None:
            self._board.reset(handle.index)
        if handle.listener is not None:
            handle.listener.cancel()
        if handle.writer is not None:
            handle.writer.close()
        handle.handoff.close()
        calls, handle.calls = list(handle.calls.values()), {}
        if calls:
            # Hung up side by side, bounded: a slow REST API must not hold the restart back for long.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.request_timeout + 5.0):
                    await asyncio.gather(*(self._end_lost_call(call) for call in calls))
            for call in calls:
                call._finish(_lost_record(call, "worker exited"))
        if not handle.ready.done():
            # It never came up: starting again would fail the same way.
            handle.ready.set_exception(PipelineError(f"Twilio worker {handle.index} exited while starting"))
            self.failure = f"worker {handle.index} exited while starting (exit code {process.exitcode})"
            logger.critical("Twilio worker pool: {}", self.failure)
            return
        if self._stopping:
            return
        if self.restarts >= self.max_restarts:
            self.failure = f"worker {handle.index} exited and {self.restarts} restarts are used up"
            logger.critical("Twilio worker pool: {}; no new calls", self.failure)
            return
        self.restarts += 1
        self._spawn(handle.index)
        fresh = self._handles[handle.index]
        assert fresh is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                await fresh.ready
        except TimeoutError:
            logger.critical("Twilio worker {} did not come back within {}s", handle.index, self.start_timeout)
            return
        logger.info("Twilio worker {} restarted ({} restarts)", handle.index, self.restarts)

    async def _end_lost_call(self, call: PooledCall) -> None:
        if call.sid is not None and self._client is not None:
            try:
                await self._client.hang_up(call.sid)
            except (ServiceError, ConfigurationError) as exc:
                logger.warning("call {}: hang-up after its worker exited failed: {}", call.sid, exc)
        call._finish(_lost_record(call, "worker exited"))

    # -------------------------------------------------------------- routing

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    conn, _address = await loop.sock_accept(self._listener)
                except OSError as exc:  # out of file descriptors, a connection reset while queued...
                    logger.error("Twilio worker pool: accept failed: {}", exc)
                    await asyncio.sleep(0.1)
                    continue
                conn.setblocking(False)
                if len(pending) >= MAX_PENDING_PEEKS:
                    await self._hand_over(conn, None)
                    continue
                task = loop.create_task(self._route(conn), name="route")
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _route(self, conn: socket.socket) -> None:
        try:
            head = await self._peek(conn)
        except TimeoutError:
            head = b""
        except OSError:
            conn.close()
            return
        if head is None:  # closed before a byte arrived
            conn.close()
            return
        await self._hand_over(conn, route(head, self.workers))

    async def _peek(self, conn: socket.socket) -> bytes | None:
        """The start of the request, not consumed: up to its first line, ``PEEK_BYTES`` at most."""
        async with asyncio.timeout(self.peek_timeout):
            while True:
                await _readable(conn)
                head = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
                if not head:
                    return None
                if b"\n" in head or len(head) >= PEEK_BYTES:
                    return head
                await asyncio.sleep(0.005)  # part of a line: readable stays true until more arrives

    async def _hand_over(self, conn: socket.socket, index: int | None) -> None:
        handle = self._handles[index] if index is not None else None
        if handle is not None and handle.alive:
            self.routed += 1
        else:
            self.unrouted += 1
            alive = [h for h in self._handles if h is not None and h.alive]
            if not alive:
                logger.warning("no Twilio worker is running: a connection is closed unanswered")
                conn.close()
                return
            handle = alive[self._next % len(alive)]
            self._next += 1
        try:
            async with asyncio.timeout(1.0):
                while True:
                    try:
                        socket.send_fds(handle.handoff, [b"c"], [conn.fileno()])
                        break
                    except BlockingIOError:
                        await _writable(handle.handoff)
        except (TimeoutError, OSError) as exc:
            logger.warning("a connection could not be handed to worker {}: {}", handle.index, exc or "timeout")
        finally:
            conn.close()


def _lost_record(call: PooledCall, status: str) -> CallRecord:
    return CallRecord(call.sid, mask_number(call.to), CallOutcome.ERROR, status, 0.0, 0.0)


async def _readable(sock: socket.socket) -> None:
    await _ready(sock, writable=False)


async def _writable(sock: socket.socket) -> None:
    await _ready(sock, writable=True)


async def _ready(sock: socket.socket, *, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    (loop.add_writer if writable else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)
