"""The testing RedisServer: a port picked for it may be taken before redis-server binds it.

Another process (a test worker's own server, a connection's ephemeral port)
can take a free port between the moment it is picked and the moment
redis-server binds it. The server must then neither fail the test at random
nor, worse, report as started while another process's Redis answers there.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.testing import redis_server as module
from vantum_pipeline.testing.redis_server import RedisServer

pytestmark = pytest.mark.usefixtures("redis_installed")


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another process-like owner listens on (not Redis)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def command(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line)
        return sock.recv(4096)


def picks(monkeypatch: pytest.MonkeyPatch, *ports: int) -> None:
    """Make the server's port picker hand out ``ports`` first (the race, made to happen)."""
    queue = list(ports)
    real = module._free_port
    monkeypatch.setattr(module, "_free_port", lambda: queue.pop(0) if queue else real())


def test_a_picked_port_taken_before_the_start_is_replaced(monkeypatch: pytest.MonkeyPatch, held_port: int) -> None:
    picks(monkeypatch, held_port)
    with RedisServer(durable=False) as server:
        assert server.port != held_port
        assert command(server.port, b"PING\r\n").startswith(b"+PONG")
        port = server.port
        server.restart()  # a restart keeps the port it started on
        assert server.port == port
        assert command(server.port, b"PING\r\n").startswith(b"+PONG")


def test_a_given_port_that_is_taken_is_a_clear_error(held_port: int) -> None:
    server = RedisServer(port=held_port, durable=False)
    try:
        with pytest.raises(ConfigurationError, match=f"port {held_port}"):
            server.start()
        assert not server.running
    finally:
        server.close()


def test_another_redis_on_the_picked_port_is_not_taken_for_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    with RedisServer(durable=False) as first:
        assert command(first.port, b"SET owner first\r\n").startswith(b"+OK")
        picks(monkeypatch, first.port)
        with RedisServer(durable=False) as second:
            assert second.port != first.port
            assert command(second.port, b"GET owner\r\n") == b"$-1\r\n"  # an empty server of its own
        assert command(first.port, b"GET owner\r\n") == b"$5\r\nfirst\r\n"  # the first one untouched


def test_another_redis_on_a_given_port_is_a_clear_error() -> None:
    with RedisServer(durable=False) as first:
        second = RedisServer(port=first.port, durable=False)
        try:
            with pytest.raises(ConfigurationError, match=f"port {first.port}"):
                second.start()
        finally:
            second.close()
        assert command(first.port, b"PING\r\n").startswith(b"+PONG")
