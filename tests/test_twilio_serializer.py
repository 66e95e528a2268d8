"""TwilioSerializer: round trips, and hostile input that must end in ProtocolError."""

from __future__ import annotations

import base64
import json
import math
import random
import struct

import pytest

from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.errors import PipelineError, ProtocolError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TextFrame,
    TTSAudioRawFrame,
)
from vantum_pipeline.transports.twilio.serializer import (
    TwilioMarkFrame,
    TwilioSerializer,
    TwilioStartFrame,
    TwilioStopFrame,
)

STREAM = "MZ00000000000000000000000000000001"
CALL = "CA00000000000000000000000000000001"


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start(**overrides) -> str:
    body = {
        "accountSid": "AC0001",
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"call_token": "tok-1", "campaign_id": "c-9"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    body.update(overrides)
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": STREAM, "start": body})


def media(audio: bytes, seq: int = 2, **extra) -> str:
    body = {"track": "inbound", "chunk": str(seq - 1), "timestamp": str(20 * (seq - 2)), **extra}
    body.setdefault("payload", base64.b64encode(audio).decode())
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": STREAM, "media": body})


def tone(seconds: float, rate: int, freq: float = 440.0) -> bytes:
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def started(**kwargs) -> TwilioSerializer:
    s = TwilioSerializer(**kwargs)
    assert s.deserialize(connected()) == []
    [frame] = s.deserialize(start())
    assert isinstance(frame, TwilioStartFrame)
    return s


# ------------------------------------------------------------------ inbound


def test_start_exposes_stream_call_and_parameters():
    s = TwilioSerializer()
    s.deserialize(connected())
    [frame] = s.deserialize(start())
    assert (frame.stream_sid, frame.call_sid, frame.account_sid) == (STREAM, CALL, "AC0001")
    assert frame.custom_parameters == {"call_token": "tok-1", "campaign_id": "c-9"}
    assert s.protocol_version == "1.0.0" and s.stream_sid == STREAM


def test_media_is_decoded_and_resampled_to_the_pipeline_rate():
    s = started(sample_rate=16000)
    pcm8k = tone(1.0, 8000)
    mulaw = lin2ulaw(pcm8k)
    frames = []
    for i in range(0, len(mulaw), 160):
        frames += s.deserialize(media(mulaw[i : i + 160], seq=2 + i // 160))
    assert all(isinstance(f, InputAudioRawFrame) and f.sample_rate == 16000 and f.encoding == PCM16 for f in frames)
    total = sum(f.num_samples for f in frames)
    assert 15900 <= total <= 16000  # 1 s at 16 kHz, minus the resampler's filter delay
    # The tone survives: correlate with a 440 Hz reference at 16 kHz.
    audio = b"".join(f.audio for f in frames)
    samples = struct.unpack(f"<{len(audio) // 2}h", audio)
    energy = sum(x * x for x in samples) / len(samples)
    assert energy > 0.3 * 8000**2 / 2


def test_passthrough_hands_over_the_mulaw_bytes():
    s = started(passthrough=True)
    payload = bytes(range(160))
    [frame] = s.deserialize(media(payload))
    assert (frame.audio, frame.sample_rate, frame.encoding) == (payload, 8000, MULAW)


def test_mark_dtmf_stop_and_bytes_messages():
    s = started()
    [mark] = s.deserialize(json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "m7"}}).encode())
    assert isinstance(mark, TwilioMarkFrame) and mark.name == "m7"
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"track": "inbound_track", "digit": "#"}}
    [digit] = s.deserialize(json.dumps(dtmf))
    assert isinstance(digit, InputDTMFFrame) and digit.digit == "#"
    [stop] = s.deserialize(json.dumps({"event": "stop", "streamSid": STREAM, "stop": {"callSid": CALL}}))
    assert isinstance(stop, TwilioStopFrame) and stop.call_sid == CALL
    with pytest.raises(ProtocolError, match="after 'stop'"):
        s.deserialize(media(b"\xff" * 160))


# ----------------------------------------------------------------- outbound


def test_output_pcm_becomes_mulaw_8k_and_round_trips():
    s = started()
    pcm16k = tone(0.5, 16000)
    messages = []
    for i in range(0, len(pcm16k), 640):
        messages += s.serialize(TTSAudioRawFrame(pcm16k[i : i + 640], 16000, context_id="c"))
    decoded = [json.loads(m) for m in messages]
    assert {d["event"] for d in decoded} == {"media"} and {d["streamSid"] for d in decoded} == {STREAM}
    mulaw = b"".join(base64.b64decode(d["media"]["payload"]) for d in decoded)
    assert 3950 <= len(mulaw) <= 4000  # 0.5 s at 8 kHz, minus the filter delay
    # Decode again and compare with the source decimated (the resampler keeps
    # the stream time-aligned): same tone, same level.
    back = struct.unpack(f"<{len(mulaw)}h", ulaw2lin(mulaw))
    reference = struct.unpack(f"<{len(pcm16k) // 2}h", pcm16k)[::2]
    error = sum((a - b) ** 2 for a, b in zip(back[100:], reference[100:], strict=False)) / (len(back) - 100)
    assert error < 0.05 * 8000**2 / 2  # within a few percent: codec and filter


def test_output_mulaw_passes_through_and_marks_and_clear():
    s = started()
    payload = bytes(range(200))
    [m] = s.serialize(OutputAudioRawFrame(payload, 8000, 1, MULAW))
    assert base64.b64decode(json.loads(m)["media"]["payload"]) == payload
    assert json.loads(s.serialize(TwilioMarkFrame(name="m1"))[0]) == {
        "event": "mark",
        "streamSid": STREAM,
        "mark": {"name": "m1"},
    }
    assert json.loads(s.serialize(InterruptionFrame())[0]) == {"event": "clear", "streamSid": STREAM}
    assert s.serialize(TextFrame("not for Twilio")) == []


def test_media_messages_are_json_even_for_a_stream_sid_that_needs_escaping():
    odd = 'MZ"quoted\\back\u00e9</script>'
    s = TwilioSerializer(passthrough=True)
    s.deserialize(start(streamSid=odd))
    for size in (1, 160, 320):
        payload = bytes(range(256))[:size]
        [m] = s.serialize(OutputAudioRawFrame(payload, 8000, 1, MULAW))
        assert json.loads(m) == {
            "event": "media",
            "streamSid": odd,
            "media": {"payload": base64.b64encode(payload).decode()},
        }


def test_serialize_refuses_what_twilio_cannot_play():
    s = TwilioSerializer()
    with pytest.raises(PipelineError, match="before the stream started"):
        s.serialize(TwilioMarkFrame(name="m1"))
    s = started()
    with pytest.raises(PipelineError, match="8000 Hz"):
        s.serialize(OutputAudioRawFrame(b"\xff" * 10, 16000, 1, MULAW))
    with pytest.raises(PipelineError, match="mono"):
        s.serialize(OutputAudioRawFrame(b"\x00" * 8, 16000, 2))


# ------------------------------------------------------------ hostile input

HOSTILE = [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ("42", "JSON object"),
    ('"media"', "JSON object"),
    ("{}", "'event' string"),
    ('{"event": 5}', "'event' string"),
    ('{"event": "dance"}', "unknown event"),
    ('{"event": "media"}', "before 'start'"),
    ("[" * 100000, "too deeply|limit"),
    ('{"event": "connected", "n": ' + "9" * 5000 + "}", "not valid JSON"),
]


@pytest.mark.parametrize(("message", "reason"), HOSTILE)
def test_malformed_messages_before_start(message, reason):
    s = TwilioSerializer(max_message_bytes=200_000)
    with pytest.raises(ProtocolError, match=reason):
        s.deserialize(message)


def test_binary_garbage_and_oversized_messages():
    s = TwilioSerializer()
    with pytest.raises(ProtocolError, match="UTF-8"):
        s.deserialize(b"\xff\xfe\x00garbage")
    with pytest.raises(ProtocolError, match="limit"):
        s.deserialize("x" * 70000)


HOSTILE_AFTER_START = [
    (media(b"", payload="!!!not base64!!!"), "base64"),
    (media(b"", payload=12), "payload must be a str"),
    (json.dumps({"event": "media", "streamSid": STREAM}), "no 'media'"),
    (json.dumps({"event": "media", "streamSid": STREAM, "media": []}), "must be a dict"),
    (json.dumps({"event": "media", "streamSid": STREAM, "media": {}}), "no 'payload'"),
    (media(b"\xff" * 160, track="outbound"), "inbound"),
    (media(b"\xff" * 20000), "exceeds"),
    (json.dumps({"event": "media", "streamSid": "MZother", "media": {"payload": ""}}), "for stream"),
    (json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": None}}), "must be a str"),
    (json.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": "x" * 300}}), "limit"),
    (json.dumps({"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "12"}}), "digit"),
    (json.dumps({"event": "stop", "streamSid": STREAM, "stop": "now"}), "must be a dict"),
    (start(), "second 'start'"),
    (connected(), "after 'start'"),
]


@pytest.mark.parametrize(("message", "reason"), HOSTILE_AFTER_START)
def test_malformed_messages_after_start(message, reason):
    s = started()
    with pytest.raises(ProtocolError, match=reason):
        s.deserialize(message)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"callSid": 7}, "callSid must be a str"),
        ({"customParameters": ["a"]}, "customParameters must be a dict"),
        ({"customParameters": {"a": 1}}, "must be a str"),
        ({"customParameters": {str(i): "v" for i in range(100)}}, "entries"),
        ({"mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1}}, "unsupported media"),
        ({"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": [8000], "channels": 1}}, "unsupported media"),
        ({"tracks": "inbound"}, "tracks must be a list"),
    ],
)
def test_malformed_start(overrides, reason):
    s = TwilioSerializer()
    with pytest.raises(ProtocolError, match=reason):
        s.deserialize(start(**overrides))
    assert s.start is None  # a bad start leaves no half-opened stream


def test_protocol_error_keeps_a_truncated_copy_of_the_input():
    s = TwilioSerializer()
    with pytest.raises(ProtocolError) as info:
        s.deserialize('{"event": "nope", "pad": "' + "x" * 1000 + '"}')
    assert info.value.raw is not None and len(info.value.raw) <= ProtocolError.MAX_RAW


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**70, 1.5, float("1e308")])
    if kind == 2:
        return rng.choice(["", "media", "start", "mark", "stop", "dtmf", STREAM, "\u0000", "é" * 3])
    if kind == 3:
        return base64.b64encode(rng.randbytes(rng.randrange(0, 400))).decode()
    if kind == 4:
        return rng.choice(["inbound", "outbound", "#", "1", "x" * 300])
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["event", "streamSid", "media", "payload", "mark", "name", "dtmf", "digit", "start", "stop", "track"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_fuzz_only_protocol_errors_escape():
    rng = random.Random(20240601)
    events = ["connected", "start", "media", "mark", "dtmf", "stop"]
    outcomes = {"ok": 0, "error": 0}
    for i in range(3000):
        s = started() if i % 2 else TwilioSerializer()
        if i % 3 == 0:
            message: str | bytes = rng.randbytes(rng.randrange(0, 300))
        elif i % 3 == 1:
            message = json.dumps(_random_json(rng))
        else:
            body = _random_json(rng)
            body = body if isinstance(body, dict) else {"x": body}
            body["event"] = rng.choice(events)
            if rng.random() < 0.5:
                body["streamSid"] = STREAM
            message = json.dumps(body)
        try:
            s.deserialize(message)
            outcomes["ok"] += 1
        except ProtocolError:
            outcomes["error"] += 1
    assert outcomes["error"] > 1000 and outcomes["ok"] > 10
