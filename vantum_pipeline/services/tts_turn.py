"""A text-to-speech turn over its attempts, and how long an attempt may take.

``TTSTurn`` is the state the ``TTSService`` skeleton (``services/tts.py``)
keeps per turn: its text, its state (``TurnState``), where its current
attempt runs (``provider``) and resumes (``resume_from``), how far its audio
got, and what the output is holding for it. ``TTSTiming`` bounds an attempt
and says how failures are retried. ``UnspokenText`` records what could not be
said.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vantum_pipeline.audio.resample import StreamResampler
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.frames import Frame
from vantum_pipeline.services.tts_cache import TTSCacheKey

if TYPE_CHECKING:
    from vantum_pipeline.services.tts import TTSService

__all__ = ["TTSTiming", "TTSTurn", "TurnState", "UnspokenText"]


@dataclass(frozen=True, slots=True)
class TTSTiming:
    """How long a turn's attempt may take, and how failures are retried.

    ``first_audio_timeout`` / ``stall_timeout`` None: not watched (an engine
    that queues work locally cannot be late).
    """

    max_retries: int = 1
    retry_delay: float = 0.25
    max_retry_wait: float = 2.0
    first_audio_timeout: float | None = 4.0
    stall_timeout: float | None = 4.0
    drain_timeout: float = 8.0

    @classmethod
    def of(cls, settings: Any) -> TTSTiming:
        """The timing fields of a service's settings dataclass (same names)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("first_audio_timeout", "stall_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"TTSTiming.{name} must be > 0 or None, got {value}")
        if self.retry_delay < 0 or self.max_retry_wait < 0 or self.drain_timeout <= 0:
            raise ConfigurationError(
                f"retry_delay/max_retry_wait must be >= 0 and drain_timeout > 0, got "
                f"{self.retry_delay}/{self.max_retry_wait}/{self.drain_timeout}"
            )


class TurnState(enum.Enum):
    LIVE = "live"  # an attempt is running (or about to)
    RECOVERING = "recovering"  # failed; waiting to retry or to fall back
    FINISHED = "finished"  # done, fallen back, or played from the cache
    CANCELLED = "cancelled"  # interrupted


@dataclass(eq=False)
class TTSTurn:
    """One assistant turn (or TTSSpeakFrame) over its attempts.

    ``host`` runs the skeleton (its frames, order, cache); ``provider`` is the
    engine of the current attempt (the host itself, or a failover's member).
    Fields under "attempt" are reset by each attempt; ``engine_ref`` is the
    engine's own handle of the attempt (a context id, a request).
    """

    turn_id: str
    epoch: int
    host: TTSService
    provider: TTSService
    category: str | None = None
    cache_key: TTSCacheKey | None = None
    silent: bool = False  # a warm-up: audio goes to the cache only
    sentences: list[str] = field(default_factory=list)
    closing: bool = False  # the text is complete
    state: TurnState = TurnState.LIVE
    attempt: int = 0
    tried: list[TTSService] = field(default_factory=list)  # providers of the attempts so far
    first_sent_at: float = 0.0
    ttfb_reported: bool = False
    started_out: bool = False  # TTSStartedFrame pushed
    audio_seconds: float = 0.0  # audio pushed for the turn
    resume_from: int = 0  # first sentence of the current attempt
    audio: bytearray = field(default_factory=bytearray)  # kept for the cache
    words: list[tuple[str, float, float]] = field(default_factory=list)
    backlog: list[Frame] = field(default_factory=list)  # frames waiting for earlier turns
    recovery: asyncio.Task[None] | None = None
    # attempt
    engine_ref: Any = None
    sent: int = 0  # sentences sent in the current attempt (absolute index)
    close_sent: bool = False
    attempt_sent_at: float = 0.0
    last_event_at: float = 0.0
    got_audio: bool = False
    attempt_offset: float = 0.0  # audio_seconds when the attempt began
    words_done: int = 0  # words of resume_from.. covered by timestamps
    sentences_done: int = 0  # sentences of resume_from.. the engine finished
    carry: bytes = b""  # odd byte of a pcm16 chunk
    resampler: StreamResampler | None = None

    @property
    def attempt_position(self) -> float:
        """Seconds of audio pushed in the current attempt."""
        return self.audio_seconds - self.attempt_offset


@dataclass(frozen=True, slots=True)
class UnspokenText:
    """Text of a turn that could not be synthesized (a fallback played instead)."""

    context_id: str
    text: str
    reason: str
    fallback: str
