"""Time to first audio of CartesiaTTSService against FakeCartesia, next to the bare SDK.

    PYTHONPATH=. python benchmarks/cartesia_ttfb.py [turns]

For each turn: the time from queueing the reply's first TextFrame at the
pipeline head to the first TTSAudioRawFrame leaving the pipeline (what the
transport would get), and the service's own ``latency.tts_ttfb`` metric. The
bare SDK figure is ``conn.send()`` of the same request to the first chunk
from ``conn.recv()`` on the same fake: the difference is what the service
adds. Measured with the fake answering at once, and with a simulated 90 ms
service time to first byte. The fake runs in its own process, so that its
synthesis and sending do not compete with the client's event loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import sys
import time
from typing import Any

from cartesia import AsyncCartesia

from vantum_pipeline.frames import (
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    MetricsFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService
from vantum_pipeline.settings import Secret
from vantum_pipeline.testing import PipelineHarness
from vantum_pipeline.testing.cartesia import FakeCartesia

SENTENCE = "Thanks for taking my call, do you have a minute to talk about your outbound calling?"
FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    return f"p50 {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   max {ms[-1]:6.1f} ms"


def serve(delay: float, ports: Any) -> None:
    """The fake, in a process of its own."""

    async def run() -> None:
        async with FakeCartesia() as fake:
            fake.faults.first_chunk_delay = delay
            ports.put(fake.port)
            await asyncio.Event().wait()

    asyncio.run(run())


class Remote:
    """Where the fake process listens (what ``measure`` needs of a fake)."""

    def __init__(self, port: int) -> None:
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"


async def measure(fake: Remote, turns: int) -> tuple[list[float], list[float], list[float]]:
    """Alternate a bare-SDK request and a service turn, so both see the same machine load."""
    client = AsyncCartesia(api_key="bench", base_url=fake.http_url, websocket_base_url=fake.ws_url)
    settings = CartesiaSettings(api_key=Secret("bench"), base_url=fake.http_url, websocket_base_url=fake.ws_url)
    sdk: list[float] = []
    wall: list[float] = []
    first_audio: dict[str, float] = {}
    arrived = asyncio.Event()

    def on_frame(frame: Frame, direction: FrameDirection) -> None:
        # Stamped as the frame leaves the pipeline (the harness's own waiting scans every frame).
        if isinstance(frame, TTSAudioRawFrame) and frame.context_id not in first_audio:
            first_audio[str(frame.context_id)] = time.perf_counter()
            arrived.set()

    async with client.tts.websocket_connect() as conn, PipelineHarness([CartesiaTTSService(settings)]) as harness:
        harness.task.add_observer(on_frame)
        await asyncio.sleep(0.2)  # the service's socket opens at start, as in a call
        for turn in range(1, turns + 1):
            request = {
                "context_id": f"sdk-{turn}",
                "model_id": "sonic-2",
                "voice": {"id": "v"},
                "output_format": FORMAT,
                "transcript": SENTENCE + " ",
                "continue": False,
            }
            start = time.perf_counter()
            await conn.send(request)
            first = None
            while (event := await conn.recv()).type != "done":
                if event.type == "chunk" and first is None:
                    first = time.perf_counter() - start
            sdk.append(first or 0.0)

            await harness.send(LLMFullResponseStartFrame())
            arrived.clear()
            start = time.perf_counter()
            await harness.send(TextFrame(SENTENCE))
            await asyncio.wait_for(arrived.wait(), 10)
            wall.append(max(first_audio.values()) - start)
            await harness.send(LLMFullResponseEndFrame())
            await harness.wait_for(TTSStoppedFrame, count=turn, timeout=10)
    await client.close()
    metric = [f.value for f in harness.downstream if isinstance(f, MetricsFrame) and f.metric == "latency.tts_ttfb"]
    return sdk, wall, metric


async def main(turns: int) -> None:
    for delay in (0.0, 0.09):
        ports: Any = multiprocessing.Queue()
        server = multiprocessing.Process(target=serve, args=(delay, ports), daemon=True)
        server.start()
        try:
            sdk, wall, metric = await measure(Remote(ports.get(timeout=30)), turns)
        finally:
            server.terminate()
            server.join(5)
        print(f"\nFakeCartesia time to first chunk {delay * 1000:.0f} ms, {turns} turns of {len(SENTENCE)} characters")
        print(f"  bare SDK (send -> first chunk)           {summary(sdk)}")
        print(f"  service (TextFrame in -> audio out)      {summary(wall)}")
        print(f"  service metric latency.tts_ttfb          {summary(metric)}")
        added = statistics.median(wall) - statistics.median(sdk)
        print(f"  added by the service (p50 difference)    {added * 1000:6.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40))
