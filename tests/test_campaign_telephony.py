"""A campaign with the sales-call features, whole calls on the stand-ins: answering machines get the
campaign's voicemail (and its retry rule applies), a fax is removed, a prospect who asks for a person is
transferred to the rep, opt-outs by the model's tool and by the keypad land in the campaign's DNC table
and are never dialled again (by this campaign, another one on the same store, or the Twilio server);
the new sections of the campaign file are validated with their line."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.twilio_scripted import held_loop
from vantum_pipeline.campaign.clock import Clock, OffsetClock
from vantum_pipeline.campaign.command import run_campaign
from vantum_pipeline.campaign.config import CampaignConfig, CampaignFileError, load_campaign, parse_campaign
from vantum_pipeline.campaign.dispatch import CallJob, Dialer, EventCallback, dialer_overloaded
from vantum_pipeline.campaign.phone import PhoneDialer
from vantum_pipeline.campaign.runner import StoreDoNotCall, prepare_campaign
from vantum_pipeline.campaign.store import AttemptRow, CampaignStore
from vantum_pipeline.campaign.twilio_rest import ConfirmingDialer
from vantum_pipeline.demo.campaign_world import PERSONAS, REP_NUMBER, SimulatedWorld, WorldDialer
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.observability.loop import LoopMonitor
from vantum_pipeline.telephony.settings import AMD_START_AND_YIELD, TRANSFER_END

pytestmark = pytest.mark.timeout(300)

NY = ZoneInfo("America/New_York")
START = dt.datetime(2026, 3, 17, 10, 30, tzinfo=NY)  # a Tuesday
MACHINE, FAX, HUMAN, REMOVE_ME, PRESSES_9 = (f"+1415555020{i}" for i in range(1, 6))
PEOPLE = {
    MACHINE: ("Morgan", "answering_machine"),
    FAX: ("Faxon", "fax"),
    HUMAN: ("Hugo", "asks_for_human"),
    REMOVE_ME: ("Remy", "remove_me"),
    PRESSES_9: ("Nina", "presses_9"),
}
VOICEMAIL = "Hi {prospect_name}, this is {agent_name} from {company_name}. We will try you again."

FEATURES = f"""
[voicemail]
message = "{VOICEMAIL}"

[transfer]
number = "{REP_NUMBER}"
timeout = 10

[keypad]
opt_out = "9"
"""


def write_campaign(folder: Path, people: dict[str, tuple[str, str]], *, campaign_id: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{number},{name},Co {name}\n" for number, (name, _) in people.items())
    (folder / f"{campaign_id}.csv").write_text("number,name,company\n" + rows)
    path = folder / f"{campaign_id}.toml"
    path.write_text(
        f"""
[campaign]
name = "Telephony {campaign_id}"
id = "{campaign_id}"
caller_id = "+15005550006"
prospects = "{campaign_id}.csv"
folder = "run"
record_calls = false

[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "Vantum"

[rules]
max_concurrent_calls = 5
calls_per_second = 4

[rules.outcomes]
voicemail_left = {{ action = "retry", delay_seconds = 1, max_attempts = 2, then = "done" }}
{extra}
"""
    )
    return path


@contextlib.asynccontextmanager
async def world_dialers(
    personas: dict[str, str], handles: dict[str, Any], *, rep_outcome: str | None = None, rep_seconds: float = 4.0
) -> AsyncIterator[Any]:
    """A dialer factory like ``run --fake``'s that keeps the world and the dialer for assertions."""
    by_number = {number: PERSONAS[name] for number, name in personas.items()}

    @contextlib.asynccontextmanager
    async def factory(
        config: CampaignConfig, dnc: StoreDoNotCall, clock: Clock, on_event: EventCallback
    ) -> AsyncIterator[Dialer]:
        async with SimulatedWorld(by_number, voices=False) as world:
            world.twilio.behave(REP_NUMBER, outcome=rep_outcome, ring_seconds=0.3, max_seconds=rep_seconds)
            phone = PhoneDialer(
                config, world.services(config.caller_id), dnc=dnc, clock=clock, on_event=on_event, port=0
            )
            async with phone:
                phone.server.public_base_url = phone.server.local_url
                handles.update(world=world, phone=phone)
                yield WorldDialer(world, phone, by_number)

    yield factory


async def run(config: CampaignConfig, factory: Any) -> str:
    out = io.StringIO()
    code = await run_campaign(config, factory, clock=OffsetClock(START), idle_exit=20.0, plain=True, stream=out)
    assert code == 0
    return out.getvalue()


def creates_to(world: SimulatedWorld, number: str) -> list[Any]:
    return [call for call in world.twilio.calls.values() if call.to == number]


async def test_a_campaign_leaves_voicemails_removes_faxes_transfers_and_honours_opt_outs(tmp_path: Path) -> None:
    config = load_campaign(write_campaign(tmp_path, PEOPLE, campaign_id="first", extra=FEATURES))
    assert config.features.amd.mode == "DetectMessageEnd" and config.features.opt_out.keypad_digit == "9"
    handles: dict[str, Any] = {}
    async with world_dialers({n: p for n, (_, p) in PEOPLE.items()}, handles) as factory:
        text = await run(config, factory)
    world: SimulatedWorld = handles["world"]
    phone: PhoneDialer = handles["phone"]

    with CampaignStore(tmp_path / "run" / "campaign.sqlite") as store:
        prospects = {p["id"]: p for p in store.prospects("first")}
        attempts = {(a["prospect_id"], a["attempt"]): a for a in store.attempts("first")}
        with contextlib.closing(sqlite3.connect(tmp_path / "run" / "campaign.sqlite")) as db:
            dnc_sources = dict(db.execute("SELECT number, source FROM dnc").fetchall())

        def final(number: str) -> tuple[str, str | None, int]:
            row = prospects[number]
            return row["state"], row["result"], row["attempts"]

        # The machine got the voicemail twice: the campaign's retry rule for voicemail_left.
        assert final(MACHINE) == ("done", "voicemail_left", 2)
        for attempt in (1, 2):
            row = attempts[(MACHINE, attempt)]
            assert row["outcome"] == "voicemail_left" and row["answered_by"] == "machine_end_beep"
            assert "voicemail left" in row["notes"]
        assert "voicemail_left 1/2: retry" in text and "voicemail_left 2x: done" in text
        # A fax is hung up on and removed, per its rule.
        assert final(FAX) == ("removed", "fax", 1)
        assert attempts[(FAX, 1)]["answered_by"] == "fax"
        # Asked for a person: transferred to the rep.
        assert final(HUMAN) == ("done", "transferred", 1)
        assert "the rep answered" in attempts[(HUMAN, 1)]["notes"]
        # Opt-outs, by the model's tool and by the keypad, in the campaign's DNC table.
        assert final(REMOVE_ME) == ("dnc", "opted_out", 1)
        assert final(PRESSES_9) == ("dnc", "opted_out", 1)
        assert "opted out by model" in attempts[(REMOVE_ME, 1)]["notes"]
        assert "opted out by keypad" in attempts[(PRESSES_9, 1)]["notes"]
        assert dnc_sources[REMOVE_ME].startswith("model opt-out on call CA")
        assert dnc_sources[PRESSES_9].startswith("keypad opt-out on call CA")
        transcript = json.loads(attempts[(REMOVE_ME, 1)]["transcript"])
        assert transcript[-1]["role"] == "assistant" and "removed your number" in transcript[-1]["text"]

    # On the line: calls placed with asynchronous AMD; the machine heard nothing before its beep, then
    # the whole message; the fax heard nothing; the rep was dialled with the campaign's settings.
    machine_calls = creates_to(world, MACHINE)
    assert len(machine_calls) == 2
    for call in machine_calls:
        assert call.params["MachineDetection"] == ["DetectMessageEnd"] and call.params["AsyncAmd"] == ["true"]
        callee = call.callee
        assert callee is not None and callee.greeting_ended_at is not None
        assert callee.heard_seconds(0, callee.greeting_ended_at) == 0.0
        assert callee.heard_seconds(callee.greeting_ended_at) > 2.0
        assert callee.end_reason == "api hang-up"
    (fax_call,) = creates_to(world, FAX)
    assert fax_call.callee is not None and fax_call.callee.heard_seconds() == 0.0
    (human_call,) = creates_to(world, HUMAN)
    (dial,) = human_call.dials
    assert dial.to == REP_NUMBER and dial.caller_id == "+15005550006" and dial.status == "completed"
    assert human_call.callees[0].end_reason == "redirected"
    # The voicemail was synthesized once and played from the shared cache on the retry.
    voicemail_text = "Hi Morgan, this is Alex from Vantum. We will try you again."
    synthesized = [t for t in world.cartesia.transcripts.values() if "We will try you again" in t]
    assert [t.strip() for t in synthesized] == [voicemail_text]
    assert phone.tts_cache.hits >= 1
    assert "telephony      voicemail left 2, machine 0, fax 1, transferred 1" in text
    assert "2 added by a call's opt-out" in text

    # A second campaign on the same store never dials the opted-out numbers.
    second_people = {REMOVE_ME: ("Remy", "books_meeting"), PRESSES_9: ("Nina", "books_meeting"), FAX: ("F", "fax")}
    second = load_campaign(write_campaign(tmp_path, second_people, campaign_id="second", extra=FEATURES))
    handles.clear()
    async with world_dialers({n: p for n, (_, p) in second_people.items()}, handles) as factory:
        text = await run(second, factory)
    assert creates_to(handles["world"], REMOVE_ME) == [] and creates_to(handles["world"], PRESSES_9) == []
    with CampaignStore(tmp_path / "run" / "campaign.sqlite") as store:
        states = {p["id"]: (p["state"], p["result"], p["attempts"]) for p in store.prospects("second")}
    assert states[REMOVE_ME] == ("dnc", "do_not_call_list", 0)
    assert states[PRESSES_9] == ("dnc", "do_not_call_list", 0)
    assert states[FAX] == ("removed", "fax", 1)  # the fax is not on the DNC list: this campaign dials it

    # And the Twilio server refuses it too, should anything ask it to dial an opted-out number.
    with CampaignStore(tmp_path / "run" / "campaign.sqlite") as store:
        dnc = StoreDoNotCall(store)
        async with SimulatedWorld({}, voices=False) as world:
            dialer = PhoneDialer(second, world.services(second.caller_id), dnc=dnc, clock=OffsetClock(START), port=0)
            async with dialer:
                dialer.server.public_base_url = dialer.server.local_url
                attempt = AttemptRow("second", PRESSES_9, 9, PRESSES_9, "dialing", None, 0.0)

                async def placed(_sid: str) -> None:
                    raise AssertionError("an opted-out number was placed")

                record = await dialer.call(CallJob(attempt, "Nina"), placed)
            assert record.outcome == "do_not_call_list" and record.call_sid is None
            assert creates_to(world, PRESSES_9) == []


async def test_the_phone_dialer_is_overloaded_while_its_servers_loop_runs_late(tmp_path: Path) -> None:
    config = load_campaign(write_campaign(tmp_path, {HUMAN: ("Hugo", "books_meeting")}, campaign_id="late"))
    with CampaignStore(tmp_path / "store.sqlite") as store:
        async with SimulatedWorld({}, voices=False) as world:
            dialer = PhoneDialer(
                config, world.services(config.caller_id), dnc=StoreDoNotCall(store), clock=OffsetClock(START), port=0
            )
            dialer.server.loop_monitor = LoopMonitor(interval=0.01, window=2.0, warn_at=None, min_samples=3)
            confirming = ConfirmingDialer(dialer, lambda job: _no_sids())
            async with dialer:
                assert not dialer.overloaded() and not dialer_overloaded(confirming)
                async with held_loop(0.15):  # far past overload_lag (0.1 s)
                    async with asyncio.timeout(20):
                        while not dialer.overloaded():  # noqa: ASYNC110 - the monitor's figures have no event
                            await asyncio.sleep(0.05)
                    assert dialer_overloaded(confirming)
                    dialer.server.overload_lag = None  # the application turned the guard off
                    assert not dialer.overloaded()


async def _no_sids() -> set[str]:
    return set()


async def test_a_rep_who_does_not_answer_ends_the_call_politely_and_the_prospect_is_retried(tmp_path: Path) -> None:
    people = {HUMAN: ("Hugo", "asks_for_human")}
    extra = FEATURES.replace("timeout = 10", 'timeout = 10\non_no_answer = "end"')
    config = load_campaign(write_campaign(tmp_path, people, campaign_id="norep", extra=extra))
    assert config.features.transfer.on_no_answer == TRANSFER_END
    handles: dict[str, Any] = {}
    async with world_dialers({HUMAN: "asks_for_human"}, handles, rep_outcome="busy") as factory:
        await run(config, factory)
    (call,) = creates_to(handles["world"], HUMAN)
    assert call.dials[0].status == "busy"
    assert call.said == [config.features.transfer.end_line]
    with CampaignStore(tmp_path / "run" / "campaign.sqlite") as store:
        (prospect,) = store.prospects("norep")
        (attempt,) = store.attempts("norep")
    assert attempt["outcome"] == "transfer_unanswered" and "the rep did not answer" in attempt["notes"]
    assert prospect["state"] == "pending"  # its rule: try again in an hour
    assert prospect["next_at"] == pytest.approx(START.timestamp() + 3600, abs=60)


async def test_start_and_yield_the_bot_stops_for_the_machine_and_leaves_the_voicemail(tmp_path: Path) -> None:
    people = {MACHINE: ("Morgan", "answering_machine")}
    extra = FEATURES + '\n[amd]\nwhile_detecting = "start_and_yield"\ndetection = "Enable"\n'
    config = load_campaign(write_campaign(tmp_path, people, campaign_id="yield", extra=extra))
    assert config.features.amd.while_detecting == AMD_START_AND_YIELD
    handles: dict[str, Any] = {}
    async with world_dialers({MACHINE: "answering_machine"}, handles) as factory:
        await run(config, factory)
    first, *_ = creates_to(handles["world"], MACHINE)
    assert first.params["MachineDetection"] == ["Enable"]
    assert first.amd_callbacks[0][0]["AnsweredBy"] == "machine_start"
    callee = first.callee
    assert callee is not None and callee.greeting_ended_at is not None
    assert callee.clears and callee.clears[0] < callee.greeting_ended_at  # the bot had started: it stopped
    assert callee.heard_seconds(callee.greeting_ended_at) > 2.0  # then the message, after the beep
    with CampaignStore(tmp_path / "run" / "campaign.sqlite") as store:
        outcomes = [a["outcome"] for a in store.attempts("yield")]
    assert outcomes == ["voicemail_left", "voicemail_left"]


async def test_back_from_an_unanswered_transfer_the_bot_goes_on_with_the_same_conversation(tmp_path: Path) -> None:
    people = {HUMAN: ("Hugo", "asks_for_human")}
    config = load_campaign(write_campaign(tmp_path, people, campaign_id="resume", extra=FEATURES))
    handles: dict[str, Any] = {}
    async with world_dialers({HUMAN: "asks_for_human"}, handles, rep_outcome="no-answer") as factory:
        await run(config, factory)
    (call,) = creates_to(handles["world"], HUMAN)
    assert call.dials[0].status == "no-answer" and len(call.callees) == 2
    fallback = config.features.transfer.fallback_line
    with CampaignStore(tmp_path / "run" / "campaign.sqlite") as store:
        (attempt,) = store.attempts("resume")
    transcript = json.loads(attempt["transcript"])
    said = [turn["text"] for turn in transcript if turn["role"] == "assistant"]
    # Both legs in one record: the pitch, the handover, then the fallback line on the call that came back.
    assert said[-2] == config.features.transfer.handover_line and said[-1] == fallback
    assert any("Can I speak to a real person" in turn["text"] for turn in transcript if turn["role"] == "user")
    assert attempt["outcome"] == "transfer_unanswered" and "the rep did not answer" in attempt["notes"]
    assert json.loads(attempt["cost_by_service"])["cartesia"] > 0


async def test_a_call_with_the_rep_outlives_the_campaigns_call_limit_without_being_hung_up(tmp_path: Path) -> None:
    people = {HUMAN: ("Hugo", "asks_for_human")}
    path = write_campaign(tmp_path, people, campaign_id="long", extra=FEATURES)
    path.write_text(path.read_text().replace("calls_per_second = 4", "calls_per_second = 4\nmax_call_seconds = 1"))
    config = load_campaign(path)
    handles: dict[str, Any] = {}
    # The campaign gives up on a call 1 + 5 (ring) + 30 s after placing it; the rep talks 25 s from ~30 s.
    async with world_dialers({HUMAN: "asks_for_human"}, handles, rep_seconds=25.0) as factory:
        await run(config, factory)
    (call,) = creates_to(handles["world"], HUMAN)
    (dial,) = call.dials
    assert dial.status == "completed" and dial.answered_at is not None
    assert call.ended_at is not None and call.ended_at - dial.answered_at >= 24.0  # the rep hung up, not us
    assert call.hangup_requested_at is None
    with CampaignStore(tmp_path / "run" / "campaign.sqlite") as store:
        (attempt,) = store.attempts("long")
    assert attempt["outcome"] == "transferred" and attempt["duration"] > 36


# ------------------------------------------------------------ the file

MINIMAL = """\
[campaign]
name = "Spring outreach"
caller_id = "+15005550006"
prospects = "prospects.csv"
"""


def test_the_feature_sections_default_to_amd_without_voicemail_transfer_or_keypad(tmp_path: Path) -> None:
    features = parse_campaign(MINIMAL, tmp_path / "c.toml").features
    assert features.amd.mode == "DetectMessageEnd" and features.amd.while_detecting == "wait"
    assert features.amd.voicemail_message is None
    assert not features.transfer.enabled and features.opt_out.keypad_digit is None
    assert features.keypad_bindings() == {}


def test_the_feature_sections_are_read(tmp_path: Path) -> None:
    (tmp_path / "vm.txt").write_text("Hi {prospect_name}, call us back.\n")
    text = (
        MINIMAL
        + """
[amd]
while_detecting = "start_and_yield"
detection = "Enable"
twilio_timeout = 20

[voicemail]
message_file = "vm.txt"

[transfer]
number = "+14155550199"
caller_id = "+14155550100"
timeout = 25
on_no_answer = "end"

[keypad]
opt_out = "9"
inter_digit_timeout = 1.5

[keypad.bindings]
"0" = "transfer"
"*" = "repeat"
"""
    )
    config = parse_campaign(text, tmp_path / "c.toml")
    amd, transfer = config.features.amd, config.features.transfer
    assert (amd.mode, amd.while_detecting, amd.machine_detection_timeout) == ("Enable", AMD_START_AND_YIELD, 20)
    assert amd.voicemail_message == "Hi {prospect_name}, call us back."
    assert config.voicemail is not None and config.voicemail.fields == {"prospect_name"}
    assert (transfer.number, transfer.caller_id, transfer.timeout, transfer.on_no_answer) == (
        "+14155550199",
        "+14155550100",
        25,
        "end",
    )
    assert config.features.keypad_bindings() == {"0": "transfer", "*": "repeat", "9": "opt_out"}
    assert config.features.keypad.inter_digit_timeout == 1.5


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ('\n[amd]\nwhile_detecting = "talk"\n', 7, "amd.while_detecting"),
        ('\n[amd]\ndetection = "Maybe"\n', 7, "amd.detection"),
        ("\n[amd]\ntwilio_timeout = 90\n", 7, "amd.twilio_timeout"),
        ("\n[amd]\nenabled = 1\n", 7, "amd.enabled"),
        ("\n[amd]\nbeep = true\n", 7, "amd.beep"),
        ('\n[voicemail]\nmessage = "Hi {name.upper}"\n', 7, "voicemail.message"),
        ('\n[voicemail]\nmessage = "  "\n', 7, "voicemail.message"),
        ('\n[amd]\nenabled = false\n\n[voicemail]\nmessage = "Hi"\n', 10, "voicemail.message"),
        ('\n[voicemail]\nmessage_file = "nope.txt"\n', 7, "voicemail.message_file"),
        ('\n[transfer]\nnumber = "555-0199"\n', 7, "transfer.number"),
        ("\n[transfer]\ntimeout = 20\n", 6, "transfer.number"),  # missing: the table's line
        ('\n[transfer]\nnumber = "+14155550199"\ntimeout = 2\n', 8, "transfer.timeout"),
        ('\n[transfer]\nnumber = "+14155550199"\non_no_answer = "voicemail"\n', 8, "transfer.on_no_answer"),
        ('\n[transfer]\nnumber = "+14155550199"\nhandover_line = ""\n', 8, "transfer.handover_line"),
        ('\n[keypad]\nopt_out = "99"\n', 7, "keypad.opt_out"),
        ('\n[keypad.bindings]\n"5" = "dance"\n', 7, "keypad.bindings.5"),
        ('\n[keypad.bindings]\n"0" = "transfer"\n', 7, "keypad.bindings.0"),
        ('\n[keypad]\nopt_out = "9"\n\n[keypad.bindings]\n"9" = "repeat"\n', 10, "keypad.bindings.9"),
        ('\n[keypad.bindings]\n"1x" = "repeat"\n', 7, "keypad.bindings.1x"),
    ],
)
def test_bad_feature_settings_name_field_and_line(tmp_path: Path, text: str, line: int, field: str) -> None:
    with pytest.raises(CampaignFileError) as caught:
        parse_campaign(MINIMAL + text, tmp_path / "c.toml")
    assert caught.value.field == field
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{tmp_path / 'c.toml'}:{line}: {field}:")


def test_a_voicemail_variable_a_prospect_lacks_stops_the_campaign_before_any_call(tmp_path: Path) -> None:
    (tmp_path / "prospects.csv").write_text(
        "number,name,company,city\n+14155550101,Jordan,Acme,Austin\n+14155550102,Sam,Beta,\n"
    )
    text = MINIMAL + '\n[voicemail]\nmessage = "Hi {prospect_name} in {city}, call us back."\n'
    text += '\n[prompt.variables]\nagent_name = "Alex"\ncompany_name = "Vantum"\nproduct_name = "Vantum"\n'
    config = parse_campaign(text, tmp_path / "c.toml")
    with CampaignStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(ConfigurationError, match=r"the voicemail message needs .*line 3 \(\+14155550102\): city"):
            prepare_campaign(config, store)
        assert store.campaigns() == []


def test_the_readme_feature_tables_are_a_valid_campaign_file(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Running a campaign", 1)[1]
    (block,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    features = parse_campaign(MINIMAL + block, tmp_path / "c.toml").features
    assert features.transfer.number == "+14155550199" and features.opt_out.keypad_digit == "9"
    assert features.amd.voicemail_message is not None and features.keypad_bindings()["0"] == "transfer"
