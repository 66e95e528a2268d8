"""A virtual sound card for tests: a private PulseAudio server with a microphone and a speaker.

    card = VirtualSoundCard(tmp_path)
    card.start()
    env = {**os.environ, **card.client_env()}   # what a program needs to use the card
    recorder = card.record_speaker()            # everything the speaker plays, from now on
    card.play_into_microphone(pcm, 16000)       # the program's microphone hears it
    card.stop()

The server is a fresh ``pulseaudio`` process with no configuration file
(``-n``), its socket, state and cookie in a private directory, no D-Bus and
no autospawn, so it can run as root on a headless machine next to any other
sound server. It has two null sinks (sinks that play to nowhere, at 16 kHz
mono):

- ``vantum_mic``: what is played into it comes out of its monitor source
  ``vantum_mic.monitor``, the program's microphone (``PULSE_SOURCE``);
- ``vantum_speaker``: the program's speaker (``PULSE_SINK``), recorded from
  ``vantum_speaker.monitor``.

A program reaches the server through libpulse (``PULSE_SERVER``); PortAudio
(``sounddevice``) reaches it through the ALSA ``pulse`` plugin
(libasound2-plugins), whose ``default`` and ``pulse`` devices then lead to
the sinks named above. ``MISSING`` says which of the needed tools are absent.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["MISSING", "RATE", "SpeakerRecorder", "VirtualSoundCard", "missing_tools", "speech_spans"]

RATE = 16000
MIC_SINK = "vantum_mic"
SPEAKER_SINK = "vantum_speaker"
#: The Debian packages that provide the tools and libraries (.ci/apt-packages.txt lists them for CI).
PACKAGES = "pulseaudio pulseaudio-utils libasound2-plugins libportaudio2"


def missing_tools() -> list[str]:
    """What this machine lacks to run the card and a PortAudio program on it."""
    missing = [tool for tool in ("pulseaudio", "pactl", "pacat") if shutil.which(tool) is None]
    plugin_dirs = [Path("/usr/lib/x86_64-linux-gnu/alsa-lib"), Path("/usr/lib/aarch64-linux-gnu/alsa-lib")]
    plugin_dirs += [Path("/usr/lib/alsa-lib"), Path("/usr/lib64/alsa-lib")]
    if not any((d / "libasound_module_pcm_pulse.so").exists() for d in plugin_dirs):
        missing.append("the ALSA pulse plugin (libasound_module_pcm_pulse.so)")
    # Not imported here: PortAudio lists the devices once, when sounddevice is imported.
    if importlib.util.find_spec("sounddevice") is None:
        missing.append("the sounddevice package (the local extra)")
    if ctypes.util.find_library("portaudio") is None:
        missing.append("the PortAudio library (libportaudio2)")
    return missing


MISSING = missing_tools()


class VirtualSoundCard:
    """A private PulseAudio server with a virtual microphone and speaker; see the module docstring."""

    def __init__(self, directory: Path, *, start_timeout: float = 15.0) -> None:
        self.directory = directory
        self.start_timeout = start_timeout
        self.runtime = directory / "pulse"
        self.socket = self.runtime / "native"
        self.log_path = directory / "pulseaudio.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: object = None
        self._keepers: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------- server

    def _server_env(self) -> dict[str, str]:
        home = self.directory / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "DBUS_"))}
        env.update(
            HOME=str(home),
            XDG_RUNTIME_DIR=str(self.directory),
            XDG_CONFIG_HOME=str(home / "config"),
            PULSE_RUNTIME_PATH=str(self.runtime),
            PULSE_STATE_PATH=str(self.directory / "state"),
        )
        return env

    def client_env(self) -> dict[str, str]:
        """The variables that put a program's default microphone and speaker on this card."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_SOURCE": f"{MIC_SINK}.monitor",
            "PULSE_SINK": SPEAKER_SINK,
            "PULSE_CLIENTCONFIG": str(self._client_config()),
        }

    def _client_config(self) -> Path:
        path = self.directory / "client.conf"
        if not path.exists():
            path.write_text("autospawn = no\n")
        return path

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # pulseaudio refuses a runtime directory others can enter
        sinks = [
            f"module-null-sink sink_name={name} rate={RATE} channels=1 format=s16le"
            for name in (MIC_SINK, SPEAKER_SINK)
        ]
        command = [
            "pulseaudio",
            "--daemonize=no",
            "-n",  # no default.pa: only what is loaded here
            "--exit-idle-time=-1",
            "--use-pid-file=false",
            "--disallow-exit",
            "--log-target=stderr",
            "--log-level=notice",
            f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
            *(f"--load={sink}" for sink in sinks),
        ]
        self.runtime.mkdir(exist_ok=True)
        os.chmod(self.runtime, 0o700)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            command,
            env=self._server_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self._process.returncode}: {self.log()}")
            ready = self.pactl("list", "short", "sinks", check=False)
            if ready.returncode == 0 and SPEAKER_SINK in ready.stdout and MIC_SINK in ready.stdout:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pulseaudio not ready within {self.start_timeout:.0f}s: {self.log()}")
            time.sleep(0.1)
        self.pactl("set-default-sink", SPEAKER_SINK)
        self.pactl("set-default-source", f"{MIC_SINK}.monitor")
        # A null sink renders in blocks as long as its most demanding client allows: 2 s with no
        # client, so the first stream to connect waits up to 2 s. A low-latency listener on each
        # monitor from the start keeps the blocks short (real sound cards have no such delay).
        for sink in (MIC_SINK, SPEAKER_SINK):
            self._keepers.append(
                subprocess.Popen(
                    _pacat_record(f"{sink}.monitor"),
                    env={**self._server_env(), **self.client_env()},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # ... once they are connected, restarting the sinks ends the 2 s block they began with.
        deadline = time.monotonic() + self.start_timeout
        while len(self.pactl("list", "short", "source-outputs").stdout.splitlines()) < len(self._keepers):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pacat did not connect within {self.start_timeout:.0f}s: {self.log()}")
            time.sleep(0.05)
        for sink in (MIC_SINK, SPEAKER_SINK):
            self.pactl("suspend-sink", sink, "1")
            self.pactl("suspend-sink", sink, "0")

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args],
            env={**self._server_env(), **self.client_env()},
            capture_output=True,
            text=True,
            timeout=10,
            check=check,
        )

    def stop(self) -> None:
        self.thaw()
        keepers, self._keepers = self._keepers, []
        for keeper in keepers:
            _end(keeper)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def kill(self) -> None:
        """The sound server dies (SIGKILL), as when it crashes mid-call."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)

    def freeze(self) -> None:
        """The sound server stops answering (SIGSTOP), as a hung server does."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    # --------------------------------------------------------------- audio

    def play_into_microphone(self, pcm: bytes, rate: int = RATE, *, timeout: float = 30.0) -> None:
        """Play mono pcm16 into the microphone; returns when it has played."""
        subprocess.run(
            [
                "pacat",
                "--playback",
                f"--device={MIC_SINK}",
                "--raw",
                "--format=s16le",
                f"--rate={rate}",
                "--channels=1",
            ],
            input=pcm,
            env={**self._server_env(), **self.client_env()},
            capture_output=True,
            timeout=timeout,
            check=True,
        )

    def record_speaker(self) -> SpeakerRecorder:
        return SpeakerRecorder(self)


class SpeakerRecorder:
    """Records the speaker's monitor (mono pcm16 at ``RATE``) until ``stop()``."""

    def __init__(self, card: VirtualSoundCard) -> None:
        self._process = subprocess.Popen(
            _pacat_record(f"{SPEAKER_SINK}.monitor"),
            env={**card._server_env(), **card.client_env()},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="speaker-recorder", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        while chunk := self._process.stdout.read1(6400):  # type: ignore[attr-defined]
            with self._lock:
                self._chunks.append(chunk)

    def samples(self) -> np.ndarray:
        """What the speaker played so far."""
        with self._lock:
            data = b"".join(self._chunks)
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")

    def stop(self) -> np.ndarray:
        _end(self._process)
        self._reader.join(timeout=5)
        return self.samples()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so no server outlives a killed run (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pacat_record(device: str) -> list[str]:
    audio = ["--raw", "--format=s16le", f"--rate={RATE}", "--channels=1", "--latency-msec=20"]
    return ["pacat", "--record", f"--device={device}", *audio]


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def speech_spans(
    samples: np.ndarray, *, window: float = 0.05, level: float = 300.0, gap: float = 0.6
) -> list[tuple[float, float]]:
    """(start, end) seconds of the loud stretches, merging pauses shorter than ``gap``."""
    size = int(RATE * window)
    count = len(samples) // size
    if count == 0:
        return []
    frames = samples[: count * size].astype(np.float64).reshape(count, size)
    loud = np.sqrt(np.mean(frames**2, axis=1)) > level
    spans: list[tuple[float, float]] = []
    for index in np.nonzero(loud)[0]:
        start, end = index * window, (index + 1) * window
        if spans and start - spans[-1][1] < gap:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans
