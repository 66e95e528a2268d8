"""Set-up a server does once when it starts, so that its first calls do not.

A process that serves calls imports most of what a call needs when its
modules are imported, but the SDKs put off part of it until it is first
used: Cartesia's SDK (imported by the service when it first connects, about
170 modules), the Twilio REST client and the ``requests`` stack under it
(about 180), the HTTP stacks of the openai and Cartesia clients (``httpcore``,
``httpcore2``, ``anyio``, ``h11``: about 120, ``trio`` with them). Measured in
the call-density benchmark: the first call of a process imported 559 modules.
Imports run on the event loop and hold it, so the first calls after a start
stalled every call of the process (at K = 10, the turn's react time p99
was 67-69 ms, against 18-22 ms once a first call had been made), and the
modules' objects, created after
``TwilioServer`` froze the heap (``tune_gc``), stayed in every full
collection's walk.

Each part of the library that has such deferred set-up registers a step here
when its module is imported (``register``); :func:`warm_up` runs every step
not run yet in this process, once. ``TwilioServer.start`` calls it (in a
thread, before it freezes the heap) unless ``warm_up=False``. A step only
imports modules and does offline first-use work (no socket is opened, no
client that would need closing is kept); one that fails is logged and
skipped: the call that needs it pays as before.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable

from loguru import logger

__all__ = ["http_stacks", "import_available", "pending", "register", "warm_up"]

_steps: dict[str, Callable[[], None]] = {}
_done: set[str] = set()
#: Re-entrant: a step that imports a module registering a step of its own must not deadlock.
_lock = threading.RLock()


def register(name: str, step: Callable[[], None]) -> None:
    """Add ``step`` under ``name`` (registering a name again replaces a step not run yet)."""
    with _lock:
        if name not in _done:
            _steps[name] = step


def pending() -> list[str]:
    """The steps registered and not run yet, in order."""
    with _lock:
        return [name for name in _steps if name not in _done]


def warm_up() -> dict[str, float]:
    """Run every pending step once; return each one's seconds. Never raises (a failed step is logged).
    A step registered while the steps run (by a module a step imports) waits for the next call."""
    timings: dict[str, float] = {}
    with _lock:  # one warm-up at a time: a second server starting waits for the first's
        for name, step in list(_steps.items()):
            if name in _done:
                continue
            _done.add(name)
            started = time.perf_counter()
            try:
                step()
            except Exception as exc:
                kind = type(exc).__name__
                logger.warning("warm-up step {!r} failed ({}: {}); its first call will do it", name, kind, exc)
                continue
            timings[name] = time.perf_counter() - started
    if timings:
        logger.info(
            "warmed up in {:.0f} ms ({})",
            1000 * sum(timings.values()),
            ", ".join(f"{name} {1000 * seconds:.0f} ms" for name, seconds in timings.items()),
        )
    return timings


def import_available(names: Iterable[str]) -> int:
    """Import each module of ``names`` that exists; return how many did. An SDK release that moved
    one costs only that module's warmth."""
    count = 0
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        count += 1
    return count


def http_stacks() -> None:
    """A step for the services on httpx (or openai's httpx2): what a client's first request imports,
    its connection pool, HTTP/1.1 and the async backends. Registered as ``"http"`` by each."""
    names = ["h11", "anyio._backends._asyncio", "anyio.streams.tls", "certifi", "truststore", "distro"]
    for core in ("httpcore", "httpcore2"):
        names += [
            f"{core}._async.connection_pool",
            f"{core}._async.http11",
            f"{core}._async.http_proxy",
            f"{core}._backends.auto",
            f"{core}._backends.anyio",
            f"{core}._backends.trio",
        ]
    import_available(names)
