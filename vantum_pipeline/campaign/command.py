"""``vantum campaign run | status | export``: the campaign from the command line.

``run FILE`` imports the prospects (bad rows reported by line), checks the
prompt's variables, takes the campaign folder's lock (one runner per
campaign: the OS releases it when the process dies, even by SIGKILL),
reconciles what a previous run left open, and dials with the live view.
Ctrl-C (or SIGTERM) stops dialling and lets the calls in progress finish; a
second one abandons them (the next run reconciles them through Twilio).

The campaign folder (``[campaign] folder``, default ``runs/<id>`` next to
the file) holds ``campaign.sqlite``, ``calls/`` (one JSON record per
attempt), ``recordings/`` (stereo WAVs) and ``campaign.lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from vantum_pipeline.campaign.clock import Clock, SystemClock
from vantum_pipeline.campaign.config import CampaignConfig, load_campaign
from vantum_pipeline.campaign.dispatch import CampaignEvent, Dialer, EventCallback
from vantum_pipeline.campaign.results import RunTally, campaign_status, export, format_status
from vantum_pipeline.campaign.runner import CampaignRunner, RunSummary, StoreDoNotCall, prepare_campaign
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.campaign.view import make_view
from vantum_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from vantum_pipeline.campaign.figures import StoreCampaignStats
    from vantum_pipeline.campaign.redis_dispatch import RedisDispatcher

__all__ = [
    "DialerFactory",
    "campaign_lock",
    "export_command",
    "open_store",
    "phone_dialer",
    "reconciling_dialer",
    "run_campaign",
    "simulated",
    "status_command",
    "stop_on_signals",
    "store_figures",
]

STORE_NAME = "campaign.sqlite"
DialerFactory = Callable[[CampaignConfig, StoreDoNotCall, Clock, EventCallback], AbstractAsyncContextManager[Dialer]]


@contextlib.contextmanager
def campaign_lock(folder: Path) -> Iterator[None]:
    """Hold the campaign folder's lock; ConfigurationError if another runner has it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "campaign.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(f"{folder}: another runner is running this campaign") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def simulated(config: CampaignConfig) -> CampaignConfig:
    """The campaign as ``run --fake`` runs it: same file, its own folder (``<folder>-simulated``),
    so a simulation never mixes with the real campaign's store."""
    folder = config.resolved_folder()
    return dataclasses.replace(config, folder=folder.with_name(folder.name + "-simulated"))


def open_store(target: Path, *, fake: bool = False) -> tuple[CampaignStore, str]:
    """The store and campaign id of a campaign file (its simulated run's with ``fake``) or folder."""
    if target.is_dir():
        path = target / STORE_NAME
        if not path.exists():
            raise ConfigurationError(f"{target}: no {STORE_NAME} here (has the campaign run?)")
        store = CampaignStore(path)
        campaigns = store.campaigns()
        if len(campaigns) != 1:
            store.close()
            raise ConfigurationError(f"{path}: expected one campaign, found {len(campaigns)}")
        return store, str(campaigns[0]["id"])
    config = load_campaign(target)
    if fake:
        config = simulated(config)
    path = config.resolved_folder() / STORE_NAME
    if not path.exists():
        raise ConfigurationError(f"{path}: the campaign has not run yet")
    return CampaignStore(path), config.id


def status_command(
    target: Path, stream: TextIO = sys.stdout, *, fake: bool = False, redis_url: str | None = None
) -> int:
    """The store's counts; with ``redis_url``, the workers' (summed) too."""
    store, campaign_id = open_store(target, fake=fake)
    with store:
        print(format_status(campaign_status(store, campaign_id)), file=stream)
    if redis_url is not None:
        from vantum_pipeline.campaign.cluster_command import format_cluster, read_cluster

        cluster: dict[str, Any] = asyncio.run(read_cluster(redis_url, campaign_id))
        print(format_cluster(cluster), file=stream)
    return 0


def export_command(
    target: Path, fmt: str, rows: str, out: Path | None, stream: TextIO = sys.stdout, *, fake: bool = False
) -> int:
    store, campaign_id = open_store(target, fake=fake)
    with store:
        if out is None:
            count = export(store, campaign_id, stream, fmt=fmt, rows=rows)
        else:
            with out.open("w", encoding="utf-8", newline="") as file:
                count = export(store, campaign_id, file, fmt=fmt, rows=rows)
            print(f"wrote {count} {rows} to {out}", file=sys.stderr)
    return 0


@contextlib.asynccontextmanager
async def phone_dialer(
    config: CampaignConfig,
    dnc: StoreDoNotCall,
    clock: Clock,
    on_event: EventCallback,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
) -> AsyncIterator[Dialer]:
    """The production dialer: keys and Twilio settings from the environment (and ``.env``); with
    ``VANTUM_CONSOLE_TOKEN`` set, its server serves the web console with the campaign's figures."""
    from vantum_pipeline.campaign.phone import PhoneDialer, services_from_env
    from vantum_pipeline.console import ConsoleSettings

    services = services_from_env(config)
    recordings = config.resolved_folder() / "recordings"
    console = ConsoleSettings.from_env()
    async with (
        store_figures(config) as figures,
        PhoneDialer(
            config,
            services,
            dnc=dnc,
            clock=clock,
            on_event=on_event,
            host=host,
            port=port,
            recordings_dir=recordings,
            console=console,
            campaign_stats=figures,
        ) as dialer,
    ):
        yield dialer


@contextlib.asynccontextmanager
async def store_figures(config: CampaignConfig) -> AsyncIterator[StoreCampaignStats]:
    """The web console's figures of ``config``'s campaign, read from its store (closed on exit)."""
    from vantum_pipeline.campaign.figures import StoreCampaignStats

    figures = StoreCampaignStats(
        config.resolved_folder() / STORE_NAME, budgets={config.id: config.budget_usd}, campaign_ids=[config.id]
    )
    try:
        yield figures
    finally:
        await figures.aclose()


@contextlib.asynccontextmanager
async def reconciling_dialer(
    config: CampaignConfig, dnc: StoreDoNotCall, clock: Clock, on_event: EventCallback
) -> AsyncIterator[Dialer]:
    """The coordinator's Twilio (REST only) from the environment: a real account, or a shared FakeTwilio."""
    from vantum_pipeline.campaign.twilio_rest import ReconcilingDialer, rest_settings_from_env

    async with ReconcilingDialer(rest_settings_from_env(config.caller_id)) as dialer:
        yield dialer


async def run_campaign(
    config: CampaignConfig,
    make_dialer: DialerFactory,
    *,
    clock: Clock | None = None,
    idle_exit: float | None = None,
    plain: bool = False,
    stream: TextIO = sys.stdout,
    is_simulation: bool = False,
    redis_url: str | None = None,
) -> int:
    """Run ``config`` to its end (or ``idle_exit`` seconds of nothing due); see the module docstring.

    With ``redis_url`` the calls go to ``vantum worker`` processes through Redis (a
    ``RedisDispatcher``, at most ``max_concurrent_calls`` jobs queued or running), and
    ``make_dialer`` need only answer reconciliation (a ``ReconcilingDialer``)."""
    clock = clock or SystemClock()
    folder = config.resolved_folder()
    with campaign_lock(folder), CampaignStore(folder / STORE_NAME) as store:
        prepared = prepare_campaign(config, store)
        total = len(prepared.prospects.prospects)
        print(
            f"campaign {config.id!r}: {total} prospects ({prepared.imported} new), "
            f"{len(prepared.rejected)} rows rejected, {len(store.dnc_numbers())} numbers on the do-not-call list",
            file=stream,
        )
        for row in prepared.rejected:
            print(f"  skipped {config.prospects.name} {row}", file=stream)
        for line in prepared.dnc_rejected:
            print(f"  skipped {line}", file=stream)
        view = make_view(store, config.id, title=f"campaign {config.name}", stream=stream, plain=plain)

        tally = RunTally()

        def on_event(event: CampaignEvent) -> None:
            tally(event)
            view(event)

        dnc = StoreDoNotCall(store, on_event)
        async with (
            make_dialer(config, dnc, clock, on_event) as dialer,
            view,
            _dispatcher(config, redis_url) as remote,
            _figures_for_workers(config, remote),
        ):
            runner = CampaignRunner(
                config, store, dialer, clock=clock, on_event=on_event, idle_exit=idle_exit, dnc=dnc, dispatcher=remote
            )
            if remote is not None:
                remote.bind(runner, dnc=dnc)
                await remote.publish_dnc(store.dnc_numbers())
            summary = await _run_with_signals(runner)
            if remote is not None:
                from vantum_pipeline.campaign.cluster_command import format_cluster

                cluster = await remote.metrics()
        if redis_url is not None:
            print(format_cluster(cluster), file=stream)
        print(
            f"\n{summary.reason}: {summary.dialled} calls dialled this run, {summary.reconciled} reconciled, "
            f"spend ${summary.spend:.4f}"
            + (f"; next due {summary.next_due:%Y-%m-%d %H:%M} UTC" if summary.next_due else ""),
            file=stream,
        )
        print(format_status(campaign_status(store, config.id)), file=stream)
        dispatcher = runner.dispatcher
        rules = tally.lines(
            max_concurrent=config.max_concurrent_calls,
            max_active_seen=getattr(dispatcher, "max_active_seen", None),
            starts=list(getattr(dispatcher, "starts", ())),
            calls_per_second=config.calls_per_second,
            spend=store.spend(config.id),
            budget=config.budget_usd,
        )
        print("\n".join(rules), file=stream)
        hint = f"vantum campaign export {'--fake ' if is_simulation else ''}{config.path}"
        print(f"records in {folder / 'calls'}; export: {hint}", file=stream)
    return 0


@contextlib.asynccontextmanager
async def _dispatcher(config: CampaignConfig, redis_url: str | None) -> AsyncIterator[RedisDispatcher | None]:
    if redis_url is None:
        yield None
        return
    from vantum_pipeline.campaign.redis_dispatch import RedisDispatcher

    text = config.path.read_text(encoding="utf-8")
    async with RedisDispatcher(
        redis_url,
        campaign_id=config.id,
        config_text=text,
        config_path=str(config.path),
        max_outstanding=config.max_concurrent_calls,
    ) as dispatcher:
        yield dispatcher


@contextlib.asynccontextmanager
async def _figures_for_workers(config: CampaignConfig, remote: RedisDispatcher | None) -> AsyncIterator[None]:
    """With workers, publish the store's figures for their web consoles while the campaign runs."""
    if remote is None:
        yield
        return

    from vantum_pipeline.campaign.figures import publish_figures

    async def publish(payload: str, ttl: float) -> None:
        await remote.publish_figures(payload, ttl=ttl)

    async with store_figures(config) as figures:
        task = asyncio.get_running_loop().create_task(publish_figures(figures, publish), name="campaign-figures")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _run_with_signals(runner: CampaignRunner) -> RunSummary:
    with stop_on_signals(
        runner.stop,
        asyncio.current_task(),
        "stopping: no new calls; the calls in progress finish (again to abandon them)",
    ):
        return await runner.run()


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None], main: asyncio.Task[Any] | None, warning: str) -> Iterator[None]:
    """While the block runs, the first SIGINT or SIGTERM logs ``warning`` and calls ``stop``
    (finish what is in progress); the next one cancels ``main`` (abandon it)."""
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            logger.warning(warning)
            stop()
        elif main is not None:
            main.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
