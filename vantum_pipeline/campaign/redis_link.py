"""How a campaign's coordinator and workers reach Redis, and ride out its restarts.

Two layers, so that a Redis restart (or a short network cut) costs a pause,
never a lost job or result:

- every connection is made with redis-py's own reconnection (``Retry`` with
  exponential backoff on connection errors and timeouts), so a plain command
  sent while Redis restarts waits for it and goes through;
- the writes that must not be lost (a job queued, a result reported, a marker
  set) and the transactions redis-py will not replay by itself run under the
  library's shared :class:`~vantum_pipeline.observability.retry.RetryPolicy`
  through :func:`with_redis`, which retries connection failures only: a
  command Redis refused (a script error, a wrong type) is a bug and is raised.

A ``REDIS_URL`` in the environment (or ``.env``) is read by :func:`redis_url_from_env`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.settings import load_env, optional_env

__all__ = ["REDIS_RETRY", "is_connection_error", "redis_settings", "redis_url_from_env", "with_redis"]

T = TypeVar("T")

#: Long enough for a Redis restart (seconds, not minutes): 8 retries over about 40 s.
REDIS_RETRY = RetryPolicy(max_retries=8, base_delay=0.25, multiplier=2.0, max_delay=8.0, jitter=0.2)


def redis_url_from_env(url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """``url`` if given, else ``REDIS_URL`` from the environment or ``.env``; a clear error when neither."""
    value = url or optional_env(load_env(env), "REDIS_URL")
    if not value:
        raise ConfigurationError("no Redis: pass --redis URL or set REDIS_URL (redis://host:6379/0; see .env.example)")
    if not value.startswith(("redis://", "rediss://", "unix://")):
        shown = value.split("@")[-1]  # never a password
        raise ConfigurationError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {shown!r}")
    return value


def is_connection_error(exc: BaseException) -> bool:
    """A failure to reach Redis (worth a retry), as opposed to a command Redis refused.

    redis-py reports a connection lost while a transaction WATCHes a key (arq
    queues every job that way) as a ``WatchError`` raised while handling the
    connection error: that one is a connection failure too. A ``WatchError``
    for a watched key that changed is not.
    """
    from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError, WatchError

    lost = ConnectionError | TimeoutError | BusyLoadingError | OSError
    if isinstance(exc, lost):
        return True
    seen: set[int] = set()
    while isinstance(exc, WatchError) and id(exc) not in seen:
        seen.add(id(exc))
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, lost):
            return True
        if cause is None:
            return False
        exc = cause
    return False


def redis_settings(url: str, *, conn_retries: int = 30) -> Any:
    """arq's ``RedisSettings`` for ``url``, with reconnection on every connection of the pool."""
    from arq.connections import RedisSettings
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

    settings = RedisSettings.from_dsn(url)
    settings.conn_retries = conn_retries
    settings.conn_retry_delay = 1
    settings.conn_timeout = 5
    settings.retry_on_timeout = True
    settings.retry_on_error = [ConnectionError, TimeoutError, BusyLoadingError, OSError]
    settings.retry = Retry(ExponentialBackoff(cap=4.0, base=0.1), retries=10)
    return settings


async def with_redis(request: Callable[[], Awaitable[T]], *, what: str, policy: RetryPolicy = REDIS_RETRY) -> T:
    """Run ``request`` under the shared retry policy, retrying connection failures only."""
    return await policy.run(request, service=f"redis ({what})", retryable=is_connection_error)
