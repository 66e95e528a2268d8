"""The web console in a real browser: headless Chromium (Debian's ``chromium``
and ``chromium-driver``) driven by selenium, watching a whole faked phone call
(FakeTwilio ⇄ the Twilio server, Deepgram, OpenAI and Cartesia on their SDKs
against the stand-ins) served by the same server that serves the console.

The page must show the live transcript while the call runs, move the call to
the finished list with its outcome, play its recording, show the campaign's
figures, and refuse a request without the token. Outside CI the test is
skipped, saying why, when Chromium is not installed; in CI (``CI=true``) a
missing browser fails it. ``VANTUM_SCREENSHOTS=docs/img`` saves the
screenshots the documentation shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.twilio_scripted import load_example
from vantum_pipeline import Pipeline, PipelineTask
from vantum_pipeline.console import ConsoleHub, ConsoleSettings, InMemoryCampaignStats, mount_console
from vantum_pipeline.frames import TTSSpeakFrame
from vantum_pipeline.observability.collector import MetricsCollector
from vantum_pipeline.observability.cost import CostTracker
from vantum_pipeline.observability.record import CallRecorder, MemorySink
from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
from vantum_pipeline.processors.context import LLMContext
from vantum_pipeline.processors.sentence import SentenceAggregator
from vantum_pipeline.services.cartesia import CartesiaTTSService
from vantum_pipeline.services.deepgram import DeepgramSTTService
from vantum_pipeline.services.openai import OpenAILLMService
from vantum_pipeline.settings import Secret
from vantum_pipeline.telephony.calls import CallRegistry
from vantum_pipeline.telephony.outcome import CallOutcome, CallRecord
from vantum_pipeline.transports.twilio.server import TwilioCall, TwilioServer
from vantum_pipeline.transports.wav import WavRecorder

pytestmark = pytest.mark.timeout(120)

TOKEN = "browser-console-token-0123456789"
NUMBER = "+14155550123"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1400,1500",
)


def _missing(what: str) -> None:
    message = f"BROWSER TESTS NOT RUN: {what} (apt-get install chromium chromium-driver; pip install selenium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        _missing("chromium or chromedriver is not on PATH")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="vantum-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshots(tmp_path: Path) -> Path:
    target = os.environ.get("VANTUM_SCREENSHOTS")
    path = Path(target) if target else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


async def in_browser(fn: Callable[[], Any]) -> Any:
    """Selenium blocks: drive it from a thread while the loop serves the call."""
    return await asyncio.to_thread(fn)


def wait_until(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``condition`` until it holds; an element the page re-rendered meanwhile (stale) is polled again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(
            condition, f"waited {timeout:.0f}s for {what}"
        )
    except Exception:
        print("the page showed:", driver.execute_script("return document.body.innerText"))
        raise


def text_of(driver: Any, selector: str) -> str:
    """The visible text of every element matching ``selector``, read at once (the page re-renders)."""
    texts: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText);", selector
    )
    return " ".join(texts)


def attribute_of(driver: Any, selector: str, name: str) -> str | None:
    """An attribute of the first element matching ``selector``, read at once (the page re-renders)."""
    value: str | None = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);", selector, name
    )
    return value


async def test_the_console_follows_a_faked_call_live_to_its_recording(browser, tmp_path):
    from selenium.webdriver.common.by import By

    shots = screenshots(tmp_path)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    example = load_example()
    hub = ConsoleHub(recordings_dir=recordings, flush_interval=0.1)
    stats = InMemoryCampaignStats()
    stats.add_campaign("spring", name="Spring promotion", prospects=5, budget=0.10)
    # Earlier calls of the campaign, for a spend curve.
    for minutes_ago, outcome, cost in ((9, "completed", 0.028), (6, "retry_later", 0.0), (3, "completed", 0.014)):
        stats.record("spring", outcome, cost, prospect_id=f"p{minutes_ago}", at=time.time() - 60 * minutes_ago)

    def on_record(record: CallRecord) -> None:
        hub.call_ended(record)
        stats.call_ended(record)

    async with example.fakes() as (twilio, services, _stand_ins):

        async def factory(call: TwilioCall) -> PipelineTask:
            context = LLMContext(example.SYSTEM_PROMPT)
            tracker = CostTracker()
            recorder = CallRecorder(sink=MemorySink(), tracker=tracker, call_id=call.call_sid)
            task = PipelineTask(
                Pipeline(
                    [
                        call.transport.input(),
                        DeepgramSTTService(services.deepgram),
                        recorder.user_tap(),
                        UserAggregator(context),
                        OpenAILLMService(services.openai),
                        SentenceAggregator(),
                        CartesiaTTSService(services.cartesia),
                        WavRecorder(recordings / f"{call.call_sid}.wav", sample_rate=16000),
                        call.transport.output(),
                        AssistantAggregator(context),
                    ]
                ),
                audio_in_sample_rate=services.deepgram.sample_rate,
                audio_out_sample_rate=services.cartesia.sample_rate,
            )
            MetricsCollector(tracker=tracker).attach(task)
            hub.watch(task, recorder, call_id=call.call_sid, to=call.call.to, campaign_id=call.call.campaign_id)
            await task.queue_frame(TTSSpeakFrame(example.GREETING, category="greeting"))
            return task

        server = TwilioServer(twilio, factory, host="127.0.0.1", port=0, registry=CallRegistry(on_record=on_record))
        settings = ConsoleSettings(token=Secret(TOKEN), campaign_refresh=0.5)
        assert mount_console(server.app, hub, settings, campaigns=stats, load=server.load)
        async with server:
            server.public_base_url = url = server.local_url

            # Open the console with the token: it becomes a cookie and leaves the address bar.
            def open_console() -> None:
                browser.get(f"{url}/console?token={TOKEN}")
                wait_until(
                    browser,
                    lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live",
                    "the event stream",
                )
                assert browser.current_url == f"{url}/console"
                assert TOKEN not in browser.page_source
                assert all(TOKEN not in c["value"] for c in browser.get_cookies())
                assert browser.execute_script("return document.cookie") == ""  # HttpOnly: the page cannot read it

            await in_browser(open_console)

            call = await server.place_call(NUMBER, campaign_id="spring", prospect_id="p-live")

            # The live transcript appears while the call is in progress.
            def live_transcript() -> str:
                wait_until(
                    browser,
                    lambda d: "who is this" in text_of(d, "#live-calls .call .turn.user"),
                    "the live transcript",
                )
                browser.save_screenshot(str(shots / "console-live.png"))
                # Read the card at once: each update re-renders it.
                call_id, text = browser.execute_script(
                    "const card = document.querySelector('#live-calls .call');"
                    "return [card.dataset.callId, card.innerText];"
                )
                assert call_id == call.sid
                assert "+141******23" in text and NUMBER not in browser.page_source
                return text

            live_text = await in_browser(live_transcript)
            assert "Sarah from Vantum" in live_text  # the greeting, said before the callee spoke
            assert not call.ended

            async with asyncio.timeout(60):
                placed = await call.wait()
                await server.wait_idle()
            assert placed.outcome is CallOutcome.COMPLETED

            # The call moves to the finished list with its outcome; its details and recording.
            def finished() -> dict[str, Any]:
                row_css = f'#finished-calls tr.call[data-call-id="{call.sid}"]'
                wait_until(browser, lambda d: text_of(d, row_css + " .outcome") == "completed", "the finished call")
                wait_until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#live-calls .call"), "no live call")
                browser.execute_script("document.querySelector(arguments[0]).click();", row_css)  # rows re-render
                wait_until(
                    browser,
                    lambda d: d.find_element(By.ID, "detail").get_attribute("data-call-id") == call.sid,
                    "the call's details",
                )
                wait_until(browser, lambda d: d.find_element(By.ID, "recording").is_displayed(), "the audio player")
                playback = browser.execute_async_script(
                    """
                    const done = arguments[arguments.length - 1];
                    const audio = document.getElementById("recording");
                    const report = (error) => done({duration: audio.duration, time: audio.currentTime,
                                                   error: error ? String(error) : null});
                    const play = () => audio.play().then(() => setTimeout(() => report(null), 600), report);
                    if (audio.readyState >= 1) play();
                    else audio.addEventListener("loadedmetadata", play, {once: true});
                    audio.addEventListener("error", () => report(audio.error && audio.error.code), {once: true});
                    """
                )
                wait_until(
                    browser, lambda d: "3 of 5" in text_of(d, "#campaigns .campaign"), "the campaign's new figures"
                )
                wait_until(browser, lambda d: "ms late (p90)" in text_of(d, "#load"), "the server's load")
                browser.save_screenshot(str(shots / "console-finished.png"))
                return {
                    "load": text_of(browser, "#load"),
                    "load_state": attribute_of(browser, "#load", "data-state"),
                    "playback": playback,
                    "turns": text_of(browser, "#detail-turns .turn"),
                    "cut": text_of(browser, "#detail-turns .turn.assistant.interrupted"),
                    "latency": text_of(browser, "#detail-turns .turn .lat"),
                    "cost": text_of(browser, "#detail-cost"),
                    "facts": text_of(browser, "#detail-facts"),
                    "campaign": text_of(browser, "#campaigns .campaign"),
                    "progress": attribute_of(browser, "#campaigns .progress", "aria-valuenow"),
                    "chart": len(browser.find_elements(By.CSS_SELECTOR, "#campaigns svg.spend path.line")),
                    "source": browser.page_source,
                }

            seen = await in_browser(finished)

    playback = seen["playback"]
    assert playback["error"] is None, playback
    assert playback["duration"] > 1.0 and playback["time"] > 0.0  # a real recording, and it plays
    recording = recordings / f"{call.sid}.wav"
    assert recording.stat().st_size > 44
    # The transcript: both sides, the cut reply marked with what was heard; latencies and cost.
    assert "Yes, who is this?" in seen["turns"] and "really busy" in seen["turns"]
    assert "interrupted" in seen["cut"]
    assert "LLM first token" in seen["latency"] and "TTS first byte" in seen["latency"]
    for service in ("openai", "cartesia", "deepgram", "twilio", "total"):
        assert service in seen["cost"]
    assert "completed" in seen["facts"] and "+141******23" in seen["facts"]
    # The campaign: 3 of 5 prospects done (the live call completed), outcome counts, a spend curve.
    assert "3 of 5 prospects done" in seen["campaign"] and seen["progress"] == "60"
    assert "3 completed" in seen["campaign"] and "1 retry_later" in seen["campaign"]
    assert seen["chart"] == 1
    # The server's load: its calls and its event loop's lag (overloaded only on a starved machine).
    assert seen["load_state"] in ("ok", "overloaded") and "loop" in seen["load"], seen["load"]
    # Nothing secret reached the page.
    for secret in (TOKEN, NUMBER, "dg-fake-key", "sk-fake-key", "sk_car_fake", twilio.auth_token.reveal()):
        assert secret not in seen["source"]


async def test_the_browser_is_refused_without_the_token(browser):
    from aiohttp import web
    from selenium.webdriver.common.by import By

    app = web.Application()
    mount_console(app, ConsoleHub(), ConsoleSettings(token=Secret(TOKEN)))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:

        def refused() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            browser.get(f"{url}/console")
            seen["page"] = browser.find_element(By.ID, "message").text
            seen["console_shown"] = bool(browser.find_elements(By.ID, "live-calls"))
            browser.get(f"{url}/console/api/state")
            seen["api"] = browser.find_element(By.TAG_NAME, "body").text
            seen["status"] = browser.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "fetch('/console/api/state').then(r => done(r.status), e => done(String(e)));"
            )
            browser.get(f"{url}/console?token=not-the-token-at-all")
            seen["wrong_url"] = browser.find_element(By.TAG_NAME, "body").text

            # The sign-in form: a wrong token, then the right one.
            def sign_in(token: str) -> None:
                from selenium.webdriver.support import expected_conditions

                form = browser.find_element(By.TAG_NAME, "form")
                browser.find_element(By.NAME, "token").send_keys(token)
                browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
                wait_until(browser, expected_conditions.staleness_of(form), "the next page")

            browser.get(f"{url}/console")
            sign_in("not-the-token-at-all")
            seen["wrong_form"] = browser.find_element(By.ID, "message").text
            sign_in(TOKEN)
            wait_until(browser, lambda d: d.find_elements(By.ID, "live-calls"), "the console after signing in")
            seen["signed_in_url"] = browser.current_url
            seen["source"] = browser.page_source
            return seen

        seen = await in_browser(refused)
    finally:
        await runner.cleanup()
    assert seen["page"] == "console token required" and not seen["console_shown"]
    assert seen["api"] == "console token required" and seen["status"] == 401
    assert seen["wrong_url"] == "console token refused"
    assert seen["wrong_form"] == "console token refused"
    assert seen["signed_in_url"] == f"{url}/console" and TOKEN not in seen["source"]


CAMPAIGN_PEOPLE = {
    "+14155550101": ("Jordan", "books_meeting"),
    "+14155550102": ("Kim", "not_interested"),
    "+14155550103": ("Tom", "failed"),
    "+14155550104": ("Max", "always_busy"),
}


def _words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


async def test_a_faked_campaign_shows_its_progress_outcomes_and_live_words(browser, tmp_path, monkeypatch):
    """``vantum campaign run --fake`` with the console token set: its Twilio server serves the
    console, whose campaign panel reads the store the runner writes."""
    import io
    import re

    from selenium.webdriver.common.by import By

    from tests.campaign_support import write_campaign
    from vantum_pipeline.campaign.config import load_campaign
    from vantum_pipeline.campaign.store import CampaignStore
    from vantum_pipeline.demo.campaign_demo import run_fake
    from vantum_pipeline.demo.campaign_world import PERSONAS

    shots = screenshots(tmp_path)
    monkeypatch.setenv("VANTUM_CONSOLE_TOKEN", TOKEN)
    monkeypatch.setenv("VANTUM_CONSOLE_CAMPAIGN_REFRESH", "0.5")
    personas = "\n".join(f'"{number}" = "{persona}"' for number, (_, persona) in CAMPAIGN_PEOPLE.items())
    path = write_campaign(
        tmp_path / "spring",
        [(number, name) for number, (name, _) in CAMPAIGN_PEOPLE.items()],
        rules="max_concurrent_calls = 2\ncalls_per_second = 5\nbudget_usd = 5.0",
        # The busy prospect's retry is far off: the campaign stays up (waiting) once the rest are done.
        extra=f"""
[rules.outcomes]
busy = {{ action = "retry", delay_seconds = 3600, max_attempts = 2 }}

[simulation]
voices = false

[simulation.personas]
{personas}
""",
    )
    config = load_campaign(path)
    out = io.StringIO()
    campaign = asyncio.create_task(run_fake(config, idle_exit=7200.0, plain=True, stream=out))
    try:
        async with asyncio.timeout(60):
            while (found := re.search(r"web console: (http://\S+/console)", out.getvalue())) is None:
                assert not campaign.done(), out.getvalue()
                await asyncio.sleep(0.05)
        url = found.group(1)

        def watch() -> dict[str, Any]:
            browser.get(f"{url}?token={TOKEN}")
            wait_until(
                browser,
                lambda d: d.find_element(By.ID, "connection").get_attribute("data-state") == "live",
                "the event stream",
            )
            # Remember every interim line and every progress line the page ever shows (it re-renders).
            browser.execute_script(
                """
                window.seen = {interim: [], progress: []};
                new MutationObserver(() => {
                  for (const e of document.querySelectorAll("#live-calls .turn.interim .text"))
                    if (!window.seen.interim.includes(e.textContent)) window.seen.interim.push(e.textContent);
                  for (const e of document.querySelectorAll("#campaigns .progress-text"))
                    if (!window.seen.progress.includes(e.textContent)) window.seen.progress.push(e.textContent);
                }).observe(document.body, {childList: true, subtree: true, characterData: true});
                """
            )
            card = "#campaigns .campaign"
            wait_until(browser, lambda d: "3 of 4 prospects done" in text_of(d, card), "3 prospects done", 90)
            wait_until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#live-calls .call"), "no live call")
            wait_until(
                browser,
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#finished-calls tr.call")) == 4,
                "the four calls in the finished list",
            )
            browser.save_screenshot(str(shots / "console-campaign.png"))
            # The booked call's stereo recording, written after the call: its player appears and plays.
            browser.execute_script(
                "[...document.querySelectorAll('#finished-calls tr.call')]"
                ".find(r => r.querySelector('.outcome').textContent === 'meeting_booked').click();"
            )
            wait_until(
                browser, lambda d: d.find_element(By.ID, "recording").is_displayed(), "the booked call's recording"
            )
            duration = browser.execute_async_script(
                """
                const done = arguments[arguments.length - 1];
                const audio = document.getElementById("recording");
                if (audio.readyState >= 1) done(audio.duration);
                else audio.addEventListener("loadedmetadata", () => done(audio.duration), {once: true});
                audio.addEventListener("error", () => done(-1), {once: true});
                """
            )
            return {
                "duration": duration,
                "facts": text_of(browser, "#detail-facts"),
                "campaign": text_of(browser, card),
                "counts": browser.execute_script(
                    "return Object.fromEntries([...document.querySelectorAll(arguments[0])]"
                    ".map(e => [e.dataset.outcome, Number(e.querySelector('b').textContent)]));",
                    f"{card} .outcome-count",
                ),
                "progress": attribute_of(browser, f"{card} .progress", "aria-valuenow"),
                "finished": text_of(browser, "#finished-calls .outcome"),
                "seen": browser.execute_script("return window.seen;"),
                "source": browser.page_source,
            }

        seen = await in_browser(watch)
        with CampaignStore(config.resolved_folder().with_name("run-simulated") / "campaign.sqlite") as store:
            outcomes = store.outcome_counts("test")
            spend = store.spend("test")
        assert not campaign.done()  # still up, waiting for the busy prospect's retry
    finally:
        campaign.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await campaign

    # The panel: the store's own figures.
    assert outcomes == {"meeting_booked": 1, "not_interested": 1, "failed": 1, "busy": 1}
    assert seen["counts"] == outcomes
    assert "3 of 4 prospects done (75%)" in seen["campaign"] and seen["progress"] == "75"
    assert "Test campaign" in seen["campaign"] and "waiting" in seen["campaign"]
    assert f"spent ${spend:.4f} of $5.0000" in seen["campaign"] and spend > 0
    # While it ran: calls in progress, then fewer prospects left.
    assert any("in progress" in line for line in seen["seen"]["progress"]), seen["seen"]["progress"]
    assert seen["duration"] > 1.0 and "meeting_booked" in seen["facts"] and "campaign\ntest" in seen["facts"]
    # The finished calls carry the campaign's outcomes, not only the line's.
    for outcome in outcomes:
        assert outcome in seen["finished"]
    # The callee's words appeared live before they were final: each the start of what they said.
    interims = seen["seen"]["interim"]
    assert interims, "no interim words were shown"
    said = [line.text for _, persona in CAMPAIGN_PEOPLE.values() for line in PERSONAS[persona].lines]
    for interim in interims:
        assert any(_words(line)[: len(_words(interim))] == _words(interim) for line in said), (interim, said)
    for number in CAMPAIGN_PEOPLE:
        assert number not in seen["source"]
