"""Settings: the environment and .env, missing-key messages, Secret, .env.example."""

import pickle
import re
from pathlib import Path

import pytest

from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import (
    Secret,
    env_bool,
    env_float,
    env_int,
    load_env,
    optional_env,
    require_env,
    require_secret,
)

ROOT = Path(__file__).resolve().parent.parent


def test_an_explicit_mapping_is_used_alone(monkeypatch):
    monkeypatch.setenv("DEEPGRAM_API_KEY", "from-the-process")
    env = load_env({"OPENAI_API_KEY": "from-the-mapping"})
    assert dict(env) == {"OPENAI_API_KEY": "from-the-mapping"}


def test_process_environment_then_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "# comment\nDEEPGRAM_API_KEY=dg-from-dotenv-123\nexport OPENAI_API_KEY='sk-from-dotenv'\nEMPTY=\n"
    )
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-process")
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    env = load_env()
    assert env["DEEPGRAM_API_KEY"] == "dg-from-dotenv-123"
    assert env["OPENAI_API_KEY"] == "sk-from-process"  # the process environment wins
    assert require_secret(env, "DEEPGRAM_API_KEY").reveal() == "dg-from-dotenv-123"
    with pytest.raises(ConfigurationError, match="EMPTY is not set"):
        require_env(env, "EMPTY")
    # Another file, or none at all.
    (tmp_path / "other.env").write_text("CARTESIA_API_KEY=ca-other\n")
    assert load_env(dotenv_path=tmp_path / "other.env")["CARTESIA_API_KEY"] == "ca-other"
    assert "DEEPGRAM_API_KEY" not in load_env(dotenv_path=None)
    assert "DEEPGRAM_API_KEY" not in load_env(dotenv_path=tmp_path / "missing.env")


@pytest.mark.parametrize(
    "name",
    [
        "DEEPGRAM_API_KEY",
        "OPENAI_API_KEY",
        "CARTESIA_API_KEY",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
        "PUBLIC_BASE_URL",
    ],
)
def test_a_missing_key_is_a_configuration_error_naming_the_variable(name):
    with pytest.raises(ConfigurationError) as caught:
        require_secret({name: "   "}, name)
    message = str(caught.value)
    assert message.startswith(f"{name} is not set")
    assert ".env.example" in message


def test_aliases_read_an_older_spelling_but_the_message_names_the_new_one():
    assert require_env({"TWILIO_PHONE_NUMBER": "+14155550100"}, "TWILIO_FROM_NUMBER", aliases=("TWILIO_PHONE_NUMBER",))
    assert (
        require_env(
            {"TWILIO_FROM_NUMBER": "+1", "TWILIO_PHONE_NUMBER": "+2"},
            "TWILIO_FROM_NUMBER",
            aliases=["TWILIO_PHONE_NUMBER"],
        )
        == "+1"
    )
    with pytest.raises(ConfigurationError, match=r"^TWILIO_FROM_NUMBER is not set"):
        require_env({}, "TWILIO_FROM_NUMBER", aliases=("TWILIO_PHONE_NUMBER",))
    assert optional_env({"OLD": "v"}, "NEW", "d", aliases=("OLD",)) == "v"
    assert optional_env({}, "NEW", "d") == "d"


def test_numbers_and_booleans_name_the_variable_when_wrong():
    env = {"A": "1.5", "B": "7", "C": "yes", "D": "off", "BAD": "ten", "NAN": "nan"}
    assert env_float(env, "A") == 1.5 and env_float(env, "MISSING", 2.0) == 2.0
    assert env_int(env, "B") == 7 and env_int(env, "MISSING") is None
    assert env_bool(env, "C", False) is True and env_bool(env, "D", True) is False
    assert env_bool(env, "MISSING", True) is True
    with pytest.raises(ConfigurationError, match=r"BAD must be a number, got 'ten'"):
        env_float(env, "BAD")
    with pytest.raises(ConfigurationError, match="NAN must be a finite number"):
        env_float(env, "NAN")
    with pytest.raises(ConfigurationError, match="A must be an integer"):
        env_int(env, "A")
    with pytest.raises(ConfigurationError, match="BAD must be true or false"):
        env_bool(env, "BAD", False)
    with pytest.raises(ConfigurationError, match=r"A must be <= 1"):
        env_float(env, "A", maximum=1)
    with pytest.raises(ConfigurationError, match=r"B must be >= 10"):
        env_int(env, "B", minimum=10)


def test_a_secret_never_says_what_it_is():
    value = "sk-proj-Zyx987Wvu654Tsr321Qpo000"
    secret = Secret(value)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>40}", repr([secret])):
        assert value not in shown
    assert repr(secret) == "Secret(***)"
    assert secret.reveal() == value
    assert secret == Secret(value) and secret != Secret(value + "x") and secret != value
    assert hash(secret) == hash(Secret(value))
    assert bool(secret) and not Secret("")
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(secret)
    with pytest.raises(ConfigurationError):
        Secret(12345)  # type: ignore[arg-type]


def test_secrets_in_exceptions_of_settings_do_not_show():
    secret = require_secret({"OPENAI_API_KEY": "sk-proj-ShouldNotShow0123456789"}, "OPENAI_API_KEY")
    error = ConfigurationError(f"bad settings: {secret}")
    assert "ShouldNotShow" not in str(error)


# Variables read through the helpers, as written in the package's source.
_READ = re.compile(
    r"(?:require_env|require_secret|optional_env|env_float|env_int|env_bool)\(\s*\w+,\s*f?\"([A-Z0-9_{}a-z.()]+)\""
)


def test_env_example_documents_every_variable_the_package_reads():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    for required in (
        "DEEPGRAM_API_KEY",
        "OPENAI_API_KEY",
        "CARTESIA_API_KEY",
        "CARTESIA_VOICE_ID",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
        "PUBLIC_BASE_URL",
        "CALL_BUDGET_USD",
        "ALERT_DAILY_COST_USD",
        "ALERT_ERROR_RATE",
    ):
        assert required in documented
    read: set[str] = set()
    for path in (ROOT / "vantum_pipeline").rglob("*.py"):
        for name in _READ.findall(path.read_text()):
            if "{prefix}" in name:  # per-service rate limits, documented as <SERVICE>_RPM / _TPM
                assert name.replace("{prefix}", "<SERVICE>") in (ROOT / ".env.example").read_text()
                read.add(name.replace("{prefix}", "OPENAI"))
            elif "{" not in name:
                read.add(name)
    assert "CALL_BUDGET_USD" in read and "OPENAI_RPM" in read  # the scan works
    assert read - documented == set(), "add these to .env.example"
