"""The far end of a fake Twilio call: a scripted callee on a media stream.

``Callee`` plays Twilio's part of one Media Streams websocket, the way
Twilio does it:

- it sends ``connected`` and ``start`` (with the TwiML ``<Parameter>``s in
  ``customParameters``), then one ``media`` message every 20 ms on an
  absolute clock: the callee's speech when the script says something,
  μ-law silence otherwise;
- it plays what it receives in real time, 160 bytes every 20 ms, from a
  bounded buffer; a ``mark`` is echoed once the audio sent before it has
  been played, a ``clear`` drops the buffered audio and echoes every pending
  mark at once;
- it records what the callee actually heard (``heard``: time and μ-law
  bytes of each 20 ms of bot audio played), every message received, the
  mark echoes (and whether a clear caused them), the clears and the
  callee's own speech intervals;
- ``stop`` and a closed socket end it, from either side.

A script is an ``async def script(callee)`` using the methods below, or a
list of steps (:class:`Say`, :class:`Listen`, :class:`BargeIn`,
:class:`Pause`, :class:`Dtmf`, :class:`HangUp`, :class:`Drop`,
:class:`SendRaw`, :class:`CloseSocket`). Times are seconds since the stream started.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import wave
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from vantum_pipeline.audio.mulaw import lin2ulaw, ulaw2lin
from vantum_pipeline.audio.resample import StreamResampler

__all__ = [
    "BargeIn",
    "Callee",
    "CalleeScript",
    "CloseSocket",
    "Drop",
    "Dtmf",
    "HangUp",
    "HeardChunk",
    "Listen",
    "MarkEcho",
    "Pause",
    "Say",
    "SendRaw",
    "load_speech",
]

FRAME_SECONDS = 0.02
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
MULAW_SILENCE = 0xFF
#: Most bot audio Twilio's side buffers (bytes of μ-law: 120 s).
MAX_PLAYBACK_BYTES = 8000 * 120
#: How long a hang-up waits for the server to answer its close, reading on meanwhile (seconds).
CLOSE_WAIT = 5.0
_SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES


def load_speech(source: bytes | str | Path, sample_rate: int = 8000) -> bytes:
    """μ-law 8 kHz from pcm16 bytes at ``sample_rate`` or a mono 16-bit WAV file."""
    if isinstance(source, str | Path):
        with wave.open(str(source), "rb") as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise ValueError(f"{source}: need a mono 16-bit WAV file")
            sample_rate = wav.getframerate()
            pcm = wav.readframes(wav.getnframes())
    else:
        pcm = source
    if sample_rate != 8000:
        resampler = StreamResampler(sample_rate, 8000)
        pcm = resampler.resample(pcm) + resampler.flush()
    return lin2ulaw(pcm)


@dataclass(slots=True, frozen=True)
class HeardChunk:
    """Bot audio the callee heard: up to 20 ms of μ-law starting at ``at``."""

    at: float
    audio: bytes


@dataclass(slots=True, frozen=True)
class MarkEcho:
    name: str
    at: float
    cleared: bool  # echoed because of a clear: its audio was not played


# ------------------------------------------------------------------- steps


@dataclass(slots=True)
class Say:
    """Speak ``audio`` (pcm16 at ``sample_rate``, or a WAV path); returns when said."""

    audio: bytes | str | Path
    sample_rate: int = 8000

    async def run(self, callee: Callee) -> None:
        await callee.say(self.audio, self.sample_rate)


@dataclass(slots=True)
class Listen:
    """Let the bot talk: wait for its speech, then for ``quiet`` seconds without it."""

    quiet: float = 0.8
    timeout: float = 30.0

    async def run(self, callee: Callee) -> None:
        await callee.listen(quiet=self.quiet, max_wait=self.timeout)


@dataclass(slots=True)
class BargeIn:
    """Talk over the bot: ``after`` seconds into its next speech, say ``audio``."""

    audio: bytes | str | Path
    after: float = 0.5
    sample_rate: int = 8000
    timeout: float = 30.0

    async def run(self, callee: Callee) -> None:
        await callee.wait_for_bot_speech(max_wait=self.timeout)
        await asyncio.sleep(self.after)
        callee.barge_in_at = callee.now()
        await callee.say(self.audio, self.sample_rate)


@dataclass(slots=True)
class Pause:
    seconds: float

    async def run(self, callee: Callee) -> None:
        await asyncio.sleep(self.seconds)


@dataclass(slots=True)
class Dtmf:
    digit: str

    async def run(self, callee: Callee) -> None:
        await callee.dtmf(self.digit)


@dataclass(slots=True)
class HangUp:
    """The callee hangs up: ``stop``, then the socket closes."""

    async def run(self, callee: Callee) -> None:
        await callee.hang_up()


@dataclass(slots=True)
class Drop:
    """The connection dies: no ``stop``, the socket just goes away."""

    async def run(self, callee: Callee) -> None:
        await callee.drop()


@dataclass(slots=True)
class SendRaw:
    """Fault injection: send ``message`` as is (garbage, a malformed event)."""

    message: str | bytes
    times: int = 1

    async def run(self, callee: Callee) -> None:
        for _ in range(self.times):
            await callee.send_raw(self.message)


@dataclass(slots=True)
class CloseSocket:
    """Fault injection: the socket closes with ``code`` (and ``reason``), without ``stop``."""

    code: int
    reason: str = ""

    async def run(self, callee: Callee) -> None:
        await callee.close_socket(self.code, self.reason)


Step = Say | Listen | BargeIn | Pause | Dtmf | HangUp | Drop | SendRaw | CloseSocket
CalleeScript = Sequence[Step] | Callable[["Callee"], Awaitable[None]]


# ------------------------------------------------------------------ callee


@dataclass(slots=True)
class _Mark:
    name: str


class Callee:
    """Twilio's side of one media stream; see the module docstring."""

    def __init__(
        self,
        websocket: Any,
        *,
        stream_sid: str,
        call_sid: str,
        account_sid: str,
        parameters: dict[str, str],
        max_seconds: float = 600.0,
    ) -> None:
        self.websocket = websocket
        self.stream_sid = stream_sid
        self._sid_json = json.dumps(stream_sid)
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.parameters = parameters
        self.max_seconds = max_seconds
        self.heard: list[HeardChunk] = []
        self.received: list[dict[str, Any]] = []
        self.marks: list[MarkEcho] = []
        self.clears: list[float] = []
        self.spoke: list[tuple[float, float]] = []
        self.protocol_errors: list[str] = []
        #: When a BargeIn step started talking over the bot.
        self.barge_in_at: float | None = None
        #: Set by an answering machine's script once its greeting (and beep)
        #: is over, when that was: FakeTwilio's AMD reports machine_end_* then.
        self.greeting_over = asyncio.Event()
        self.greeting_ended_at: float | None = None
        #: Why the stream ended: "callee hung up", "dropped", "server closed (code)", "api hang-up", ...
        self.end_reason: str | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.ended = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._sequence = 0
        self._outgoing: deque[bytes] = deque()
        self._speech_done: asyncio.Event | None = None
        self._playback: deque[bytes | _Mark] = deque()
        self._buffered = 0
        self._tick = asyncio.Event()
        self._bot_heard_at: float | None = None
        #: 20 ms chunks of bot audio played so far, and how many had been
        #: when the callee last finished speaking or listening.
        self._bot_chunks = 0
        self._heard_mark = 0
        self._send_lock = asyncio.Lock()
        #: Why the stream is being ended from Twilio's side, once ``end`` has begun.
        self._ending: str | None = None

    # ------------------------------------------------------------- queries

    @property
    def started_at(self) -> float:
        """When the stream started, on the event loop's (monotonic) clock."""
        return self._t0

    def now(self) -> float:
        """Seconds since the stream started."""
        return self._loop.time() - self._t0

    def heard_audio(self, start: float = 0.0, end: float = float("inf")) -> bytes:
        """μ-law of the bot audio heard between ``start`` and ``end``."""
        return b"".join(c.audio for c in self.heard if start <= c.at < end)

    def heard_pcm(self) -> bytes:
        return ulaw2lin(self.heard_audio())

    def heard_seconds(self, start: float = 0.0, end: float = float("inf")) -> float:
        return len(self.heard_audio(start, end)) / 8000

    def events(self, name: str) -> list[dict[str, Any]]:
        """Messages received from the server with ``event == name``."""
        return [m for m in self.received if m.get("event") == name]

    @property
    def bot_speaking(self) -> bool:
        """Bot audio played in the last few ticks (a few, to tolerate a busy loop)."""
        return self._bot_heard_at is not None and self.now() - self._bot_heard_at <= 3 * FRAME_SECONDS

    # ------------------------------------------------------- script methods

    async def say(self, audio: bytes | str | Path, sample_rate: int = 8000) -> None:
        """Queue speech (pcm16 at ``sample_rate`` or a WAV path) and wait until it was sent."""
        mulaw = load_speech(audio, sample_rate)
        done = asyncio.Event()
        start = self.now()
        for i in range(0, len(mulaw), FRAME_BYTES):
            self._outgoing.append(mulaw[i : i + FRAME_BYTES].ljust(FRAME_BYTES, bytes([MULAW_SILENCE])))
        self._speech_done = done
        await self._until(done.wait(), len(mulaw) / 8000 + 5.0)
        self.spoke.append((start, self.now()))
        self._heard_mark = self._bot_chunks

    async def listen(self, *, quiet: float = 0.8, max_wait: float = 30.0) -> None:
        """Let the bot take its turn: wait for bot audio played since the callee
        last spoke or listened (maybe already), then for ``quiet`` seconds without any."""

        async def turn() -> None:
            while self._bot_chunks <= self._heard_mark:
                await self._next_tick()
            await self._wait_quiet(quiet)

        await self._until(turn(), max_wait)
        self._heard_mark = self._bot_chunks

    async def wait_for_bot_speech(self, *, max_wait: float = 30.0) -> None:
        """Return once bot audio is being played (at once if it is now)."""
        seen = self._bot_chunks

        async def speaking() -> None:
            while not self.bot_speaking and self._bot_chunks == seen:
                await self._next_tick()

        await self._until(speaking(), max_wait)

    async def _wait_quiet(self, quiet: float) -> None:
        while self._bot_heard_at is None or self.now() - self._bot_heard_at < quiet:
            await self._next_tick()

    async def dtmf(self, digit: str) -> None:
        await self._send(
            {"event": "dtmf", "streamSid": self.stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}}
        )

    async def hang_up(self) -> None:
        """The callee hangs up: Twilio sends ``stop`` and closes the socket."""
        await self.end("callee hung up")

    async def drop(self) -> None:
        """The network dies: the TCP connection goes away without ``stop``."""
        if self.ended.is_set():
            return
        sock = self.websocket.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._finish("dropped")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.5):
                await self.websocket.close()

    async def close_socket(self, code: int, reason: str = "") -> None:
        """Close the websocket with ``code``, no ``stop`` first."""
        if self.ended.is_set():
            return
        # Close first: ending the stream first would let the default close (1000) overtake this one.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.websocket.close(code=code, message=reason.encode())
        self._finish(f"closed with {code}")

    async def send_raw(self, message: str | bytes) -> None:
        async with self._send_lock:
            if isinstance(message, bytes):
                await self.websocket.send_bytes(message)
            else:
                await self.websocket.send_str(message)

    async def end(self, reason: str) -> None:
        """End the stream from Twilio's side: ``stop``; ``run`` then closes the socket (see ``CLOSE_WAIT``)."""
        if self.ended.is_set():
            return
        if self._ending is not None:  # another hang-up is sending ``stop`` (bounded below): wait for it
            try:
                async with asyncio.timeout(CLOSE_WAIT + 1.0):
                    await self.ended.wait()
            except TimeoutError:
                logger.warning("fake callee {}: the hang-up in progress did not end the stream", self.call_sid)
                self._finish(reason)
            return
        self._ending = reason
        try:
            # Bounded: a server that reads nothing leaves the send waiting on a full socket buffer.
            async with asyncio.timeout(CLOSE_WAIT):
                await self._send(
                    {
                        "event": "stop",
                        "streamSid": self.stream_sid,
                        "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                    }
                )
        except Exception as exc:  # the server may have closed first: the stream ends all the same
            logger.info("fake callee {}: 'stop' not sent ({}: {}): {}", self.call_sid, type(exc).__name__, exc, reason)
        finally:
            self._finish(reason)

    # ------------------------------------------------------------- running

    async def run(self, script: CalleeScript | None) -> None:
        """Run the stream until either side ends it (or ``max_seconds``)."""
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"}, sequenced=False)
        await self._send(
            {
                "event": "start",
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )
        tasks = [
            asyncio.ensure_future(self._clock()),
            asyncio.ensure_future(self._receiver()),
            asyncio.ensure_future(self._script(script)),
        ]
        try:
            async with asyncio.timeout(self.max_seconds):
                await self.ended.wait()
        except TimeoutError:
            await self.end(f"call reached {self.max_seconds:.0f}s")
        finally:
            if self._ending is not None:
                # After ``stop``: the close handshake, reading (and dropping) what still comes until the
                # server's close. A socket closed with unread data in it is reset by the kernel, and a
                # reset discards what the server had not read yet, ``stop`` included: a server running
                # behind would see the socket end without it.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_WAIT):
                        await self.websocket.close()
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    logger.warning("fake callee {}: {}", self.call_sid, task.exception())

    async def _script(self, script: CalleeScript | None) -> None:
        if script is None:
            return
        try:
            if callable(script):
                await script(self)
            else:
                for step in script:
                    if self.ended.is_set():
                        return
                    await step.run(self)
        except TimeoutError as exc:
            logger.warning("fake callee {}: script step timed out: {}", self.call_sid, exc)

    def _finish(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            if self._speech_done is not None:
                self._speech_done.set()

    async def _until(self, awaitable: Awaitable[Any], limit: float) -> None:
        """Await ``awaitable`` unless the stream ends first or ``limit`` seconds pass."""
        waiter = asyncio.ensure_future(awaitable)
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            done, _ = await asyncio.wait({waiter, ended}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise TimeoutError(f"waited {limit:.1f}s")
        finally:
            for task in (waiter, ended):
                task.cancel()

    async def _next_tick(self) -> None:
        self._tick.clear()
        await self._tick.wait()

    async def _send(self, message: dict[str, Any], *, sequenced: bool = True) -> None:
        if sequenced:
            self._sequence += 1
            message = {"event": message["event"], "sequenceNumber": str(self._sequence), **message}
        async with self._send_lock:
            await self.websocket.send_str(json.dumps(message))

    async def _clock(self) -> None:
        """Every 20 ms on an absolute clock: send one media message (the callee's
        speech or silence) and play 20 ms of the bot's buffered audio."""
        start = self._loop.time()
        tick = 0
        while not self.ended.is_set() and self._ending is None:  # no media after ``stop``
            await self._send_media(tick)
            await self._play(tick * FRAME_SECONDS + (start - self._t0))
            self._tick.set()
            tick += 1
            delay = start + tick * FRAME_SECONDS - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _send_media(self, tick: int) -> None:
        payload = self._outgoing.popleft() if self._outgoing else _SILENCE_FRAME
        if not self._outgoing and self._speech_done is not None:
            self._speech_done.set()
            self._speech_done = None
        # What json.dumps gives for the message, written out: 50 a second per callee.
        self._sequence += 1
        text = (
            f'{{"event": "media", "sequenceNumber": "{self._sequence}", "streamSid": {self._sid_json}, '
            f'"media": {{"track": "inbound", "chunk": "{tick + 1}", '
            f'"timestamp": "{round(tick * FRAME_SECONDS * 1000)}", '
            f'"payload": "{base64.b64encode(payload).decode("ascii")}"}}}}'
        )
        await self.send_raw(text)

    async def _receiver(self) -> None:
        from aiohttp import WSMsgType

        while True:
            message = await self.websocket.receive()
            if message.type is WSMsgType.TEXT:
                await self._on_message(message.data)
            elif message.type is WSMsgType.BINARY:
                self.protocol_errors.append("binary message (Twilio expects JSON text)")
            else:
                if self._ending is not None:
                    return  # the close after ``stop`` (``run``) broke the wait: it reads on until the server's close
                self.close_code = self.websocket.close_code
                self.close_reason = str(message.extra or "") if message.type is WSMsgType.CLOSE else ""
                self._finish(f"server closed ({self.close_code})")
                return

    async def _on_message(self, text: str) -> None:
        at = self.now()
        try:
            message = json.loads(text)
            event = message["event"]
        except (ValueError, KeyError, TypeError):
            self.protocol_errors.append(f"not a Twilio message: {text[:80]!r}")
            return
        if message.get("streamSid") != self.stream_sid:
            self.protocol_errors.append(f"{event} for stream {message.get('streamSid')!r}")
            return
        record: dict[str, Any] = {"event": event, "at": at}
        if event == "media":
            try:
                audio = base64.b64decode(message["media"]["payload"], validate=True)
            except (ValueError, KeyError, TypeError):
                self.protocol_errors.append("media with a bad payload")
                return
            record["bytes"] = len(audio)
            if self._buffered + len(audio) > MAX_PLAYBACK_BYTES:
                self.protocol_errors.append("playback buffer overflow: audio dropped")
            else:
                self._playback.append(audio)
                self._buffered += len(audio)
        elif event == "mark":
            name = message.get("mark", {}).get("name") if isinstance(message.get("mark"), dict) else None
            if not isinstance(name, str):
                self.protocol_errors.append("mark without a name")
                return
            record["name"] = name
            self._playback.append(_Mark(name))
        elif event == "clear":
            self.clears.append(at)
            pending = [item for item in self._playback if isinstance(item, _Mark)]
            self._playback.clear()
            self._buffered = 0
            for mark in pending:
                await self._echo(mark.name, cleared=True)
        else:
            self.protocol_errors.append(f"unknown event {event!r}")
            return
        self.received.append(record)

    async def _echo(self, name: str, *, cleared: bool) -> None:
        self.marks.append(MarkEcho(name, self.now(), cleared))
        with contextlib.suppress(Exception):  # the socket may be closing: nothing to echo to
            await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _play(self, at: float) -> None:
        """Play 20 ms of buffered bot audio; echo the marks whose audio has played."""
        played = bytearray()
        echoes: list[str] = []
        while self._playback and len(played) < FRAME_BYTES:
            item = self._playback[0]
            if isinstance(item, _Mark):
                echoes.append(item.name)
                self._playback.popleft()
                continue
            take = FRAME_BYTES - len(played)
            played += item[:take]
            if take >= len(item):
                self._playback.popleft()
            else:
                self._playback[0] = item[take:]
        while self._playback and isinstance(self._playback[0], _Mark):
            echoes.append(self._playback.popleft().name)  # type: ignore[union-attr]
        if played:
            self._buffered -= len(played)
            self.heard.append(HeardChunk(at, bytes(played)))
            self._bot_heard_at = self.now()
            self._bot_chunks += 1
        for name in echoes:
            await self._echo(name, cleared=False)
