"""Waiting in a test on state that has no event to wait on: a fake's records, a counter, another process's figures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], object], timeout: float = 5.0, *, interval: float = 0.01) -> None:
    """Poll ``condition()`` every ``interval`` seconds until it is true; ``TimeoutError`` after ``timeout``.

    A slow machine only makes this take longer.
    """
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - there is no event to wait on
            await asyncio.sleep(interval)
