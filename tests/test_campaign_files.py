"""The campaign file, the prospects CSV and the DNC file: valid input accepted, every error names its line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from vantum_pipeline.campaign.config import CampaignFileError, load_campaign, parse_campaign
from vantum_pipeline.campaign.dnc import read_dnc_file
from vantum_pipeline.campaign.prospects import normalize_number, parse_prospects
from vantum_pipeline.campaign.rules import Action, ProspectState
from vantum_pipeline.campaign.runner import prepare_campaign
from vantum_pipeline.campaign.store import CampaignStore
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.processors.context import SALES_PROMPT

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "campaign" / "campaign.toml"

MINIMAL = """\
[campaign]
name = "Spring outreach"
caller_id = "+15005550006"
prospects = "prospects.csv"
"""


def test_minimal_file_gets_the_product_defaults(tmp_path: Path) -> None:
    config = parse_campaign(MINIMAL, tmp_path / "c.toml")
    assert config.id == "spring-outreach"
    assert config.prospects == tmp_path / "prospects.csv"
    assert config.max_concurrent_calls == 5 and config.calls_per_second == 1.0
    assert config.calling_hours.window_text() == "09:00-20:00 mon,tue,wed,thu,fri"
    assert config.prompt is SALES_PROMPT
    assert config.outcome_rules["busy"].action is Action.RETRY
    assert config.outcome_rules["failed"].action is Action.REMOVE
    assert config.outcome_rules["do_not_call"].action is Action.DNC
    assert config.resolved_folder() == tmp_path / "runs" / "spring-outreach"


def test_a_window_may_end_at_midnight(tmp_path: Path) -> None:
    # "24:00": to the end of the day. "23:59" left the day's last minute out, and a campaign meant to
    # run around the clock stopped there (in New York, 04:59-05:00 UTC in winter).
    text = MINIMAL + '\n[rules.calling_hours]\nstart = "00:00"\nend = "24:00"\ndays = ["sat"]\n'
    hours = parse_campaign(text, tmp_path / "c.toml").calling_hours
    assert hours.window_text() == "00:00-24:00 sat"
    new_york = ZoneInfo("America/New_York")
    saturday = dt.datetime(2026, 12, 5, tzinfo=new_york)
    for at in (saturday, saturday.replace(hour=23, minute=59, second=59, microsecond=999_999)):
        assert hours.allows(at, new_york), at
    assert not hours.allows(saturday + dt.timedelta(days=1), new_york)  # Sunday midnight: the next day
    assert not hours.allows(saturday - dt.timedelta(microseconds=1), new_york)  # Friday's last instant
    assert hours.next_opening(saturday - dt.timedelta(hours=1), new_york) == saturday
    # Only the end may be midnight, and 24:30 is no time.
    for bad in ('start = "24:00"', 'end = "24:30"'):
        with pytest.raises(CampaignFileError):
            parse_campaign(MINIMAL + f"\n[rules.calling_hours]\n{bad}\n", tmp_path / "c.toml")


def test_the_example_file_is_valid() -> None:
    config = load_campaign(EXAMPLE)
    assert config.outcome_rules["busy"].delay == 15 * 60
    assert config.outcome_rules["voicemail_left"].then is ProspectState.DONE
    assert config.services["openai"]["model"] == "gpt-4o"
    assert "industry" in config.prompt.fields


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (MINIMAL + "\n[rules]\nmax_concurrent_calls = 0\n", 7, "rules.max_concurrent_calls"),
        (MINIMAL + '\n[rules]\ncalls_per_second = "fast"\n', 7, "rules.calls_per_second"),
        (MINIMAL + '\n[rules.calling_hours]\nstart = "9 am"\n', 7, "rules.calling_hours.start"),
        (MINIMAL + '\n[rules.calling_hours]\ndays = ["mon", "funday"]\n', 7, "rules.calling_hours.days"),
        (MINIMAL + '\n[rules.calling_hours]\nstart = "20:00"\nend = "09:00"\n', 6, "rules.calling_hours"),
        (MINIMAL + '\n[rules.outcomes]\nbusy = { action = "later" }\n', 7, "rules.outcomes.busy.action"),
        (MINIMAL + '\n[rules.outcomes.busy]\nthen = "pending"\n', 7, "rules.outcomes.busy.then"),
        (MINIMAL + "\n[rules]\nmax_concurent_calls = 3\n", 7, "rules.max_concurent_calls"),
        (MINIMAL.replace("+15005550006", "5550006"), 3, "campaign.caller_id"),
        (MINIMAL + 'default_timezone = "Mars/Olympus"\n', 5, "campaign.default_timezone"),
        (MINIMAL + '\n[prompt]\ntemplate = "Hi {name.upper}"\n', 7, "prompt.template"),
        (MINIMAL.replace('name = "Spring outreach"\n', ""), 1, "campaign.name"),
    ],
)
def test_bad_settings_name_field_and_line(tmp_path: Path, text: str, line: int, field: str) -> None:
    with pytest.raises(CampaignFileError) as caught:
        parse_campaign(text, tmp_path / "c.toml")
    assert caught.value.field == field
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{tmp_path / 'c.toml'}:{line}: {field}:")


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(CampaignFileError) as caught:
        parse_campaign(MINIMAL + "\n[rules]\nmax_concurrent_calls = = 3\n", tmp_path / "c.toml")
    assert caught.value.line == 7
    assert "not valid TOML" in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignFileError, match="cannot read the campaign file"):
        load_campaign(tmp_path / "nope.toml")


def test_csv_rows_validated_on_import_bad_ones_reported_by_line() -> None:
    text = (
        "Number,Name,Company,Timezone,Industry\n"
        "+1 (415) 555-0101,Jordan,Acme,,logistics\n"
        "\n"
        "415-555-0102,No Plus,Beta,,food\n"  # line 4
        "+14155550103,Bad Zone,Gamma,Mars/Olympus,retail\n"
        "+44 20 7946 0104,Priya,Thames,,freight\n"
        "+1 415 555 0101,Again,Acme,,logistics\n"  # duplicate of line 2
        ",No Number,Delta,,x\n"
        "+14155550105,Too,Many,,cells,here\n"
        "+819012345678,Yuki,Nu,,robots\n"
    )
    result = parse_prospects(text, source="p.csv", default_timezone="America/Chicago")
    assert [p.number for p in result.prospects] == ["+14155550101", "+442079460104", "+819012345678"]
    assert [p.line for p in result.prospects] == [2, 6, 10]
    by_line = {row.line: row.reason for row in result.rejected}
    assert sorted(by_line) == [4, 5, 7, 8, 9]
    assert "not E.164" in by_line[4]
    assert "Mars/Olympus" in by_line[5]
    assert "repeats line 2" in by_line[7]
    assert "no number" in by_line[8]
    assert "cells" in by_line[9]
    jordan, priya, yuki = result.prospects
    assert jordan.timezone == "America/Chicago"  # +1 spans zones: the campaign default
    assert priya.timezone == "Europe/London" and yuki.timezone == "Asia/Tokyo"  # from the country code
    assert jordan.prompt_variables() == {"prospect_name": "Jordan", "prospect_company": "Acme", "industry": "logistics"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("name,company\nJo,Acme\n", "no 'number' column"),
        ("number,na me\n+14155550101,x\n", "cannot be a prompt variable"),
        ('number,name\n+14155550101,"unterminated\n', "malformed CSV"),
    ],
)
def test_unusable_csv_is_an_error(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_prospects(text, source="p.csv", default_timezone="UTC")


def test_numbers_are_normalized() -> None:
    assert normalize_number(" +1 (415) 555.0101 ") == "+14155550101"
    with pytest.raises(ConfigurationError):
        normalize_number("4155550101")


def test_dnc_file_normalized_bad_lines_reported(tmp_path: Path) -> None:
    path = tmp_path / "dnc.txt"
    path.write_text("# comment\n+1 415 555 0101\n\nnot a number\n+44 20 7946 0104  # asked twice\n")
    result = read_dnc_file(path)
    assert result.numbers == ["+14155550101", "+442079460104"]
    assert len(result.rejected) == 1 and ":4:" in result.rejected[0]


def test_missing_prompt_variable_stops_before_any_call(tmp_path: Path) -> None:
    (tmp_path / "prospects.csv").write_text("number,name,company\n+14155550101,Jordan,Acme\n+14155550102,,Beta\n")
    text = MINIMAL + '\n[prompt]\ntemplate = "Hi {prospect_name} from {prospect_company}, {agent_name} here"\n'
    text += '[prompt.variables]\nagent_name = "Alex"\n'
    config = parse_campaign(text, tmp_path / "c.toml")
    with CampaignStore(tmp_path / "store.sqlite") as store:
        with pytest.raises(ConfigurationError, match=r"line 3 \(\+14155550102\): prospect_name"):
            prepare_campaign(config, store)
        assert store.campaigns() == []  # nothing imported
