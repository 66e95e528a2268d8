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
from vantum_pipeline.transports.local import INSTALL_HINT, LocalAudioParams, LocalAudioTransport, load_sounddevice

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
    """A sound card stream: calls its callback every block from a thread, like PortAudio."""

    def __init__(self, *, samplerate: int, blocksize: int, callback: Any, kind: str, card: FakeCard, **_: Any) -> None:
        self.samplerate, self.blocksize, self.callback, self.kind, self.card = (
            samplerate,
            blocksize,
            callback,
            kind,
            card,
        )
        self.latency = 0.01
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        block = 0
        while not self._stop.wait(self.blocksize / self.samplerate / 4):  # four times real time
            if self.kind == "input":
                tone = (3000 * np.sin(np.arange(self.blocksize) * 0.3 + block)).astype("<i2").tobytes()
                self.callback(tone, self.blocksize, None, None)
            else:
                out = bytearray(self.blocksize * 2)
                self.callback(out, self.blocksize, None, None)
                self.card.played.append(bytes(out))
            block += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def close(self) -> None:
        self.card.closed += 1


class FakeCard(types.SimpleNamespace):
    def __init__(self, *, devices: bool = True) -> None:
        super().__init__(played=[], closed=0, devices=devices)

    def query_devices(self, device: Any = None, kind: str | None = None) -> dict[str, Any]:
        if not self.devices:
            raise ValueError(f"No {kind} device matching {device!r}")
        return {"name": "fake", "max_input_channels": 1, "max_output_channels": 1}

    def RawInputStream(self, **kwargs: Any) -> FakeStream:
        return FakeStream(kind="input", card=self, **kwargs)

    def RawOutputStream(self, **kwargs: Any) -> FakeStream:
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
