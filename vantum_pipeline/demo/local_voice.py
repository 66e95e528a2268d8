"""A voice loop on this machine: the bot on your microphone and speaker.

    microphone → STT → UserAggregator → LLM → SentenceAggregator → TTS → speaker → AssistantAggregator

Each service is the cloud one when its key is in the environment (or
``.env``), else its offline engine: ``DEEPGRAM_API_KEY`` → Deepgram, else
pocketsphinx; ``OPENAI_API_KEY`` → OpenAI, else the scripted sales agent;
``CARTESIA_API_KEY`` → Cartesia, else espeak-ng. ``offline_only=True`` (what
``vantum demo --mic`` uses) ignores the keys. The bot speaks first, and the
call ends when the agent says goodbye or on Ctrl-C.

The devices are the system's default microphone and speaker, or those named
by ``LocalAudioParams`` (``vantum demo --mic --input-device ... --output-device
...``, or ``VANTUM_INPUT_DEVICE`` / ``VANTUM_OUTPUT_DEVICE``).

The local transport has no echo cancellation: use headphones, or the bot
hears itself and interrupts itself.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from vantum_pipeline.demo.console import CallConsole
from vantum_pipeline.frames import LLMContextFrame
from vantum_pipeline.pipeline import Pipeline
from vantum_pipeline.processor import FrameProcessor
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import SALES_PROMPT, LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.settings import load_env
from vantum_pipeline.task import PipelineRunner, PipelineTask
from vantum_pipeline.transports.local import LocalAudioParams, LocalAudioTransport, probe_local_audio

__all__ = ["build_local_voice", "choose_services", "run_local_voice"]

RATE = 16000
PROSPECT = {
    "agent_name": "Alex",
    "company_name": "Vantum",
    "prospect_name": "you",
    "prospect_company": "your company",
    "product_name": "Vantum",
}


def choose_services(env: Mapping[str, str], *, offline_only: bool = False) -> dict[str, str]:
    """Which engine each role gets: ``{"stt": "deepgram"|"pocketsphinx", "llm": ..., "tts": ...}``."""

    def has(name: str) -> bool:
        return not offline_only and bool(env.get(name, "").strip())

    return {
        "stt": "deepgram" if has("DEEPGRAM_API_KEY") else "pocketsphinx",
        "llm": "openai" if has("OPENAI_API_KEY") else "scripted",
        "tts": "cartesia" if has("CARTESIA_API_KEY") else "espeak",
    }


def _services(env: Mapping[str, str], chosen: Mapping[str, str]) -> tuple[FrameProcessor, ...]:
    stt: FrameProcessor
    llm: FrameProcessor
    tts: FrameProcessor
    if chosen["stt"] == "deepgram":
        from vantum_pipeline.services.deepgram import DeepgramSettings, DeepgramSTTService

        stt = DeepgramSTTService(DeepgramSettings.from_env(env))
    else:
        from vantum_pipeline.services.offline.stt import PocketsphinxSTTService

        stt = PocketsphinxSTTService()
    if chosen["llm"] == "openai":
        from vantum_pipeline.services.openai import OpenAILLMService, OpenAISettings

        llm = OpenAILLMService(OpenAISettings.from_env(env))
    else:
        from vantum_pipeline.services.offline.llm import ScriptedLLMService

        llm = ScriptedLLMService()
    if chosen["tts"] == "cartesia":
        from vantum_pipeline.services.cartesia import CartesiaSettings, CartesiaTTSService

        tts = CartesiaTTSService(CartesiaSettings.from_env(env))
    else:
        from vantum_pipeline.services.offline.tts import EspeakTTSService

        tts = EspeakTTSService()
    return stt, llm, tts


def build_local_voice(
    console: CallConsole,
    env: Mapping[str, str] | None = None,
    *,
    offline_only: bool = False,
    params: LocalAudioParams | None = None,
) -> tuple[PipelineTask, LLMContext, dict[str, str]]:
    """The voice loop's task (the greeting queued), its context and the engines chosen."""
    values = load_env(env)
    chosen = choose_services(values, offline_only=offline_only)
    stt, llm, tts = _services(values, chosen)
    transport = LocalAudioTransport(params or LocalAudioParams.from_env(values))
    context = LLMContext.from_template(SALES_PROMPT, PROSPECT)
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            console.stt_tap(),
            UserAggregator(context),
            llm,
            SentenceAggregator(),
            tts,
            console.tts_tap(),
            transport.output(),
            AssistantAggregator(context),
        ]
    )
    task = PipelineTask(pipeline, audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
    return task, context, chosen


async def run_local_voice(
    env: Mapping[str, str] | None = None,
    *,
    offline_only: bool = True,
    stream: TextIO = sys.stdout,
    params: LocalAudioParams | None = None,
) -> int:
    """Run the loop until the agent ends the call or Ctrl-C; 0 unless the pipeline failed.

    ``params``: the devices (default: ``LocalAudioParams.from_env``). A missing
    PortAudio, device or sound server raises ConfigurationError before the call starts.
    """
    params = params or LocalAudioParams.from_env(load_env(env))
    await probe_local_audio(params)  # a clear message, not a failed pipeline (nor a hang)
    console = CallConsole(stream)
    task, _, chosen = build_local_voice(console, env, offline_only=offline_only, params=params)
    console.note(
        f"talking through your microphone and speaker (stt: {chosen['stt']}, llm: {chosen['llm']}, "
        f"tts: {chosen['tts']}); use headphones; Ctrl-C to hang up"
    )
    context = next(p.context for p in task.pipeline._leaves() if isinstance(p, UserAggregator))
    await task.queue_frame(LLMContextFrame(context))
    await PipelineRunner().run(task)
    if task.finish_reason == "error" and task.error is not None:
        print(f"vantum demo --mic: {task.error.error}", file=sys.stderr)
        return 1
    return 0
