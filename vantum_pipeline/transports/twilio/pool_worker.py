"""One worker of ``TwilioWorkerPool`` (see ``workers.py``), and what it shares with the pool.

``SharedBoard`` is a small file-backed shared memory: each worker's open
media streams (what the global ``max_calls`` bounds) and its row of
counters. Each process opens the file itself, so each has its own ``flock``,
which the kernel drops when the holder dies: a killed worker cannot wedge
the others. The pool and a worker talk over a socketpair in length-prefixed
pickles (only ever our own parent or child at the other end); connections
come in on a second, datagram socketpair, one descriptor per message
(``SCM_RIGHTS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import pickle
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from loguru import logger

from vantum_pipeline.errors import ProtocolError
from vantum_pipeline.observability.metrics import process_registry
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.numbers import mask_number
from vantum_pipeline.telephony.outcome import CallOutcome, CallRecord
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.transports.twilio.server import PipelineFactory, ServerPaths, TwilioServer

__all__ = [
    "STAT_FIELDS",
    "STAT_LEVELS",
    "SharedBoard",
    "WorkerSpec",
    "WorkerStreamLimit",
    "receive_message",
    "send_message",
    "worker_main",
]

STAT_FIELDS = (
    "streams",
    "active_calls",
    "streams_accepted",
    "rejected_signatures",
    "calls_placed",
    "connections",
    # Calls its server did not place for being overloaded; 1 while it is; its event loop's p90 lag (ms).
    "refused_overloaded",
    "overloaded",
    "loop_lag_ms",
)
#: Fields of STAT_FIELDS that are a level, not a count: the pool's totals take their largest.
STAT_LEVELS = frozenset({"loop_lag_ms"})
_LENGTH = struct.Struct("!I")
MAX_MESSAGE = 1 << 20


class SharedBoard:
    """Per-worker stream counts and counters in a file-backed shared memory.

    Each worker opens the file itself, so each has its own ``flock``, which
    the kernel drops when the holder dies.
    """

    def __init__(self, path: str, workers: int) -> None:
        self.path = path
        self.workers = workers
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, self.size(workers))
        self._cells = memoryview(self._map).cast("q")

    @staticmethod
    def size(workers: int) -> int:
        return 8 * workers * (1 + len(STAT_FIELDS))

    @classmethod
    def create(cls, workers: int) -> SharedBoard:
        fd, path = tempfile.mkstemp(prefix="vantum-twilio-pool-")
        try:
            os.write(fd, bytes(cls.size(workers)))
        finally:
            os.close(fd)
        return cls(path, workers)

    @contextlib.contextmanager
    def locked(self, timeout: float = 1.0) -> Iterator[bool]:
        """Hold the exclusive lock; yields False if it could not be had within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.0002)
        try:
            yield True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self, index: int, limit: int) -> bool:
        with self.locked() as held:
            if not held or sum(self._cells[: self.workers]) >= limit:
                return False
            self._cells[index] += 1
            return True

    def give_back(self, index: int) -> None:
        with self.locked(timeout=5.0):
            # Given back even without the lock: a count stuck high would refuse calls forever.
            self._cells[index] = max(0, self._cells[index] - 1)

    def reset(self, index: int) -> None:
        with self.locked(timeout=5.0):
            self._cells[index] = 0
            self.write_stats(index, [0] * len(STAT_FIELDS))

    def in_use(self) -> int:
        return sum(self._cells[: self.workers])

    def write_stats(self, index: int, values: list[int]) -> None:
        start = self.workers + index * len(STAT_FIELDS)
        for offset, value in enumerate(values):
            self._cells[start + offset] = value

    def read_stats(self, index: int) -> dict[str, int]:
        start = self.workers + index * len(STAT_FIELDS)
        return {name: self._cells[start + i] for i, name in enumerate(STAT_FIELDS)}

    def close(self, *, unlink: bool = False) -> None:
        self._cells.release()
        self._map.close()
        os.close(self._fd)
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class WorkerStreamLimit:
    """The ``StreamLimit`` a worker's server uses: the pool's global ``max_calls``."""

    def __init__(self, board: SharedBoard, index: int, max_calls: int) -> None:
        self.board = board
        self.index = index
        self.max_calls = max_calls
        self.accepted = 0

    def acquire(self) -> bool:
        if not self.board.take(self.index, self.max_calls):
            return False
        self.accepted += 1
        return True

    def release(self) -> None:
        self.board.give_back(self.index)


# ------------------------------------------------------------ the worker process


@dataclass(slots=True, frozen=True)
class WorkerSpec:
    index: int
    settings: dict[str, Any]  # TwilioSettings' fields; the auth token revealed (Secret is not picklable)
    pipeline_factory: PipelineFactory
    public_base_url: str
    paths: ServerPaths
    max_calls: int
    board_path: str
    workers: int
    server_options: dict[str, Any]


async def send_message(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    data = pickle.dumps(message)
    writer.write(_LENGTH.pack(len(data)) + data)
    async with asyncio.timeout(10.0):
        await writer.drain()


async def receive_message(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message from our own parent or child; None at the end of the stream."""
    try:
        (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        if size > MAX_MESSAGE:
            raise ProtocolError(f"control message of {size} bytes (at most {MAX_MESSAGE})")
        message = pickle.loads(await reader.readexactly(size))  # our own child or parent, on our own socketpair
    except (asyncio.IncompleteReadError, ConnectionError, ProtocolError):
        return None
    assert isinstance(message, tuple)
    return message


def _exported_metrics() -> dict[str, Any]:
    """This process's registry for the pool, within a control message's size: percentile
    samples are thinned (the newest kept) when all of them would not fit."""
    state = process_registry().export()
    for keep in (None, 256, 32, 0):
        if keep is not None:
            for histogram in state["histograms"].values():
                histogram["recent"] = histogram["recent"][len(histogram["recent"]) - keep :] if keep else []
        if len(pickle.dumps(state)) < MAX_MESSAGE // 2:
            break
    return state


@web.middleware
async def _one_request_per_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Connection: close`` on every answer but a websocket's: the pool routes connections, not requests."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    if not isinstance(response, web.WebSocketResponse):
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"
    return response


def worker_main(spec: WorkerSpec, handoff: socket.socket, control: socket.socket) -> None:
    """The worker process's entry point."""
    try:
        asyncio.run(_Worker(spec, handoff, control).run())
    except KeyboardInterrupt:
        pass


class _Worker:
    def __init__(self, spec: WorkerSpec, handoff: socket.socket, control: socket.socket) -> None:
        values = dict(spec.settings)
        values["auth_token"] = Secret(values["auth_token"])
        self.spec = spec
        self.handoff = handoff
        self.control = control
        self.board = SharedBoard(spec.board_path, spec.workers)
        self.limit = WorkerStreamLimit(self.board, spec.index, spec.max_calls)
        self.server = TwilioServer(
            TwilioSettings(**values),
            spec.pipeline_factory,
            paths=spec.paths,
            max_calls=spec.max_calls,
            stream_limit=self.limit,
            listen=False,
            **spec.server_options,
        )
        self.server.public_base_url = spec.public_base_url
        self.server.app.middlewares.append(_one_request_per_connection)
        self.placed = 0
        self.connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _own(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.handoff.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=self.control)
        async with self.server:
            loop.add_reader(self.handoff.fileno(), self._adopt_ready)
            self._own(self._report_stats(), "stats")
            await send_message(writer, ("ready", os.getpid()))
            try:
                while (message := await receive_message(reader)) is not None and message[0] != "stop":
                    if message[0] == "place":
                        self._own(self._place(writer, message[1], message[2], message[3]), f"place:{message[1]}")
                    elif message[0] == "metrics":
                        await send_message(writer, ("metrics", message[1], _exported_metrics()))
            finally:
                loop.remove_reader(self.handoff.fileno())
                for task in self._tasks:
                    task.cancel()
        self._write_stats()
        writer.close()
        self.board.close()

    def _adopt_ready(self) -> None:
        while True:
            try:
                message, fds, _flags, _address = socket.recv_fds(self.handoff, 16, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.error("worker {}: the hand-over socket failed: {}", self.spec.index, exc)
                asyncio.get_running_loop().remove_reader(self.handoff.fileno())
                return
            if not message and not fds:  # the pool closed its end (every hand-over carries one byte)
                asyncio.get_running_loop().remove_reader(self.handoff.fileno())
                return
            for fd in fds:
                self.connections += 1
                self._own(self._adopt(socket.socket(fileno=fd)), "adopt")

    async def _adopt(self, sock: socket.socket) -> None:
        try:
            await self.server.adopt(sock)
        except OSError as exc:
            logger.warning("worker {}: a handed-over connection could not be served: {}", self.spec.index, exc)
            sock.close()

    async def _place(self, writer: asyncio.StreamWriter, call_id: int, to: str, options: dict[str, Any]) -> None:
        try:
            call = await self.server.place_call(to, **options)
        except Exception as exc:  # place_call reports failures in the record; anything else is a bug, but one call's
            logger.opt(exception=exc).error("worker {}: placing a call failed: {}", self.spec.index, exc)
            record = CallRecord(None, mask_number(to), CallOutcome.ERROR, "not placed", 0.0, 0.0)
            await send_message(writer, ("ended", call_id, record))
            return
        self.placed += 1
        await send_message(writer, ("placed", call_id, call.token, call.sid))
        record = await call.wait()
        await send_message(writer, ("ended", call_id, record))

    def _write_stats(self) -> None:
        server = self.server
        values = [
            server.streams,
            len(server.active),
            self.limit.accepted,
            server.rejected_signatures,
            self.placed,
            self.connections,
            server.refused_overloaded,
            int(server.overloaded),
            round(1000 * server.loop_monitor.lag(0.9)),
        ]
        self.board.write_stats(self.spec.index, values)

    async def _report_stats(self) -> None:
        while True:
            self._write_stats()
            await asyncio.sleep(0.1)
