"""``vantum worker --redis URL`` and the Redis side of ``vantum campaign run | status``.

A worker (:func:`run_worker`) takes call jobs of any campaign from Redis and
places them with the dialer its factory builds (on the production path a
``PhoneDialer``: its Twilio server listens on ``--host``/``--port`` and must
be reachable at its own ``--public-url``); it serves its health as JSON at
``GET /health`` on ``--health-port`` (and writes it to Redis, where
``vantum campaign status --redis`` sums every live worker's). With
``VANTUM_CONSOLE_TOKEN`` set, its Twilio server also serves the web console:
the calls it places, and the campaign's figures its coordinator publishes
(:mod:`vantum_pipeline.campaign.figures`). SIGINT or
SIGTERM: no new job; the calls in progress finish; a second signal abandons
them (their jobs run again elsewhere and are reconciled through Twilio).

:func:`coordinate` is the campaign runner with a ``RedisDispatcher`` instead
of the in-process one: the coordinator places no call itself, so its dialer
only answers reconciliation's questions over Twilio's REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from vantum_pipeline.campaign.command import stop_on_signals
from vantum_pipeline.campaign.config import CampaignConfig
from vantum_pipeline.campaign.worker import CampaignWorker, DialerFactory
from vantum_pipeline.console import ConsoleSettings
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import env_float, env_int, load_env, optional_env

__all__ = [
    "DEEPGRAM_CONNECTIONS",
    "WorkerOptions",
    "format_cluster",
    "read_cluster",
    "run_worker",
    "worker_phone_dialers",
]

#: Deepgram's default limit of concurrent streaming connections per account (the product's spec).
DEEPGRAM_CONNECTIONS = 50


@dataclass(slots=True)
class WorkerOptions:
    """What ``vantum worker`` is given (flags first, then ``WORKER_*`` variables, then defaults)."""

    redis_url: str
    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str | None = None
    max_jobs: int = 10
    max_calls: int = 100
    calls_per_second: float = 1.0
    service_limits: dict[str, int] = field(default_factory=lambda: {"deepgram": DEEPGRAM_CONNECTIONS})
    lease_ttl: float = 15.0
    health_port: int | None = None
    worker_id: str | None = None

    @property
    def limits(self) -> dict[str, int]:
        return {"calls": self.max_calls, **self.service_limits}

    @classmethod
    def from_env(cls, redis_url: str, env: Mapping[str, str] | None = None, **flags: Any) -> WorkerOptions:
        """Flags that were given win over ``CLUSTER_MAX_CALLS``, ``CLUSTER_CALLS_PER_SECOND``,
        ``DEEPGRAM_MAX_CONNECTIONS``, ``WORKER_MAX_JOBS``, ``WORKER_HEALTH_PORT``, ``PUBLIC_BASE_URL``."""
        env = load_env(env)
        given = {key: value for key, value in flags.items() if value is not None}
        options = cls(
            redis_url=redis_url,
            public_url=optional_env(env, "PUBLIC_BASE_URL"),
            max_jobs=env_int(env, "WORKER_MAX_JOBS", 10, minimum=1) or 10,
            max_calls=env_int(env, "CLUSTER_MAX_CALLS", 100, minimum=1) or 100,
            calls_per_second=env_float(env, "CLUSTER_CALLS_PER_SECOND", 1.0, minimum=0.0) or 0.0,
            service_limits={
                "deepgram": env_int(env, "DEEPGRAM_MAX_CONNECTIONS", DEEPGRAM_CONNECTIONS, minimum=1)
                or DEEPGRAM_CONNECTIONS
            },
            health_port=env_int(env, "WORKER_HEALTH_PORT", None, minimum=1, maximum=65535),
        )
        limits = given.pop("service_limits", None)
        if limits:
            options.service_limits = {**options.service_limits, **limits}
        for key, value in given.items():
            if not hasattr(options, key):
                raise ConfigurationError(f"unknown worker option {key!r}")
            setattr(options, key, value)
        if options.max_jobs < 1 or options.max_calls < 1:
            raise ConfigurationError(
                f"--max-jobs and --max-calls must be >= 1, got {options.max_jobs}, {options.max_calls}"
            )
        return options


def parse_service_limits(values: list[str]) -> dict[str, int]:
    """``["deepgram=50", "cartesia=20"]`` → ``{"deepgram": 50, "cartesia": 20}``; an error names a bad one."""
    limits: dict[str, int] = {}
    for value in values:
        name, _, number = value.partition("=")
        if not name or not number.isdigit() or int(number) < 1:
            raise ConfigurationError(f"--service-limit must be NAME=COUNT with COUNT >= 1, got {value!r}")
        limits[name.strip().lower()] = int(number)
    return limits


def worker_phone_dialers(options: WorkerOptions) -> DialerFactory:
    """The production dialer factory: a ``PhoneDialer`` per campaign, keys from the environment;
    with ``VANTUM_CONSOLE_TOKEN`` set, its server serves the web console with the figures the
    campaign's coordinator publishes."""

    @contextlib.asynccontextmanager
    async def factory(config: CampaignConfig, dnc: Any) -> AsyncIterator[Any]:
        from vantum_pipeline.campaign.clock import SystemClock
        from vantum_pipeline.campaign.figures import PublishedCampaignStats
        from vantum_pipeline.campaign.phone import PhoneDialer, services_from_env
        from vantum_pipeline.console import ConsoleSettings

        services = services_from_env(config)
        figures = PublishedCampaignStats(options.redis_url, config.id)
        try:
            async with PhoneDialer(
                config,
                services,
                dnc=dnc,
                clock=SystemClock(),
                host=options.host,
                port=options.port,
                public_base_url=options.public_url,
                recordings_dir=config.resolved_folder() / "recordings",
                console=ConsoleSettings.from_env(),
                campaign_stats=figures,
            ) as dialer:
                yield dialer
        finally:
            await figures.aclose()

    return factory


async def _serve_health(worker: CampaignWorker, host: str, port: int) -> Any:
    from aiohttp import web

    async def health(_: web.Request) -> web.Response:
        body = worker.health()
        return web.json_response(body, status=200 if body["redis_ok"] else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def run_worker(options: WorkerOptions, factory: DialerFactory, *, stream: TextIO = sys.stdout) -> int:
    """Run a worker until SIGINT/SIGTERM; see the module docstring."""
    console = ConsoleSettings.from_env()  # a bad console token fails here, before any job is taken
    worker = CampaignWorker(
        options.redis_url,
        factory,
        limits=options.limits,
        calls_per_second=options.calls_per_second,
        lease_ttl=options.lease_ttl,
        max_jobs=options.max_jobs,
        worker_id=options.worker_id,
    )
    health = await _serve_health(worker, options.host, options.health_port) if options.health_port else None
    main = asyncio.get_running_loop().create_task(worker.run(), name="campaign-worker")
    warning = "worker stopping: no new jobs; the calls in progress finish (again to abandon them)"
    limits = ", ".join(f"{name} {count}" for name, count in options.limits.items())
    try:
        with stop_on_signals(worker.stop, main, warning):
            print(
                f"worker {worker.worker_id}: jobs from {_masked(options.redis_url)}, up to {options.max_jobs} at once; "
                f"cluster limits: {limits}, {options.calls_per_second:g} calls/s"
                + (f"; health on :{options.health_port}/health" if options.health_port else "")
                + (f"; web console at {console.path} on its Twilio server" if console.token is not None else ""),
                file=stream,
                flush=True,
            )
            with contextlib.suppress(asyncio.CancelledError):
                await main
    finally:
        if health is not None:
            await health.cleanup()
    print(f"worker {worker.worker_id}: stopped after {worker.calls} calls", file=stream, flush=True)
    return 0


def _masked(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('@')[-1]}"


async def read_cluster(redis_url: str, campaign_id: str) -> dict[str, Any]:
    """The campaign's counters and the live workers' health, from Redis."""
    import redis.asyncio as redis

    from vantum_pipeline.campaign.redis_dispatch import cluster_metrics

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return await cluster_metrics(client, campaign_id)
    finally:
        await client.aclose()


def format_cluster(metrics: Mapping[str, Any]) -> str:
    campaign = metrics["campaign"]
    summed = metrics["summed"]
    outcomes = {k.split(":", 1)[1]: int(v) for k, v in campaign.items() if k.startswith("outcome:")}
    shown = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1])) or "-"
    lines = [
        f"workers       {metrics['workers']} alive: {summed['running']} calls in progress, "
        f"{summed['jobs']} jobs running, {summed['calls']} calls placed since they started",
        f"worker calls  {shown} (spend ${campaign.get('spend_usd', 0.0):.4f})",
        f"cluster       lease refusals {int(campaign.get('lease_refusals', 0))}, "
        f"poison jobs {summed['poison_jobs']}, reconciled after a lost worker {summed['reconciled']}, "
        f"put back by an overloaded worker {summed.get('overloaded_deferrals', 0)}",
    ]
    for worker in metrics["per_worker"]:
        lines.append(
            f"  {worker.get('worker')}: {json.dumps({k: worker.get(k) for k in ('running', 'calls', 'redis_ok')})}"
        )
    return "\n".join(lines)
