"""A bounded cache of synthesized speech for phrases a call says again and again.

Greetings, fallback phrases and "one moment please" cost characters and a
round trip every time they are synthesized; from the cache they play at
once. An entry is keyed by everything that changes the audio (text, voice,
model, output format, speed), so a cached phrase is never played in the
wrong voice or format. Least recently used entries go first when either
bound (entries, bytes) is hit; an entry larger than a quarter of the byte
budget is not stored at all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vantum_pipeline.errors import ConfigurationError

__all__ = ["CachedAudio", "TTSCache", "TTSCacheKey"]


@dataclass(frozen=True, slots=True)
class TTSCacheKey:
    text: str
    voice: str
    model: str
    encoding: str
    sample_rate: int
    speed: float


@dataclass(frozen=True, slots=True)
class CachedAudio:
    """Audio of a phrase in its output format, with word timings (seconds)."""

    audio: bytes
    sample_rate: int
    encoding: str
    words: tuple[tuple[str, float, float], ...] = ()


class TTSCache:
    """LRU cache with hit/miss counts; bounded by ``max_entries`` and ``max_bytes``."""

    def __init__(self, max_entries: int = 32, max_bytes: int = 8_000_000) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ConfigurationError(f"cache bounds must be >= 0, got {max_entries} entries / {max_bytes} bytes")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[TTSCacheKey, CachedAudio] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: TTSCacheKey) -> bool:
        return key in self._entries

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: TTSCacheKey) -> CachedAudio | None:
        """The cached audio for ``key`` (counted as a hit), or None (a miss)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: TTSCacheKey, entry: CachedAudio) -> bool:
        """Store ``entry``; False when it is too large to cache."""
        size = len(entry.audio)
        if self.max_entries == 0 or size > self.max_bytes // 4:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.audio)
        self._entries[key] = entry
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.audio)
        return True

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries), "bytes": self._bytes}
