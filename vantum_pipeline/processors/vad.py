"""VADProcessor: local voice activity detection, the fastest barge-in trigger.

Placed right after the input transport. It passes every frame on unchanged
and, from the user's audio (``InputAudioRawFrame``, PCM or mu-law, any rate),
emits ``UserStartedSpeakingFrame`` / ``UserStoppedSpeakingFrame`` with
``source="vad"`` downstream.

While the bot is speaking, a start of user speech also calls
``push_interruption()`` (unless ``interrupt_bot`` is off, or the pipeline
disallows interruptions): a local decision, some hundreds of milliseconds
ahead of a cloud STT's speech-started event. The bot counts as speaking
between ``BotStartedSpeakingFrame`` and ``BotStoppedSpeakingFrame`` (which the
output transport sends upstream) and between ``TTSStartedFrame`` and
``TTSStoppedFrame`` when those pass here. An interruption ends both: the bot
is cut off, and the transport's next ``BotStartedSpeakingFrame`` re-arms.
"""

from __future__ import annotations

from collections.abc import Callable

from vantum_pipeline.audio.mulaw import as_pcm16
from vantum_pipeline.audio.vad import SpeechDetector, VADEvent, VADParams, VoiceActivityDetector
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["VADProcessor"]

SOURCE = "vad"


class VADProcessor(FrameProcessor):
    """Detects the user's speech in the input audio.

    ``detector_factory`` builds one speech detector per stream (default:
    Silero); ``params`` tunes the hysteresis. ``on_event`` (optional) sees each
    :class:`~vantum_pipeline.audio.vad.VADEvent`, for measurements.
    """

    def __init__(
        self,
        params: VADParams | None = None,
        *,
        detector_factory: Callable[[], SpeechDetector] | None = None,
        interrupt_bot: bool = True,
        on_event: Callable[[VADEvent], None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.params = params or VADParams()
        self._detector_factory = detector_factory
        self.interrupt_bot = interrupt_bot
        self._on_event = on_event
        self._vad: VoiceActivityDetector | None = None
        self._bot_speaking = False
        self._tts_active = False

    @property
    def bot_speaking(self) -> bool:
        return self._bot_speaking or self._tts_active

    @property
    def user_speaking(self) -> bool:
        return self._vad is not None and self._vad.speaking

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InputAudioRawFrame) and direction is FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
            for event in self._analyse(frame):
                await self._announce(event)
            return
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, TTSStartedFrame):
            self._tts_active = True
        elif isinstance(frame, TTSStoppedFrame):
            self._tts_active = False
        elif isinstance(frame, InterruptionFrame):
            self._bot_speaking = self._tts_active = False
        elif isinstance(frame, EndFrame) and self.user_speaking:
            # Close the user's speech bracket before the end.
            await self.push_frame(UserStoppedSpeakingFrame(source=SOURCE))
        elif isinstance(frame, CancelFrame):
            self._vad = None
        await self.push_frame(frame, direction)

    def _analyse(self, frame: InputAudioRawFrame) -> list[VADEvent]:
        if frame.num_channels != 1:
            raise ConfigurationError(f"{self.name}: VAD needs mono audio, got {frame.num_channels} channels")
        pcm = as_pcm16(frame.audio, frame.encoding)
        if self._vad is None or self._vad.sample_rate != frame.sample_rate:
            detector = self._detector_factory() if self._detector_factory is not None else None
            self._vad = VoiceActivityDetector(frame.sample_rate, self.params, detector=detector)
        return self._vad.process(pcm)

    async def _announce(self, event: VADEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if not event.speaking:
            await self.push_frame(UserStoppedSpeakingFrame(source=SOURCE))
            return
        if self.interrupt_bot and self.bot_speaking:
            # Stop the bot first: every millisecond of overlap is heard.
            await self.push_interruption()
        await self.push_frame(UserStartedSpeakingFrame(source=SOURCE))
