"""Voice activity detection on synthesized speech (espeak-ng fixtures) in seeded noise."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from tests.audio_scenes import RATE, Scene, conversation, noise_only, speech_power, utterance
from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.audio.vad import (
    SileroDetector,
    VADEvent,
    VADParams,
    VADState,
    VoiceActivityDetector,
    WebRTCDetector,
)
from vantum_pipeline.errors import ConfigurationError


def run(vad: VoiceActivityDetector, chunks: list[bytes]) -> list[VADEvent]:
    return [event for chunk in chunks for event in vad.process(chunk)]


def check_two_turns(events: list[VADEvent], scene: Scene, params: VADParams) -> None:
    """Exactly: started, stopped, started, stopped, each near where the speech is."""
    assert [e.speaking for e in events] == [True, False, True, False], events
    for onset, offset, start, stop in zip(scene.onsets, scene.offsets, events[::2], events[1::2], strict=True):
        # Decided at least start_secs after the onset, and soon after that.
        assert onset + params.start_secs - 0.05 <= start.time <= onset + 0.45, (onset, start)
        assert abs(start.since - onset) <= 0.15, (onset, start)
        # Stopped stop_secs after the end of speech (a trailing fricative may count as silence early).
        assert offset + params.stop_secs - 0.25 <= stop.time <= offset + params.stop_secs + 0.3, (offset, stop)


@pytest.mark.parametrize(
    ("noise_kind", "snr_db"), [(None, None), ("white", 20.0), ("white", 5.0), ("pink", 10.0), ("speech", 10.0)]
)
def test_silero_finds_both_turns_in_noise(noise_kind: str | None, snr_db: float | None) -> None:
    scene = conversation(snr_db=snr_db, noise_kind=noise_kind or "white", seed=1)
    params = VADParams()
    check_two_turns(run(VoiceActivityDetector(RATE, params), scene.chunks(20)), scene, params)


@pytest.mark.parametrize("kind", ["white", "pink", "speech"])
def test_noise_alone_never_starts_speech(kind: str) -> None:
    # Noise as loud as in a 5 dB SNR call: loud enough to pass min_volume.
    level = np.sqrt(speech_power(utterance("speech_hello.wav")) / 10**0.5)
    vad = VoiceActivityDetector(RATE)
    pcm = noise_only(6.0, level, kind, seed=3)
    assert run(vad, [pcm[i : i + 640] for i in range(0, len(pcm), 640)]) == []


def test_events_do_not_depend_on_chunking() -> None:
    scene = conversation(snr_db=15.0, seed=2)
    rng = np.random.default_rng(5)
    chunks, i = [], 0
    while i < len(scene.pcm):
        n = int(rng.integers(1, 3000))
        chunks.append(scene.pcm[i : i + n])
        i += n
    a = run(VoiceActivityDetector(RATE), scene.chunks(20))
    b = run(VoiceActivityDetector(RATE), chunks)
    assert a == b and len(a) == 4


def test_phone_audio_at_8k_through_mu_law() -> None:
    scene = conversation(snr_db=20.0, seed=4)
    down = StreamResampler(RATE, 8000)
    phone = ulaw2lin(lin2ulaw(down.resample(scene.pcm) + down.flush()))
    params = VADParams()
    events = run(VoiceActivityDetector(8000, params), [phone[i : i + 320] for i in range(0, len(phone), 320)])
    check_two_turns(events, scene, params)


def test_a_short_burst_does_not_count_as_speech() -> None:
    burst = utterance("speech_yes.wav")[: int(0.12 * RATE)]  # "Ye-": shorter than start_secs
    pcm = np.concatenate([np.zeros(RATE), burst, np.zeros(RATE)]).astype("<i2").tobytes()
    assert run(VoiceActivityDetector(RATE), [pcm]) == []


def test_speech_below_min_volume_is_ignored() -> None:
    # The fixtures' active speech is at -20.5 dBFS RMS; Silero itself hears far quieter
    # speech (a distant TV, say), which min_volume (default -50 dBFS) gates out.
    faint = conversation(snr_db=None, gain=0.002)  # -74 dBFS
    assert run(VoiceActivityDetector(RATE), faint.chunks()) == []
    ungated = run(VoiceActivityDetector(RATE, VADParams(min_volume=0.0)), faint.chunks())
    assert [e.speaking for e in ungated] == [True, False, True, False]
    quiet_caller = conversation(snr_db=None, gain=0.1)  # -40.5 dBFS
    events = run(VoiceActivityDetector(RATE), quiet_caller.chunks())
    assert [e.speaking for e in events] == [True, False, True, False]


def test_webrtc_detector_on_clean_speech() -> None:
    scene = conversation(snr_db=30.0, seed=6)
    params = VADParams()
    vad = VoiceActivityDetector(RATE, params, detector=WebRTCDetector(mode=3))
    check_two_turns(run(vad, scene.chunks(20)), scene, params)


def test_reset_forgets_the_stream() -> None:
    scene = conversation(snr_db=20.0, seed=7)
    vad = VoiceActivityDetector(RATE)
    first = run(vad, scene.chunks())
    vad.reset()
    assert vad.state is VADState.QUIET and vad.time == 0.0
    assert run(vad, scene.chunks()) == first


class ScriptedDetector:
    """Reads the probability from the frame itself (its first sample / 10000)."""

    sample_rate = 16000
    frame_samples = 320

    def speech_probability(self, frame: npt.NDArray[np.int16]) -> float:
        return float(frame[0]) / 10000.0

    def reset(self) -> None:
        pass


def frames_of(probabilities: list[float]) -> bytes:
    return b"".join(np.full(320, int(p * 10000), dtype="<i2").tobytes() for p in probabilities)


def test_state_machine_hysteresis() -> None:
    params = VADParams(confidence=0.5, start_secs=0.1, stop_secs=0.2, min_volume=0.0)
    vad = VoiceActivityDetector(RATE, params, detector=ScriptedDetector())  # 20 ms frames
    # 4 speech frames then a gap: not enough (needs 5); then 5 in a row: started.
    assert vad.process(frames_of([0.9] * 4 + [0.1])) == []
    assert vad.state is VADState.QUIET
    events = vad.process(frames_of([0.9] * 5))
    assert events == [VADEvent(speaking=True, time=pytest.approx(0.2), since=pytest.approx(0.1))]
    # 9 silent frames, then speech again: still speaking; then 10 silent frames: stopped.
    assert vad.process(frames_of([0.2] * 9 + [0.6])) == []
    assert vad.state is VADState.SPEAKING
    events = vad.process(frames_of([0.0] * 10))
    assert events == [VADEvent(speaking=False, time=pytest.approx(0.6), since=pytest.approx(0.4))]


def test_confidence_is_the_threshold() -> None:
    vad = VoiceActivityDetector(
        RATE, VADParams(confidence=0.8, start_secs=0.02, min_volume=0.0), detector=ScriptedDetector()
    )
    assert vad.process(frames_of([0.79] * 3)) == []
    assert [e.speaking for e in vad.process(frames_of([0.8]))] == [True]


@pytest.mark.parametrize(
    "kwargs", [{"confidence": 1.5}, {"start_secs": -1.0}, {"stop_secs": -0.1}, {"min_volume": 2.0}]
)
def test_invalid_params(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        VADParams(**kwargs)


def test_webrtc_rejects_bad_settings() -> None:
    with pytest.raises(ConfigurationError, match="mode"):
        WebRTCDetector(mode=4)
    with pytest.raises(ConfigurationError, match="sample_rate"):
        WebRTCDetector(sample_rate=22050)


def test_silero_probability_separates_speech_from_silence() -> None:
    detector = SileroDetector()
    speech = utterance("speech_hello.wav")[: 512 * 20].astype(np.int16)
    probabilities = [detector.speech_probability(speech[i : i + 512]) for i in range(0, len(speech), 512)]
    detector.reset()
    silence = [detector.speech_probability(np.zeros(512, dtype=np.int16)) for _ in range(10)]
    assert max(probabilities) > 0.8 and max(silence) < 0.2
