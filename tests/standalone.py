"""A fake service run from the command line, as a user runs it: ``python -m vantum_pipeline.testing NAME``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def standalone_fake(service: str, *, timeout: float = 30.0) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Start the fake on a port it picks itself (``--port 0``, the default) and yield the line it prints
    and the URLs in it (``{"ws_url": ...}``); the process is terminated (killed if it lingers) on the way out.

    The port is bound by the child: one picked here and bound later could be taken in between.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vantum_pipeline.testing", service,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(timeout):
            line = (await process.stdout.readline()).decode()
        _, _, listed = line.partition(" listening: ")
        urls = dict(item.strip().split("=", 1) for item in listed.split(",") if "=" in item)
        yield line, urls
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), timeout=5)
