"""FailoverSTTService: the callee's audio to one speech-to-text provider, then the next.

    FailoverSTTService([DeepgramSTTService(primary), DeepgramSTTService(backup), PocketsphinxSTTService()])

A processor that owns an ordered list of STT services (processors, each
speaking its own protocol) and sends the call's audio to one of them: the
first whose circuit breaker lets it through at the start of the call. What
the active provider produces (transcripts, end of turn, user speaking,
barge-in interruptions, metrics) goes on as if it were in the pipeline
itself; the providers are ``members()`` of this processor, so they share the
pipeline's epoch and see its interruptions. The others are not started (no
connection is opened for a backup that is not needed).

The active provider has failed when it reports a fatal error (its own
reconnection budget is spent, the key is refused) or, sooner, after
``switch_after_errors`` errors it reports (its ``service.error`` metrics: a
lost or refused connection, an error message from the service; None: only
on the fatal error). Then its breaker counts the failure, it is
cancelled (its socket closed, its reconnection stopped), and the next
provider is started and first gets the *unconfirmed audio*: what the call
sent since the end of the last final transcript (at most
``replay_seconds``), so the utterance cut by the failure is transcribed by
the backup; then the live audio, in order (audio arriving during the replay
waits behind it). Every final transcript already produced stays; the fatal
error of a provider that was replaced is reported as a non-fatal one. When no
provider is left, the last fatal error ends the call as it would without a
failover.

A backup starts knowing what the provider it replaces knew of the call: a
local VAD upstream leads the speaking frames (it defers to it), and whether
the bot is speaking (for barge-in). A breaker closes again when its provider
produces a final transcript (a probe succeeded). All providers must take the same audio format (e.g. all
``linear16`` at 16 kHz, or all μ-law at 8 kHz). Transcript times are seconds
of the call's audio as this service received it, whichever provider heard it
(a backup's times are moved from its own clock, which starts at the replay).

Metrics: the members' own, plus ``provider.switch`` / ``provider.state``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loguru import logger

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    StartFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
)
from vantum_pipeline.observability.metrics import SERVICE_ERROR
from vantum_pipeline.processor import FrameDirection, FrameProcessor, link
from vantum_pipeline.services.circuit import BreakerState
from vantum_pipeline.services.failover import FailoverSettings, ProviderPool
from vantum_pipeline.services.stt import STTService

__all__ = ["FailoverSTTService", "FailoverSTTSettings"]

_DOWN = FrameDirection.DOWNSTREAM
_UP = FrameDirection.UPSTREAM


@dataclass(frozen=True, slots=True)
class FailoverSTTSettings:
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    #: Connection failures of the active provider before moving on (None: only its fatal error).
    switch_after_errors: int | None = 1
    #: Unconfirmed audio kept for the backup.
    replay_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.switch_after_errors is not None and self.switch_after_errors < 1:
            raise ConfigurationError(f"switch_after_errors must be >= 1 or None, got {self.switch_after_errors}")
        if not 0 < self.replay_seconds <= 60:
            raise ConfigurationError(f"replay_seconds must be in (0, 60], got {self.replay_seconds}")


class _Port(FrameProcessor):
    """Where a member's frames leave it: ``inlet`` before it (its upstream
    output), ``outlet`` after it (its downstream output)."""

    def __init__(self, owner: FailoverSTTService, member: _Member, direction: FrameDirection, name: str) -> None:
        super().__init__(name=name)
        self._owner = owner
        self._member = member
        self._out = direction

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is self._out:
            await self._owner.from_member(self._member, frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def enter(self, frame: Frame, direction: FrameDirection) -> None:
        """Hand ``frame`` to this port as its neighbour would: through its lane,
        in order, gated on its start like any processor's."""
        await self._receive(frame, direction)


@dataclass(eq=False)
class _Member:
    service: STTService
    inlet: _Port | None = None
    outlet: _Port | None = None
    started: bool = False
    stopped: bool = False
    errors: int = 0
    timeline_start: float = 0.0  # call seconds at which its audio began


class FailoverSTTService(FrameProcessor):
    """STT over ordered providers with a circuit breaker each; see the module docstring."""

    def __init__(
        self,
        providers: Sequence[STTService],
        settings: FailoverSTTSettings | None = None,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name=name)
        self.settings = settings or FailoverSTTSettings()
        for provider in providers:
            if not isinstance(provider, STTService):
                raise ConfigurationError(f"FailoverSTTService takes STTService providers, got {provider!r}")
        self.pool: ProviderPool[STTService] = ProviderPool(
            providers,
            kind="stt",
            service_of=lambda p: p.service,
            settings=self.settings.failover,
            clock=clock,
            owner=self.name,
        )
        self._members: list[_Member] = []
        for provider in providers:
            member = _Member(provider)
            member.inlet = _Port(self, member, _UP, f"{self.name}<{provider.name}")
            member.outlet = _Port(self, member, _DOWN, f"{provider.name}>{self.name}")
            link(member.inlet, provider)
            link(provider, member.outlet)
            self._members.append(member)
        self._active: _Member | None = None
        self._tried: list[STTService] = []
        self._start: StartFrame | None = None
        self._unconfirmed: deque[InputAudioRawFrame] = deque()
        self._unconfirmed_seconds = 0.0
        self._received_seconds = 0.0  # call audio so far (the call's timeline)
        self._switching: asyncio.Task[None] | None = None
        self._ending = False
        self._replayed_ids: set[int] = set()
        self._local_vad: UserStartedSpeakingFrame | None = None
        self._bot_state: tuple[Frame, FrameDirection] | None = None
        #: Seconds of audio sent again to a backup.
        self.replayed_seconds = 0.0

    def members(self) -> Sequence[FrameProcessor]:
        return [p for m in self._members for p in (m.inlet, m.service, m.outlet) if p is not None]

    @property
    def providers(self) -> list[STTService]:
        return list(self.pool.providers)

    @property
    def active(self) -> STTService | None:
        return self._active.service if self._active is not None else None

    @property
    def switches(self) -> int:
        return self.pool.switches

    def state_of(self, provider: STTService) -> BreakerState:
        return self.pool.breaker(provider).state

    # ------------------------------------------------------------ frames in

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            self._start = frame
            await self.push_frame(frame, direction)
            await self._activate(self._member_of(self.pool.choose()))
            return
        if isinstance(frame, EndFrame | CancelFrame):
            self._ending = True
            if isinstance(frame, CancelFrame) and self._switching is not None:
                self._switching.cancel()
            elif self._switching is not None:
                await asyncio.wait({self._switching}, timeout=5.0)
            for started in self._members:
                if started.started and not started.stopped:
                    await self._send(started, frame, direction)
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, InputAudioRawFrame) and direction is _DOWN:
            await self._on_audio(frame)
            return
        if isinstance(frame, UserStartedSpeakingFrame) and direction is _DOWN:
            self._local_vad = frame  # a VAD upstream of us: a backup must defer to it too
        elif isinstance(frame, BotStartedSpeakingFrame | BotStoppedSpeakingFrame):
            self._bot_state = (frame, direction)  # a backup must know whether the bot is speaking
        active = self._active
        if active is None or self._switching is not None:
            await self.push_frame(frame, direction)
            return
        await self._send(active, frame, direction)

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        self._received_seconds += frame.duration
        self._unconfirmed.append(frame)
        self._unconfirmed_seconds += frame.duration
        # Not while a replay walks the queue: it holds the audio to send next.
        while self._switching is None and self._unconfirmed_seconds > self.settings.replay_seconds:
            self._unconfirmed_seconds -= self._unconfirmed.popleft().duration
        member = self._active
        if member is None or self._switching is not None:
            return  # the replay sends it, in order
        await self._send(member, frame, _DOWN)

    async def _send(self, member: _Member, frame: Frame, direction: FrameDirection) -> None:
        port = member.inlet if direction is _DOWN else member.outlet
        assert port is not None
        await port.enter(frame, direction)

    # ------------------------------------------------------------ frames out

    async def from_member(self, member: _Member, frame: Frame, direction: FrameDirection) -> None:
        """A frame a member produced, going ``direction``."""
        if isinstance(frame, StartFrame | EndFrame | CancelFrame):
            return  # the failover passes its own on
        if isinstance(frame, MetricsFrame):
            await self.push_frame(frame, direction)
            if member is self._active and frame.metric == SERVICE_ERROR and not self._ending:
                member.errors += 1
                limit = self.settings.switch_after_errors
                if limit is not None and member.errors >= limit:
                    self._fail_over(member, f"{member.service.name} lost its connection")
            return
        if member is not self._active:
            return  # a replaced provider's late words: its successor has that audio
        if frame.id in self._replayed_ids:
            self._replayed_ids.discard(frame.id)  # passed through once already
            return
        if isinstance(frame, ErrorFrame) and frame.fatal and not self._ending:
            if self._fail_over(member, frame.error):
                notice = ErrorFrame(f"{frame.error} (moved to the next provider)", processor=self.name)
                await self.push_frame(notice, _UP)
                return
        if isinstance(frame, TranscriptionFrame | InterimTranscriptionFrame) and member.timeline_start:
            _shift(frame, member.timeline_start)  # a backup's 0 is where its audio began: onto the call's clock
        if isinstance(frame, TranscriptionFrame):
            self._confirm(member, frame)
        await self.push_frame(frame, direction)

    def _confirm(self, member: _Member, frame: TranscriptionFrame) -> None:
        """A final: the audio up to its last word needs no replay; the provider works."""
        breaker = self.pool.breaker(member.service)
        if breaker.state is not BreakerState.CLOSED or breaker.failures:
            breaker.record_success()
            self._queue_metrics()
        if self._switching is not None:
            return  # the replay is walking the queue
        end = frame.words[-1][2] if frame.words else frame.timestamp
        start_of_kept = self._received_seconds - self._unconfirmed_seconds
        while self._unconfirmed and start_of_kept + self._unconfirmed[0].duration <= end + 1e-6:
            duration = self._unconfirmed.popleft().duration
            self._unconfirmed_seconds -= duration
            start_of_kept += duration

    # ------------------------------------------------------------ switching

    def _member_of(self, provider: STTService) -> _Member:
        return next(m for m in self._members if m.service is provider)

    def _fail_over(self, member: _Member, reason: str) -> bool:
        """Move the call to the next provider (in a task); False when none is left."""
        if self._switching is not None or member is not self._active:
            return True
        self.pool.breaker(member.service).record_failure()
        following = self.pool.next_after(self._tried)
        if following is None:
            self._queue_metrics()
            logger.error("{}: {} failed and no speech-to-text provider is left", self.name, member.service.name)
            return False
        self.pool.switched(member.service, following, reason)
        self._switching = self.create_task(self._switch(member, self._member_of(following)), "switch")
        return True

    async def _switch(self, old: _Member, new: _Member) -> None:
        try:
            old.stopped = True
            await self._send(old, CancelFrame(reason="replaced by the next speech-to-text provider"), _DOWN)
            await self._activate(new)
        finally:
            self._switching = None

    async def _activate(self, member: _Member) -> None:
        """Start ``member`` and give it the unconfirmed audio, then the live audio."""
        self._tried.append(member.service)
        self._active = member
        await self._flush_metrics()
        if self._start is None:
            return
        start = self._start
        member.started = True
        member.timeline_start = self._received_seconds - self._unconfirmed_seconds
        restart = StartFrame(
            start.audio_in_sample_rate, start.audio_out_sample_rate, start.allow_interruptions, dict(start.metadata)
        )
        restart.epoch = self.epoch  # its ports and the provider open to the pipeline's current epoch
        await self._send(member, restart, _DOWN)
        if self.switches:
            # What the replaced provider knew of the call's state: a local VAD leads, the bot speaks.
            known: list[tuple[Frame, FrameDirection]] = []
            if self._local_vad is not None:
                known.append((UserStartedSpeakingFrame(source=self._local_vad.source), _DOWN))
            if self._bot_state is not None:
                state, direction = self._bot_state
                known.append((type(state)(), direction))
            for frame, direction in known:
                self._replayed_ids.add(frame.id)
                await self._send(member, frame, direction)
        sent = 0
        replayed = 0.0
        while sent < len(self._unconfirmed):
            original = self._unconfirmed[sent]
            copy = InputAudioRawFrame(original.audio, original.sample_rate, original.num_channels, original.encoding)
            if self.switches:
                self._replayed_ids.add(copy.id)
            await self._send(member, copy, _DOWN)
            replayed += original.duration
            sent += 1
        if replayed and self.switches:
            self.replayed_seconds += replayed
            logger.info("{}: replayed {:.2f}s of unconfirmed audio to {}", self.name, replayed, member.service.name)

    def _queue_metrics(self) -> None:
        if self._ending:
            return
        self.create_task(self._flush_metrics(), "metrics")

    async def _flush_metrics(self) -> None:
        for frame in self.pool.metrics():
            await self.push_frame(frame)


def _shift(frame: TranscriptionFrame | InterimTranscriptionFrame, seconds: float) -> None:
    frame.timestamp += seconds
    if isinstance(frame, TranscriptionFrame) and frame.words:
        frame.words = tuple(
            (word, round(start + seconds, 3), round(end + seconds, 3)) for word, start, end in frame.words
        )
