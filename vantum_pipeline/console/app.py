"""The web console's routes, mounted on an aiohttp application (the Twilio server's).

``mount_console(app, hub, settings)`` adds, under ``settings.path``
(``/console``):

``GET /console``                         the page (plain HTML, CSS and JS from the package);
                                         without credentials, a sign-in form (401)
``POST /console/login``                  the form's token: sets the session cookie
``GET /console/static/{file}``           its script and style sheet
``GET /console/api/state``               calls (live and finished), campaigns and the server's load, JSON
``GET /console/api/calls/{id}``          one call
``GET /console/api/calls/{id}/recording``  the call's recording (WAV; ranges supported)
``GET /console/api/events``              server-sent events: ``snapshot``, ``call``, ``campaigns``, ``load``

``load`` (``mount_console(..., load=server.load)``): how loaded the serving
process is (``TwilioServer.load()``: calls, its event loop's lag, whether it
places no new call for being overloaded), sent with the campaigns' figures
every ``campaign_refresh`` seconds; without it the page shows no load.

Access needs the console token (``VANTUM_CONSOLE_TOKEN``, at least 16
characters). Without a token configured the routes are not mounted at all:
``mount_console`` returns False and ``/console`` is a 404 like any unknown
path. With one, a request is let in when it carries

- ``Authorization: Bearer <token>`` (scripts, curl), or
- the console's session cookie (HttpOnly, SameSite=Strict, path-scoped),
  set by the sign-in form (the token in a POST body) or by
  ``GET /console?token=<token>`` (for links; a proxy that logs query strings
  sees it), both redirecting to the bare URL.

The cookie holds an HMAC of the token, not the token: nothing the page can
read or is sent reveals it. Every comparison is constant-time
(``hmac.compare_digest``). A request without credentials gets 401, with wrong
ones 403, both logged without what was sent.

Nothing secret reaches the page: the hub's views hold masked numbers and
redacted text; responses carry ``Cache-Control: no-store`` and a strict
Content-Security-Policy (only the console's own script, no inline code).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from aiohttp import web
from loguru import logger

from vantum_pipeline.console.campaigns import CampaignStatsProvider
from vantum_pipeline.console.hub import ConsoleHub
from vantum_pipeline.errors import ConfigurationError
from vantum_pipeline.settings import Secret, env_float, env_int, load_env, optional_env

__all__ = ["ConsoleSettings", "LoadProvider", "mount_console", "new_console_token"]

COOKIE: Final = "vantum_console"
MIN_TOKEN_LENGTH: Final = 16
_STATIC: Final = {
    "console.js": "application/javascript",
    "console.css": "text/css",
}
_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "media-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}

#: Shown without credentials: a form that posts the token (no script, no style, nothing of the console).
_LOGIN_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<title>vantum console</title></head>
<body><h1>vantum console</h1><p id="message">{{MESSAGE}}</p>
<form method="post" action="{{ACTION}}"><label>token <input type="password" name="token" autocomplete="off"
autofocus required></label> <button type="submit">open</button></form></body></html>
"""
_LOGIN_CSP: Final = "default-src 'none'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """``VANTUM_CONSOLE_TOKEN`` (unset: no console), ``VANTUM_CONSOLE_PATH``
    (``/console``), ``VANTUM_CONSOLE_MAX_VIEWERS`` (20 event streams),
    ``VANTUM_CONSOLE_CAMPAIGN_REFRESH`` (seconds between campaign figures, 2)."""

    token: Secret | None = None
    path: str = "/console"
    max_viewers: int = 20
    campaign_refresh: float = 2.0
    campaign_timeout: float = 2.0
    heartbeat: float = 15.0

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token.reveal()) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(
                f"VANTUM_CONSOLE_TOKEN must be at least {MIN_TOKEN_LENGTH} characters, "
                f"got {len(self.token.reveal())} (try: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if not self.path.startswith("/") or self.path.endswith("/") or len(self.path) < 2:
            raise ConfigurationError(f"the console path must look like '/console', got {self.path!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConsoleSettings:
        env = load_env(env)
        default = cls()
        raw = optional_env(env, "VANTUM_CONSOLE_TOKEN")
        path = optional_env(env, "VANTUM_CONSOLE_PATH", default.path)
        viewers = env_int(env, "VANTUM_CONSOLE_MAX_VIEWERS", default.max_viewers, minimum=1)
        refresh = env_float(env, "VANTUM_CONSOLE_CAMPAIGN_REFRESH", default.campaign_refresh, minimum=0.1)
        assert path is not None and viewers is not None and refresh is not None
        return cls(token=Secret(raw) if raw else None, path=path, max_viewers=viewers, campaign_refresh=refresh)


def _asset(name: str) -> bytes:
    return resources.files("vantum_pipeline.console").joinpath("static", name).read_bytes()


#: What ``mount_console``'s ``load`` gives: ``TwilioServer.load`` (a JSON-ready mapping).
LoadProvider = Callable[[], Mapping[str, Any]]


class _Console:
    def __init__(
        self,
        hub: ConsoleHub,
        settings: ConsoleSettings,
        campaigns: CampaignStatsProvider | None,
        load: LoadProvider | None = None,
    ) -> None:
        assert settings.token is not None
        self.hub = hub
        self.settings = settings
        self.campaigns = campaigns
        self.load = load
        self._load_failed = False
        token = settings.token.reveal().encode()
        self._token_digest = hashlib.sha256(token).digest()
        # The cookie's value: derived from the token, useless for a Bearer header.
        self._session = hmac.new(token, b"vantum-console-session", hashlib.sha256).hexdigest()
        self.viewers = 0
        self.refused = 0
        self._last_campaigns: list[dict[str, Any]] = []
        self._assets = {name: _asset(name) for name in _STATIC}
        self._page = _asset("console.html").replace(b"{{PATH}}", settings.path.encode())

    # ------------------------------------------------------------- access

    def _token_ok(self, given: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._token_digest)

    def _check(self, request: web.Request) -> web.Response | None:
        """None when the request may pass, else the refusal."""
        header = request.headers.get("Authorization", "")
        cookie = request.cookies.get(COOKIE)
        if header.startswith("Bearer "):
            if self._token_ok(header[len("Bearer ") :].strip()):
                return None
            return self._refuse(request, 403, "wrong console token")
        if cookie is not None:
            if hmac.compare_digest(cookie.encode(), self._session.encode()):
                return None
            return self._refuse(request, 403, "stale or forged console session")
        return self._refuse(request, 401, "no console token")

    def _refuse(self, request: web.Request, status: int, why: str) -> web.Response:
        self.refused += 1
        logger.warning("console: refused {} {} from {}: {}", request.method, request.path, request.remote, why)
        text = "console token required" if status == 401 else "console token refused"
        headers = dict(_HEADERS)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="vantum console"'
        return web.Response(status=status, text=text, headers=headers)

    def guarded(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guard(request: web.Request) -> web.StreamResponse:
            refusal = self._check(request)
            if refusal is not None:
                return refusal
            return await handler(request)

        return guard

    # ------------------------------------------------------------- routes

    async def page(self, request: web.Request) -> web.StreamResponse:
        given = request.query.get("token")
        if given is not None:
            if not self._token_ok(given):
                return self._refuse(request, 403, "wrong console token in the URL")
            return self._signed_in(request)
        if "Authorization" not in request.headers and COOKIE not in request.cookies:
            self._refuse(request, 401, "no console token")
            return self._login_page(401, "console token required")
        refusal = self._check(request)
        if refusal is not None:
            return refusal
        return web.Response(body=self._page, content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """The sign-in form's POST: the token in the body, never in a URL."""
        form = await request.post()
        given = form.get("token")
        if not isinstance(given, str) or not self._token_ok(given):
            self._refuse(request, 403, "wrong console token in the sign-in form")
            return self._login_page(403, "console token refused")
        return self._signed_in(request)

    def _signed_in(self, request: web.Request) -> web.Response:
        """Set the session cookie and send the browser to the bare page URL."""
        response = web.Response(status=303, headers={**_HEADERS, "Location": self.settings.path})
        response.set_cookie(
            COOKIE,
            self._session,
            path=self.settings.path,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    def _login_page(self, status: int, message: str) -> web.Response:
        body = _LOGIN_PAGE.replace("{{MESSAGE}}", message).replace("{{ACTION}}", self.settings.path + "/login")
        headers = {**_HEADERS, "Content-Security-Policy": _LOGIN_CSP}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="vantum console"'
        return web.Response(status=status, text=body, content_type="text/html", headers=headers)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self._assets:
            raise web.HTTPNotFound()
        return web.Response(body=self._assets[name], content_type=_STATIC[name], charset="utf-8", headers=_HEADERS)

    async def state(self, request: web.Request) -> web.StreamResponse:
        state = self.hub.snapshot()
        state["campaigns"] = await self.campaign_stats()
        state["load"] = self.server_load()
        return web.json_response(state, headers=_HEADERS)

    def server_load(self) -> dict[str, Any] | None:
        """The serving process's load (None: no provider, or it failed: logged)."""
        if self.load is None:
            return None
        try:
            load = dict(self.load())
        except Exception as exc:
            if not self._load_failed:  # once, not at every refresh of every viewer
                self._load_failed = True
                logger.opt(exception=exc).warning("console: the load provider failed: {}", exc)
            return None
        self._load_failed = False
        return load

    async def call(self, request: web.Request) -> web.StreamResponse:
        view = self.hub.call(request.match_info["call_id"])
        if view is None:
            raise web.HTTPNotFound(text="no such call", headers=_HEADERS)
        return web.json_response(view, headers=_HEADERS)

    async def recording(self, request: web.Request) -> web.StreamResponse:
        path = self.hub.recording_path(request.match_info["call_id"])
        if path is None:
            raise web.HTTPNotFound(text="no recording for this call", headers=_HEADERS)
        headers = {**_HEADERS, "Content-Type": "audio/wav"}
        return web.FileResponse(path, headers=headers)

    async def campaign_stats(self) -> list[dict[str, Any]]:
        """The campaigns' figures; the last ones obtained when the provider fails or hangs."""
        if self.campaigns is None:
            return []
        try:
            async with asyncio.timeout(self.settings.campaign_timeout):
                stats = await self.campaigns.campaign_stats()
            self._last_campaigns = [campaign.as_dict() for campaign in stats]
        except TimeoutError:
            logger.warning("console: the campaign figures took over {:.1f}s", self.settings.campaign_timeout)
        except Exception as exc:
            logger.opt(exception=exc).error("console: the campaign figures failed: {}", exc)
        return self._last_campaigns

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.viewers >= self.settings.max_viewers:
            return web.Response(status=503, text="too many console viewers", headers=_HEADERS)
        response = web.StreamResponse(
            headers={**_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        subscription = self.hub.subscribe()
        self.viewers += 1
        loop = asyncio.get_running_loop()
        try:
            await self._send(response, "snapshot", self.hub.snapshot())
            next_campaigns = 0.0
            refreshed = self.campaigns is not None or self.load is not None
            while True:
                now = loop.time()
                if refreshed and now >= next_campaigns:
                    if self.campaigns is not None:
                        await self._send(response, "campaigns", await self.campaign_stats())
                    if self.load is not None:
                        await self._send(response, "load", self.server_load())
                    next_campaigns = now + self.settings.campaign_refresh
                wait = self.settings.heartbeat
                if refreshed:
                    wait = min(wait, max(0.05, next_campaigns - loop.time()))
                try:
                    async with asyncio.timeout(wait):
                        kind, view = await subscription.queue.get()
                except TimeoutError:
                    await self._write(response, b": keep-alive\n\n")
                    continue
                if kind == "close":
                    break
                if kind == "snapshot":
                    await self._send(response, "snapshot", self.hub.snapshot())
                else:
                    await self._send(response, kind, view)
        except ConnectionError:
            pass  # the viewer left
        except TimeoutError:
            logger.info("console: a viewer stopped reading for {:.0f}s: its stream is closed", self.settings.heartbeat)
        finally:
            self.viewers -= 1
            self.hub.unsubscribe(subscription)
        return response

    async def _send(self, response: web.StreamResponse, event: str, data: Any) -> None:
        payload = json.dumps(data, separators=(",", ":"), default=str)
        await self._write(response, f"event: {event}\ndata: {payload}\n\n".encode())

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        # A viewer that stops reading must not hold the server: a bounded write.
        async with asyncio.timeout(self.settings.heartbeat):
            await response.write(data)


def mount_console(
    app: web.Application,
    hub: ConsoleHub,
    settings: ConsoleSettings | None = None,
    *,
    campaigns: CampaignStatsProvider | None = None,
    load: LoadProvider | None = None,
) -> bool:
    """Add the console's routes to ``app`` (before it starts); False, and
    nothing added, when no console token is configured. ``campaigns``: the
    campaigns' figures; ``load``: the serving process's load (``server.load``)."""
    settings = settings if settings is not None else ConsoleSettings.from_env()
    if settings.token is None:
        logger.info("console: VANTUM_CONSOLE_TOKEN is not set: the web console is off")
        return False
    console = _Console(hub, settings, campaigns, load)
    base = settings.path
    app.router.add_get(base, console.page)
    app.router.add_post(base + "/login", console.login)
    app.router.add_get(base + "/static/{name}", console.guarded(console.static))
    app.router.add_get(base + "/api/state", console.guarded(console.state))
    app.router.add_get(base + "/api/events", console.guarded(console.events))
    app.router.add_get(base + "/api/calls/{call_id}", console.guarded(console.call))
    app.router.add_get(base + "/api/calls/{call_id}/recording", console.guarded(console.recording))
    app.on_shutdown.append(_closing(hub))
    logger.info("console: serving the web console at {}", base)
    return True


def _closing(hub: ConsoleHub) -> Callable[[web.Application], Awaitable[None]]:
    async def close(app: web.Application) -> None:
        hub.close()

    return close


def new_console_token() -> str:
    """A fresh token of the recommended strength."""
    return secrets.token_urlsafe(32)
