"""The local sound card: microphone in, speaker out, through sounddevice (PortAudio).

    transport = LocalAudioTransport()
    pipeline = Pipeline([transport.input(), stt, ..., tts, transport.output(), ...])

``sounddevice`` is imported when the devices are opened (at ``StartFrame``),
not when this module is: without the package, the PortAudio library or a
device, opening fails with a ``ConfigurationError`` that says what to install
or check, and the pipeline ends with that error.

Input: a PortAudio callback thread delivers ``block_seconds`` blocks of mono
pcm16 at the pipeline's input rate; each becomes an ``InputAudioRawFrame``
handed to the event loop with ``call_soon_threadsafe`` (never blocking the
audio thread; the input buffer's overflow policy applies).

Output: the output transport paces chunks a little ahead of real time
(``OutputTransport``); ``write_audio`` appends them to a bounded buffer that
the PortAudio callback drains, playing silence when it runs dry.
``clear_output`` (an interruption) empties it at once. What was heard is
known from the audio clock, plus the device's reported output latency.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from loguru import logger

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MULAW, InputAudioRawFrame, StartFrame
from vantum_pipeline.transports.base import AudioChunk, InputTransport, OutputTransport

__all__ = ["LocalAudioInput", "LocalAudioOutput", "LocalAudioParams", "LocalAudioTransport", "load_sounddevice"]

INSTALL_HINT = (
    "local audio needs the sounddevice package and the PortAudio library: "
    "pip install 'vantum-pipeline[local]', then install PortAudio "
    "(Debian/Ubuntu: apt-get install libportaudio2; Fedora: dnf install portaudio; macOS: brew install portaudio)"
)


def load_sounddevice() -> Any:
    """The ``sounddevice`` module, or a ConfigurationError saying what to install."""
    try:
        import sounddevice
    except ImportError as exc:
        raise ConfigurationError(f"{INSTALL_HINT} (sounddevice is not installed: {exc})") from exc
    except OSError as exc:  # sounddevice is there, the PortAudio library is not
        raise ConfigurationError(f"{INSTALL_HINT} ({exc})") from exc
    return sounddevice


def _check_device(sounddevice: Any, kind: str, device: int | str | None) -> None:
    try:
        sounddevice.query_devices(device, kind=kind)
    except Exception as exc:  # PortAudioError, ValueError: no such device
        raise ConfigurationError(
            f"no {kind} sound device{f' {device!r}' if device is not None else ''} available ({exc}); "
            "connect one, or pick one with LocalAudioParams(input_device=..., output_device=...) "
            "(python -m sounddevice lists them)"
        ) from exc


@dataclass(frozen=True, slots=True)
class LocalAudioParams:
    """Devices (None: the system's default), block size, and the output buffer's bound."""

    input_device: int | str | None = None
    output_device: int | str | None = None
    block_seconds: float = 0.02
    max_output_seconds: float = 5.0


class LocalAudioTransport:
    """A microphone-and-speaker pair of processors."""

    def __init__(self, params: LocalAudioParams | None = None) -> None:
        self.params = params or LocalAudioParams()
        self._input = LocalAudioInput(self.params)
        self._output = LocalAudioOutput(self.params)

    def input(self) -> LocalAudioInput:
        return self._input

    def output(self) -> LocalAudioOutput:
        return self._output


class LocalAudioInput(InputTransport):
    """The microphone, at the pipeline's input rate."""

    def __init__(self, params: LocalAudioParams, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.params = params
        self._stream: Any = None

    async def open_input(self, start: StartFrame) -> None:
        sounddevice = load_sounddevice()
        _check_device(sounddevice, "input", self.params.input_device)
        loop = asyncio.get_running_loop()
        rate = start.audio_in_sample_rate
        offer = self.offer

        def on_audio(data: Any, frames: int, time: Any, status: Any) -> None:
            if status:
                logger.debug("microphone: {}", status)
            frame = InputAudioRawFrame(bytes(data), rate)
            loop.call_soon_threadsafe(offer, frame)

        self._stream = sounddevice.RawInputStream(
            samplerate=rate,
            channels=1,
            dtype="int16",
            blocksize=int(rate * self.params.block_seconds),
            device=self.params.input_device,
            callback=on_audio,
        )
        self._stream.start()

    async def close_input(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await asyncio.to_thread(_close, stream)


class LocalAudioOutput(OutputTransport):
    """The speaker, at the pipeline's output rate; audio of another rate is resampled."""

    def __init__(self, params: LocalAudioParams, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.params = params
        self._stream: Any = None
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._rate = 16000
        self._resamplers: dict[int, StreamResampler] = {}

    async def open_output(self, start: StartFrame) -> None:
        sounddevice = load_sounddevice()
        _check_device(sounddevice, "output", self.params.output_device)
        self._rate = start.audio_out_sample_rate

        def on_play(out: Any, frames: int, time: Any, status: Any) -> None:
            wanted = frames * 2
            with self._lock:
                chunk = bytes(self._buffer[:wanted])
                del self._buffer[:wanted]
            out[: len(chunk)] = chunk
            out[len(chunk) :] = b"\x00" * (wanted - len(chunk))

        self._stream = sounddevice.RawOutputStream(
            samplerate=self._rate,
            channels=1,
            dtype="int16",
            blocksize=int(self._rate * self.params.block_seconds),
            device=self.params.output_device,
            callback=on_play,
        )
        self._stream.start()
        # What was "heard" lags the clock by what the device holds.
        self.timeline.latency = float(getattr(self._stream, "latency", 0.0) or 0.0)

    async def write_audio(self, chunk: AudioChunk) -> None:
        audio = chunk.audio
        if chunk.encoding == MULAW:
            from vantum_pipeline.audio.mulaw import ulaw2lin

            audio = ulaw2lin(audio)
        if chunk.sample_rate != self._rate:
            resampler = self._resamplers.setdefault(chunk.sample_rate, StreamResampler(chunk.sample_rate, self._rate))
            audio = resampler.resample(audio)
        limit = int(self.params.max_output_seconds * self._rate) * 2
        with self._lock:
            room = limit - len(self._buffer)
            if room < len(audio):
                logger.warning("{}: speaker buffer full: {} bytes dropped", self.name, len(audio) - max(room, 0))
            self._buffer += audio[: max(room, 0)]

    async def clear_output(self) -> None:
        with self._lock:
            self._buffer.clear()

    async def close_output(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await asyncio.to_thread(_close, stream)


def _close(stream: Any) -> None:
    try:
        stream.stop()
    finally:
        stream.close()
