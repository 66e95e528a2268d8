"""The Twilio REST API, asynchronously, through the official SDK.

``TwilioRestClient`` wraps ``twilio.rest.Client`` with the SDK's own
``AsyncTwilioHttpClient`` (aiohttp), so no request blocks the event loop.
It adds what the SDK leaves to us: a deadline on every request (the async
client ignores its ``timeout`` setting), our retry policy, errors as
:class:`TwilioCallError` (a ``ServiceError`` carrying Twilio's error code),
and phone numbers masked in every message.

Retries: creating a call is retried only when Twilio said "too many
requests": a 5xx, a network error or no answer within ``request_timeout``
may have placed the call already, and a retry could ring the callee twice
(the caller finds such a call through ``list_calls``); hanging up and
fetching are idempotent and are also retried on 5xx, network errors and
timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

from vantum_pipeline.errors import ServiceError
from vantum_pipeline.observability.retry import RetryPolicy
from vantum_pipeline.telephony.numbers import mask_number
from vantum_pipeline.telephony.settings import TwilioSettings
from vantum_pipeline.warmup import register

__all__ = ["TwilioCallError", "TwilioRestClient", "mask_numbers"]

_NUMBER = re.compile(r"\+[0-9]{3,15}")


def mask_numbers(text: str) -> str:
    """Mask every E.164-looking number in ``text`` (Twilio's messages quote them)."""
    return _NUMBER.sub(lambda m: mask_number(m.group(0)), text)


class TwilioCallError(ServiceError):
    """A REST request failed. ``code`` is Twilio's error code (e.g. 21211), if any."""

    def __init__(
        self, message: str, *, status: int | None, code: int | None, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message, service="twilio", retryable=retryable, status=status, retry_after=retry_after)
        self.code = code


def _rate_limited(exc: BaseException) -> bool:
    return isinstance(exc, TwilioCallError) and (exc.status == 429 or exc.code == 20429)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ServiceError) and exc.retryable


class TwilioRestClient:
    """Async REST client for the calls we place. Use ``async with`` (or ``aclose()``).

    ``retry`` defaults to the product's policy (3 retries after 2, 4, 8 s)
    with a per-attempt deadline of ``settings.request_timeout``.
    """

    def __init__(self, settings: TwilioSettings, *, retry: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.retry = retry or RetryPolicy(attempt_timeout=settings.request_timeout)
        self._client: Any = None
        self._http: Any = None
        #: Requests made (attempts, retries included), for tests and metrics.
        self.requests = 0

    async def __aenter__(self) -> TwilioRestClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http, self._client = self._http, None, None
            await http.close()

    def _sdk(self) -> Any:
        if self._client is None:
            # Imported here: the twilio extra is optional for the rest of the library.
            from twilio.http.async_http_client import AsyncTwilioHttpClient
            from twilio.rest import Client

            # Created inside the running loop: the aiohttp session binds to it.
            self._http = AsyncTwilioHttpClient()
            # A non-empty environment mapping keeps TWILIO_EDGE / TWILIO_REGION
            # of the process from rewriting the API host.
            self._client = Client(
                self.settings.account_sid,
                self.settings.auth_token.reveal(),
                http_client=self._http,
                environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""},
            )
            if self.settings.api_base_url is not None:
                self._client.api.base_url = self.settings.api_base_url
        return self._client

    async def _call(self, what: str, operation: Any, *, retryable: Any, policy: RetryPolicy | None = None) -> Any:
        from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException

        async def attempt() -> Any:
            self.requests += 1
            try:
                return await operation()
            except TwilioRestException as exc:
                status = int(exc.status) if exc.status else None
                code = int(exc.code) if isinstance(exc.code, int) else None
                raise TwilioCallError(
                    f"{what} failed: {mask_numbers(str(exc.msg))}",
                    status=status,
                    code=code,
                    retryable=status == 429 or code == 20429 or (status is not None and status >= 500),
                ) from None
            except TwilioServiceException as exc:  # the SDK's RFC 9457 error shape
                status = int(exc.status) if exc.status else None
                raise TwilioCallError(
                    f"{what} failed: {mask_numbers(str(exc.title))}"
                    + (f": {mask_numbers(str(exc.detail))}" if exc.detail else ""),
                    status=status,
                    code=int(exc.code) if isinstance(exc.code, int) else None,
                    retryable=status == 429 or (status is not None and status >= 500),
                ) from None
            except TwilioException as exc:
                raise TwilioCallError(
                    f"{what} failed: {mask_numbers(str(exc))}", status=None, code=None, retryable=False
                ) from None
            except OSError as exc:  # aiohttp's connection errors are OSErrors
                raise TwilioCallError(
                    f"{what} failed: {type(exc).__name__}: {exc}", status=None, code=None, retryable=True
                ) from None
            except Exception as exc:
                if type(exc).__module__.startswith("aiohttp"):
                    raise TwilioCallError(
                        f"{what} failed: {type(exc).__name__}: {exc}", status=None, code=None, retryable=True
                    ) from None
                raise

        return await (policy or self.retry).run(attempt, retryable=retryable, service="twilio")

    async def create_call(self, **parameters: Any) -> Any:
        """``calls.create`` with the SDK's keyword arguments; returns the CallInstance.

        Retried on a 429 only. No answer within the attempt deadline is a ``TwilioCallError``
        that is not retried (the policy would retry its own timeout): Twilio may have placed it."""
        client = self._sdk()
        deadline = self.retry.attempt_timeout

        async def create() -> Any:
            try:
                async with asyncio.timeout(deadline):
                    return await client.calls.create_async(**parameters)
            except TimeoutError:
                within = f" within {deadline:g}s" if deadline is not None else ""
                raise TwilioCallError(
                    f"creating a call: no answer{within} (the call may have been placed)",
                    status=None,
                    code=None,
                    retryable=False,
                ) from None

        once = dataclasses.replace(self.retry, attempt_timeout=None)
        return await self._call("creating a call", create, retryable=_rate_limited, policy=once)

    async def hang_up(self, call_sid: str, *, status: str = "completed") -> Any:
        """End a call: ``completed`` once answered, ``canceled`` while it rings."""
        client = self._sdk()
        return await self._call(
            f"hanging up {call_sid}", lambda: client.calls(call_sid).update_async(status=status), retryable=_transient
        )

    async def fetch(self, call_sid: str) -> Any:
        client = self._sdk()
        return await self._call(
            f"fetching {call_sid}", lambda: client.calls(call_sid).fetch_async(), retryable=_transient
        )

    async def redirect(self, call_sid: str, twiml: str) -> Any:
        """Replace what a live call is doing with ``twiml`` (e.g. a ``<Dial>``).

        Not retried on a 5xx: the redirect may have been applied already."""
        client = self._sdk()
        return await self._call(
            f"redirecting {call_sid}", lambda: client.calls(call_sid).update_async(twiml=twiml), retryable=_rate_limited
        )

    async def list_calls(self, *, to: str | None = None, started_after: Any = None, limit: int = 20) -> list[Any]:
        """The most recent calls (newest first), to ``to`` when given; ``started_after``
        (a datetime) narrows by date on Twilio's side: compare ``date_created`` for more."""
        client = self._sdk()
        options: dict[str, Any] = {"limit": limit, "page_size": min(limit, 50)}
        if to is not None:
            options["to"] = to
        if started_after is not None:
            options["start_time_after"] = started_after
        return list(await self._call("listing calls", lambda: client.calls.list_async(**options), retryable=_transient))


def _warm_up() -> None:
    """The Twilio SDK's REST client and call resources, which load on first use (see ``vantum_pipeline.warmup``)."""
    try:
        import twilio.twiml.voice_response  # noqa: F401  (TwiML for answers and redirects)
        from twilio.http.async_http_client import AsyncTwilioHttpClient  # noqa: F401
        from twilio.rest import Client
    except ImportError:  # the twilio extra is not installed: nothing to warm
        return
    client = Client("AC" + "0" * 32, "warm-up", environment={"TWILIO_EDGE": "", "TWILIO_REGION": ""})
    client.calls("CA" + "0" * 32)  # builds the call resources; sends nothing


register("twilio-rest", _warm_up)
