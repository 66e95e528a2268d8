"""The local sound card: microphone in, speaker out, through sounddevice (PortAudio).

    transport = LocalAudioTransport(LocalAudioParams.from_env())
    pipeline = Pipeline([transport.input(), stt, ..., tts, transport.output(), ...])

``sounddevice`` is imported when the devices are opened (at ``StartFrame``),
not when this module is: without the package, the PortAudio library or a
device, opening fails with a ``ConfigurationError`` that says what to install
or check, and the pipeline ends with that error. PortAudio lists the devices
once, when sounddevice is first imported: a sound server started later is not
seen by this process.

Devices: ``None`` is the system's default; an int is a PortAudio device
index; a string picks the first device whose name contains it (``"USB"``,
``"pulse"``; ``python -m sounddevice`` lists them). ``from_env`` reads
``VANTUM_INPUT_DEVICE`` and ``VANTUM_OUTPUT_DEVICE``. Through a sound server
(PulseAudio, PipeWire) the ``default`` and ``pulse`` devices lead to the
server's default source and sink, which ``PULSE_SOURCE`` / ``PULSE_SINK``
override per process.

Opening happens off the event loop (a sound server that does not answer
blocks PortAudio), bounded by ``open_timeout``. A device that refuses the
pipeline's rate (a bare ALSA ``hw:`` device often takes only 44.1 or 48 kHz)
is opened at its own default rate and the audio is resampled.

Input: a PortAudio callback thread delivers ``block_seconds`` blocks of mono
pcm16; each becomes an ``InputAudioRawFrame`` at the pipeline's input rate,
handed to the event loop with ``call_soon_threadsafe`` (never blocking the
audio thread; the input buffer's overflow policy applies).

Output: the output transport paces chunks a little ahead of real time
(``OutputTransport``); ``write_audio`` appends them to a bounded buffer that
the PortAudio callback drains, playing silence when it runs dry.
``clear_output`` (an interruption) empties it at once. The callback confirms
playback with markers (``uses_markers``): a marker comes back when the audio
before it has left the buffer, plus the device's reported latency. So what
the listener heard, and when the goodbye has played, follow the sound card,
not the clock, even when the card starts late or skips.

A device that goes away (unplugged, its sound server gone: PortAudio ends the
stream) or whose callback stops for ``stall_timeout`` seconds ends the call
with a fatal error naming the device. At the end of a call the speaker is
stopped (PortAudio first plays what the device still holds: the goodbye's
last syllable); after a cancel (Ctrl-C, a hang-up) it is aborted, as the
microphone always is.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from loguru import logger

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import MULAW, CancelFrame, Frame, InputAudioRawFrame, StartFrame
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.settings import env_float, load_env, optional_env
from vantum_pipeline.transports.base import AudioChunk, InputTransport, OutputTransport

__all__ = [
    "LocalAudioInput",
    "LocalAudioOutput",
    "LocalAudioParams",
    "LocalAudioTransport",
    "check_local_audio",
    "list_devices",
    "load_sounddevice",
    "parse_device",
    "probe_local_audio",
]

INSTALL_HINT = (
    "local audio needs the sounddevice package and the PortAudio library: "
    "pip install 'vantum-pipeline[local]', then install PortAudio "
    "(Debian/Ubuntu: apt-get install libportaudio2; Fedora: dnf install portaudio; macOS: brew install portaudio)"
)

T = TypeVar("T")
Kind = Literal["input", "output"]
DEFAULT_OPEN_TIMEOUT = 5.0
_WHAT: dict[str, str] = {"input": "microphone", "output": "speaker"}


def load_sounddevice() -> Any:
    """The ``sounddevice`` module, or a ConfigurationError saying what to install."""
    try:
        import sounddevice
    except ImportError as exc:
        raise ConfigurationError(f"{INSTALL_HINT} (sounddevice is not installed: {exc})") from exc
    except OSError as exc:  # sounddevice is there, the PortAudio library is not
        raise ConfigurationError(f"{INSTALL_HINT} ({exc})") from exc
    return sounddevice


def parse_device(text: str | None) -> int | str | None:
    """A device as written in a variable or an option: empty → default, digits → index, else a name."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    return int(text) if text.isdigit() else text


def _check_device(sounddevice: Any, kind: Kind, device: int | str | None) -> dict[str, Any]:
    try:
        info: dict[str, Any] = sounddevice.query_devices(device, kind=kind)
    except Exception as exc:  # PortAudioError, ValueError: no such device
        raise ConfigurationError(
            f"no {kind} sound device{f' {device!r}' if device is not None else ''} available ({exc}); "
            "connect one, or pick one with LocalAudioParams(input_device=..., output_device=...), "
            "VANTUM_INPUT_DEVICE / VANTUM_OUTPUT_DEVICE or --input-device / --output-device "
            "(vantum devices lists them)"
        ) from exc
    return info


def check_local_audio(params: LocalAudioParams | None = None) -> None:
    """Fail now, with a ConfigurationError saying what is missing, rather than at StartFrame.

    Blocking, and unbounded when the sound server does not answer: from a
    coroutine, ``await probe_local_audio(params)``.
    """
    params = params or LocalAudioParams()
    sounddevice = load_sounddevice()
    _check_device(sounddevice, "input", params.input_device)
    _check_device(sounddevice, "output", params.output_device)


async def probe_local_audio(params: LocalAudioParams | None = None) -> None:
    """``check_local_audio`` off the event loop, bounded by ``params.open_timeout``.

    PortAudio's first use connects to the sound server (through the ALSA
    pulse plugin, say), and waits for as long as a frozen server keeps it.
    """
    params = params or LocalAudioParams()
    try:
        await _off_loop(lambda: check_local_audio(params), params.open_timeout, "sound-probe")
    except TimeoutError:
        raise ConfigurationError(
            f"the sound system did not answer within {params.open_timeout:.1f}s: "
            "is the sound server running and answering? (pactl info)"
        ) from None


async def _off_loop(work: Callable[[], T], timeout: float, name: str) -> T:
    """``work()`` in a daemon thread, awaited for at most ``timeout`` seconds (then TimeoutError).

    Not ``asyncio.to_thread``: a call stuck in the sound library would hold an
    executor thread that ``asyncio.run`` waits for at exit, forever. A daemon
    thread left behind does not keep the process alive.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    # sounddevice points the process's stderr at /dev/null while PortAudio starts (hiding ALSA's
    # chatter): if PortAudio never returns, the process must get its stderr back to say so.
    stderr = _dup_stderr()
    try:
        threading.Thread(target=run, name=name, daemon=True).start()
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        if stderr is not None:
            os.dup2(stderr, 2)
        raise
    finally:
        if stderr is not None:
            os.close(stderr)


def _dup_stderr() -> int | None:
    try:
        return os.dup(2)
    except OSError:  # no stderr at all
        return None


def list_devices() -> str:
    """PortAudio's device list (as ``python -m sounddevice`` prints it), or why it is empty."""
    listing = str(load_sounddevice().query_devices())
    return listing or "no sound devices: PortAudio found no sound card and no sound server (PulseAudio, PipeWire)"


@dataclass(frozen=True, slots=True)
class LocalAudioParams:
    """Devices (None: the system's default), block size, the output buffer's bound, and the device timeouts.

    ``open_timeout``: how long opening a device may take; ``stall_timeout``:
    how long a device may go without calling back before it counts as gone
    (generous: a callback needs the GIL, which a busy extension may hold
    for seconds on a loaded machine; a device that really goes away usually
    ends its stream at once instead).
    """

    input_device: int | str | None = None
    output_device: int | str | None = None
    block_seconds: float = 0.02
    max_output_seconds: float = 5.0
    open_timeout: float = DEFAULT_OPEN_TIMEOUT
    stall_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("block_seconds", "max_output_seconds", "open_timeout", "stall_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"LocalAudioParams.{name} must be > 0, got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LocalAudioParams:
        """``VANTUM_INPUT_DEVICE``, ``VANTUM_OUTPUT_DEVICE``, ``VANTUM_AUDIO_OPEN_TIMEOUT``; ``overrides`` win."""
        values = load_env(env)
        fields: dict[str, Any] = {
            "input_device": parse_device(optional_env(values, "VANTUM_INPUT_DEVICE")),
            "output_device": parse_device(optional_env(values, "VANTUM_OUTPUT_DEVICE")),
            "open_timeout": env_float(values, "VANTUM_AUDIO_OPEN_TIMEOUT", DEFAULT_OPEN_TIMEOUT, minimum=0.1),
        }
        fields.update(overrides)
        return cls(**fields)


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


class _Device:
    """One PortAudio stream: opened off the loop at a rate the device takes, watched, then stopped or aborted."""

    def __init__(self, kind: Kind, device: int | str | None, params: LocalAudioParams, owner: str) -> None:
        self.kind = kind
        self.device = device
        self.params = params
        self.owner = owner
        self.rate = 0
        self.stream: Any = None
        #: ``time.monotonic()`` of the last callback (written by the audio thread).
        self.last_callback = 0.0
        self.gone = asyncio.Event()
        self.gone_reason = ""
        self._closing = False

    @property
    def label(self) -> str:
        return f"{_WHAT[self.kind]}{f' {self.device!r}' if self.device is not None else ''}"

    async def open(self, rate: int, callback: Callable[..., None]) -> None:
        """Open and start the stream at ``rate`` or, if the device refuses it, at the device's own rate."""
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()
        lock = threading.Lock()

        def finished() -> None:  # PortAudio thread: the stream ended (closed by us, or the device went away)
            if not self._closing:
                try:
                    loop.call_soon_threadsafe(self._lose, "the stream ended (device unplugged or sound server gone)")
                except RuntimeError:  # the loop is closed: the call is over
                    pass

        def work() -> tuple[Any, int]:
            sounddevice = load_sounddevice()
            info = _check_device(sounddevice, self.kind, self.device)
            device_rate = self._negotiate(sounddevice, info, rate)
            factory = sounddevice.RawInputStream if self.kind == "input" else sounddevice.RawOutputStream
            try:
                stream = factory(
                    samplerate=device_rate,
                    channels=1,
                    dtype="int16",
                    blocksize=max(1, int(device_rate * self.params.block_seconds)),
                    device=self.device,
                    callback=callback,
                    finished_callback=finished,
                )
            except Exception as exc:  # PortAudioError: busy, unsupported
                raise ConfigurationError(f"cannot open the {self.label} at {device_rate} Hz: {exc}") from exc
            with lock:
                if abandoned.is_set():
                    self._closing = True
                    _abort(stream)
                    return stream, device_rate
                self.last_callback = time.monotonic()
                self.rate = device_rate  # known before the first callback can reach the loop
                stream.start()
            return stream, device_rate

        try:
            self.stream, self.rate = await _off_loop(work, self.params.open_timeout, f"{self.kind}-open")
        except TimeoutError:
            with lock:
                abandoned.set()
            raise ConfigurationError(
                f"opening the {self.label} took more than {self.params.open_timeout:.1f}s: "
                "is the sound server running and answering? (pactl info)"
            ) from None

    def _negotiate(self, sounddevice: Any, info: Mapping[str, Any], rate: int) -> int:
        check = sounddevice.check_input_settings if self.kind == "input" else sounddevice.check_output_settings
        try:
            check(device=self.device, channels=1, dtype="int16", samplerate=rate)
            return rate
        except Exception as exc:
            own = int(float(info.get("default_samplerate") or 0))
            if own <= 0 or own == rate:
                raise ConfigurationError(f"the {self.label} does not take {rate} Hz mono pcm16: {exc}") from exc
            logger.info(
                "{}: the {} does not take {} Hz ({}): using {} Hz, resampled", self.owner, self.label, rate, exc, own
            )
            return own

    @property
    def closing(self) -> bool:
        return self._closing

    def _lose(self, reason: str) -> None:
        if not self._closing and not self.gone.is_set():
            self.gone_reason = reason
            self.gone.set()

    async def watch(self) -> str:
        """Returns why the device is gone: the stream ended, or no callback for ``stall_timeout``."""
        stall = self.params.stall_timeout
        while True:
            silent_for = time.monotonic() - self.last_callback
            try:
                async with asyncio.timeout(max(0.05, min(stall - silent_for, 0.5))):
                    await self.gone.wait()
                return self.gone_reason
            except TimeoutError:
                if time.monotonic() - self.last_callback >= stall:
                    return f"no audio callback for {stall:.1f}s (the device or sound server stopped answering)"

    async def close(self, *, drain: bool = False) -> None:
        """Abort the stream, or with ``drain`` stop it once the device has played what it holds."""
        self._closing = True
        stream, self.stream = self.stream, None
        if stream is not None:
            end = _stop if drain else _abort
            try:
                await _off_loop(lambda: end(stream), self.params.open_timeout, f"{self.kind}-close")
            except TimeoutError:
                logger.warning(
                    "{}: closing the {} took more than {:.1f}s", self.owner, self.label, self.params.open_timeout
                )
            except Exception as exc:
                logger.warning("{}: closing the {} failed: {}: {}", self.owner, self.label, type(exc).__name__, exc)


class LocalAudioInput(InputTransport):
    """The microphone, at the pipeline's input rate."""

    def __init__(self, params: LocalAudioParams, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.params = params
        self._device = _Device("input", params.input_device, params, self.name)
        self._resampler: StreamResampler | None = None
        self._rate = 16000

    async def open_input(self, start: StartFrame) -> None:
        loop = asyncio.get_running_loop()
        rate = start.audio_in_sample_rate
        device = self._device

        def on_audio(data: Any, frames: int, time_info: Any, status: Any) -> None:
            device.last_callback = time.monotonic()
            if status:
                logger.debug("{}: {}", self.name, status)
            try:
                loop.call_soon_threadsafe(self._deliver, bytes(data))
            except RuntimeError:  # the loop is closed: the call is over
                pass

        self._rate = rate
        await device.open(rate, on_audio)
        self.create_task(self._watch(), "microphone-watch")

    def _deliver(self, audio: bytes) -> None:
        # The first blocks can arrive before open() has returned: the device's rate is set before its
        # stream starts, so even they are resampled.
        if self._resampler is None and self._device.rate != self._rate:
            self._resampler = StreamResampler(self._device.rate, self._rate)
        if self._resampler is not None:
            audio = self._resampler.resample(audio)
        if audio:
            self.offer(InputAudioRawFrame(audio, self._rate))

    async def _watch(self) -> None:
        reason = await self._device.watch()
        if self._device.closing:
            return
        logger.warning("{}: the {} is gone: {}", self.name, self._device.label, reason)
        await self.push_error(f"{self.name}: the {self._device.label} is gone: {reason}", fatal=True)

    async def close_input(self) -> None:
        await self._device.close()


class LocalAudioOutput(OutputTransport):
    """The speaker, at the pipeline's output rate; audio of another rate is resampled."""

    uses_markers = True

    def __init__(self, params: LocalAudioParams, *, name: str | None = None) -> None:
        super().__init__(name=name, marker_interval=0.2)
        self.params = params
        self._device = _Device("output", params.output_device, params, self.name)
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._rate = 16000
        self._resamplers: dict[int, StreamResampler] = {}
        # Bytes ever appended to / taken from the buffer, and the markers between (guarded by _lock).
        self._appended = 0
        self._taken = 0
        self._marks: deque[tuple[int, str]] = deque()
        self._cancelled = False

    async def open_output(self, start: StartFrame) -> None:
        loop = asyncio.get_running_loop()
        device = self._device

        def on_play(out: Any, frames: int, time_info: Any, status: Any) -> None:
            device.last_callback = time.monotonic()
            wanted = frames * 2
            echoed: list[str] = []
            with self._lock:
                chunk = bytes(self._buffer[:wanted])
                del self._buffer[:wanted]
                self._taken += len(chunk)
                while self._marks and self._marks[0][0] <= self._taken:
                    echoed.append(self._marks.popleft()[1])
            out[: len(chunk)] = chunk
            out[len(chunk) :] = b"\x00" * (wanted - len(chunk))
            if echoed:
                try:
                    loop.call_soon_threadsafe(self._echo, echoed)
                except RuntimeError:  # the loop is closed: the call is over
                    pass

        await device.open(start.audio_out_sample_rate, on_play)
        self._rate = device.rate
        # What was "heard" lags what left the buffer by what the device holds.
        self.timeline.latency = float(getattr(device.stream, "latency", 0.0) or 0.0)
        self.create_task(self._watch(), "speaker-watch")

    def _echo(self, names: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for name in names:
            loop.call_later(self.timeline.latency, self.marker_played, name)

    async def _watch(self) -> None:
        reason = await self._device.watch()
        if self._device.closing:
            return
        logger.warning("{}: the {} is gone: {}", self.name, self._device.label, reason)
        await self.push_error(f"{self.name}: the {self._device.label} is gone: {reason}", fatal=True)

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
            room = max(0, limit - len(self._buffer))
            if room < len(audio):
                logger.warning("{}: speaker buffer full: {} bytes dropped", self.name, len(audio) - room)
            kept = audio[:room]
            self._buffer += kept
            self._appended += len(kept)

    async def write_marker(self, name: str) -> None:
        with self._lock:
            self._marks.append((self._appended, name))

    async def clear_output(self) -> None:
        with self._lock:
            self._buffer.clear()
            self._marks.clear()  # never played: the timeline expects no echo after a clear
            self._appended = self._taken

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, CancelFrame):
            self._cancelled = True
            await self.clear_output()  # hung up: the rest is not played
        await super().process_frame(frame, direction)

    async def close_output(self) -> None:
        await self._device.close(drain=not self._cancelled)


def _stop(stream: Any) -> None:
    try:
        stream.stop()
    finally:
        stream.close()


def _abort(stream: Any) -> None:
    try:
        stream.abort()
    finally:
        stream.close()
