"""Telephony: numbers, the call state machine, outcomes, settings, the REST client."""

from __future__ import annotations

import asyncio

import pytest

from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.observability.retry import RetryExhausted, RetryPolicy
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.calls import CallRegistry, OutboundCall, place_call
from vantum_pipeline.telephony.client import TwilioCallError, TwilioRestClient, mask_numbers
from vantum_pipeline.telephony.numbers import InvalidNumberError, mask_number, validate_e164
from vantum_pipeline.telephony.outcome import CallOutcome, call_cost, outcome_for_error, outcome_for_status
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.telephony.state import TRANSITIONS, CallState, CallStateMachine
from vantum_pipeline.testing.twilio import FakeTwilio, RestFault

pytestmark = pytest.mark.timeout(30)

ENV = {
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "secret-token-value",
    "TWILIO_FROM_NUMBER": "+15005550006",
    "PUBLIC_BASE_URL": "https://calls.example.com/",
}


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("number", ["+14155550100", "+442071838750", "+12"])
def test_e164_numbers_pass(number):
    assert validate_e164(number) == number


@pytest.mark.parametrize(
    "number", ["4155550100", "+1 415 555 0100", "+0123", "+1234567890123456", "", None, 14155550100]
)
def test_non_e164_numbers_are_refused_with_the_field_named(number):
    with pytest.raises(InvalidNumberError, match="to"):
        validate_e164(number, field="to")


def test_numbers_are_masked_in_logs_and_errors():
    assert mask_number("+14155550100") == "+141******00"
    assert mask_numbers("The 'To' number +14155550100 is not valid") == "The 'To' number +141******00 is not valid"
    with pytest.raises(InvalidNumberError) as info:
        validate_e164("+1415555010012345")
    assert "+1415555010012345" not in str(info.value)


# -------------------------------------------------------------- state machine


def test_the_transition_table_moves_forward_only():
    for state, targets in TRANSITIONS.items():
        assert state not in targets
        order = list(CallState)
        assert all(order.index(t) > order.index(state) for t in targets)
    machine = CallStateMachine()
    assert machine.advance(CallState.RINGING, 1.0)
    assert machine.advance(CallState.STREAMING, 2.0)  # the answered callback may come later
    assert not machine.advance(CallState.ANSWERED, 3.0)  # ...and is then ignored
    assert machine.state is CallState.STREAMING and machine.entered(CallState.STREAMING) == 2.0
    assert machine.advance(CallState.ENDED) and machine.ended
    assert not machine.advance(CallState.RINGING)


# ------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("completed", CallOutcome.COMPLETED),
        ("busy", CallOutcome.RETRY_LATER),
        ("no-answer", CallOutcome.UNREACHABLE),
        ("failed", CallOutcome.REMOVE),
        ("canceled", CallOutcome.CANCELED),
        ("ringing", None),
        ("in-progress", None),
    ],
)
def test_final_statuses_map_to_the_product_outcomes(status, outcome):
    assert outcome_for_status(status) is outcome


@pytest.mark.parametrize(
    ("code", "http", "outcome"),
    [
        (21211, 400, CallOutcome.REMOVE),
        (21217, 400, CallOutcome.REMOVE),
        (21610, 400, CallOutcome.REMOVE),
        (21214, 400, CallOutcome.UNREACHABLE),
        (20429, 429, CallOutcome.RETRY_LATER),
        (None, 429, CallOutcome.RETRY_LATER),
        (20003, 401, CallOutcome.ERROR),
        (None, 500, CallOutcome.ERROR),
    ],
)
def test_rest_errors_map_to_outcomes(code, http, outcome):
    assert outcome_for_error(code, http) is outcome


def test_cost_is_per_started_minute():
    assert call_cost(0, 0.014) == 0
    assert call_cost(1, 0.014) == pytest.approx(0.014)
    assert call_cost(61, 0.014) == pytest.approx(0.028)


def test_one_call_one_record_whatever_arrives_after():
    records = []
    registry = CallRegistry(on_record=records.append)
    call = registry.new_call("+14155550100", "+15005550006", price_per_minute=0.014, campaign_id="c")
    call.on_status({"CallSid": "CA1", "CallStatus": "ringing"})
    call.on_answered({"AnsweredBy": "human"})
    call.on_stream_started()
    record = call.on_status({"CallSid": "CA1", "CallStatus": "completed", "CallDuration": "75"})
    assert record is not None and record.outcome is CallOutcome.COMPLETED
    assert (record.call_sid, record.duration, record.cost, record.to) == ("CA1", 75.0, 0.028, "+141******00")
    assert call.on_status({"CallSid": "CA1", "CallStatus": "busy"}) is None  # late, duplicate: ignored
    assert records == [record] and len(registry) == 0 and list(registry.records) == [record]


def test_completed_without_a_stream_or_after_our_failure_is_an_error():
    call = OutboundCall("t", "+14155550100", "+15005550006", price_per_minute=0.014)
    record = call.on_status({"CallSid": "CA1", "CallStatus": "completed", "CallDuration": "3"})
    assert record is not None and record.outcome is CallOutcome.ERROR
    call = OutboundCall("t", "+14155550100", "+15005550006", price_per_minute=0.014)
    call.on_stream_started()
    call.note_failure("pipeline error")
    record = call.on_status({"CallSid": "CA2", "CallStatus": "completed", "CallDuration": "3"})
    assert record is not None and record.outcome is CallOutcome.ERROR


def test_a_stream_token_opens_one_stream_of_its_own_call():
    registry = CallRegistry()
    call = registry.new_call("+14155550100", "+15005550006", price_per_minute=0.014)
    call.sid = "CA1"
    assert registry.claim_stream(call.token, "CA2") is None  # someone else's call sid
    assert registry.claim_stream("forged", "CA1") is None
    assert registry.claim_stream(call.token, "CA1") is call
    assert registry.claim_stream(call.token, "CA1") is None  # used


def test_the_registry_is_bounded():
    registry = CallRegistry(max_calls=2)
    for _ in range(2):
        registry.new_call("+14155550100", "+15005550006", price_per_minute=0.014)
    with pytest.raises(Exception, match="max_calls"):
        registry.new_call("+14155550100", "+15005550006", price_per_minute=0.014)


# ------------------------------------------------------------------- settings


def test_settings_from_env_and_the_secret_stays_hidden():
    settings = TwilioSettings.from_env(ENV)
    assert settings.public_base_url == "https://calls.example.com"
    assert settings.public_ws_base_url == "wss://calls.example.com"
    assert settings.validate_signatures and settings.auth_token.reveal() == "secret-token-value"
    assert "secret-token-value" not in repr(settings)


def test_settings_accept_the_older_number_name_and_name_what_is_missing():
    env = {k: v for k, v in ENV.items() if k != "TWILIO_FROM_NUMBER"} | {"TWILIO_PHONE_NUMBER": "+15005550006"}
    assert TwilioSettings.from_env(env).from_number == "+15005550006"
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL"):
        with pytest.raises(ConfigurationError, match=name):
            TwilioSettings.from_env({k: v for k, v in ENV.items() if k != name})
    with pytest.raises(ConfigurationError, match="PUBLIC_BASE_URL"):
        TwilioSettings.from_env(ENV | {"PUBLIC_BASE_URL": "calls.example.com"})
    with pytest.raises(ConfigurationError, match="TWILIO_FROM_NUMBER"):
        TwilioSettings.from_env(ENV | {"TWILIO_FROM_NUMBER": "555-0100"})
    assert not TwilioSettings.from_env(ENV | {"TWILIO_VALIDATE_SIGNATURES": "false"}).validate_signatures


# ---------------------------------------------------------------- REST client


def settings_for(fake: FakeTwilio) -> TwilioSettings:
    return TwilioSettings(
        account_sid=fake.account_sid,
        auth_token=Secret(fake.auth_token),
        from_number="+15005550006",
        public_base_url="https://calls.example.com",
        api_base_url=fake.base_url,
    )


FAST = RetryPolicy(max_retries=2, base_delay=0.01, attempt_timeout=1.0)


async def test_place_call_sends_what_twilio_expects():
    async with FakeTwilio() as fake, TwilioRestClient(settings_for(fake), retry=FAST) as client:
        placed = await place_call(
            client,
            "+14155550100",
            "+15005550006",
            url="https://calls.example.com/twilio/answer?call=abc",
            status_callback="https://calls.example.com/twilio/status?call=abc",
            machine_detection="Enable",
            ring_timeout=25,
        )
        params = fake.requests[0].params
    assert placed.sid.startswith("CA") and placed.status == "queued"
    assert params["Url"] == ["https://calls.example.com/twilio/answer?call=abc"] and params["Method"] == ["POST"]
    assert params["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert (params["MachineDetection"], params["Timeout"]) == (["Enable"], ["25"])


async def test_place_call_checks_its_arguments_before_any_request():
    async with FakeTwilio() as fake, TwilioRestClient(settings_for(fake), retry=FAST) as client:
        with pytest.raises(InvalidNumberError):
            await place_call(client, "555-0100", "+15005550006", twiml="<Response/>")
        with pytest.raises(ConfigurationError, match="exactly one"):
            await place_call(client, "+14155550100", "+15005550006")
        with pytest.raises(ConfigurationError, match="events"):
            await place_call(
                client,
                "+14155550100",
                "+15005550006",
                twiml="<Response/>",
                status_callback="x",
                status_events=["answered", "bridged"],
            )
        assert fake.requests == []


async def test_rate_limits_are_retried_and_errors_carry_twilio_codes_with_numbers_masked():
    async with FakeTwilio() as fake, TwilioRestClient(settings_for(fake), retry=FAST) as client:
        fake.fail_next(RestFault.rate_limited(retry_after=0.01), times=2)
        placed = await place_call(client, "+14155550100", "+15005550006", twiml="<Response/>")
        assert placed.sid.startswith("CA") and client.requests == 3
        with pytest.raises(TwilioCallError) as info:
            await place_call(client, "+1555", "+15005550006", twiml="<Response/>")
        assert (info.value.code, info.value.status, info.value.retryable) == (21211, 400, False)
        assert "+1555" not in str(info.value)


async def test_a_5xx_on_create_is_not_retried_but_a_hang_up_is():
    async with FakeTwilio() as fake, TwilioRestClient(settings_for(fake), retry=FAST) as client:
        fake.fail_next(RestFault.unavailable())
        with pytest.raises(TwilioCallError) as info:
            await place_call(client, "+14155550100", "+15005550006", twiml="<Response/>")
        assert info.value.status == 503 and client.requests == 1  # it may have placed the call: no retry
        placed = await place_call(
            client, "+14155550100", "+15005550006", twiml='<Response><Pause length="5"/></Response>'
        )
        async with asyncio.timeout(5):
            await fake.calls[placed.sid].answered.wait()
        fake.fail_next(RestFault.unavailable())
        await client.hang_up(placed.sid)
        assert client.requests == 4
        await fake.wait_ended(placed.sid, within=5)
        assert (await client.fetch(placed.sid)).status == "completed"


async def test_a_create_that_times_out_is_not_retried_for_twilio_may_have_placed_it():
    policy = RetryPolicy(max_retries=2, base_delay=0.01, attempt_timeout=0.3)
    async with FakeTwilio() as fake, TwilioRestClient(settings_for(fake), retry=policy) as client:
        fake.fail_next(RestFault(200, delay=1.0))  # slow, not failed: the call is placed after the deadline
        with pytest.raises(TwilioCallError, match="may have been placed") as info:
            await place_call(client, "+14155550100", "+15005550006", twiml="<Response/>")
        assert not info.value.retryable and client.requests == 1
        async with asyncio.timeout(5):
            while not fake.calls:  # noqa: ASYNC110 - the fake signals no creation
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert len(fake.calls) == 1, "the call was placed twice"


async def test_a_stalled_api_is_bounded_by_the_attempt_deadline():
    # 1 s: the healthy request first must fit in it on a loaded machine too; the stalls never answer.
    policy = RetryPolicy(max_retries=1, base_delay=0.01, attempt_timeout=1.0)
    async with FakeTwilio() as fake, TwilioRestClient(settings_for(fake), retry=policy) as client:
        placed = await place_call(client, "+14155550100", "+15005550006", twiml="<Response/>")
        fake.fail_next(RestFault(stall=True), times=2)
        with pytest.raises((RetryExhausted, ServiceError)):
            async with asyncio.timeout(5):
                await client.fetch(placed.sid)


async def test_problem_shaped_errors_are_understood_too():
    async with FakeTwilio() as fake, TwilioRestClient(settings_for(fake), retry=FAST) as client:
        fake.fail_next(RestFault(400, 21211, "Invalid 'To' +14155550100", problem=True))
        with pytest.raises(TwilioCallError) as info:
            await place_call(client, "+14155550100", "+15005550006", twiml="<Response/>")
    assert (info.value.status, info.value.code, info.value.retryable) == (400, 21211, False)
    assert "+14155550100" not in str(info.value) and "injected fault" in str(info.value)
