"""Deepgram live speech-to-text: the callee's audio in, transcripts and turns out.

``DeepgramSTTService`` streams ``InputAudioRawFrame`` audio to Deepgram's
``/v1/listen`` websocket through the official deepgram-sdk and turns what
comes back into frames:

- interim ``Results`` → ``InterimTranscriptionFrame``;
- final ``Results`` → ``TranscriptionFrame`` (text, confidence, words with
  times, language); the final segments of one user turn are joined;
- ``speech_final`` (the endpointer heard ``endpointing`` ms of silence), the
  final answering our ``Finalize``, or ``UtteranceEnd``, whichever comes first,
  closes the turn: ``EndOfTurnFrame`` with the whole turn's text, once;
  ``low_confidence`` when its confidence is below ``min_confidence``;
- ``SpeechStarted`` → ``UserStartedSpeakingFrame`` (and
  ``UserStoppedSpeakingFrame`` when that turn ends), and, while the bot is
  speaking, barge-in as the interruption policy of ``interruptions`` decides
  on the interim transcripts and the audio (``STTService``); both left to a local VAD once its
  ``UserStartedSpeakingFrame`` comes through (``defer_to_local_vad``), whose
  ``UserStoppedSpeakingFrame`` then triggers ``Finalize``.

Times (``TranscriptionFrame.timestamp``, word times) are seconds of the
call's audio as received by this processor, across reconnections.

Audio goes out in larger sends where no one waits on it, frame by frame
where someone does. Between turns, in ``quiet_send_seconds`` sends (100 ms:
a fifth of the websocket messages). While speech is heard (from
``SpeechStarted``, or a local VAD's ``UserStartedSpeakingFrame``, to the end
of the turn): frame by frame while the bot speaks (barge-in is judged on the
results), and otherwise loud frames in ``speech_send_seconds`` sends (80 ms)
and every quieter frame at once with what was held, so the silence that ends
a turn is never delayed. Everything held is sent before ``Finalize`` and
``CloseStream``.

The SDK's own connect offers permessage-deflate and has no option to turn it
off: when the service accepts it, every audio message is deflated for nothing
(μ-law and PCM do not compress) and every result inflated. So by default the
service opens the same request itself without compression and hands the
connection to the SDK's socket client (``deepgram_socket``);
``DeepgramSettings.compression=True`` uses the SDK's connect as it is.

Connection lifecycle, one websocket per call: opened at ``StartFrame``;
``KeepAlive`` whenever no audio was sent for ``keepalive_interval``;
``Finalize`` on a local VAD's ``UserStoppedSpeakingFrame``; ``CloseStream``
at ``EndFrame`` (the last results are awaited, at most ``close_timeout``);
dropped at once on ``CancelFrame`` (its connection aborted, no close
handshake: the call is over). An unexpected close or error reconnects
on the ``retry`` schedule (2 s, 4 s, 8 s); audio that the server has not
confirmed by a final result, or that arrives while disconnected, is kept (the
last ``replay_seconds``) and replayed first on the new socket, so an
utterance cut by a drop is still transcribed, with the same times. After the
last attempt, or at once on HTTP 401/403 (the key) or 400 (the settings), a
fatal ``ErrorFrame`` ends the call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from loguru import logger
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, WebSocketException

from vantum_pipeline.errors import ConfigurationError, ProtocolError, ServiceError
from vantum_pipeline.frames import (
    MULAW,
    PCM16,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.processor import FrameDirection
from vantum_pipeline.services.deepgram_turns import TurnAssembler, number
from vantum_pipeline.services.interruptions import InterruptionPolicy, level_dbfs
from vantum_pipeline.services.shared_clients import shared_client
from vantum_pipeline.services.stt import STTService
from vantum_pipeline.settings import InterruptionSettings, Secret, load_env, optional_env, require_secret

#: The socket without compression (``deepgram_socket``) reads deepgram-sdk 7's internals:
#: with a release that moved them, the SDK's own connect is used (and a warning says so).
_connect_listen: Callable[..., Any] | None
_RAW_CONNECT_MISSING = ""
try:
    from vantum_pipeline.services.deepgram_socket import connect_listen as _raw_connect

    _connect_listen = _raw_connect
except ImportError as _exc:  # pragma: no cover (depends on the installed SDK)
    _connect_listen = None
    _RAW_CONNECT_MISSING = f"{type(_exc).__name__}: {_exc}"

__all__ = ["AudioBacklog", "DeepgramSTTService", "DeepgramSettings", "TurnAssembler"]

SERVICE = "deepgram"
API_KEY_ENV = "DEEPGRAM_API_KEY"
_MAX_RAW = 200


@dataclass(frozen=True, slots=True)
class DeepgramSettings:
    """Everything the service needs; the defaults are the product's.

    Stream parameters mirror Deepgram's query parameters. ``endpointing`` is
    milliseconds of silence before ``speech_final``, or False to disable it.
    ``url``: websocket base URL (None: Deepgram's production endpoint; a
    ``FakeDeepgram``'s ``ws_url`` in tests). Durations are seconds.
    """

    api_key: Secret
    model: str = "nova-2"
    language: str = "en-US"
    encoding: str = "linear16"
    sample_rate: int = 16000
    channels: int = 1
    interim_results: bool = True
    punctuate: bool = True
    smart_format: bool = True
    vad_events: bool = True
    utterance_end_ms: int | None = 1000
    endpointing: int | bool = 300
    url: str | None = None
    #: Send KeepAlive after this long without audio (the service closes an idle stream after ~10 s).
    keepalive_interval: float = 3.0
    connect_timeout: float = 10.0
    send_timeout: float = 2.0
    #: How long EndFrame waits for the last results after CloseStream.
    close_timeout: float = 3.0
    #: Reconnection schedule: 3 attempts after 2 s, 4 s, 8 s.
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Unconfirmed or undelivered audio kept for replay after a reconnect.
    replay_seconds: float = 10.0
    #: A turn whose confidence is below this is flagged ``low_confidence``.
    min_confidence: float = 0.5
    #: USD per audio minute streamed (nova-2).
    price_per_minute: float = 0.0043
    #: Send Finalize when a local VAD says the user stopped speaking.
    finalize_on_vad_stop: bool = True
    #: Barge-in at all: speech over the bot is judged by ``interruptions`` (off: never interrupts).
    interrupt_on_speech_started: bool = True
    #: When speech over the bot interrupts it, backchannels, resuming after a false interruption.
    interruptions: InterruptionSettings = field(default_factory=InterruptionSettings)
    #: Emit UserStarted/StoppedSpeakingFrame from Deepgram's events.
    speaking_frames: bool = True
    #: Once a local VAD's UserStartedSpeakingFrame comes through, leave speaking
    #: frames and interruptions to it (no duplicates).
    defer_to_local_vad: bool = True
    #: Pass input audio on downstream (off: this processor consumes it).
    audio_passthrough: bool = False
    #: While no speech is being heard (from the end of a turn until Deepgram or a
    #: local VAD hears speech start), audio goes out in sends of this many
    #: seconds: a fifth of the websocket messages, and of their CPU. Speech onset
    #: reaches Deepgram up to this much later (minus one frame); while the user
    #: speaks, see ``speech_send_seconds``. 0: send every frame at once.
    quiet_send_seconds: float = 0.1
    #: While speech is heard and the bot is silent (no barge-in to judge), loud
    #: audio (above ``interruptions.speech_threshold_dbfs``) goes out in sends of
    #: up to this many seconds (27 % fewer messages in the call-density
    #: benchmark's calls). The first frame at or below the threshold goes out at
    #: once with what was held, so the silence that ends a turn reaches Deepgram
    #: when it did; interim results of loud speech come up to this much later
    #: (minus one frame). While the bot speaks every frame goes out at once.
    #: 0: frame by frame.
    speech_send_seconds: float = 0.08
    #: Open the websocket with the SDK's own connect, which offers permessage-deflate
    #: (off: the same request without compression; audio does not compress).
    compression: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.api_key, Secret):
            raise ConfigurationError("DeepgramSettings.api_key must be a Secret (see DeepgramSettings.from_env)")
        if self.encoding not in ("linear16", "mulaw"):
            raise ConfigurationError(f"DeepgramSettings.encoding must be 'linear16' or 'mulaw', got {self.encoding!r}")
        for name in ("quiet_send_seconds", "speech_send_seconds"):
            seconds = getattr(self, name)
            if not 0 <= seconds <= 1:
                raise ConfigurationError(f"DeepgramSettings.{name} must be between 0 and 1, got {seconds!r}")
        if self.sample_rate <= 0 or self.channels != 1:
            raise ConfigurationError(
                f"DeepgramSettings needs a positive sample_rate and channels=1, "
                f"got sample_rate={self.sample_rate}, channels={self.channels}"
            )
        for name in ("keepalive_interval", "connect_timeout", "send_timeout", "close_timeout", "replay_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"DeepgramSettings.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_confidence <= 1:
            raise ConfigurationError(f"DeepgramSettings.min_confidence must be in [0, 1], got {self.min_confidence}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DeepgramSettings:
        """``DEEPGRAM_API_KEY`` (required); ``DEEPGRAM_MODEL``, ``DEEPGRAM_LANGUAGE``,
        ``DEEPGRAM_URL`` and the ``INTERRUPTION_*`` variables (optional); ``overrides`` win."""
        values = load_env(env)
        found: dict[str, Any] = {
            "api_key": require_secret(values, API_KEY_ENV),
            "interruptions": InterruptionSettings.from_env(values),
        }
        for name in ("model", "language", "url"):
            value = optional_env(values, f"DEEPGRAM_{name.upper()}")
            if value is not None:
                found[name] = value
        return cls(**{**found, **overrides})

    def for_phone(self) -> DeepgramSettings:
        """The same settings for 8 kHz mu-law phone audio passed through as is (Twilio)."""
        return dataclasses.replace(self, encoding="mulaw", sample_rate=8000)

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * (2 if self.encoding == "linear16" else 1)

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments of ``listen.v1.connect``: the stream's query parameters."""

        def flag(value: bool) -> str:
            return "true" if value else "false"

        options: dict[str, Any] = {
            "model": self.model,
            "language": self.language,
            "encoding": self.encoding,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "interim_results": flag(self.interim_results),
            "punctuate": flag(self.punctuate),
            "smart_format": flag(self.smart_format),
            "vad_events": flag(self.vad_events),
        }
        if self.utterance_end_ms is not None:
            options["utterance_end_ms"] = self.utterance_end_ms
        if self.endpointing is False:
            options["endpointing"] = "false"
        elif self.endpointing is not True:
            options["endpointing"] = int(self.endpointing)
        return options

    def environment(self) -> DeepgramClientEnvironment:
        if self.url is None:
            return DeepgramClientEnvironment.PRODUCTION
        ws = self.url.rstrip("/")
        http = "http" + ws.removeprefix("ws") if ws.startswith("ws") else ws
        return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)

    def cost(self, seconds: float) -> float:
        """USD for ``seconds`` of audio streamed."""
        return seconds / 60 * self.price_per_minute


# ------------------------------------------------------------- sans-I/O parts


class AudioBacklog:
    """The call's recent audio, addressed by absolute byte position.

    Holds what the server has not yet confirmed with a final result, and what
    arrived while disconnected, at most ``max_bytes`` (the oldest goes first).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        #: Absolute position of the first byte held.
        self.start = 0

    @property
    def end(self) -> int:
        """Absolute position after the last byte: total bytes appended."""
        return self.start + len(self._buffer)

    def append(self, data: bytes) -> None:
        self._buffer += data
        excess = len(self._buffer) - self.max_bytes
        if excess > 0:
            del self._buffer[:excess]
            self.start += excess

    def trim(self, position: int) -> None:
        """Forget everything before ``position`` (confirmed by the server)."""
        cut = min(max(position - self.start, 0), len(self._buffer))
        if cut:
            del self._buffer[:cut]
            self.start += cut

    def read(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``position`` (which must be held)."""
        offset = position - self.start
        if offset < 0:
            raise ValueError(f"position {position} was already dropped (backlog starts at {self.start})")
        return bytes(self._buffer[offset : offset + size])


# ------------------------------------------------------------------ service


class _Fatal(Exception):
    """A connection failure that no retry can fix."""


def _retry_after(exc: BaseException) -> float | None:
    """Retry-After of a refused upgrade: the SDK keeps the response on the
    websockets exception it converts into ApiError."""
    headers = getattr(exc.__context__, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class DeepgramSTTService(STTService):
    """Deepgram live transcription; see the module docstring."""

    service = SERVICE

    def __init__(
        self,
        settings: DeepgramSettings | None = None,
        *,
        interruption_policy: InterruptionPolicy | None = None,
        name: str | None = None,
    ) -> None:
        s = settings if settings is not None else DeepgramSettings.from_env()
        super().__init__(
            bytes_per_second=s.bytes_per_second,
            speaking_frames=s.speaking_frames,
            interrupt_on_speech_started=s.interrupt_on_speech_started,
            defer_to_local_vad=s.defer_to_local_vad,
            interruptions=s.interruptions,
            interruption_policy=interruption_policy,
            name=name,
        )
        self.settings = s
        self._frame_encoding = PCM16 if s.encoding == "linear16" else MULAW
        self._width = 2 if s.encoding == "linear16" else 1
        self._assembler = TurnAssembler(language=s.language, min_confidence=s.min_confidence)
        self._backlog = AudioBacklog(int(s.replay_seconds * self._bytes_per_second) // self._width * self._width)
        self._client: AsyncDeepgramClient | None = None
        self._task: asyncio.Task[Any] | None = None
        self._socket: Any = None  # AsyncV1SocketClient while connected
        self._generation = 0  # which socket ``_sent`` counts for
        # Set while the socket is caught up with the backlog: new audio goes straight out.
        self._live_event = asyncio.Event()
        self._finalize_wanted = False
        self._closing = False
        self._sent = 0  # absolute byte position sent on the current socket
        self._socket_start = 0  # absolute byte position of the current socket's t=0
        self._unbilled = 0  # bytes streamed not yet reported as usage
        self._last_send = 0.0
        self._raw_connect_warned = False
        self._last_finalize_at = -1
        #: Speech is being heard (see ``DeepgramSettings.quiet_send_seconds``).
        self._speech = False
        self._quiet_bytes = int(s.quiet_send_seconds * self._bytes_per_second) // self._width * self._width
        self._speech_bytes = int(s.speech_send_seconds * self._bytes_per_second) // self._width * self._width
        self._format_error = False
        #: Counters, for tests and logs.
        self.reconnects = 0
        self.malformed = 0

    @property
    def _live(self) -> bool:
        return self._live_event.is_set()

    @_live.setter
    def _live(self, live: bool) -> None:
        if live:
            self._live_event.set()
        else:
            self._live_event.clear()

    # ------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame):
            await self._on_audio(frame)
            await self.hear(frame)
            if self.settings.audio_passthrough:
                await self.push_frame(frame, direction)
            return
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._open()
            return
        if isinstance(frame, UserStoppedSpeakingFrame):
            await self._finalize()
        elif isinstance(
            frame, UserStartedSpeakingFrame | BotStartedSpeakingFrame | BotStoppedSpeakingFrame | InterruptionFrame
        ):
            if isinstance(frame, UserStartedSpeakingFrame):
                self._speech = True  # a local VAD heard speech: send every frame at once
            await self.observe(frame)
        elif isinstance(frame, EndFrame):
            await self._close_gracefully()
        elif isinstance(frame, CancelFrame):
            # The call is over: drop the socket at once and let the CancelFrame
            # go on; cleanup awaits the connection task (bounded).
            self._closing = True
            self._drop_socket()
            if self._task is not None:
                self._task.cancel()
            await self._report_usage()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        self._closing = True
        await self._stop_connection()

    # ------------------------------------------------------------- audio

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        s = self.settings
        if frame.encoding != self._frame_encoding or frame.sample_rate != s.sample_rate or frame.num_channels != 1:
            if not self._format_error:
                self._format_error = True
                await self.push_error(
                    f"{self.name}: DeepgramSettings expect {s.encoding} audio at {s.sample_rate} Hz mono, "
                    f"got {frame.encoding} at {frame.sample_rate} Hz with {frame.num_channels} channel(s)",
                    fatal=True,
                )
            return
        if not frame.audio or self._closing:
            return
        self._backlog.append(frame.audio)
        self.audio_arrived(self._backlog.end)
        unsent = self._backlog.end - self._sent
        if not self._speech and not self._assembler.turn_open:
            if unsent < self._quiet_bytes:
                return  # quiet: batched (see DeepgramSettings.quiet_send_seconds)
        elif (
            unsent < self._speech_bytes
            and not self.judge.wants_audio
            and level_dbfs(frame.audio, frame.encoding) > self.judge.speech_threshold_dbfs
        ):
            return  # loud speech, the bot silent: batched (see DeepgramSettings.speech_send_seconds)
        await self._send_unsent()

    async def _send_unsent(self) -> None:
        """Send the audio received and not yet sent (the backlog holds it)."""
        if not self._live or self._socket is None or self._sent >= self._backlog.end:
            return
        generation = self._generation
        data = self._backlog.read(self._sent, self._backlog.end - self._sent)
        try:
            await self._send_audio(self._socket, data)
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            # Kept in the backlog: replayed after the reconnect.
            logger.debug("{}: audio send failed ({}); waiting for the reconnect", self.name, exc)
            if generation == self._generation:
                self._live = False
            return
        if generation == self._generation:
            self._sent += len(data)

    async def _send_audio(self, socket: Any, data: bytes) -> None:
        async with self._timeout(self.settings.send_timeout):
            await socket.send_media(data)
        self._unbilled += len(data)
        self._last_send = (self._vp_loop or asyncio.get_running_loop()).time()

    async def _finalize(self) -> None:
        if not self.settings.finalize_on_vad_stop:
            return
        if not self._live or self._socket is None:
            self._finalize_wanted = True  # sent once the socket has caught up
            return
        self._finalize_wanted = False
        await self._send_unsent()
        if self._sent == self._last_finalize_at:
            return  # nothing new since the last Finalize
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await self._socket.send_finalize()
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            logger.debug("{}: Finalize not sent: {}", self.name, exc)
            return
        self._last_finalize_at = self._sent
        self._assembler.finalize_sent()

    # -------------------------------------------------------- connection

    def _open(self) -> None:
        if self._task is not None:
            return
        key = self.settings.api_key.reveal()
        self._client = shared_client(
            ("deepgram", key, self.settings.url),
            lambda: AsyncDeepgramClient(api_key=key, environment=self.settings.environment()),
        )
        self._task = self.create_task(self._run(), "connection", essential=True)

    async def _close_gracefully(self) -> None:
        """CloseStream, then the last results, all within ``close_timeout``."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.close_timeout
            try:
                # A socket still connecting or replaying gets the rest of the time to catch up.
                async with asyncio.timeout_at(deadline):
                    await self._live_event.wait()
                await self._send_unsent()
                async with asyncio.timeout(self.settings.send_timeout):
                    await self._socket.send_close_stream()
                await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
                if not task.done():
                    logger.warning("{}: no close from Deepgram after CloseStream", self.name)
            except (ConnectionClosed, TimeoutError, OSError) as exc:
                lost = (self._backlog.end - self._sent) / self._bytes_per_second
                logger.warning(
                    "{}: call ended before Deepgram could finish ({}); {:.1f}s of audio may be untranscribed",
                    self.name,
                    type(exc).__name__,
                    lost,
                )
        await self._stop_connection()
        await self._report_usage()

    def _drop_socket(self) -> None:
        """Abort the open socket's connection: no close handshake, nothing awaited.

        For a call that is over (hung up, failed): waiting for the service to
        answer a close costs a round trip per call when many end together.
        Our socket (``ListenSocket``) holds its websockets protocol as
        ``protocol``, the SDK's as ``_websocket``; without either the
        connection task's bounded close handshake runs instead."""
        protocol = getattr(self._socket, "protocol", None) or getattr(self._socket, "_websocket", None)
        transport = getattr(protocol, "transport", None)
        if isinstance(transport, asyncio.Transport) and not transport.is_closing():
            transport.abort()

    async def _stop_connection(self) -> None:
        """Tear the socket down now (bounded, even if a close handshake hangs)."""
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return
        for _ in range(2):  # a second cancel interrupts a close handshake the first one started
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return
        logger.error("{}: the Deepgram connection did not stop", self.name)

    async def _run(self) -> None:
        """Connect, stream, reconnect: owns the socket for the whole call."""
        policy = self.settings.retry
        assert self._client is not None
        retry = 0
        retry_after: float | None = None
        connected = False
        while not self._closing:
            if retry:
                if retry > policy.max_retries:
                    what = "connection lost" if connected else "cannot connect"
                    await self._fail(
                        f"Deepgram {what}: {policy.max_retries} reconnection attempts failed "
                        f"(see the warnings above); ending the call",
                        status=None,
                    )
                    return
                delay = policy.delay(retry, retry_after)
                self.reconnects += 1
                await self.metric("service.retry", 1)
                logger.warning("{}: reconnecting to Deepgram in {:.2f}s (attempt {})", self.name, delay, retry)
                await asyncio.sleep(delay)
            await self.metric("service.request", 1)
            options = self.settings.connect_options()
            if self.settings.compression or _connect_listen is None:
                if _connect_listen is None and not self.settings.compression and not self._raw_connect_warned:
                    self._raw_connect_warned = True
                    logger.warning(
                        "{}: this deepgram-sdk cannot open its socket without compression ({}); using its connect",
                        self.name,
                        _RAW_CONNECT_MISSING,
                    )
                connection = self._client.listen.v1.connect(**options)
            else:
                connection = _connect_listen(self._client, options)
            try:
                async with asyncio.timeout(self.settings.connect_timeout):
                    socket = await connection.__aenter__()
            except Exception as exc:
                try:
                    retry_after = await self._connect_failed(exc)
                except _Fatal as fatal:
                    await self._fail(str(fatal), status=getattr(exc, "status_code", None))
                    return
                retry += 1
                continue
            retry, retry_after, connected = 0, None, True
            try:
                await self._stream(socket)
            finally:
                await self._close_socket(connection)
            await self._report_usage()
            if self._closing:
                return
            await self.metric("service.error", 1)
            retry = 1

    async def _connect_failed(self, exc: Exception) -> float | None:
        """Log and count a failed connection attempt; raise _Fatal when retrying is futile.
        Returns the delay the service asked for, if any."""
        await self.metric("service.error", 1)
        if isinstance(exc, ApiError):
            status = exc.status_code
            if status in (401, 403):
                raise _Fatal(
                    f"Deepgram refused the API key (HTTP {status}): check {API_KEY_ENV} "
                    f"(it is missing, wrong, or lacks access to live transcription)"
                ) from exc
            if status == 429:
                await self.metric("service.rate_limited", 1)
            elif status is not None and 400 <= status < 500 and status != 408:
                reason = getattr(exc.__context__, "headers", {}).get("dg-error", "")
                raise _Fatal(
                    f"Deepgram refused the stream parameters (HTTP {status}"
                    f"{': ' + str(reason)[:_MAX_RAW] if reason else ''}); check DeepgramSettings "
                    f"(model={self.settings.model}, encoding={self.settings.encoding}, "
                    f"sample_rate={self.settings.sample_rate})"
                ) from exc
            logger.warning("{}: Deepgram connection refused with HTTP {}", self.name, status)
            return _retry_after(exc)
        if isinstance(exc, TimeoutError):
            logger.warning("{}: no answer from Deepgram within {:.1f}s", self.name, self.settings.connect_timeout)
        elif isinstance(exc, OSError | WebSocketException | EOFError):
            logger.warning("{}: cannot connect to Deepgram: {}: {}", self.name, type(exc).__name__, exc)
        elif isinstance(exc, ConfigurationError):
            raise _Fatal(str(exc)) from exc
        else:
            raise _Fatal(f"Deepgram connection failed unexpectedly: {type(exc).__name__}") from exc
        return None

    async def _fail(self, message: str, *, status: int | None) -> None:
        self._closing = True
        logger.error("{}: {}", self.name, message)
        error = ServiceError(message, service=SERVICE, retryable=False, status=status)
        await self.push_error(message, fatal=True, exception=error)

    async def _close_socket(self, connection: Any) -> None:
        try:
            async with asyncio.timeout(1.0):
                await connection.__aexit__(None, None, None)
        except (TimeoutError, ConnectionClosed, OSError) as exc:
            logger.debug("{}: socket close: {}", self.name, exc)

    async def _stream(self, socket: Any) -> None:
        """Replay what the server has not confirmed, then stream live until the socket closes."""
        loop = asyncio.get_running_loop()
        self._generation += 1
        self._socket = socket
        self._socket_start = self._sent = self._backlog.start
        self._last_finalize_at = -1
        self._last_send = loop.time()
        self._assembler.reset_connection(self._socket_start / self._bytes_per_second)
        receiver = asyncio.create_task(self._receive_loop(socket), name=f"{self.name}:receive")
        keepalive = asyncio.create_task(self._keepalive(socket), name=f"{self.name}:keepalive")
        try:
            await self._replay(socket)
            await receiver
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            logger.debug("{}: replay interrupted: {}", self.name, exc)
            await asyncio.wait({receiver}, timeout=self.settings.send_timeout)
        finally:
            self._live = False
            self._socket = None
            for task in (receiver, keepalive):
                task.cancel()
            await asyncio.wait({receiver, keepalive}, timeout=1.0)
            if keepalive.done() and not keepalive.cancelled() and keepalive.exception() is not None:
                logger.error("{}: KeepAlive loop failed: {!r}", self.name, keepalive.exception())

    async def _replay(self, socket: Any) -> None:
        chunk = max(self._width, self._bytes_per_second // 10 // self._width * self._width)  # 100 ms
        while self._sent < self._backlog.end:
            if self._sent < self._backlog.start:  # the cap dropped audio during a slow replay
                self._socket_start += self._backlog.start - self._sent
                self._sent = self._backlog.start
            data = self._backlog.read(self._sent, chunk)
            await self._send_audio(socket, data)
            self._sent += len(data)
        replayed = (self._sent - self._socket_start) / self._bytes_per_second
        if replayed:
            logger.info("{}: replayed {:.2f}s of audio on the new Deepgram socket", self.name, replayed)
        self._live = True
        if self._finalize_wanted:
            await self._finalize()

    async def _keepalive(self, socket: Any) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.keepalive_interval
        while True:
            wait = self._last_send + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                async with asyncio.timeout(self.settings.send_timeout):
                    await socket.send_keep_alive()
            except (ConnectionClosed, TimeoutError, OSError) as exc:
                logger.debug("{}: KeepAlive not sent: {}", self.name, exc)
                return
            self._last_send = loop.time()

    async def _receive_loop(self, socket: Any) -> None:
        while True:
            try:
                message = await socket.recv()
            except ConnectionClosedOK:
                if not self._closing:
                    logger.warning("{}: Deepgram closed the stream unexpectedly", self.name)
                return
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                logger.warning(
                    "{}: Deepgram connection lost ({}{})",
                    self.name,
                    rcvd.code if rcvd else "no close frame",
                    f": {rcvd.reason[:_MAX_RAW]}" if rcvd and rcvd.reason else "",
                )
                return
            except json.JSONDecodeError as exc:
                await self._malformed("not JSON", exc.doc)
                continue
            try:
                await self._dispatch(message)
            except ProtocolError as exc:
                await self._malformed(str(exc), exc.raw)
            except (AttributeError, TypeError, ValueError, IndexError) as exc:
                # The SDK builds its models without validation: a message of the
                # right type may still hold the wrong shapes.
                await self._malformed(f"{type(exc).__name__}: {exc}", repr(message))

    async def _malformed(self, why: str, raw: str | bytes | None) -> None:
        self.malformed += 1
        shown = raw[:_MAX_RAW] if raw is not None else ""
        logger.warning("{}: skipped a malformed Deepgram message ({}): {!r}", self.name, why, shown)
        await self.metric("protocol.malformed", 1)

    # ---------------------------------------------------------- messages

    async def _dispatch(self, message: Any) -> None:
        """One server message: the SDK's model of it, or a ``JSONMessage`` (``deepgram_socket``)."""
        if isinstance(message, bytes):
            raise ProtocolError("unexpected binary message from Deepgram", raw=message)
        kind = getattr(message, "type", None)
        if kind == "Results":
            await self._on_results(message)
        elif kind == "SpeechStarted":
            self._speech = True
            await self.speech_started()
        elif kind == "UtteranceEnd":
            end = self._assembler.on_utterance_end(message)
            if end is not None:
                self._speech = False
                await self.end_turn(end)
        elif kind == "Metadata":
            logger.debug("{}: Deepgram stream metadata: {} s", self.name, message.duration)
        elif kind == "Error":
            await self.metric("service.error", 1)
            logger.warning("{}: Deepgram error: {}", self.name, str(message.description or message.message)[:_MAX_RAW])
        else:
            raise ProtocolError("message of unknown type from Deepgram", raw=repr(message))

    async def _on_results(self, results: Any) -> None:
        end = self._assembler.offset + number(results.start, "start") + number(results.duration, "duration")
        frames = self._assembler.on_results(results)
        if results.is_final:
            # The server will not transcribe this audio again: no need to replay it.
            position = round(end * self._bytes_per_second / self._width) * self._width
            self._backlog.trim(min(position, self._sent))
        for frame in frames:
            if isinstance(frame, EndOfTurnFrame):
                self._speech = False
                await self.end_turn(frame)
                continue
            if isinstance(frame, InterimTranscriptionFrame | TranscriptionFrame):
                await self.push_transcript(frame)
            else:
                await self.push_frame(frame)
            if isinstance(frame, TranscriptionFrame) and frame.words:
                await self.measure_latency(frame.words[-1][2])
        if results.speech_final and not self._assembler.turn_open:
            # Speech that gave no words (noise, a cough): the user stopped all the same.
            self._speech = False
            await self.user_stopped()

    async def _report_usage(self) -> None:
        if self._unbilled:
            seconds = self._unbilled / self._bytes_per_second
            self._unbilled = 0
            await self.metric("usage.stt_seconds", seconds, "s")
