"""Cluster-wide limits in Redis: leases that expire when their holder dies.

Every worker of a campaign asks here before it starts a call: the account's
concurrent calls, the services' connection limits (Deepgram allows 50
concurrent streams by default) and the account's calls per second are shared
by every machine, so they live in Redis, not in any one process.

A lease is a member of a sorted set scored by its expiry time (Redis' own clock,
so the workers' clocks do not matter). Taking one prunes the expired members,
checks every limit the call needs and the calls-per-second window, and takes
all of them or none, in one Lua script: no two workers can both see the last
free place. The holder renews its leases while the call lasts
(:meth:`ClusterLeases.keep`); a worker killed mid-call stops renewing, and its
places come free ``ttl`` seconds later without anybody cleaning up.

    leases = ClusterLeases(redis, namespace="campaign:42",
                           limits={"calls": 100, "deepgram": 50}, calls_per_second=1.0)
    grant = await leases.acquire("campaign:42:p17:1")
    if isinstance(grant, LeaseRefused):
        ...  # leave the job queued; try again after grant.retry_after seconds
    async with leases.keep(grant):
        ...  # the call
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from vantum_pipeline.errors import ConfigurationError

__all__ = ["RATE_LIMIT", "ClusterLeases", "Lease", "LeaseRefused"]

#: The name under which a refusal reports the calls-per-second window.
RATE_LIMIT = "calls_per_second"

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if not redis.call('ZSCORE', KEYS[i], holder) then
    if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[3 + i]) then
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      return {0, i, tonumber(first[2]) - now}
    end
  end
end
local rate = tonumber(ARGV[4 + n])
if rate > 0 then
  local key = KEYS[n + 1]
  local window = tonumber(ARGV[5 + n])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= rate then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return {0, n + 1, tonumber(oldest[2]) + window - now}
  end
  redis.call('ZADD', key, now, holder .. '@' .. now)
  redis.call('PEXPIRE', key, window * 2)
end
for i = 1, n do
  redis.call('ZADD', KEYS[i], now + ttl, holder)
  redis.call('PEXPIRE', KEYS[i], ttl * 4)
end
return {1, 0, now + ttl}
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local held = 0
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if score and tonumber(score) > now then
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], ttl * 4)
    held = held + 1
  end
end
return held
"""

_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf')
end
return out
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """Places held by one holder (an attempt), one per limit in ``limits``."""

    holder: str
    limits: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LeaseRefused:
    """No place free under ``limit``; the earliest one frees in about ``retry_after`` s."""

    limit: str
    retry_after: float


class ClusterLeases:
    """Limits shared by every worker through one Redis.

    ``limits`` maps a name (``"calls"`` for the account's concurrent calls, a
    service's name for its connections) to its capacity; ``calls_per_second``
    (0 for none) bounds the starts over a sliding ``rate_window`` seconds.
    ``ttl`` is how long a lease outlives its holder's last renewal.
    Redis errors (connection refused, a restart) propagate: the caller's retry
    policy decides; a lease is never assumed held when Redis did not say so.
    """

    def __init__(
        self,
        redis: Any,
        *,
        namespace: str,
        limits: Mapping[str, int],
        calls_per_second: float = 0.0,
        rate_window: float = 1.0,
        ttl: float = 15.0,
    ) -> None:
        for name, capacity in limits.items():
            if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
                raise ConfigurationError(f"limit {name!r} must be a positive integer, got {capacity!r}")
        if calls_per_second < 0:
            raise ConfigurationError(f"calls_per_second must be >= 0, got {calls_per_second!r}")
        if ttl <= 0 or rate_window <= 0:
            raise ConfigurationError(f"ttl and rate_window must be positive, got {ttl!r} and {rate_window!r}")
        self.redis = redis
        self.namespace = namespace
        self.limits = dict(limits)
        self.calls_per_second = calls_per_second
        self.rate_window = rate_window
        self.ttl = ttl
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._usage = redis.register_script(_USAGE)

    def _key(self, limit: str) -> str:
        return f"vantum:{self.namespace}:lease:{limit}"

    @property
    def _rate_key(self) -> str:
        return f"vantum:{self.namespace}:rate"

    @property
    def _rate_capacity(self) -> int:
        if self.calls_per_second <= 0:
            return 0
        return max(1, round(self.calls_per_second * self.rate_window))

    async def acquire(
        self, holder: str, *, needs: Iterable[str] | None = None, start: bool = True
    ) -> Lease | LeaseRefused:
        """Take a place under every limit in ``needs`` (default: all) and a rate slot, or none.

        Idempotent for a holder that already holds its places (a job retried
        by the queue after its worker restarted finds its own lease): it is
        renewed, and no second place is taken. ``start=False``: the places of
        a call already going (taken again after they lapsed), no rate slot.
        Not cancel-safe in the sense that a cancelled call may still have taken
        the places: release by holder name in a ``finally``.
        """
        names = tuple(self.limits if needs is None else needs)
        unknown = [name for name in names if name not in self.limits]
        if unknown:
            raise ConfigurationError(f"no limit named {unknown[0]!r}; known: {sorted(self.limits)}")
        keys = [self._key(name) for name in names] + [self._rate_key]
        args: list[Any] = [holder, int(self.ttl * 1000), len(names)]
        args += [self.limits[name] for name in names]
        args += [self._rate_capacity if start else 0, int(self.rate_window * 1000)]
        ok, which, value = await self._acquire(keys=keys, args=args)
        if int(ok) == 1:
            return Lease(holder, names)
        index = int(which) - 1
        limit = names[index] if index < len(names) else RATE_LIMIT
        return LeaseRefused(limit, max(0.0, int(value) / 1000.0))

    async def renew(self, lease: Lease) -> bool:
        """Push the lease's expiry ``ttl`` ahead; False when any place was lost (expired)."""
        keys = [self._key(name) for name in lease.limits]
        held = await self._renew(keys=keys, args=[lease.holder, int(self.ttl * 1000)])
        return int(held) == len(keys)

    async def keep_up(self, lease: Lease) -> Lease | LeaseRefused:
        """Renew ``lease``; a place that lapsed (its holder stalled or Redis away past ``ttl``) is
        taken again if it is free (no calls-per-second slot: the call is going already). Refused:
        another holder has it, and the call goes on over the limit (logged). Either way, from the
        lapse to this renewal another holder could take the place: each lapse may put one call over
        the limit for that long, and both cases log it as a lapse."""
        if await self.renew(lease):
            return lease
        again = await self.acquire(lease.holder, needs=lease.limits, start=False)
        if isinstance(again, Lease):
            logger.warning("lease {} lost a place (expired before renewal); taken again", lease.holder)
        else:
            logger.warning(
                "lease {} lost a place (expired before renewal); none free under {}: over the limit",
                lease.holder,
                again.limit,
            )
        return again

    async def release(self, lease: Lease | str, limits: Iterable[str] | None = None) -> None:
        """Give the places back (by lease, or by holder name for every limit)."""
        holder = lease.holder if isinstance(lease, Lease) else lease
        names = lease.limits if isinstance(lease, Lease) else tuple(limits or self.limits)
        pipe = self.redis.pipeline(transaction=True)
        for name in names:
            pipe.zrem(self._key(name), holder)
        await pipe.execute()

    async def usage(self) -> dict[str, int]:
        """Places held now under each limit (expired ones not counted)."""
        names = list(self.limits)
        counts = await self._usage(keys=[self._key(name) for name in names], args=[])
        return {name: int(count) for name, count in zip(names, counts, strict=True)}

    @contextlib.asynccontextmanager
    async def keep(self, lease: Lease, *, every: float | None = None) -> AsyncIterator[None]:
        """Renew ``lease`` every ``ttl / 3`` s while the block runs; release it after.

        A renewal that fails (Redis away) is logged and tried again at the next
        tick: the call goes on; if Redis stays away past ``ttl`` the places
        expire and other workers may use them, which is the safe direction for
        a crashed worker and a bounded overshoot for a partitioned one. A place
        that lapsed (Redis away, or this process stalled past ``ttl``) is taken
        again at the next tick if it is still free, so that the overshoot lasts
        no longer than the lapse.
        """
        interval = every if every is not None else self.ttl / 3

        async def renewer() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await asyncio.wait_for(self.keep_up(lease), timeout=interval)
                except (TimeoutError, OSError) as exc:
                    logger.warning("lease {}: renewal failed ({}); retrying", lease.holder, type(exc).__name__)
                except Exception as exc:  # a redis-py error class that is not an OSError
                    logger.warning("lease {}: renewal failed ({}: {}); retrying", lease.holder, type(exc).__name__, exc)

        task = asyncio.get_running_loop().create_task(renewer(), name=f"lease-renew-{lease.holder}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await asyncio.wait_for(self.release(lease), timeout=max(1.0, interval))
            except Exception as exc:
                logger.warning(
                    "lease {}: release failed ({}); it expires within {}s", lease.holder, type(exc).__name__, self.ttl
                )
