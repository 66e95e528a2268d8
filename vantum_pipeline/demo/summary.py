"""``vantum demo``'s headline and closing summary around the simulated call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from vantum_pipeline.demo.console import CallConsole
from vantum_pipeline.demo.phone_call import run_phone_demo

__all__ = ["format_summary", "run_and_summarize"]

HEADLINE = """\
vantum demo: one outbound sales call, offline (no API keys, no network)
  phone line  Twilio media stream (twilio SDK)   <-> a local Twilio stand-in and a simulated prospect
  ears        Deepgram live STT (deepgram-sdk)   <-> a local Deepgram stand-in running pocketsphinx
  brain       OpenAI chat (openai SDK)           <-> a local OpenAI stand-in running a scripted sales agent
  voice       Cartesia TTS (cartesia SDK)        <-> a local Cartesia stand-in running espeak-ng
"""


def format_summary(record: dict[str, Any]) -> str:
    sim = record["simulation"]
    cost = record.get("cost") or {}
    by_service = cost.get("by_service") or {}
    lines = ["", "summary"]
    lines.append(f"  outcome        {record['outcome']}  (Twilio status: {record['telephony']['status']})")
    lines.append(f"  call length    {record['duration_seconds']:.1f} s")
    latencies = sim["turn_latencies"]
    if latencies:
        lines.append(
            f"  turn latency   median {sim['median_turn_latency']:.2f} s, min {min(latencies):.2f} s, "
            f"max {max(latencies):.2f} s  (end of callee speech -> first bot audio heard)"
        )
    lines.append(
        f"  word accuracy  bot hearing the callee {100 * sim['bot_side_recognition']['word_accuracy']:.0f}%, "
        f"callee hearing the bot {100 * sim['callee_side_recognition']['word_accuracy']:.0f}%"
    )
    barge = sim.get("barge_in")
    if barge and barge.get("reaction_seconds") is not None:
        lines.append(
            f"  barge-in       bot cut {barge['reaction_seconds']:.2f} s after the callee started talking, "
            f"{barge['chunks_played_after_cut']} chunk(s) played after the cut; the context keeps only what "
            f"was heard: {barge['context_message']!r}"
        )
    if cost:
        services = ", ".join(f"{name} ${value:.4f}" for name, value in sorted(by_service.items()))
        lines.append(f"  cost           ${cost.get('total', 0.0):.4f} at the product's prices ({services})")
    return "\n".join(lines)


async def run_and_summarize(
    out_dir: Path, *, quiet: bool = False, interims: bool = True, stream: TextIO = sys.stdout
) -> int:
    if not quiet:
        print(HEADLINE, file=stream, flush=True)
    console = CallConsole(None if quiet else stream, interims=interims)
    result = await run_phone_demo(out_dir, console)
    print(format_summary(result.record), file=stream)
    print(f"  wrote          {result.wav_path} and {result.json_path} in {result.run_seconds:.1f} s", file=stream)
    return 0 if result.record["outcome"] not in ("error", "cancelled") else 1
