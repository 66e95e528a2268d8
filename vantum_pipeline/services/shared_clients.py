"""SDK clients shared by every call of a process, one per configuration.

Building an SDK client is expensive: each of ``AsyncOpenAI``,
``AsyncDeepgramClient`` and ``AsyncCartesia`` makes an HTTP client, which
builds a TLS context and loads the CA bundle (milliseconds of CPU), and owns
a connection pool. A server that builds them per call pays that on every
call and never reuses a connection. The services take their clients from
here instead: one client per distinct configuration (the service, its key,
its URLs and timeouts: a hashable ``key`` the service builds) and per event
loop, since an HTTP connection pool belongs to the loop it was opened on.

A call never closes a shared client: an application closes the current
loop's clients with :func:`close_shared_clients` when it shuts down, and a
loop's clients are dropped with the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from loguru import logger

__all__ = ["close_shared_clients", "shared_client", "shared_client_count"]

ClientT = TypeVar("ClientT")

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, Any]] = weakref.WeakKeyDictionary()


def shared_client(key: Hashable, make: Callable[[], ClientT]) -> ClientT:
    """The running loop's client for ``key``, built by ``make()`` the first time."""
    clients = _by_loop.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(key)
    if client is None:
        client = clients[key] = make()
    return client


def shared_client_count() -> int:
    """How many shared clients the running loop holds."""
    return len(_by_loop.get(asyncio.get_running_loop(), {}))


async def close_shared_clients(timeout: float = 2.0) -> None:
    """Close the running loop's shared clients (each within ``timeout`` seconds)."""
    clients = _by_loop.pop(asyncio.get_running_loop(), {})
    for key, client in clients.items():
        close = getattr(client, "close", None) or getattr(client, "aclose", None)
        if close is None:
            continue
        try:
            async with asyncio.timeout(timeout):
                result = close()
                if asyncio.iscoroutine(result):
                    await result
        except Exception as exc:  # closing a pool must not fail a shutdown
            with contextlib.suppress(Exception):
                logger.debug("closing the shared client {}: {}", key[0] if isinstance(key, tuple) else key, exc)
