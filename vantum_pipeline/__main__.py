"""The ``vantum`` command (also ``python -m vantum_pipeline``).

vantum demo            a whole simulated outbound sales call, offline: no keys, no network
vantum demo --mic      talk to the bot yourself, through your microphone and speaker
vantum devices         the sound devices --input-device / --output-device can name
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from vantum_pipeline.errors import ConfigurationError
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
    return parser


def _mic_params(args: argparse.Namespace) -> LocalAudioParams:
    overrides: dict[str, int | str] = {}
    for option in ("input_device", "output_device"):
        device = parse_device(getattr(args, option))
        if device is not None:
            overrides[option] = device
    return LocalAudioParams.from_env(None, **overrides)


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
