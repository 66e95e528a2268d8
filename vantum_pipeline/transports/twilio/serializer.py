"""Twilio Media Streams messages <-> frames, sans I/O.

Twilio opens a websocket to us and sends JSON text messages::

    connected → start → (media | mark | dtmf)* → stop

``TwilioSerializer.deserialize(message)`` turns one of them into frames:

- ``connected`` → nothing (the protocol version is remembered);
- ``start`` → :class:`TwilioStartFrame` (stream and call ids, the
  ``<Parameter>``s of the TwiML as ``custom_parameters``, the media format);
- ``media`` → ``InputAudioRawFrame``: pcm16 at the pipeline's rate (μ-law
  decoded, resampled from 8 kHz), or with ``passthrough`` the μ-law bytes
  as they came (``encoding="mulaw"``, 8 kHz);
- ``mark`` → :class:`TwilioMarkFrame` (the echo of a mark we sent: the audio
  before it has been played);
- ``dtmf`` → ``InputDTMFFrame``;
- ``stop`` → :class:`TwilioStopFrame` (the call is over).

``serialize(frame)`` produces what we send: ``media`` for output audio
(pcm16 at any rate is resampled to 8 kHz and μ-law encoded; μ-law 8 kHz
passes through), ``mark`` for a :class:`TwilioMarkFrame`, ``clear`` for an
``InterruptionFrame``. Other frames serialize to nothing.

Anything malformed raises :class:`~vantum_pipeline.errors.ProtocolError`
naming what was wrong: text that is not JSON, JSON that is not an object,
wrong types, unknown events, media before ``start`` or after ``stop``, a
second ``start``, a foreign ``streamSid``, bad base64, an unsupported media
format, oversized messages or payloads. No other exception escapes
``deserialize``, and its work is bounded by ``max_message_bytes``.

The Twilio* frames are the serializer's vocabulary for the transport; they
never travel through a pipeline.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vantum_pipeline.audio.mulaw import lin2ulaw
from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError, PipelineError, ProtocolError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    SystemFrame,
)

__all__ = [
    "TWILIO_SAMPLE_RATE",
    "TwilioMarkFrame",
    "TwilioSerializer",
    "TwilioStartFrame",
    "TwilioStopFrame",
]

TWILIO_SAMPLE_RATE = 8000
TWILIO_ENCODING = "audio/x-mulaw"
DTMF_DIGITS = frozenset("0123456789*#ABCD")
EVENTS = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})
INBOUND_TRACKS = frozenset({"inbound", "inbound_track"})
#: Longest mark name we send or accept.
MAX_MARK_NAME = 256
#: Most custom parameters accepted in ``start`` (TwiML allows a handful).
MAX_PARAMETERS = 64


@dataclass(slots=True, eq=False)
class TwilioStartFrame(SystemFrame):
    """The ``start`` message: the stream is open."""

    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    tracks: tuple[str, ...] = ()


@dataclass(slots=True, eq=False)
class TwilioMarkFrame(SystemFrame):
    """A playback mark: sent after audio, echoed by Twilio once it has played."""

    name: str = ""


@dataclass(slots=True, eq=False)
class TwilioStopFrame(SystemFrame):
    """The ``stop`` message: the call ended (or the stream was stopped)."""

    call_sid: str = ""


def _expect(value: object, kind: type | tuple[type, ...], where: str, raw: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(f"{where} must be a {names}, got {type(value).__name__}", raw)
    return value


def _object(message: dict[str, Any], key: str, event: str, raw: str) -> dict[str, Any]:
    if key not in message:
        raise ProtocolError(f"{event} message has no {key!r} object", raw)
    return _expect(message[key], dict, f"{event}.{key}", raw)  # type: ignore[no-any-return]


def _string(container: dict[str, Any], key: str, where: str, raw: str, *, required: bool = True) -> str:
    if key not in container:
        if required:
            raise ProtocolError(f"{where} has no {key!r}", raw)
        return ""
    return _expect(container[key], str, f"{where}.{key}", raw)  # type: ignore[no-any-return]


class TwilioSerializer:
    """One media stream's codec; see the module docstring.

    ``sample_rate``: the pipeline's audio rate (input frames are produced at
    it; output pcm16 may come at any rate). ``passthrough``: hand inbound
    μ-law to the pipeline undecoded. ``max_message_bytes`` and
    ``max_payload_bytes`` bound one message and one decoded media payload
    (Twilio sends 160 bytes every 20 ms).
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        passthrough: bool = False,
        max_message_bytes: int = 65536,
        max_payload_bytes: int = 16000,
    ) -> None:
        if sample_rate <= 0:
            raise ConfigurationError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self.passthrough = passthrough
        self.max_message_bytes = max_message_bytes
        self.max_payload_bytes = max_payload_bytes
        self.protocol_version: str | None = None
        self.start: TwilioStartFrame | None = None
        self.stopped = False
        self._inbound = StreamResampler(TWILIO_SAMPLE_RATE, sample_rate)
        self._outbound: StreamResampler | None = None
        #: The start of every media message, up to its payload (once the stream has started).
        self._media_prefix: str | None = None

    def set_input_rate(self, sample_rate: int) -> None:
        """Produce inbound pcm16 at ``sample_rate`` from now on (the pipeline's rate)."""
        if sample_rate <= 0:
            raise ConfigurationError(f"sample_rate must be positive, got {sample_rate}")
        if sample_rate != self.sample_rate:
            self.sample_rate = sample_rate
            self._inbound = StreamResampler(TWILIO_SAMPLE_RATE, sample_rate)

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start is not None else None

    # ------------------------------------------------------------- inbound

    def deserialize(self, message: str | bytes) -> list[Frame]:
        """Frames for one message from Twilio; ProtocolError when malformed."""
        if len(message) > self.max_message_bytes:
            raise ProtocolError(f"message of {len(message)} bytes exceeds the {self.max_message_bytes}-byte limit")
        if isinstance(message, bytes | bytearray):
            try:
                text = bytes(message).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"binary message is not UTF-8 text: {exc.reason}", bytes(message)) from None
        elif isinstance(message, str):
            text = message
        else:
            raise ProtocolError(f"message must be text, got {type(message).__name__}")
        try:
            decoded = json.loads(text)
        except RecursionError:
            raise ProtocolError("message nests too deeply to be a Twilio message", text) from None
        except ValueError as exc:  # JSONDecodeError, and oversized integers
            raise ProtocolError(f"message is not valid JSON: {exc}", text) from None
        if not isinstance(decoded, dict):
            raise ProtocolError(f"message must be a JSON object, got {type(decoded).__name__}", text)
        event = decoded.get("event")
        if not isinstance(event, str):
            raise ProtocolError("message has no 'event' string", text)
        if self.stopped:
            raise ProtocolError(f"{event!r} message after 'stop'", text)
        if event not in EVENTS:
            raise ProtocolError(f"unknown event {event[:40]!r}", text)
        if event not in ("connected", "start"):
            self._check_stream(decoded, event, text)
        handler: Callable[[dict[str, Any], str], list[Frame]] = getattr(self, f"_on_{event}")
        return handler(decoded, text)

    def _check_stream(self, message: dict[str, Any], event: str, raw: str) -> None:
        if self.start is None:
            raise ProtocolError(f"{event!r} message before 'start'", raw)
        sid = message.get("streamSid")
        if sid is not None and sid != self.start.stream_sid:
            raise ProtocolError(f"{event!r} message for stream {str(sid)[:40]!r}, not {self.start.stream_sid!r}", raw)

    def _on_connected(self, message: dict[str, Any], raw: str) -> list[Frame]:
        if self.start is not None:
            raise ProtocolError("'connected' message after 'start'", raw)
        version = message.get("version")
        self.protocol_version = version if isinstance(version, str) else None
        return []

    def _on_start(self, message: dict[str, Any], raw: str) -> list[Frame]:
        if self.start is not None:
            raise ProtocolError("second 'start' message on one stream", raw)
        start = _object(message, "start", "start", raw)
        stream_sid = _string(start, "streamSid", "start", raw, required=False) or _string(
            message, "streamSid", "start message", raw
        )
        if not stream_sid:
            raise ProtocolError("start message has an empty streamSid", raw)
        call_sid = _string(start, "callSid", "start", raw)
        account_sid = _string(start, "accountSid", "start", raw, required=False)
        parameters = start.get("customParameters", {})
        _expect(parameters, dict, "start.customParameters", raw)
        if len(parameters) > MAX_PARAMETERS:
            raise ProtocolError(f"start.customParameters has {len(parameters)} entries (limit {MAX_PARAMETERS})", raw)
        for name, value in parameters.items():
            _expect(value, str, f"start.customParameters[{name[:40]!r}]", raw)
        tracks = start.get("tracks", ["inbound"])
        _expect(tracks, list, "start.tracks", raw)
        for track in tracks:
            _expect(track, str, "start.tracks[]", raw)
        media_format = start.get("mediaFormat")
        if media_format is not None:
            _expect(media_format, dict, "start.mediaFormat", raw)
            encoding = media_format.get("encoding", TWILIO_ENCODING)
            rate = media_format.get("sampleRate", TWILIO_SAMPLE_RATE)
            channels = media_format.get("channels", 1)
            if (encoding, rate, channels) != (TWILIO_ENCODING, TWILIO_SAMPLE_RATE, 1):
                raise ProtocolError(
                    f"unsupported media format {str(encoding)[:40]!r} at {str(rate)[:12]} Hz, "
                    f"{str(channels)[:12]} channel(s); expected {TWILIO_ENCODING} at 8000 Hz mono",
                    raw,
                )
        self.start = TwilioStartFrame(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid,
            custom_parameters=dict(parameters),
            tracks=tuple(tracks),
        )
        return [self.start]

    def _on_media(self, message: dict[str, Any], raw: str) -> list[Frame]:
        media = _object(message, "media", "media", raw)
        track = media.get("track", "inbound")
        if track not in INBOUND_TRACKS:
            raise ProtocolError(f"media on track {str(track)[:40]!r}; only the inbound track is expected", raw)
        payload = _string(media, "payload", "media", raw)
        if len(payload) > (self.max_payload_bytes * 4) // 3 + 4:
            raise ProtocolError(
                f"media payload of {len(payload)} base64 characters exceeds {self.max_payload_bytes} bytes", raw
            )
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"media payload is not valid base64: {exc}", raw) from None
        if not audio:
            return []
        if self.passthrough:
            return [InputAudioRawFrame(audio, TWILIO_SAMPLE_RATE, 1, MULAW)]
        pcm = self._inbound.resample_mulaw(audio)
        if not pcm:
            return []
        return [InputAudioRawFrame(pcm, self.sample_rate, 1, PCM16)]

    def _on_mark(self, message: dict[str, Any], raw: str) -> list[Frame]:
        mark = _object(message, "mark", "mark", raw)
        name = _string(mark, "name", "mark", raw)
        if len(name) > MAX_MARK_NAME:
            raise ProtocolError(f"mark name of {len(name)} characters (limit {MAX_MARK_NAME})", raw)
        return [TwilioMarkFrame(name=name)]

    def _on_dtmf(self, message: dict[str, Any], raw: str) -> list[Frame]:
        dtmf = _object(message, "dtmf", "dtmf", raw)
        digit = _string(dtmf, "digit", "dtmf", raw)
        if digit not in DTMF_DIGITS:
            raise ProtocolError(f"dtmf digit {digit[:10]!r} is not one of 0-9 * # A-D", raw)
        return [InputDTMFFrame(digit)]

    def _on_stop(self, message: dict[str, Any], raw: str) -> list[Frame]:
        stop = message.get("stop", {})
        _expect(stop, dict, "stop", raw)
        call_sid = stop.get("callSid", "")
        self.stopped = True
        assert self.start is not None
        return [TwilioStopFrame(call_sid=call_sid if isinstance(call_sid, str) else self.start.call_sid)]

    # ------------------------------------------------------------ outbound

    def serialize(self, frame: Frame) -> list[str]:
        """Messages to send for ``frame`` (none for frames Twilio has no use for)."""
        if isinstance(frame, OutputAudioRawFrame):
            payload = self.encode_audio(frame)
            if not payload:
                return []
            # Every 20-40 ms: the fixed part is encoded once per stream, and
            # base64 needs no JSON escaping (same bytes as json.dumps gives).
            if self._media_prefix is None:
                self._media_prefix = self._message("media", media={"payload": ""})[: -len('""}}')] + '"'
            return [f'{self._media_prefix}{payload}"}}}}']
        if isinstance(frame, TwilioMarkFrame):
            if not frame.name or len(frame.name) > MAX_MARK_NAME:
                raise PipelineError(f"mark name must be 1-{MAX_MARK_NAME} characters, got {len(frame.name)}")
            return [self._message("mark", mark={"name": frame.name})]
        if isinstance(frame, InterruptionFrame):
            self.reset_output()
            return [self._message("clear")]
        return []

    def encode_audio(self, frame: OutputAudioRawFrame) -> str:
        """Base64 μ-law 8 kHz for ``frame`` (empty when the resampler holds it all back)."""
        if frame.num_channels != 1:
            raise PipelineError(f"Twilio plays mono audio; {frame.tag} has {frame.num_channels} channels")
        if frame.encoding == MULAW:
            if frame.sample_rate != TWILIO_SAMPLE_RATE:
                raise PipelineError(f"μ-law audio for Twilio must be 8000 Hz; {frame.tag} is {frame.sample_rate} Hz")
            mulaw = frame.audio
        elif frame.encoding == PCM16:
            if self._outbound is None or self._outbound.in_rate != frame.sample_rate:
                self._outbound = StreamResampler(frame.sample_rate, TWILIO_SAMPLE_RATE)
            mulaw = lin2ulaw(self._outbound.resample(frame.audio))
        else:
            raise PipelineError(f"cannot send {frame.encoding!r} audio to Twilio ({frame.tag})")
        return base64.b64encode(mulaw).decode("ascii")

    def reset_output(self) -> None:
        """Forget the outbound resampler's history (after a clear)."""
        if self._outbound is not None:
            self._outbound.reset()

    def _message(self, event: str, **body: Any) -> str:
        if self.start is None:
            raise PipelineError(f"cannot send {event!r} before the stream started (no streamSid yet)")
        return json.dumps({"event": event, "streamSid": self.start.stream_sid, **body}, separators=(",", ":"))
