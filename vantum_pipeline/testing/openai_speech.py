"""The speech endpoint of FakeOpenAI: ``POST /v1/audio/speech``.

What the openai SDK's ``audio.speech.create`` (and its
``with_streaming_response`` form) sends, checked as the API checks it:
``model`` (``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts``…), ``input`` (1 to
4096 characters), ``voice`` (a built-in name, or ``{"id": ...}``),
``response_format`` (default ``mp3``), ``speed`` (0.25 to 4.0),
``instructions`` (not for the ``tts-1`` models), ``stream_format`` (``audio``;
``sse`` is refused for ``tts-1`` models). The answer streams the audio
(chunked transfer) as it is "synthesized": ``pcm`` is raw 16-bit
little-endian mono at 24 kHz, ``wav`` the same with a WAV header. The fake
has no mp3/opus/aac/flac encoder: those formats are answered with a 400
saying so (a test asks for ``pcm``, as a phone pipeline does).

The audio comes from ``ToneSynthesizer`` (``testing/cartesia.py``), sent in
chunks of ``chunk_ms`` every ``chunk_delay`` seconds. ``fake.fail_next(...)``
faults apply to the next request of either endpoint: ``http_error`` (and
429), ``stall_before_first_token`` (headers sent, no audio), and
``stall_mid_stream`` / ``drop_connection`` after ``after_tokens`` chunks.
Each request is recorded in ``fake.requests`` (``reply_text`` is the input,
``tokens_sent`` the chunks sent, ``disconnected`` when the client went away).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vantum_pipeline.testing.cartesia import ToneSynthesizer, synthesize
from vantum_pipeline.testing.openai_wire import error_body

if TYPE_CHECKING:
    from vantum_pipeline.testing.openai import FakeOpenAI, Fault, RecordedRequest

__all__ = ["SPEECH_RATE", "SpeechEndpoint"]

#: The sample rate of ``pcm`` speech.
SPEECH_RATE = 24000
VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
_KNOWN = {"model", "input", "voice", "instructions", "response_format", "speed", "stream_format"}


class _Rejected(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _validate(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Rejected("the body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN)
    if unknown:
        raise _Rejected(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Rejected("you must provide a model parameter", "model")
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise _Rejected("input must be a non-empty string", "input")
    if len(text) > 4096:
        raise _Rejected(f"input is {len(text)} characters; the maximum is 4096", "input")
    voice = body.get("voice")
    if not (voice in VOICES or (isinstance(voice, dict) and isinstance(voice.get("id"), str))):
        raise _Rejected(f"voice must be one of {', '.join(VOICES)} or a custom voice id, got {voice!r}", "voice")
    fmt = body.get("response_format", "mp3")
    if fmt not in FORMATS:
        raise _Rejected(f"response_format must be one of {', '.join(FORMATS)}, got {fmt!r}", "response_format")
    speed = body.get("speed", 1.0)
    if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
        raise _Rejected(f"speed must be between 0.25 and 4.0, got {speed!r}", "speed")
    if model.startswith("tts-1") and ("instructions" in body or body.get("stream_format") == "sse"):
        raise _Rejected(f"{model} does not support instructions or sse streaming", "model")
    return body


class SpeechEndpoint:
    """Serves ``/v1/audio/speech`` for a ``FakeOpenAI``."""

    def __init__(self, fake: FakeOpenAI, *, chunk_ms: int = 50, chunk_delay: float = 0.0) -> None:
        self._fake = fake
        self.synthesizer = ToneSynthesizer()
        self.chunk_ms = chunk_ms
        self.chunk_delay = chunk_delay

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from vantum_pipeline.testing.openai import RecordedRequest, _redact

        fake = self._fake
        record = RecordedRequest(request.method, request.path, _redact(request.headers), time.monotonic())
        fake.requests.append(record)
        fake._notify()
        try:
            response = await self._serve(request, record)
            if record.status is None:
                record.status = response.status
            return response
        except asyncio.CancelledError:
            record.disconnected = True  # the client went away: aiohttp cancels the handler
            raise
        finally:
            record.done.set()
            fake._notify()

    async def _serve(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        fake = self._fake
        denied = fake._authorized(request)
        if denied is not None:
            return fake._error(401, error_body(denied, type="invalid_request_error", code="invalid_api_key"))
        record.raw = await request.read()
        try:
            record.body = _validate(json.loads(record.raw))
        except ValueError:
            return fake._error(
                400, error_body("We could not parse the JSON body of your request.", type="invalid_request_error")
            )
        except _Rejected as rejected:
            return fake._error(400, error_body(str(rejected), type="invalid_request_error", param=rejected.param))
        body = record.body
        fmt = body.get("response_format", "mp3")
        if fmt not in ("pcm", "wav"):
            message = f"FakeOpenAI has no {fmt} encoder: ask for response_format pcm or wav"
            return fake._error(400, error_body(message, type="invalid_request_error", param="response_format"))
        fault = fake._faults.popleft() if fake._faults else None
        record.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "http_error":
            return fake._fault_response(fault)
        record.reply_text = body["input"]
        synthesis = await synthesize(self.synthesizer, body["input"], SPEECH_RATE)
        audio = synthesis.audio if fmt == "pcm" else _wav(synthesis.audio)
        content_type = "audio/pcm" if fmt == "pcm" else "audio/wav"
        response = web.StreamResponse(status=200, headers={**fake._headers(), "Content-Type": content_type})
        await response.prepare(request)
        record.status = 200
        step = SPEECH_RATE * 2 * self.chunk_ms // 1000
        try:
            if fault is not None and fault.kind in ("stall_first_token", "stall_headers"):
                if await fake._pause(fault.seconds):
                    return response
            for index, start in enumerate(range(0, len(audio), step)):
                if fault is not None and fault.after_tokens == index and await self._mid_fault(fault, request):
                    return response
                if self.chunk_delay and await fake._pause(self.chunk_delay):
                    return response
                await response.write(audio[start : start + step])
                record.tokens_sent += 1
            await response.write_eof()
            record.completed = True
        except ConnectionError:
            record.disconnected = True
        return response

    async def _mid_fault(self, fault: Fault, request: web.Request) -> bool:
        if fault.kind == "stall_mid_stream":
            return await self._fake._pause(fault.seconds)
        if fault.kind == "drop":
            if request.transport is not None:
                request.transport.abort()
            return True
        return False


def _wav(pcm16: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SPEECH_RATE)
        out.writeframes(pcm16)
    return buffer.getvalue()
