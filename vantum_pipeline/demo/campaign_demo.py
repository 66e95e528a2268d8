"""``vantum campaign demo`` and ``vantum campaign run --fake``: a campaign in a simulated world.

``run_fake(config)`` runs a campaign file against ``SimulatedWorld`` (its
store in ``<folder>-simulated``, never the real campaign's): every
service on its official SDK against a local stand-in, each prospect's phone
behaving as the file's ``[simulation]`` table says::

    [simulation]
    start = "2026-03-10T10:30:00-04:00"   # the simulated clock starts here (optional)
    voices = true                          # espeak-ng voices when installed, else tones
    speech_rate = 1.0                      # > 1: the bot's tones speak faster (short simulated calls)
    default = "books_meeting"              # persona of numbers not listed
    [simulation.personas]
    "+14155550101" = "busy_then_meeting"

The file's ``[transfer] number`` is answered by a simulated rep.

``run_demo(folder)`` writes a 21-prospect campaign that shows every rule
(busy and retried, no answer → unreachable, invalid and failed numbers
removed, a meeting booked, not interested, a callback scheduled through the
model's tool, an opt-out put on the do-not-call list, a prospect talking over
the bot, a DNC number never dialled, prospects outside their calling hours
deferred, a malformed row reported) and every telephony feature (an
answering machine gets the voicemail after its beep, and again on the retry
its rule asks for, from the phrase cache; a fax is hung up on and removed; a
prospect who asks for a person is transferred to the rep; one presses 9 and
lands on the do-not-call list) and runs it: about a minute.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from vantum_pipeline.campaign.clock import Clock, OffsetClock, SystemClock
from vantum_pipeline.campaign.command import reconciling_dialer, run_campaign, simulated, store_figures
from vantum_pipeline.campaign.config import CampaignConfig, load_campaign
from vantum_pipeline.campaign.dispatch import Dialer, EventCallback
from vantum_pipeline.campaign.dnc import DoNotCall
from vantum_pipeline.campaign.figures import PublishedCampaignStats
from vantum_pipeline.campaign.phone import PhoneDialer
from vantum_pipeline.campaign.runner import StoreDoNotCall
from vantum_pipeline.campaign.twilio_rest import rest_settings_from_env
from vantum_pipeline.campaign.worker import DialerFactory as WorkerDialerFactory
from vantum_pipeline.campaign.worker import RedisDoNotCall
from vantum_pipeline.console import ConsoleSettings
from vantum_pipeline.demo.campaign_world import PERSONAS, REP_NUMBER, Persona, SimulatedWorld, WorldDialer
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import load_env, optional_env
from vantum_pipeline.telephony.settings import TwilioSettings

__all__ = ["fake_worker_dialers", "run_demo", "run_fake", "run_fake_coordinator", "write_demo_campaign"]

HEADLINE = """\
vantum campaign demo: 21 simulated prospects, offline (no keys, no network)
  every call goes through the production path: Twilio REST + media stream, Deepgram, OpenAI and Cartesia
  on their SDKs, against local stand-ins; the prospects' phones are scripted (busy, no answer, callbacks,
  an answering machine, a fax, a transfer to a rep, press 9 to be removed, ...)
"""


def _personas(config: CampaignConfig) -> tuple[dict[str, Persona], Persona]:
    simulation = config.simulation
    known = {"start", "voices", "default", "personas", "speech_rate"}
    for key in simulation:
        if key not in known:
            raise config.error(f"simulation.{key}", f"unknown setting (known here: {', '.join(sorted(known))})")
    default_name = simulation.get("default", "books_meeting")
    if default_name not in PERSONAS:
        raise config.error("simulation.default", f"unknown persona {default_name!r} ({', '.join(PERSONAS)})")
    table = simulation.get("personas", {})
    if not isinstance(table, dict):
        raise config.error("simulation.personas", "must be a table of number = persona")
    personas = {}
    for number, name in table.items():
        if name not in PERSONAS:
            raise config.error(f"simulation.personas.{number}", f"unknown persona {name!r} ({', '.join(PERSONAS)})")
        personas[number] = PERSONAS[name]
    rate = simulation.get("speech_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.25 <= rate <= 10:
        raise config.error("simulation.speech_rate", f"must be a number from 0.25 to 10, got {rate!r}")
    return personas, PERSONAS[default_name]


def _speech_rate(config: CampaignConfig) -> float:
    return float(config.simulation.get("speech_rate", 1.0))


def _clock(config: CampaignConfig) -> Clock:
    start = config.simulation.get("start")
    if start is None:
        return SystemClock()
    if isinstance(start, str):
        try:
            start = dt.datetime.fromisoformat(start)
        except ValueError:
            raise config.error("simulation.start", f"must be an ISO date-time with offset, got {start!r}") from None
    if not isinstance(start, dt.datetime) or start.tzinfo is None:
        raise config.error("simulation.start", f"must be a date-time with its UTC offset, got {start!r}")
    return OffsetClock(start)


async def run_fake(
    config: CampaignConfig, *, idle_exit: float | None = 60.0, plain: bool = False, stream: TextIO = sys.stdout
) -> int:
    """Run ``config`` in the simulated world; its store is ``<folder>-simulated``, apart from real runs."""
    config = simulated(config)
    personas, default = _personas(config)
    clock = _clock(config)
    voices = config.simulation.get("voices", True)
    if not isinstance(voices, bool):
        raise config.error("simulation.voices", f"must be true or false, got {voices!r}")

    @contextlib.asynccontextmanager
    async def world_dialer(
        config: CampaignConfig, dnc: StoreDoNotCall, clock: Clock, on_event: EventCallback
    ) -> AsyncIterator[Dialer]:
        used = {**{number: p for number, p in personas.items()}, "(default)": default}
        async with SimulatedWorld(used, voices=voices, speech_rate=_speech_rate(config)) as world:
            if config.features.transfer.number is not None:
                world.add_rep(config.features.transfer.number)
            services = world.services(config.caller_id)
            recordings = config.resolved_folder() / "recordings"
            async with store_figures(config) as figures:
                phone = PhoneDialer(
                    config,
                    services,
                    dnc=dnc,
                    clock=clock,
                    on_event=on_event,
                    port=0,
                    recordings_dir=recordings,
                    console=ConsoleSettings.from_env(),
                    campaign_stats=figures,
                )
                async with phone:
                    phone.server.public_base_url = phone.server.local_url
                    yield WorldDialer(world, phone, personas, default)

    return await run_campaign(
        config, world_dialer, clock=clock, idle_exit=idle_exit, plain=plain, stream=stream, is_simulation=True
    )


_SHARED_TWILIO_NEEDED = (
    "a simulated cluster needs one FakeTwilio that the coordinator and every worker share: start one "
    "(python -m vantum_pipeline.testing twilio --port 8099) and set TWILIO_API_BASE_URL, "
    "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN for all of them"
)


def _shared_twilio(env: Mapping[str, str] | None = None) -> TwilioSettings | None:
    """The FakeTwilio every machine of a simulated cluster shares, when ``TWILIO_API_BASE_URL`` names one."""
    if optional_env(load_env(env), "TWILIO_API_BASE_URL") is None:
        return None
    return rest_settings_from_env("+15005550006", env)


def fake_worker_dialers(
    *, host: str = "127.0.0.1", port: int = 0, public_url: str | None = None, env: Mapping[str, str] | None = None
) -> WorkerDialerFactory:
    """``vantum worker --fake``: each campaign's calls in the simulated world.

    Deepgram, OpenAI and Cartesia are stand-ins in this process. Twilio is the
    FakeTwilio that ``TWILIO_API_BASE_URL`` (with ``TWILIO_ACCOUNT_SID`` and
    ``TWILIO_AUTH_TOKEN``) names, shared with the coordinator (which reconciles
    through it) and the other workers; its phones behave as it was told.
    """
    shared = _shared_twilio(env)
    if shared is None:
        raise ConfigurationError(_SHARED_TWILIO_NEEDED)

    @contextlib.asynccontextmanager
    async def factory(config: CampaignConfig, dnc: DoNotCall) -> AsyncIterator[Dialer]:
        personas, default = _personas(config)
        voices = config.simulation.get("voices", True)
        used = {**personas, "(default)": default}
        world = SimulatedWorld(used, voices=bool(voices), shared_twilio=shared, speech_rate=_speech_rate(config))
        # The coordinator's figures for this worker's console, when it has one.
        figures = PublishedCampaignStats(dnc.worker.redis_url, config.id) if isinstance(dnc, RedisDoNotCall) else None
        try:
            async with world:
                services = world.services(config.caller_id)
                phone = PhoneDialer(
                    config,
                    services,
                    dnc=dnc,
                    clock=_clock(config),
                    host=host,
                    port=port,
                    recordings_dir=simulated(config).resolved_folder() / "recordings",
                    console=ConsoleSettings.from_env(env),
                    campaign_stats=figures,
                )
                async with phone:
                    phone.server.public_base_url = public_url or phone.server.local_url
                    yield WorldDialer(world, phone, personas, default)
        finally:
            if figures is not None:
                await figures.aclose()

    return factory


async def run_fake_coordinator(
    config: CampaignConfig,
    redis_url: str,
    *,
    idle_exit: float | None = 60.0,
    plain: bool = False,
    stream: TextIO = sys.stdout,
    env: Mapping[str, str] | None = None,
) -> int:
    """``vantum campaign run --fake --redis URL``: the simulated campaign's coordinator; its
    workers (``vantum worker --fake``) place the calls on the FakeTwilio all of them share."""
    if _shared_twilio(env) is None:
        raise ConfigurationError(_SHARED_TWILIO_NEEDED)
    _personas(config)  # the [simulation] table is checked before anything starts
    config = simulated(config)
    return await run_campaign(
        config,
        reconciling_dialer,
        clock=_clock(config),
        idle_exit=idle_exit,
        plain=plain,
        stream=stream,
        is_simulation=True,
        redis_url=redis_url,
    )


# ------------------------------------------------------------------ demo

_DEMO_PROSPECTS = (
    # number, name, company, timezone, persona (None: not in the simulation table)
    ("+14155550101", "Jordan Lee", "Acme Logistics", "", "books_meeting"),
    ("+442079460102", "Priya Shah", "Thames Freight", "", "books_meeting"),
    ("+14155550103", "Sam Ortiz", "Beta Foods", "", "talks_over"),
    ("+14155550104", "Kim Novak", "Gamma Retail", "", "not_interested"),
    ("+33170180105", "Louis Martin", "Seine Supply", "", "not_interested"),
    ("+14155550106", "Ana Silva", "Delta Health", "", "callback"),
    ("+14155550107", "Chris Young", "Epsilon Labs", "", "remove_me"),
    ("+14155550108", "Lee Park", "Zeta Motors", "", "busy_then_meeting"),
    ("+14155550109", "Max Weber", "Eta Energy", "", "always_busy"),
    ("+14155550110", "Noor Khan", "Theta Media", "", "no_answer"),
    ("+14155550111", "Ola Berg", "Iota Travel", "", "no_answer_then_not_interested"),
    ("+14155550112", "Tom Reed", "Kappa Tools", "", "failed"),
    ("+15005550001", "Val Cruz", "Lambda Labs", "", None),  # Twilio refuses the number: invalid
    ("+14155550114", "Eve Stone", "Mu Mining", "", None),  # on the DNC file: never dialled
    ("+81355550115", "Yuki Sato", "Nu Robotics", "", None),  # Tokyo: after midnight there
    ("+14155550116", "Dana Fox", "Xi Finance", "America/Los_Angeles", None),  # 7:30 in California
    ("+4930555011", "Jonas Vogel", "Omicron Bau", "", "answering_machine"),
    ("+14155550118", "Rita Gomez", "Pi Pharma", "", "fax"),
    ("+14155550119", "Ben Adler", "Rho Robotics", "", "asks_for_human"),
    ("(415) 555-0120", "Broken Row", "Sigma Co", "", None),  # no country code: reported, skipped
    ("+14155550121", "Ivy Chen", "Tau Textiles", "", "presses_9"),
)


def _coming_tuesday_morning() -> dt.datetime:
    zone = ZoneInfo("America/New_York")
    today = dt.datetime.now(zone).date()
    tuesday = today + dt.timedelta(days=(1 - today.weekday()) % 7)
    return dt.datetime.combine(tuesday, dt.time(10, 30), tzinfo=zone)


def write_demo_campaign(folder: Path, *, voices: bool = True) -> Path:
    """Write the demo's campaign.toml, prospects.csv and dnc.txt into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["number,name,company,timezone"]
    personas = []
    for number, name, company, timezone, persona in _DEMO_PROSPECTS:
        rows.append(f"{number},{name},{company},{timezone}")
        if persona is not None:
            personas.append(f'"{number}" = "{persona}"')
    (folder / "prospects.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "dnc.txt").write_text("# numbers that must never be called\n+1 415 555 0114\n", encoding="utf-8")
    start = _coming_tuesday_morning().isoformat()
    campaign = f"""\
[campaign]
name = "Demo outreach"
id = "demo"
caller_id = "+15005550006"
prospects = "prospects.csv"
dnc_file = "dnc.txt"
folder = "run"
default_timezone = "America/New_York"

[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "Vantum"

[rules]
max_concurrent_calls = 6
calls_per_second = 1.0
budget_usd = 5.0

[rules.outcomes]
busy = {{ action = "retry", delay_seconds = 15, max_attempts = 3 }}
no_answer = {{ action = "retry", delay_seconds = 15, max_attempts = 2 }}
voicemail_left = {{ action = "retry", delay_seconds = 15, max_attempts = 2, then = "done" }}

[amd]
while_detecting = "wait"

[voicemail]
message = "Hi {{prospect_name}}, this is {{agent_name}} from {{company_name}}. I'll try you again soon."

[transfer]
number = "{REP_NUMBER}"
timeout = 15
on_no_answer = "resume"

[keypad]
opt_out = "9"

[simulation]
start = "{start}"
voices = {"true" if voices else "false"}
default = "no_answer"

[simulation.personas]
{chr(10).join(personas)}
"""
    path = folder / "campaign.toml"
    path.write_text(campaign, encoding="utf-8")
    return path


async def run_demo(folder: Path, *, plain: bool = False, voices: bool = True, stream: TextIO = sys.stdout) -> int:
    print(HEADLINE, file=stream, flush=True)
    path = write_demo_campaign(folder, voices=voices)
    config = load_campaign(path)
    local = _clock(config).now().astimezone(ZoneInfo(config.default_timezone))
    print(f"simulated clock: {local:%A %Y-%m-%d %H:%M} in {config.default_timezone}; files in {folder}\n", file=stream)
    return await run_fake(config, idle_exit=30.0, plain=plain, stream=stream)
