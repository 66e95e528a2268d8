"""A real ``redis-server`` on a free loopback port, for tests.

Not a fake: the Debian/Ubuntu ``redis-server`` binary (or any on ``PATH``), run
in a private directory with an append-only file, so a test can stop it, kill
it and start it again on the same port and find its data there, the way a
production Redis configured for durability behaves.

    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        ...
        server.restart()        # SIGTERM, then the same port and data
        server.kill()           # SIGKILL; server.start() brings it back
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from vantum_pipeline.errors import ConfigurationError

__all__ = ["RedisServer", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """The path of ``redis-server``, or None when it is not installed."""
    return shutil.which("redis-server")


_PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    """redis-server could not have its port: another process holds it."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ask(port: int, command: bytes) -> bytes | None:
    """One inline command's reply from the server on ``port``, or None (nothing answers yet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(command)
            reply = b""
            # A bulk reply: "$<length>\r\n<payload>\r\n"; read until all of it is in.
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return reply or None
                reply += chunk
                if reply.startswith(b"$") and b"\r\n" in reply:
                    header, _, body = reply.partition(b"\r\n")
                    if len(body) >= int(header[1:]) + 2:
                        return reply
                elif reply.endswith(b"\r\n"):
                    return reply  # an error or a status line
    except (OSError, ValueError):
        return None


class RedisServer:
    """One ``redis-server`` process owned by the caller (a context manager)."""

    def __init__(self, *, port: int | None = None, durable: bool = True, start_timeout: float = 10.0) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise ConfigurationError("redis-server is not installed (Debian package: redis-server)")
        self.binary = binary
        #: A port we picked may be taken by another process before redis-server binds it: then ``start``
        #: picks another (at the first start only; a restart keeps its port, as a client expects).
        self._pick_port = port is None
        self.port = port or _free_port()
        self.durable = durable
        self.start_timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="vantum-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        for attempt in range(_PORT_ATTEMPTS):
            try:
                self._start_on_port()
            except _PortTaken as taken:
                if not self._pick_port or attempt == _PORT_ATTEMPTS - 1:
                    raise ConfigurationError(f"redis-server could not listen on port {self.port}: {taken}") from None
                self.port = _free_port()
            else:
                self._pick_port = False  # started: the port is this server's from now on
                return

    def _start_on_port(self) -> None:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self._dir),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        log_path = self._dir / "redis.log"
        logged = log_path.stat().st_size if log_path.exists() else 0  # this start's lines come after
        process = self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                said = log_path.read_bytes()[logged:].decode(errors="replace") if log_path.exists() else ""
                if "Address already in use" in said:
                    raise _PortTaken("address already in use")
                raise ConfigurationError(f"redis-server exited at start (code {process.returncode}): {said[-2000:]}")
            answer = _ask(self.port, b"INFO server\r\n")
            if answer is not None and b"process_id:" in answer:
                if f"process_id:{process.pid}\r".encode() in answer:
                    return
                # Another process's Redis answers on the port: this one cannot bind it.
                self.kill()
                raise _PortTaken("another Redis answers on it")
            time.sleep(0.05)
        self.kill()
        raise ConfigurationError(f"redis-server did not answer on port {self.port} within {self.start_timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis finishes its append-only file and exits."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: what an unlucky crash does."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self._dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
