"""Run one fake service standalone: ``python -m vantum_pipeline.testing deepgram --port 8080``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import Any

FAKES = {
    "deepgram": ("vantum_pipeline.testing.deepgram", "FakeDeepgram"),
    "openai": ("vantum_pipeline.testing.openai", "FakeOpenAI"),
    "cartesia": ("vantum_pipeline.testing.cartesia", "FakeCartesia"),
    "twilio": ("vantum_pipeline.testing.twilio", "FakeTwilio"),
}

URL_ATTRIBUTES = ("base_url", "http_url", "ws_url", "webhook_url")


async def serve(service: str, port: int, host: str) -> None:
    module_name, class_name = FAKES[service]
    fake_class: Any = getattr(importlib.import_module(module_name), class_name)
    async with fake_class(host=host, port=port) as fake:
        urls = {name: getattr(fake, name) for name in URL_ATTRIBUTES if isinstance(getattr(fake, name, None), str)}
        print(f"{class_name} listening:", ", ".join(f"{k}={v}" for k, v in urls.items()) or f"port {port}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vantum_pipeline.testing", description=__doc__)
    parser.add_argument("service", choices=sorted(FAKES))
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.service, args.port, args.host))
    except KeyboardInterrupt:
        pass
    except ImportError as exc:
        print(f"cannot run the {args.service} fake: {exc} (install vantum-pipeline[{args.service}])", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
