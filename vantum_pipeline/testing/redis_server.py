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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process owned by the caller (a context manager)."""

    def __init__(self, *, port: int | None = None, durable: bool = True, start_timeout: float = 10.0) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise ConfigurationError("redis-server is not installed (Debian package: redis-server)")
        self.binary = binary
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
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                raise ConfigurationError(f"redis-server exited at start (code {code}): {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
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
