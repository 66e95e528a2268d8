"""The ``vantum`` command (also ``python -m vantum_pipeline``).

vantum demo            a whole simulated outbound sales call, offline: no keys, no network
vantum demo --mic      talk to the bot yourself, through your microphone and speaker
vantum devices         the sound devices --input-device / --output-device can name
vantum campaign ...    outbound campaigns: run (or run --fake), status, export, demo
vantum worker          place a campaign's calls on this machine, taking jobs from Redis (--redis URL)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vantum_pipeline.errors import ConfigurationError, VantumError
from vantum_pipeline.observability.redact import install_log_redaction
from vantum_pipeline.transports.local import LocalAudioParams, list_devices, parse_device

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vantum", description="vantum_pipeline: real-time voice agents on the phone")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a simulated outbound sales call with the offline engines",
        description=(
            "Runs one outbound sales call through the production path (Twilio media stream, Deepgram, OpenAI "
            "and Cartesia on their SDKs) against local stand-ins backed by pocketsphinx, a scripted sales agent "
            "and espeak-ng. Writes call.wav (callee left, bot right) and call.json (the call record)."
        ),
    )
    demo.add_argument("--mic", action="store_true", help="talk to the bot through your microphone and speaker")
    demo.add_argument(
        "--input-device",
        metavar="DEVICE",
        help="with --mic: the microphone, by index or part of its name (default: $VANTUM_INPUT_DEVICE, "
        "else the system's default; `vantum devices` lists them)",
    )
    demo.add_argument(
        "--output-device",
        metavar="DEVICE",
        help="with --mic: the speaker, by index or part of its name (default: $VANTUM_OUTPUT_DEVICE, else the default)",
    )
    demo.add_argument("--out", type=Path, default=Path("."), help="where to write call.wav and call.json")
    demo.add_argument("--quiet", action="store_true", help="print only the summary")
    demo.add_argument("--no-interims", action="store_true", help="do not print interim transcripts")
    demo.add_argument("--log-level", default="ERROR", help="library log level on stderr (default ERROR)")
    commands.add_parser("devices", help="list the sound devices (for demo --mic --input-device/--output-device)")
    _campaign_parser(commands)
    _worker_parser(commands)
    return parser


def _worker_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="place campaign calls on this machine, taking jobs from Redis",
        description="Takes call jobs from the Redis that campaign coordinators (vantum campaign run FILE --redis "
        "URL) fill, and places each call within the cluster-wide limits every worker shares. Its Twilio server "
        "must be reachable at its own public URL. Keys come from the environment or .env; --fake places the "
        "calls in the simulated world instead (no keys, no network).",
    )
    worker.add_argument("--redis", metavar="URL", help="the Redis of the cluster (default: $REDIS_URL)")
    worker.add_argument("--fake", action="store_true", help="simulated services and prospects: no keys, no network")
    worker.add_argument("--host", default=None, help="where its Twilio server listens (default 0.0.0.0)")
    worker.add_argument("--port", type=int, default=None, help="its port (default 8080; 0 with --fake: any)")
    worker.add_argument(
        "--public-url", metavar="URL", default=None, help="where Twilio reaches this worker (default $PUBLIC_BASE_URL)"
    )
    worker.add_argument("--max-jobs", type=int, default=None, help="calls this worker runs at once (default 10)")
    worker.add_argument(
        "--max-calls", type=int, default=None, help="the account's concurrent calls, cluster-wide (default 100)"
    )
    worker.add_argument(
        "--calls-per-second", type=float, default=None, help="the account's call starts per second (default 1)"
    )
    worker.add_argument(
        "--service-limit",
        action="append",
        default=[],
        metavar="NAME=COUNT",
        help="a service's concurrent connections, cluster-wide (default deepgram=50); repeatable",
    )
    worker.add_argument(
        "--lease-ttl", type=float, default=None, help="seconds a dead worker's places stay taken (default 15)"
    )
    worker.add_argument("--health-port", type=int, default=None, help="serve GET /health (JSON) on this port")
    worker.add_argument("--worker-id", default=None, help="this worker's name (default host:pid)")
    worker.add_argument("--log-level", default="WARNING", help="library log level on stderr (default WARNING)")


def _worker(args: argparse.Namespace) -> int:
    from vantum_pipeline.campaign.cluster_command import (
        WorkerOptions,
        parse_service_limits,
        run_worker,
        worker_phone_dialers,
    )
    from vantum_pipeline.campaign.redis_link import redis_url_from_env

    options = WorkerOptions.from_env(
        redis_url_from_env(args.redis),
        host=args.host,
        port=args.port if args.port is not None else (0 if args.fake else None),
        public_url=args.public_url,
        max_jobs=args.max_jobs,
        max_calls=args.max_calls,
        calls_per_second=args.calls_per_second,
        service_limits=parse_service_limits(args.service_limit),
        lease_ttl=args.lease_ttl,
        health_port=args.health_port,
        worker_id=args.worker_id,
    )
    if args.fake:
        from vantum_pipeline.demo.campaign_demo import fake_worker_dialers

        host = args.host or "127.0.0.1"
        factory = fake_worker_dialers(host=host, port=options.port, public_url=args.public_url)
    else:
        factory = worker_phone_dialers(options)
    return asyncio.run(run_worker(options, factory))


def _mic_params(args: argparse.Namespace) -> LocalAudioParams:
    overrides: dict[str, int | str] = {}
    for option in ("input_device", "output_device"):
        device = parse_device(getattr(args, option))
        if device is not None:
            overrides[option] = device
    return LocalAudioParams.from_env(None, **overrides)


def _campaign_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    campaign = commands.add_parser("campaign", help="outbound campaigns: run, status, export, demo")
    actions = campaign.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run",
        help="dial a campaign's prospects under its rules",
        description="Runs the campaign file until every prospect is settled (Ctrl-C: stop dialling, let calls "
        "finish). Keys and Twilio settings come from the environment or .env; --fake runs it against local "
        "stand-ins with simulated prospects instead.",
    )
    run.add_argument("file", type=Path, help="the campaign file (TOML)")
    run.add_argument("--fake", action="store_true", help="simulated services and prospects: no keys, no network")
    run.add_argument("--host", default="0.0.0.0", help="where the Twilio webhook server listens (default 0.0.0.0)")
    run.add_argument("--port", type=int, default=8080, help="its port (default 8080)")
    _redis_option(run, "coordinate: queue the calls for `vantum worker` processes on this Redis")
    run.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="return when nothing is due for this long (retries, callbacks and closed calling hours wait; "
        "default: run until every prospect is settled; 60 with --fake)",
    )
    for sub in (run,):
        sub.add_argument("--plain", action="store_true", help="plain lines instead of the live view")
        sub.add_argument("--log-level", default="WARNING", help="library log level on stderr (default WARNING)")
    status = actions.add_parser("status", help="counts by outcome, spend, calls in progress")
    status.add_argument("target", type=Path, help="the campaign file or its folder")
    export = actions.add_parser("export", help="the campaign's attempts or prospects as CSV or JSON lines")
    export.add_argument("target", type=Path, help="the campaign file or its folder")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--rows", choices=("attempts", "prospects"), default="attempts")
    export.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    demo = actions.add_parser("demo", help="a simulated 21-prospect campaign: every rule and call feature, offline")
    demo.add_argument("--out", type=Path, default=Path("vantum-campaign-demo"), help="where to write its files")
    demo.add_argument("--no-voices", action="store_true", help="prospects and bot speak in tones (faster)")
    demo.add_argument("--plain", action="store_true", help="plain lines instead of the live view")
    demo.add_argument("--log-level", default="ERROR", help="library log level on stderr (default ERROR)")
    _redis_option(status, "also the workers' counters, summed, from this Redis")
    for sub in (status, export):
        sub.add_argument("--fake", action="store_true", help="the simulated run's results (run --fake)")
        sub.add_argument("--log-level", default="WARNING", help="library log level on stderr")


def _redis_option(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--redis [URL]``: absent, None; without a URL, "" (then $REDIS_URL)."""
    parser.add_argument(
        "--redis", metavar="URL", nargs="?", const="", default=None, help=f"{purpose} (no URL: $REDIS_URL)"
    )


def _campaign(args: argparse.Namespace) -> int:
    from vantum_pipeline.campaign.command import export_command, phone_dialer, run_campaign, status_command
    from vantum_pipeline.campaign.config import load_campaign

    redis_url = None
    if getattr(args, "redis", None) is not None:
        from vantum_pipeline.campaign.redis_link import redis_url_from_env

        redis_url = redis_url_from_env(args.redis or None)
    if args.action == "status":
        return status_command(args.target, fake=args.fake, redis_url=redis_url)
    if args.action == "export":
        return export_command(args.target, args.format, args.rows, args.out, fake=args.fake)
    if args.action == "demo":
        from vantum_pipeline.demo.campaign_demo import run_demo

        return asyncio.run(run_demo(args.out, plain=args.plain, voices=not args.no_voices))
    config = load_campaign(args.file)
    if args.fake:
        from vantum_pipeline.demo.campaign_demo import run_fake, run_fake_coordinator

        idle = 60.0 if args.exit_when_idle is None else args.exit_when_idle
        if redis_url is not None:
            return asyncio.run(run_fake_coordinator(config, redis_url, idle_exit=idle, plain=args.plain))
        return asyncio.run(run_fake(config, idle_exit=idle, plain=args.plain))
    if redis_url is not None:
        from vantum_pipeline.campaign.command import reconciling_dialer

        return asyncio.run(
            run_campaign(
                config, reconciling_dialer, idle_exit=args.exit_when_idle, plain=args.plain, redis_url=redis_url
            )
        )

    def dialer(*parts: Any) -> Any:
        return phone_dialer(*parts, host=args.host, port=args.port)

    return asyncio.run(run_campaign(config, dialer, idle_exit=args.exit_when_idle, plain=args.plain))


def _guarded(command: str, run: Callable[[], int], *, on_redis: bool = False) -> int:
    """``run()``'s exit status, or the error as one line: 2 for bad configuration, 1 for another
    library error (or, ``on_redis``, Redis out of reach), 130 for Ctrl-C, 0 for a closed stdout."""
    try:
        return run()
    except ConfigurationError as exc:
        print(f"vantum {command}: {exc}", file=sys.stderr)
        return 2
    except VantumError as exc:
        print(f"vantum {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if on_redis:
            from vantum_pipeline.campaign.redis_link import is_connection_error

            if is_connection_error(exc):
                print(f"vantum {command}: cannot reach Redis: {exc}", file=sys.stderr)
                return 1
        if isinstance(exc, BrokenPipeError):  # `vantum campaign export ... | head`
            return 0
        raise


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Keys (in .env for --mic with cloud services) never reach a log line.
    install_log_redaction(sys.stderr, level=getattr(args, "log_level", "ERROR").upper())
    if args.command == "devices":
        try:
            print(list_devices())
        except ConfigurationError as exc:
            print(f"vantum devices: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "worker":
        return _guarded("worker", lambda: _worker(args), on_redis=True)
    if args.command == "campaign":
        return _guarded("campaign", lambda: _campaign(args))
    if args.command == "demo":
        try:
            if args.mic:
                from vantum_pipeline.demo.local_voice import run_local_voice

                return asyncio.run(run_local_voice(params=_mic_params(args)))
            from vantum_pipeline.demo.summary import run_and_summarize

            return asyncio.run(run_and_summarize(args.out, quiet=args.quiet, interims=not args.no_interims))
        except ConfigurationError as exc:
            print(f"vantum demo: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
