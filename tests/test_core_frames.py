import subprocess
import sys

import pytest

from vantum_pipeline import frames as F


def test_ids_increase_monotonically():
    made = [F.TextFrame("a"), F.StartFrame(), F.EndFrame(), F.InputAudioRawFrame(b"\0\0", 16000)]
    ids = [f.id for f in made]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_frames_are_slotted_and_compare_by_identity():
    a, b = F.TextFrame("same"), F.TextFrame("same")
    assert not hasattr(a, "__dict__")
    assert a != b and a == a
    with pytest.raises(AttributeError):
        a.unknown = 1  # type: ignore[attr-defined]


def test_kind_is_the_class():
    assert isinstance(F.StartFrame(), F.SystemFrame) and not F.StartFrame().in_band
    assert isinstance(F.InterruptionFrame(), F.SystemFrame)
    assert isinstance(F.TextFrame("x"), F.DataFrame) and F.TextFrame("x").in_band
    assert isinstance(F.EndFrame(), F.ControlFrame) and F.EndFrame().in_band
    assert isinstance(F.TTSStartedFrame(), F.ControlFrame)


def test_what_survives_an_interruption():
    survivors = [
        F.EndFrame(),
        F.InputAudioRawFrame(b"", 16000),
        F.TranscriptionFrame("hi"),
        F.InterimTranscriptionFrame("h"),
        F.EndOfTurnFrame("hi"),
        F.HeardTextFrame("hi"),
        F.InputDTMFFrame("1"),
        F.ErrorFrame("x"),
    ]
    flushed = [
        F.TextFrame("x"),
        F.LLMTextFrame("x"),
        F.TTSAudioRawFrame(b"", 16000),
        F.OutputAudioRawFrame(b"", 16000),
        F.LLMFullResponseStartFrame(),
        F.TTSStoppedFrame(),
        F.TTSSpeakFrame("x"),
    ]
    assert all(f.survives_interruption for f in survivors)
    assert not any(f.survives_interruption for f in flushed)


def test_audio_frame_duration():
    pcm = F.InputAudioRawFrame(b"\0\0" * 320, 16000)
    assert pcm.num_samples == 320 and pcm.duration == pytest.approx(0.02)
    ulaw = F.InputAudioRawFrame(b"\xff" * 160, 8000, encoding=F.MULAW)
    assert ulaw.num_samples == 160 and ulaw.duration == pytest.approx(0.02)


def test_frames_are_unstamped_until_pushed():
    assert F.TextFrame("x").epoch == F.UNSTAMPED


def test_importing_the_core_imports_no_vendor_sdk():
    code = (
        "import sys, vantum_pipeline, vantum_pipeline.frames, vantum_pipeline.task;"
        "sdks=('deepgram','openai','cartesia','twilio','aiohttp','websockets','pipecat');"
        "bad=[m for m in sdks if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
