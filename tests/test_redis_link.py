"""Redis link: what counts as a connection failure, against a real redis-server.

arq queues a job inside a WATCH transaction. When the connection drops while
the key is watched, redis-py does not raise its ``ConnectionError`` but a
``WatchError`` saying so. That is still Redis going away (a restart, a cut),
and a job must be queued after it, not lost with the coordinator's run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from vantum_pipeline.campaign.redis_link import is_connection_error, redis_settings, with_redis
from vantum_pipeline.observability.retry import RetryPolicy

FAST = RetryPolicy(max_retries=3, base_delay=0.01, multiplier=1.0, max_delay=0.01, jitter=0.0)


class CuttingProxy:
    """A TCP proxy in front of Redis that drops the first connection which sends ``cut_on`` after WATCH."""

    def __init__(self, target_port: int, cut_on: bytes = b"EXISTS") -> None:
        self.target_port = target_port
        self.cut_on = cut_on
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        watching = False

        # Each direction closes the socket it writes to when it ends, cancelled included: from Python 3.12
        # on, the server's wait_closed() waits for every connection it accepted to close.
        async def upstream() -> None:
            nonlocal watching
            try:
                while data := await reader.read(65536):
                    watching = watching or b"WATCH" in data
                    if watching and self.cut_on in data and self.cuts == 0:
                        self.cuts += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    up_writer.write(data)
                    await up_writer.drain()
            finally:
                up_writer.close()

        async def downstream() -> None:
            try:
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        for coro in (upstream(), downstream()):
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def test_a_connection_dropped_while_arq_watches_the_job_is_retried_and_the_job_queued_once(
    redis_server: Any,
) -> None:
    from arq.connections import create_pool

    async with CuttingProxy(int(redis_server.url.rsplit(":", 1)[1].split("/")[0])) as proxy:
        pool = await create_pool(redis_settings(f"redis://127.0.0.1:{proxy.port}/0", conn_retries=2))
        try:
            job = await asyncio.wait_for(
                with_redis(lambda: pool.enqueue_job("place_call", "x", _job_id="job-1"), what="enqueue", policy=FAST),
                30,
            )
            assert proxy.cuts == 1, "the proxy never cut the watched connection: the test did not test anything"
            assert job is not None, "the retry found the job queued by the failed attempt"
            again = await with_redis(lambda: pool.enqueue_job("place_call", "x", _job_id="job-1"), what="enqueue")
            assert again is None  # one job, never two
            assert await pool.zcard("arq:queue") == 1
        finally:
            await pool.aclose()


def test_a_watch_error_is_a_connection_error_only_when_a_connection_failed() -> None:
    from redis.exceptions import ConnectionError, ResponseError, WatchError

    def raised_during(cause: BaseException) -> WatchError:
        try:
            try:
                raise cause
            except type(cause):
                raise WatchError("A ConnectionError occurred on while watching one or more keys")  # noqa: B904
        except WatchError as exc:
            return exc

    assert is_connection_error(raised_during(ConnectionError("reset")))
    assert is_connection_error(raised_during(OSError("broken pipe")))
    assert not is_connection_error(WatchError("Watched variable changed."))
    assert not is_connection_error(raised_during(ResponseError("WRONGTYPE")))
    assert is_connection_error(ConnectionError("reset"))
    assert not is_connection_error(ResponseError("ERR unknown command"))


@pytest.mark.parametrize("depth", [1, 3])
def test_a_cycle_in_the_exception_chain_does_not_hang(depth: int) -> None:
    from redis.exceptions import WatchError

    first = WatchError("a")
    last = first
    for _ in range(depth):
        nxt = WatchError("b")
        last.__context__ = nxt
        last = nxt
    last.__context__ = first
    assert not is_connection_error(first)
