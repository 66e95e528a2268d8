"""pipecat-ai's side of the call-density benchmark: its Twilio example, lean.

A FastAPI app under uvicorn accepts Twilio's media websocket; each call gets
pipecat's ``FastAPIWebsocketTransport`` with its ``TwilioFrameSerializer``,
its Deepgram, OpenAI and Cartesia services pointed at the stand-ins, and the
universal context aggregators. Lean: no metrics, no VAD or smart-turn model;
the user's turn starts on a transcript and ends on Deepgram's final
transcript (a speech timeout of 0). Calls are placed through FakeTwilio's
REST API with inline TwiML, as pipecat's outbound example does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from typing import Any

import density_standins as standins
from fastapi import FastAPI, WebSocket  # at module level: FastAPI resolves the handler's annotations here

#: Audio pipecat's output transport writes per websocket message (its default: 4 × 10 ms).
CHUNK_SECONDS = 0.04


def quiet_logs(counter: Any) -> None:
    """Route pipecat's loguru output into the warning counter only."""
    counter.install()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _bot(websocket: Any, urls: dict[str, str], done: Any, rate: int) -> None:
    from pipecat.frames.frames import TTSSpeakFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.runner.utils import parse_telephony_websocket
    from pipecat.serializers.twilio import TwilioFrameSerializer
    from pipecat.services.cartesia.tts import CartesiaTTSService
    from pipecat.services.deepgram.stt import DeepgramSTTService
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
    from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy
    from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies
    from pipecat.workers.runner import WorkerRunner

    try:
        _kind, call_data = await parse_telephony_websocket(websocket)
        serializer = TwilioFrameSerializer(
            stream_sid=call_data["stream_id"],
            call_sid=call_data["call_id"],
            account_sid=standins.TWILIO_ACCOUNT,
            auth_token=standins.TWILIO_TOKEN,
            params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
        )
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
            ),
        )
        stt = DeepgramSTTService(
            api_key=standins.API_KEYS["deepgram"],
            base_url=urls["deepgram_ws"],
            settings=DeepgramSTTService.Settings(endpointing=standins.ENDPOINTING_MS, interim_results=True),
        )
        llm = OpenAILLMService(
            api_key=standins.API_KEYS["openai"],
            base_url=urls["openai"],
            settings=OpenAILLMService.Settings(
                model="gpt-4o", system_instruction="You are Sarah, a sales representative for Vantum."
            ),
        )
        tts = CartesiaTTSService(
            api_key=standins.API_KEYS["cartesia"],
            url=urls["cartesia_ws"] + "/tts/websocket",
            settings=CartesiaTTSService.Settings(voice="a0e99841-438c-4a64-b679-ae501e7d6091"),
        )
        context = LLMContext()
        aggregators = LLMContextAggregatorPair(
            context,
            user_params=LLMUserAggregatorParams(
                user_turn_strategies=UserTurnStrategies(
                    start=[TranscriptionUserTurnStartStrategy()],
                    stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)],
                )
            ),
        )
        pipeline = Pipeline(
            [
                transport.input(),
                stt,
                aggregators.user(),
                llm,
                tts,
                transport.output(),
                aggregators.assistant(),
            ]
        )
        task = PipelineWorker(
            pipeline,
            params=PipelineParams(
                audio_in_sample_rate=rate,
                audio_out_sample_rate=rate,
                enable_metrics=False,
                enable_usage_metrics=False,
            ),
            enable_rtvi=False,
            enable_turn_tracking=False,
            idle_timeout_secs=120,
            cancel_on_idle_timeout=True,
        )

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport: Any, _client: Any) -> None:
            await task.cancel()

        await task.queue_frames([TTSSpeakFrame(standins.GREETING)])
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(task)
        await runner.run()
    finally:
        done()


async def run_pipecat(urls: dict[str, str], k: int, options: dict[str, Any]) -> dict[str, Any]:
    import aiohttp
    import uvicorn
    from call_density import Usage  # the orchestrator's module, imported by the spawned process

    app = FastAPI()
    finished: list[float] = []
    all_done = asyncio.Event()

    warmed = asyncio.Event()

    def done() -> None:
        if options.get("warmup") and not warmed.is_set():
            warmed.set()  # the warm-up call: not counted
            return
        finished.append(time.monotonic())
        if len(finished) >= k:
            all_done.set()

    @app.websocket("/ws")
    async def media(websocket: WebSocket) -> None:
        await websocket.accept()
        await _bot(websocket, urls, done, 8000 if options.get("audio") == "phone" else 16000)

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", ws="websockets"))
    serving = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(30.0):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.05)
    twiml = f'<Response><Connect><Stream url="ws://127.0.0.1:{port}/ws"/></Connect></Response>'
    usage = Usage()
    outcomes: Counter[str] = Counter()
    auth = aiohttp.BasicAuth(standins.TWILIO_ACCOUNT, standins.TWILIO_TOKEN)
    url = f"{urls['twilio_api']}/2010-04-01/Accounts/{standins.TWILIO_ACCOUNT}/Calls.json"
    async with aiohttp.ClientSession(auth=auth) as session:

        async def one(i: int, to: str) -> None:
            await asyncio.sleep(i * 0.02)
            data = {"To": to, "From": "+15005550006", "Twiml": twiml}
            async with session.post(url, data=data) as response:
                outcomes["placed" if response.status == 201 else f"http {response.status}"] += 1

        if options.get("warmup"):  # one call first, as for vantum (see call_density._warm_up)
            await one(0, f"{standins.WARMUP_PREFIX}0000")
            async with asyncio.timeout(150.0):
                await warmed.wait()
            outcomes.clear()
        usage.start()
        t0 = time.monotonic()
        await asyncio.gather(*(one(i, f"+1415555{i:04d}") for i in range(k)))
        try:
            async with asyncio.timeout(150.0):
                await all_done.wait()
        except TimeoutError:
            outcomes["unfinished"] += k - len(finished)
    wall = time.monotonic() - t0
    figures = usage.stop()
    server.should_exit = True
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await serving
    return {**figures, "wall": wall, "outcomes": dict(outcomes), "rss_base": usage.base_rss}
