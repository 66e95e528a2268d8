from vantum_pipeline import frames as F
from vantum_pipeline.testing import run_pipeline
from vantum_pipeline.testing.grammar import GrammarChecker, check_stream


def test_a_well_formed_turn_passes():
    frames = [
        F.StartFrame(),
        F.LLMFullResponseStartFrame(),
        F.LLMTextFrame("Hi."),
        F.LLMFullResponseEndFrame(),
        F.TTSStartedFrame("c1"),
        F.TTSAudioRawFrame(b"\0\0", 16000, context_id="c1"),
        F.TTSStoppedFrame("c1"),
        F.EndFrame(),
    ]
    assert check_stream(frames) == []


def test_interruption_closes_open_brackets():
    frames = [F.StartFrame(), F.TTSStartedFrame(), F.InterruptionFrame(), F.TTSStartedFrame(), F.TTSStoppedFrame()]
    assert check_stream(frames) == []


def test_violations_are_named():
    frames = [
        F.TextFrame("early"),
        F.StartFrame(),
        F.LLMTextFrame("stray"),
        F.TTSAudioRawFrame(b"", 16000),
        F.TTSStoppedFrame(),
        F.EndFrame(),
        F.TextFrame("late"),
        F.CancelFrame(),
        F.MetricsFrame("m", 1),
    ]
    found = check_stream(frames)
    assert [v.split(": ", 1)[1] for v in found] == [
        "before StartFrame",
        "LLM text outside a response",
        "TTS audio outside TTSStarted/TTSStopped",
        "TTS stopped without a start",
        "in band after EndFrame",
        "after CancelFrame",
    ]


async def test_checker_in_a_pipeline_sees_the_framework_obey_the_grammar():
    checker = GrammarChecker()
    await run_pipeline([checker], [F.LLMFullResponseStartFrame(), F.LLMTextFrame("a"), F.LLMFullResponseEndFrame()])
    assert checker.violations == []
