"""Figures of the offline engines: word accuracy of pocketsphinx on espeak-ng speech, and speed.

    PYTHONPATH=. python benchmarks/offline_engines.py

Word accuracy (1 - word error rate) of each sales-script line, spoken by
espeak-ng and recognized by pocketsphinx, per language model:

- ``domain n-gram``: the trigram model built from the campaign's phrases (the default);
- ``domain grammar``: a JSGF grammar of the same phrases;
- ``general``: pocketsphinx's general US English model;

on wideband audio (16 kHz) and after an 8 kHz μ-law phone line, for the
callee's lines (callee voice) and the bot's lines (bot voice). Then the speed
of synthesis (seconds of speech per second of CPU) and of streaming
recognition (real-time factor). Prints figures; asserts nothing.
"""

from __future__ import annotations

import time

import numpy as np

from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.services.offline.agent import SalesScript
from vantum_pipeline.services.offline.espeak import BOT_VOICE, CALLEE_VOICE, EspeakSynthesizer, EspeakVoice
from vantum_pipeline.services.offline.language_model import DomainLanguageModel
from vantum_pipeline.services.offline.recognizer import FinalTranscript, PocketsphinxRecognizer
from vantum_pipeline.services.offline.word_accuracy import WordErrors, word_errors

QUIET = np.zeros(4000, dtype="<i2").tobytes()  # a quarter second at 16 kHz


def resample(pcm: bytes, rate_in: int, rate_out: int) -> bytes:
    resampler = StreamResampler(rate_in, rate_out)
    return resampler.resample(pcm) + resampler.flush()


def speech(synthesizer: EspeakSynthesizer, text: str, voice: EspeakVoice, phone: bool) -> bytes:
    spoken = synthesizer.synthesize(text, voice)
    if phone:
        line = ulaw2lin(lin2ulaw(resample(spoken.audio, spoken.sample_rate, 8000)))
        audio = resample(line, 8000, 16000)
    else:
        audio = resample(spoken.audio, spoken.sample_rate, 16000)
    return QUIET + audio + QUIET


def accuracy(recognizer: PocketsphinxRecognizer, audio: list[bytes], lines: tuple[str, ...]) -> float:
    total = WordErrors(0, 0, 0, 0)
    for pcm, line in zip(audio, lines, strict=True):
        total += word_errors(line, recognizer.recognize(pcm).text)
    return total.accuracy


def main() -> None:
    script = SalesScript()
    synthesizer = EspeakSynthesizer.load()
    sets = {
        "callee lines, callee voice": (script.callee_phrases, CALLEE_VOICE),
        "bot lines, bot voice": (script.bot_lines(), BOT_VOICE),
    }
    print("word accuracy (pocketsphinx on espeak-ng speech)")
    print(f"  {'':30} {'model':16} {'16 kHz':>8} {'phone':>8}")
    for name, (lines, voice) in sets.items():
        model = DomainLanguageModel.from_phrases(lines, pronunciations=script.pronunciations)
        audio = {phone: [speech(synthesizer, line, voice, phone) for line in lines] for phone in (False, True)}
        recognizers = {
            "domain n-gram": PocketsphinxRecognizer(model),
            "domain grammar": PocketsphinxRecognizer(model, search="grammar"),
            "general": PocketsphinxRecognizer(None),
        }
        for label, recognizer in recognizers.items():
            wide = accuracy(recognizer, audio[False], lines)
            phone = accuracy(recognizer, audio[True], lines)
            print(f"  {name:30} {label:16} {wide:8.3f} {phone:8.3f}")

    text = " ".join(script.bot_lines())
    started = time.perf_counter()
    spoken = synthesizer.synthesize(text, BOT_VOICE)
    cpu = time.perf_counter() - started
    speed = spoken.duration / cpu
    print(f"\nsynthesis: {spoken.duration:.1f} s of speech in {cpu * 1000:.0f} ms: {speed:.0f}x real time")

    lines = script.callee_phrases
    model = DomainLanguageModel.from_phrases(lines, pronunciations=script.pronunciations)
    stream = b"".join(speech(synthesizer, line, CALLEE_VOICE, True) + QUIET * 3 for line in lines)
    recognizer = PocketsphinxRecognizer(model)
    started = time.perf_counter()
    finals = []
    for offset in range(0, len(stream), 640):  # 20 ms chunks, as a live stream
        finals += [e for e in recognizer.feed(stream[offset : offset + 640]) if isinstance(e, FinalTranscript)]
    finals += [e for e in recognizer.finish() if isinstance(e, FinalTranscript)]
    cpu = time.perf_counter() - started
    seconds = len(stream) / 32000
    total = WordErrors(0, 0, 0, 0)
    for line, final in zip(lines, finals, strict=False):
        total += word_errors(line, final.text)
    print(
        f"streaming recognition (partials + per-utterance final): {seconds:.1f} s of phone audio in {cpu:.2f} s "
        f"(real-time factor {cpu / seconds:.3f}); {len(finals)}/{len(lines)} utterances, "
        f"word accuracy {total.accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
