"""Deepgram STT: the CPU of the audio sent, with and without permessage-deflate.

    pip install -e ".[bench]"
    python benchmarks/deepgram_compression.py            # ~1 minute
    python benchmarks/deepgram_compression.py --rounds 2 --frames 500

``DeepgramSTTService`` streams a call's phone audio (8 kHz μ-law, 20 ms
frames) to FakeDeepgram, once over the socket deepgram-sdk's own connect
opens (it offers permessage-deflate, which the fake, like ``websockets``'
server, accepts) and once over the same request opened without compression
(``DeepgramSettings.compression=False``, the default). Each run: the socket
opens, ``--frames`` frames are queued as fast as the pipeline takes them,
then ``EndFrame`` (``CloseStream``, the last results). The figure is
``time.process_time()`` of this process across the run; the fake runs in a
child process, so its CPU is not counted. Two sendings: every frame its own
websocket message (``quiet_send_seconds=0``) and the default (quiet audio in
100 ms sends; the scripted audio here is noise the fake hears as speech, so
most frames still go one by one).

pipecat-ai's ``DeepgramSTTService`` opens its socket through the same SDK
call and so pays the same deflate; it is not run here. Rounds alternate
between the modes; medians are printed. The machine is shared: compare the
ratio, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

RATE = 8000
KEY = "bench-key"


def _quiet_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR")


def start_fake() -> tuple[subprocess.Popen[str], str]:
    """FakeDeepgram in a child process; its ws_url."""
    child = subprocess.Popen(
        [sys.executable, "-m", "vantum_pipeline.testing", "deepgram", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # "FakeDeepgram listening: http_url=..., ws_url=ws://..."
    for part in line.strip().split(": ", 1)[-1].split(", "):
        name, _, value = part.partition("=")
        if name == "ws_url":
            return child, value
    child.kill()
    raise SystemExit(f"FakeDeepgram did not start: {line!r}")


async def one_call(url: str, audio: list[bytes], *, compression: bool, quiet_send_seconds: float) -> float:
    """CPU seconds of this process to stream ``audio`` through the service."""
    from vantum_pipeline.frames import InputAudioRawFrame
    from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService
    from vantum_pipeline.settings import Secret
    from vantum_pipeline.testing.pipeline import PipelineHarness

    settings = DeepgramSettings(
        api_key=Secret(KEY), url=url, compression=compression, quiet_send_seconds=quiet_send_seconds
    ).for_phone()
    stt = DeepgramSTTService(settings)
    start = time.process_time()
    async with PipelineHarness([stt], audio_in_sample_rate=RATE, end_timeout=30) as harness:
        # Audio queued before the socket is open would be replayed in 100 ms
        # chunks (and capped): wait until it streams live.
        async with asyncio.timeout(10):
            await stt._live_event.wait()
        for chunk in audio:
            await harness.send(InputAudioRawFrame(chunk, RATE, encoding="mulaw"))
    return time.process_time() - start


async def bench(url: str, frames: int, rounds: int) -> dict[tuple[float, bool], list[float]]:
    from vantum_pipeline.testing.signals import frames as split
    from vantum_pipeline.testing.signals import mulaw, speech

    audio = split(mulaw(speech(frames * 0.02, RATE, seed=7)), RATE, sample_width=1)[:frames]
    results: dict[tuple[float, bool], list[float]] = {}
    for quiet in (0.0, 0.1):
        for compression in (True, False):  # warm-up: imports, the shared client, caches
            await one_call(url, audio[:50], compression=compression, quiet_send_seconds=quiet)
        for _ in range(rounds):
            for compression in (True, False):
                cpu = await one_call(url, audio, compression=compression, quiet_send_seconds=quiet)
                results.setdefault((quiet, compression), []).append(cpu)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="20 ms frames per call (3000: one minute)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    _quiet_logs()
    child, url = start_fake()
    try:
        results = asyncio.run(bench(url, args.frames, args.rounds))
    finally:
        child.terminate()
        child.wait(5)
    print(f"CPU of this process, {args.frames} frames of 20 ms 8 kHz mu-law, median of {args.rounds} rounds")
    print(f"{'sends':<32} {'deflate (SDK)':>14} {'no deflate':>12} {'ratio':>7}  per frame saved")
    for quiet in (0.0, 0.1):
        deflate = statistics.median(results[(quiet, True)])
        plain = statistics.median(results[(quiet, False)])
        label = "every frame (quiet_send 0)" if quiet == 0 else "default (quiet_send 0.1 s)"
        saved_us = (deflate - plain) / args.frames * 1e6
        print(f"{label:<32} {deflate:>13.3f}s {plain:>11.3f}s {plain / deflate:>7.2f}  {saved_us:.1f} µs")
        runs = {c: " ".join(f"{x:.3f}" for x in results[(quiet, c)]) for c in (True, False)}
        print(f"{'':<32} runs: deflate {runs[True]}; no deflate {runs[False]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
