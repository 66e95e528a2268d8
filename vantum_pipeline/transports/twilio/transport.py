"""One Twilio media stream as a pair of processors.

``TwilioTransport(websocket, serializer)`` wraps a media-stream websocket
whose ``start`` message has been read already (the server needs its call
token before it builds the pipeline). Put ``transport.input()`` at the head
of the call's pipeline and ``transport.output()`` after the TTS:

- input: a task reads the socket; ``media`` becomes ``InputAudioRawFrame``
  (pcm16 at the pipeline's input rate, or μ-law pass-through), ``dtmf``
  becomes ``InputDTMFFrame``, both through the input base's bounded,
  never-blocking buffer; ``mark`` echoes go to the output. A malformed
  message is logged and counted (``protocol.malformed``). ``stop``, a normal
  close (1000, 1001, or no code), a connection that just goes away, or
  ``receive_timeout`` seconds without any message (Twilio sends media every
  20 ms) mean the callee is gone: the input reports ``usage.call_seconds``
  and cancels the pipeline, whose cleanup closes every service socket.
- a protocol violation by the far end ends the call as a failure: more than
  ``max_malformed`` malformed messages, a message aiohttp refuses (larger
  than the socket's ``max_msg_size``: it closes with 1009; a bad frame), or
  a close with any other code. The input logs a warning naming the call
  and the reason, records it in ``TwilioTransport.violation`` and pushes a
  fatal ``ErrorFrame``: the pipeline ends with an error, the server hangs
  the call up and its outcome is ``error``.
- output: the output base paces the audio; each chunk is sent as ``media``
  (pcm16 resampled to 8 kHz μ-law, or μ-law as is), a ``mark`` follows every
  ``marker_interval`` seconds of audio and the end of each TTS context, and
  an interruption sends ``clear``. Marks echoed after a clear are ignored.

Sends are serialized by one lock and bounded by ``io_timeout``. A write the
socket refuses because the far end has closed it is dropped, not an output
failure: the callee hung up, and the input ends the call as for any hang-up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from vantum_pipeline.errors import ProtocolError
from vantum_pipeline.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.transports.base import AudioChunk, InputTransport, OutputTransport
from vantum_pipeline.transports.twilio.serializer import (
    TwilioMarkFrame,
    TwilioSerializer,
    TwilioStartFrame,
    TwilioStopFrame,
)

__all__ = ["TwilioTransport", "TwilioTransportParams"]

_STOP = "stop"
_GIVE_UP = "give up"
#: Close codes that end a stream normally (no code at all included: 1005, or 0 from aiohttp).
_NORMAL_CLOSE_CODES = frozenset({0, 1000, 1001, 1005})


class MediaSocket(Protocol):
    """What the transport needs of a websocket (aiohttp's server side fits)."""

    async def send_str(self, data: str) -> None: ...

    async def receive(self, timeout: float | None = None) -> Any: ...

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...

    @property
    def closed(self) -> bool: ...


@dataclass(slots=True)
class TwilioTransportParams:
    """Knobs of one call's transport; the defaults suit the phone."""

    #: Hand inbound μ-law to the pipeline undecoded (for an STT that takes mulaw).
    passthrough_input: bool = False
    #: Audio per media message, at most: Twilio plays any length. Longer frames
    #: are cut to it and shorter ones queued back to back are joined up to it:
    #: 80 ms sends a quarter of the messages (JSON, base64, socket writes) of
    #: 20 ms. A barge-in's ``clear`` drops what Twilio holds, however long.
    chunk_duration: float = 0.08
    #: How far ahead of real time audio is sent; what a barge-in throws away.
    lead: float = 0.1
    marker_interval: float = 0.5
    io_timeout: float = 2.0
    #: Extra seconds the end waits for the last marks to come back.
    end_timeout: float = 3.0
    receive_timeout: float = 15.0
    max_malformed: int = 5
    #: Inbound frames buffered while the pipeline is busy (20 ms each).
    max_pending_input: int = 100


class TwilioTransport:
    """Input and output processors over one media-stream websocket."""

    def __init__(
        self,
        websocket: MediaSocket,
        serializer: TwilioSerializer,
        params: TwilioTransportParams | None = None,
        *,
        name: str = "twilio",
    ) -> None:
        if serializer.start is None:
            raise ProtocolError("the media stream has not started: read its 'start' message first")
        self.websocket = websocket
        self.serializer = serializer
        self.params = params or TwilioTransportParams()
        self.start: TwilioStartFrame = serializer.start
        self.name = name
        #: Why the stream ended (``"stop"``, ``"socket closed"``, ...); None while it runs.
        self.end_reason: str | None = None
        #: The far end's protocol violation that ended the stream, if one did.
        self.violation: str | None = None
        self.ended = asyncio.Event()
        #: The far end closed the socket under a write: nothing more is sent.
        self.peer_gone = False
        self._send_lock = asyncio.Lock()
        self._input = TwilioInputTransport(self, name=f"{name}.input#{self.start.call_sid[-6:]}")
        self._output = TwilioOutputTransport(self, name=f"{name}.output#{self.start.call_sid[-6:]}")

    @property
    def call_sid(self) -> str:
        return self.start.call_sid

    @property
    def stream_sid(self) -> str:
        return self.start.stream_sid

    def input(self) -> TwilioInputTransport:
        return self._input

    def output(self) -> TwilioOutputTransport:
        return self._output

    async def send(self, messages: list[str]) -> None:
        """Send messages in order; a no-op once the stream has ended or the far end has gone.

        A socket the far end has closed refuses writes (aiohttp raises
        ``ConnectionResetError``) while its last messages (``stop``, the close)
        may still wait unread: the callee hung up, which is not an output
        failure. The writes are dropped and the input ends the call when it
        reads those messages (or the socket's end), as for any hang-up.
        """
        if not messages or self.peer_gone:
            return
        async with self._send_lock:
            for message in messages:
                if self.ended.is_set() or self.peer_gone:
                    return
                try:
                    await self.websocket.send_str(message)
                except ConnectionResetError as exc:
                    self.peer_gone = True
                    logger.debug("{}: call {}: the far end closed the socket: {}", self.name, self.call_sid, exc)
                    return

    def mark_ended(self, reason: str) -> bool:
        """Record that the stream is over; False if it already was."""
        if self.ended.is_set():
            return False
        self.end_reason = reason
        self.ended.set()
        return True

    def mark_violated(self, reason: str) -> bool:
        """Record that the far end broke the protocol and the stream is over; False if it already was."""
        if not self.mark_ended(reason):
            return False
        self.violation = reason
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket (bounded); safe to call twice."""
        self.mark_ended(reason or "closed by us")
        if self.websocket.closed:
            return
        try:
            async with asyncio.timeout(self.params.io_timeout):
                await self.websocket.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, OSError) as exc:
            logger.debug("{}: closing the media socket: {}", self.name, exc)


class TwilioInputTransport(InputTransport):
    """Reads the media stream; see the module docstring."""

    def __init__(self, transport: TwilioTransport, *, name: str) -> None:
        super().__init__(max_pending=transport.params.max_pending_input, name=name)
        self.transport = transport
        #: Malformed messages received so far.
        self.malformed = 0
        self._started_at: float | None = None
        self._last_message_at = 0.0
        self._silence_watch: asyncio.Task[None] | None = None
        self._usage_reported = False

    async def open_input(self, start: StartFrame) -> None:
        if not self.transport.serializer.passthrough:
            self.transport.serializer.set_input_rate(start.audio_in_sample_rate)
        self._started_at = self._last_message_at = asyncio.get_running_loop().time()
        reader = self.create_task(self._read_socket(), "receive", essential=True)
        self._silence_watch = self.create_task(self._watch_silence(reader), "silence")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, EndFrame | CancelFrame) and direction is FrameDirection.DOWNSTREAM:
            await self._report_usage()
        await super().process_frame(frame, direction)

    async def _read_socket(self) -> None:
        from aiohttp import WebSocketError, WSMsgType

        socket = self.transport.websocket
        loop = asyncio.get_running_loop()
        reason = "socket closed without 'stop'"
        while not self.transport.ended.is_set():
            # No timeout here: a timer per message (50 a second) would cost more than
            # the message; _watch_silence bounds the wait instead.
            message = await socket.receive()
            self._last_message_at = loop.time()
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                outcome = await self._on_message(message.data)
                if outcome == _STOP:
                    reason = "stop"
                    break
                if outcome == _GIVE_UP:
                    limit = self.transport.params.max_malformed
                    await self._violated(f"{self.malformed} malformed messages (at most {limit} allowed)")
                    return
            elif message.type is WSMsgType.ERROR:
                if isinstance(message.data, WebSocketError):
                    # aiohttp refused a message (too big, bad frame) and closed the socket with its code.
                    await self._violated(f"closed with {message.data.code}: {message.data}")
                    return
                reason = f"socket error: {message.data}"  # the connection went away
                break
            elif message.type is WSMsgType.CLOSE:
                if message.data not in _NORMAL_CLOSE_CODES:
                    extra = f" ({str(message.extra)[:120]})" if message.extra else ""
                    await self._violated(f"Twilio closed the socket with code {message.data}{extra}")
                    return
                break
            elif message.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
        await self._stream_ended(reason)

    async def _watch_silence(self, reader: asyncio.Task[Any]) -> None:
        """``receive_timeout`` seconds without a message end the stream (Twilio sends media every 20 ms)."""
        loop = asyncio.get_running_loop()
        timeout = self.transport.params.receive_timeout
        while not self.transport.ended.is_set():
            silent = loop.time() - self._last_message_at
            if silent >= timeout:
                reader.cancel()
                await self._stream_ended(f"no message from Twilio for {timeout:g}s")
                return
            await asyncio.sleep(timeout - silent)

    async def _on_message(self, data: str | bytes) -> str | None:
        """Handle one message; returns ``_STOP`` or ``_GIVE_UP`` when reading must end."""
        try:
            frames = self.transport.serializer.deserialize(data)
        except ProtocolError as exc:
            self.malformed += 1
            limit = self.transport.params.max_malformed
            logger.warning(
                "{}: call {}: malformed Twilio message ({} of at most {}): {}",
                self.name,
                self.transport.call_sid,
                self.malformed,
                limit,
                exc,
            )
            await self.push_frame(
                MetricsFrame("protocol.malformed", 1, processor=self.name, labels={"service": "twilio"})
            )
            if self.malformed > limit:
                return _GIVE_UP
            return None
        for frame in frames:
            if isinstance(frame, InputAudioRawFrame | InputDTMFFrame):
                self.offer(frame)
            elif isinstance(frame, TwilioMarkFrame):
                self.transport.output().marker_played(frame.name)
            elif isinstance(frame, TwilioStopFrame):
                return _STOP
        return None

    async def _stream_ended(self, reason: str) -> None:
        if self._silence_watch is not None and self._silence_watch is not asyncio.current_task():
            self._silence_watch.cancel()
        if not self.transport.mark_ended(reason):
            return
        logger.info("{}: call {}: media stream ended ({})", self.name, self.transport.call_sid, reason)
        await self._report_usage()
        # Twilio's ``stop`` is how a call ends (a hang-up): expected, not a failure.
        cancel = CancelFrame(reason=f"call ended: {reason}", expected=reason == "stop")
        await self.push_frame(cancel, FrameDirection.UPSTREAM)

    async def _violated(self, reason: str) -> None:
        """The far end broke the protocol: end the call as a failure (the server hangs up)."""
        if not self.transport.mark_violated(reason):
            return
        logger.warning(
            "{}: call {}: media stream protocol violation, ending the call: {}",
            self.name,
            self.transport.call_sid,
            reason,
        )
        await self._report_usage()
        await self.push_error(f"media stream protocol violation: {reason}", fatal=True)

    async def _report_usage(self) -> None:
        if self._usage_reported or self._started_at is None:
            return
        self._usage_reported = True
        seconds = asyncio.get_running_loop().time() - self._started_at
        await self.push_frame(
            MetricsFrame("usage.call_seconds", seconds, unit="s", processor=self.name, labels={"service": "twilio"})
        )


class TwilioOutputTransport(OutputTransport):
    """Sends audio, marks and clears; see the module docstring."""

    uses_markers = True

    def __init__(self, transport: TwilioTransport, *, name: str) -> None:
        params = transport.params
        super().__init__(
            chunk_duration=params.chunk_duration,
            lead=params.lead,
            marker_interval=params.marker_interval,
            io_timeout=params.io_timeout,
            end_timeout=params.end_timeout,
            name=name,
        )
        self.transport = transport
        #: Messages sent, by event (``media``, ``mark``, ``clear``).
        self.sent = {"media": 0, "mark": 0, "clear": 0}

    async def write_audio(self, chunk: AudioChunk) -> None:
        frame = OutputAudioRawFrame(chunk.audio, chunk.sample_rate, chunk.num_channels, chunk.encoding)
        messages = self.transport.serializer.serialize(frame)
        self.sent["media"] += len(messages)
        await self.transport.send(messages)

    async def write_marker(self, name: str) -> None:
        self.sent["mark"] += 1
        await self.transport.send(self.transport.serializer.serialize(TwilioMarkFrame(name=name)))

    async def clear_output(self) -> None:
        self.sent["clear"] += 1
        await self.transport.send(self.transport.serializer.serialize(InterruptionFrame()))
