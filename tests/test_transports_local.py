"""The local audio transport: clear errors without PortAudio or a device; the data path on a stand-in sound card."""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
import threading
import types
from typing import Any

import numpy as np
import pytest

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.testing.pipeline import PipelineHarness
from vantum_pipeline.transports.local import (
    INSTALL_HINT,
    LocalAudioParams,
    LocalAudioTransport,
    load_sounddevice,
    parse_device,
)

pytestmark = pytest.mark.timeout(20)


class _BrokenLibrary(importlib.abc.MetaPathFinder):
    """Importing sounddevice fails the way it does when PortAudio is missing."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


@pytest.fixture
def no_portaudio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenLibrary(), *sys.meta_path])


class FakeStream:
    """A sound card stream: calls its callback every block from a thread, like PortAudio.

    ``card.start_delay`` holds the first callbacks back (a device that starts late);
    ``die()`` ends the stream the way PortAudio does when the device goes away.
    """

    def __init__(
        self,
        *,
        samplerate: int,
        blocksize: int,
        callback: Any,
        kind: str,
        card: FakeCard,
        finished_callback: Any = None,
        **_: Any,
    ) -> None:
        self.samplerate, self.blocksize, self.callback, self.kind, self.card = (
            samplerate,
            blocksize,
            callback,
            kind,
            card,
        )
        self.finished_callback = finished_callback
        self.latency = 0.01
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        card.streams.append(self)

    def start(self) -> None:
        if self.kind == "input":  # blocks the card had ready at once (called from start(), as PortAudio may)
            for block in range(self.card.early_blocks):
                self.callback(self._tone(block), self.blocksize, None, None)
        self._thread.start()

    def _tone(self, block: int) -> bytes:
        return (3000 * np.sin(np.arange(self.blocksize) * 0.3 + block)).astype("<i2").tobytes()

    def _run(self) -> None:
        block = 0
        if self.card.start_delay:
            self._stop.wait(self.card.start_delay)
        while not self._stop.wait(self.blocksize / self.samplerate / self.card.speed):
            if self.kind == "input":
                self.callback(self._tone(block), self.blocksize, None, None)
            else:
                out = bytearray(self.blocksize * 2)
                self.callback(out, self.blocksize, None, None)
                self.card.played.append(bytes(out))
            block += 1
        if self.finished_callback is not None:
            self.finished_callback()

    def die(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        self.card.ended.append(f"{self.kind} aborted")
        self._stop.set()
        self._thread.join(timeout=2)

    def stop(self) -> None:  # PortAudio plays what the device holds first
        self.card.ended.append(f"{self.kind} stopped")
        self._stop.set()
        self._thread.join(timeout=2)

    def close(self) -> None:
        self.card.closed += 1


class FakeCard(types.SimpleNamespace):
    """A sound card that takes only ``rates`` (default: any) and runs ``speed`` times real time."""

    def __init__(
        self,
        *,
        devices: bool = True,
        rates: tuple[int, ...] = (),
        speed: float = 4.0,
        start_delay: float = 0.0,
        early_blocks: int = 0,
    ) -> None:
        super().__init__(
            played=[],
            closed=0,
            ended=[],
            devices=devices,
            rates=rates,
            speed=speed,
            start_delay=start_delay,
            early_blocks=early_blocks,
            streams=[],
        )

    def query_devices(self, device: Any = None, kind: str | None = None) -> dict[str, Any]:
        if not self.devices:
            raise ValueError(f"No {kind} device matching {device!r}")
        rate = self.rates[0] if self.rates else 44100
        return {"name": "fake", "max_input_channels": 1, "max_output_channels": 1, "default_samplerate": rate}

    def _check(self, samplerate: float, **_: Any) -> None:
        if self.rates and samplerate not in self.rates:
            raise ValueError(f"Invalid sample rate {samplerate}")

    def check_input_settings(self, **kwargs: Any) -> None:
        self._check(**kwargs)

    def check_output_settings(self, **kwargs: Any) -> None:
        self._check(**kwargs)

    def RawInputStream(self, **kwargs: Any) -> FakeStream:
        self._check(kwargs["samplerate"])
        return FakeStream(kind="input", card=self, **kwargs)

    def RawOutputStream(self, **kwargs: Any) -> FakeStream:
        self._check(kwargs["samplerate"])
        return FakeStream(kind="output", card=self, **kwargs)


def test_missing_portaudio_says_what_to_install(no_portaudio: None) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_sounddevice()
    message = str(caught.value)
    assert "pip install 'vantum-pipeline[local]'" in message
    assert "libportaudio2" in message and "PortAudio library not found" in message


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(ConfigurationError, match=r"vantum-pipeline\[local\]"):
        load_sounddevice()


def test_importing_the_transport_needs_no_sound_library(no_portaudio: None) -> None:
    import importlib

    import vantum_pipeline.transports.local as local

    importlib.reload(local)
    assert local.LocalAudioTransport().input() is not None


async def test_a_pipeline_without_portaudio_ends_with_the_hint(no_portaudio: None) -> None:
    transport = LocalAudioTransport()
    async with PipelineHarness([transport.input(), transport.output()], end_timeout=5) as harness:
        await harness.wait_finished(5)
    errors = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert harness.collected.finish_reason == "error"
    assert errors and INSTALL_HINT in errors[0].error


async def test_no_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", FakeCard(devices=False))
    transport = LocalAudioTransport(LocalAudioParams(input_device="USB mic"))
    async with PipelineHarness([transport.input()], end_timeout=5) as harness:
        await harness.wait_finished(5)
    errors = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert errors and "no input sound device 'USB mic' available" in errors[0].error


async def test_microphone_frames_in_and_speaker_audio_out(monkeypatch: pytest.MonkeyPatch) -> None:
    card = FakeCard()
    monkeypatch.setitem(sys.modules, "sounddevice", card)
    transport = LocalAudioTransport()
    speech = (5000 * np.sin(np.arange(8000) * 0.1)).astype("<i2").tobytes()  # 0.5 s at 16 kHz
    async with PipelineHarness([transport.input(), transport.output()], end_timeout=5) as harness:
        await harness.wait_for(InputAudioRawFrame, count=5, timeout=5)
        await harness.send(TTSStartedFrame(context_id="c1"))
        await harness.send(TTSAudioRawFrame(speech, 16000, context_id="c1"))
        await harness.send(TTSStoppedFrame(context_id="c1"))
        await asyncio.sleep(0.5)
    frames = harness.collected.of_type(InputAudioRawFrame)
    assert all(f.sample_rate == 16000 and len(f.audio) == 640 for f in frames)
    played = np.frombuffer(b"".join(card.played), "<i2")
    sent = np.frombuffer(speech, "<i2")
    # The bot's audio reached the speaker, in order (the card, faster than real time, ran dry in between).
    assert np.array_equal(played[played != 0], sent[sent != 0])
    assert card.closed == 2


def _speech(seconds: float, rate: int = 16000) -> bytes:
    return (5000 * np.sin(np.arange(int(rate * seconds)) * 0.1)).astype("<i2").tobytes()


def _loud(chunks: list[bytes]) -> int:
    played = np.frombuffer(b"".join(chunks), "<i2")
    return int(np.count_nonzero(played))


async def test_a_device_that_refuses_the_rate_is_opened_at_its_own_and_resampled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three blocks are ready the moment the stream starts, before opening the device has returned.
    card = FakeCard(rates=(48000,), early_blocks=3)
    monkeypatch.setitem(sys.modules, "sounddevice", card)
    transport = LocalAudioTransport()
    async with PipelineHarness([transport.input(), transport.output()], end_timeout=5) as harness:
        await harness.wait_for(InputAudioRawFrame, count=20, timeout=5)
        await harness.send(TTSStartedFrame(context_id="c1"))
        await harness.send(TTSAudioRawFrame(_speech(0.5), 16000, context_id="c1"))
        await harness.send(TTSStoppedFrame(context_id="c1"))
    assert [stream.samplerate for stream in card.streams] == [48000, 48000]
    frames = harness.collected.of_type(InputAudioRawFrame)
    assert all(f.sample_rate == 16000 for f in frames)
    # 20 ms blocks of 960 samples at 48 kHz come out as 320 samples at 16 kHz (the first one shorter by
    # the filter's delay): the early blocks too, none passed on at the card's rate.
    first = len(StreamResampler(48000, 16000).resample(bytes(960 * 2))) // 2
    assert [len(f.audio) // 2 for f in frames] == [first] + [320] * (len(frames) - 1)
    # Half a second of 16 kHz speech played as half a second at 48 kHz.
    assert abs(_loud(card.played) - 24000) < 200
    assert harness.collected.finish_reason == "end"


async def test_a_card_that_starts_late_still_plays_the_whole_goodbye(monkeypatch: pytest.MonkeyPatch) -> None:
    # The speaker's first callback comes a second late (a sound server waking up): the end of the call
    # waits for the card to confirm playback, not for the clock, so nothing of the goodbye is cut.
    card = FakeCard(speed=1.0, start_delay=1.0)
    monkeypatch.setitem(sys.modules, "sounddevice", card)
    transport = LocalAudioTransport()
    goodbye = _speech(1.0)
    async with PipelineHarness([transport.output()], end_timeout=10) as harness:
        await harness.send(TTSStartedFrame(context_id="bye"))
        await harness.send(TTSAudioRawFrame(goodbye, 16000, context_id="bye"))
        await harness.send(TTSStoppedFrame(context_id="bye"))
    assert harness.collected.finish_reason == "end"
    assert _loud(card.played) == np.count_nonzero(np.frombuffer(goodbye, "<i2"))
    assert card.ended == ["output stopped"]  # what the device still held was played too


async def test_a_cancelled_call_cuts_the_speaker_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    card = FakeCard(speed=1.0)
    monkeypatch.setitem(sys.modules, "sounddevice", card)
    transport = LocalAudioTransport()
    async with PipelineHarness([transport.input(), transport.output()], end_timeout=5) as harness:
        await harness.send(TTSStartedFrame(context_id="c1"))
        await harness.send(TTSAudioRawFrame(_speech(3.0), 16000, context_id="c1"))
        await asyncio.sleep(0.3)
        cancelled = asyncio.get_running_loop().time()
        await harness.task.cancel("hung up")
        await harness.wait_finished(3)
    assert asyncio.get_running_loop().time() - cancelled < 2.0  # aborts and joins: milliseconds when idle
    assert sorted(card.ended) == ["input aborted", "output aborted"]
    assert _loud(card.played) < 16000 * 1.5  # far from the three seconds queued


async def test_a_device_that_goes_away_ends_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    card = FakeCard()
    monkeypatch.setitem(sys.modules, "sounddevice", card)
    transport = LocalAudioTransport()
    async with PipelineHarness([transport.input(), transport.output()], end_timeout=5) as harness:
        await harness.wait_for(InputAudioRawFrame, count=3, timeout=5)
        card.streams[0].die()  # the microphone is unplugged
        await harness.wait_finished(2)
    errors = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert harness.collected.finish_reason == "error"
    assert errors and errors[0].fatal and "the microphone is gone" in errors[0].error
    assert card.closed == 2


async def test_a_device_that_stops_calling_back_ends_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    card = FakeCard(start_delay=30.0)  # opened, then silent: a sound server that froze
    monkeypatch.setitem(sys.modules, "sounddevice", card)
    transport = LocalAudioTransport(LocalAudioParams(stall_timeout=0.3))
    async with PipelineHarness([transport.output()], end_timeout=5) as harness:
        await harness.wait_finished(3)
    errors = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert errors and "the speaker is gone: no audio callback for 0.3s" in errors[0].error


async def test_opening_a_device_that_hangs_fails_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    card = FakeCard()
    release = threading.Event()
    opened = card.RawInputStream

    def slow_open(**kwargs: Any) -> FakeStream:
        release.wait(5)  # PortAudio waiting for a sound server that does not answer
        return opened(**kwargs)

    card.RawInputStream = slow_open
    monkeypatch.setitem(sys.modules, "sounddevice", card)
    transport = LocalAudioTransport(LocalAudioParams(open_timeout=0.3))
    async with PipelineHarness([transport.input()], end_timeout=5) as harness:
        await harness.wait_finished(3)
    errors = harness.collected.of_type(ErrorFrame, FrameDirection.UPSTREAM)
    assert errors and "opening the microphone took more than 0.3s" in errors[0].error
    release.set()
    # The stream that opened after all is closed, never left running.
    for _ in range(100):
        if card.closed:
            break
        await asyncio.sleep(0.02)
    assert card.closed == 1 and not card.streams[0]._thread.is_alive()


def test_devices_from_the_environment() -> None:
    params = LocalAudioParams.from_env({"VANTUM_INPUT_DEVICE": "3", "VANTUM_OUTPUT_DEVICE": "USB headset"})
    assert (params.input_device, params.output_device) == (3, "USB headset")
    assert LocalAudioParams.from_env({}).input_device is None
    assert LocalAudioParams.from_env({"VANTUM_INPUT_DEVICE": "pulse"}, input_device=1).input_device == 1
    assert [parse_device(text) for text in ("", "  ", "0", " pulse ")] == [None, None, 0, "pulse"]
    with pytest.raises(ConfigurationError, match="VANTUM_AUDIO_OPEN_TIMEOUT"):
        LocalAudioParams.from_env({"VANTUM_AUDIO_OPEN_TIMEOUT": "soon"})
    with pytest.raises(ConfigurationError, match="stall_timeout"):
        LocalAudioParams(stall_timeout=0)
