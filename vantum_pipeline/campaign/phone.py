"""The real calls of a campaign: the Twilio server and one service pipeline per call.

``PhoneDialer`` is the campaign's ``Dialer`` on the production path: it runs a
``TwilioServer`` (webhooks and media streams) with the campaign's call
features, places each call through the REST API (with asynchronous
answering-machine detection when the campaign's ``[amd]`` is on), and builds
the call's pipeline when its media stream starts::

    phone in → keypad → Deepgram STT → AMD turn guard → UserAggregator → OpenAI LLM
             → SentenceAggregator → CallActions → AMD gate → Cartesia TTS → phone out
             → AssistantAggregator

The prompt is the campaign's template filled with the prospect's row. The
model gets the campaign's tools: ``record_outcome`` and ``end_call`` (the
service's), ``schedule_callback`` (checked against the calling hours),
``do_not_call`` and, with a rep's number, ``transfer_call`` (``CallActions``).

The telephony features are bound to the campaign: an opt-out (the tool, the
keypad's opt-out key, or a ``do_not_call`` outcome) lands in the campaign's
DNC table at once, and the Twilio server checks that same table before it
places any call; the voicemail is the campaign's message filled with the
prospect's variables, and every call's TTS shares one phrase cache, so a
message is synthesized once per campaign (once per prospect when it names
them) and then played from the cache. A call the rep did not answer that
came back to the bot keeps its conversation: the new stream's pipeline
continues the same context.

The attempt's outcome: what the call concluded (``voicemail_left``,
``machine``, ``fax``, ``transferred``, ``opted_out``) wins over the model's
recorded result, which wins over Twilio's status; a transfer the rep did not
answer with nothing else recorded is ``transfer_unanswered``. The record
carries Twilio's status and AMD's verdict, the cost by service (every leg),
the transcript, what the callee heard, notes (the opt-out's source, the
transfer's fate) and the stereo recording's path when the campaign records
calls.

With ``console`` settings holding a token (``ConsoleSettings.from_env()``:
``VANTUM_CONSOLE_TOKEN``), the dialer's Twilio server also serves the web
console: every call live (the callee's words as they are spoken), then
finished with the campaign's outcome and its recording, and the campaign
figures of ``campaign_stats`` (``vantum_pipeline.campaign.figures``).

``services_from_env`` builds the four services' settings from the
environment (keys, ``.env``) and the campaign file's ``[services.*]``
tables, whose keys must be fields of the service's settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from vantum_pipeline.campaign.callbacks import schedule_callback_tool
from vantum_pipeline.campaign.clock import Clock
from vantum_pipeline.campaign.config import CampaignConfig
from vantum_pipeline.campaign.dispatch import (
    TWILIO_STATUS_OUTCOMES,
    CallJob,
    CallStatus,
    CampaignEvent,
    EventCallback,
    PlacedCallback,
)
from vantum_pipeline.campaign.dnc import CallDncList, DoNotCall
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.campaign.twilio_rest import TwilioCallLookup
from vantum_pipeline.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMContextFrame,
    TextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
)
from vantum_pipeline.processor import FrameDirection, FrameProcessor
from vantum_pipeline.processors.tools import SalesOutcome
from vantum_pipeline.services.tts_cache import TTSCache
from vantum_pipeline.telephony.client import mask_numbers
from vantum_pipeline.telephony.dnc import DncEntry
from vantum_pipeline.telephony.outcome import CallOutcome, CallRecord

if TYPE_CHECKING:
    from vantum_pipeline.console import CampaignStatsProvider, ConsoleHub, ConsoleSettings
    from vantum_pipeline.processors.context import LLMContext
    from vantum_pipeline.services.cartesia import CartesiaSettings
    from vantum_pipeline.services.deepgram import DeepgramSettings
    from vantum_pipeline.services.openai import OpenAISettings
    from vantum_pipeline.task import PipelineTask
    from vantum_pipeline.telephony.calls import OutboundCall
    from vantum_pipeline.telephony.settings import TwilioSettings
    from vantum_pipeline.transports.twilio.server import TwilioCall

__all__ = ["PhoneDialer", "ServiceSettings", "services_from_env"]

#: A refused call's telephony outcome as a campaign outcome.
_REFUSED = {
    CallOutcome.REMOVE: "invalid_number",
    CallOutcome.RETRY_LATER: "rate_limited",
    CallOutcome.UNREACHABLE: "no_answer",
    CallOutcome.CANCELED: "canceled",
    CallOutcome.ERROR: "error",
    CallOutcome.COMPLETED: "completed",
    CallOutcome.DO_NOT_CALL: "do_not_call_list",
}
#: What the call concluded (AMD, transfer, opt-out) → campaign outcome.
_CONCLUDED = {
    CallOutcome.VOICEMAIL_LEFT: "voicemail_left",
    CallOutcome.MACHINE: "machine",
    CallOutcome.FAX: "fax",
    CallOutcome.TRANSFERRED: "transferred",
    CallOutcome.OPTED_OUT: "opted_out",
}
#: The model's recorded result → campaign outcome (where the names differ).
_SALES = {"do_not_call": "opted_out", "voicemail": "voicemail_left"}
#: The phrase cache every call of a campaign shares (voicemails, fallback and handover lines).
_SHARED_CACHE_ENTRIES = 512
_SHARED_CACHE_BYTES = 64_000_000


@dataclass(slots=True)
class ServiceSettings:
    """The four services a campaign's calls use, with the campaign's caller id and phone formats."""

    twilio: TwilioSettings
    deepgram: DeepgramSettings
    openai: OpenAISettings
    cartesia: CartesiaSettings


def services_from_env(config: CampaignConfig, env: Mapping[str, str] | None = None) -> ServiceSettings:
    """The services' settings: environment first, then the campaign file's ``[services.*]``."""
    from vantum_pipeline.services.cartesia import CartesiaSettings
    from vantum_pipeline.services.deepgram import DeepgramSettings
    from vantum_pipeline.services.openai import OpenAISettings
    from vantum_pipeline.telephony.settings import TwilioSettings

    def overrides(name: str, cls: type) -> dict[str, Any]:
        table = config.services.get(name, {})
        names = {f.name for f in dataclasses.fields(cls)} - {"api_key", "auth_token", "account_sid"}
        for key in table:
            if key not in names:
                raise config.error(
                    f"services.{name}.{key}", f"not a {cls.__name__} setting ({', '.join(sorted(names))})"
                )
        return dict(table)

    twilio = TwilioSettings.from_env(env)
    twilio = dataclasses.replace(twilio, from_number=config.caller_id, **overrides("twilio", TwilioSettings))
    return ServiceSettings(
        twilio=twilio,
        deepgram=DeepgramSettings.from_env(env, **overrides("deepgram", DeepgramSettings)).for_phone(),
        openai=OpenAISettings.from_env(env, **overrides("openai", OpenAISettings)),
        cartesia=CartesiaSettings.from_env(env, **overrides("cartesia", CartesiaSettings)).for_twilio(),
    )


@dataclass
class _CallContext:
    """What one call's pipelines (one per media stream: a call back from an
    unanswered transfer opens a second) share with the dialer."""

    job: CallJob
    outcomes: list[SalesOutcome] = field(default_factory=list)
    callback_at: dt.datetime | None = None
    callback_note: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    recording: _LineTaps | None = None
    llm_context: LLMContext | None = None
    #: Set when no pipeline of the call is running (and at least one ran).
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False
    running: int = 0
    opt_out_source: str | None = None


class _CallDnc:
    """The campaign's DNC sink as one call sees it: notes how the prospect opted out."""

    def __init__(self, campaign: CallDncList, context: _CallContext) -> None:
        self.campaign = campaign
        self.context = context

    async def add(self, entry: DncEntry) -> None:
        await self.campaign.add(entry)
        self.context.opt_out_source = entry.source


class PhoneDialer:
    """The campaign's dialer on Twilio; use ``async with``."""

    def __init__(
        self,
        config: CampaignConfig,
        services: ServiceSettings,
        *,
        dnc: DoNotCall,
        clock: Clock,
        on_event: EventCallback | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        public_base_url: str | None = None,
        recordings_dir: Path | None = None,
        console: ConsoleSettings | None = None,
        campaign_stats: CampaignStatsProvider | None = None,
    ) -> None:
        from vantum_pipeline.telephony.calls import CallRegistry
        from vantum_pipeline.transports.twilio.server import TwilioServer
        from vantum_pipeline.transports.twilio.transport import TwilioTransportParams

        self.config = config
        self.services = services
        self.dnc = dnc
        self.clock = clock
        self.on_event = on_event
        self.recordings_dir = recordings_dir if config.record_calls else None
        self.features = config.features
        #: The campaign's DNC table as the telephony layer's sink and checker.
        self.call_dnc = CallDncList(dnc)
        #: One phrase cache for every call: the voicemail is synthesized once, then played from here.
        self.tts_cache = TTSCache(_SHARED_CACHE_ENTRIES, _SHARED_CACHE_BYTES)
        self._contexts: dict[str, _CallContext] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        #: The web console's model of this dialer's calls; None: no console (no token configured).
        self.console_hub: ConsoleHub | None = None
        self.console_settings = console if console is not None and console.token is not None else None
        registry = None
        if self.console_settings is not None:
            from vantum_pipeline.console import ConsoleHub

            self.console_hub = ConsoleHub()
            registry = CallRegistry(on_record=self._console_call_ended)
        self.server = TwilioServer(
            services.twilio,
            self._build_pipeline,
            host=host,
            port=port,
            transport_params=TwilioTransportParams(passthrough_input=True),
            max_calls=max(config.max_concurrent_calls * 2, 10),
            features=config.features,
            dnc=self.call_dnc,
            registry=registry,
        )
        if self.console_hub is not None and self.console_settings is not None:
            from vantum_pipeline.console import mount_console

            settings, server = self.console_settings, self.server
            mount_console(server.app, self.console_hub, settings, campaigns=campaign_stats, load=server.load)
        self._public_base_url = public_base_url
        self._lookup = TwilioCallLookup(self.server.client)

    def overloaded(self) -> bool:
        """True while the server's event loop runs later than its ``overload_lag`` (see ``TwilioServer``):
        the dispatchers then hand this dialer no call, and no attempt is spent on a refusal."""
        return self.server.overloaded

    async def __aenter__(self) -> PhoneDialer:
        _load_call_modules()
        await self.server.start()
        if self._public_base_url is not None:
            self.server.public_base_url = self._public_base_url
        if self.console_url is not None:
            logger.info("campaign {}: the web console is at {}", self.config.id, self.console_url)
            self._emit(CampaignEvent("note", text=f"web console: {self.console_url} (token: VANTUM_CONSOLE_TOKEN)"))
        return self

    def _console_call_ended(self, record: CallRecord) -> None:
        if self.console_hub is None:
            return
        try:
            self.console_hub.call_ended(record)
        except Exception as exc:  # the console is a view: it never breaks a call's record
            logger.opt(exception=exc).error("campaign call {}: the console missed its record: {}", record.call_sid, exc)

    @property
    def console_url(self) -> str | None:
        """Where this dialer's server serves the web console (None: no console)."""
        if self.console_settings is None:
            return None
        return f"{self.server.local_url}{self.console_settings.path}"

    async def __aexit__(self, *exc_info: object) -> None:
        await self.server.stop()
        for watcher in self._watchers:
            watcher.cancel()
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=2.0)

    def _emit(self, event: CampaignEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # ------------------------------------------------------------- Dialer

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        key = job.attempt.prospect_id
        context = _CallContext(job)
        self._contexts[key] = context
        try:
            return await self._call(job, context, placed)
        finally:
            self._contexts.pop(key, None)

    async def _call(self, job: CallJob, context: _CallContext, placed: PlacedCallback) -> AttemptRecord:
        call = await self.server.place_call(
            job.number, campaign_id=job.attempt.campaign_id, prospect_id=job.attempt.prospect_id
        )
        if call.ended:
            assert call.record is not None
            outcome = _REFUSED.get(call.record.outcome, "error")
            return AttemptRecord(outcome, twilio_status=call.record.status, notes=f"not placed: {call.record.status}")
        assert call.sid is not None
        await placed(call.sid)
        limit = self.config.max_call_seconds + self.services.twilio.ring_timeout + 30.0
        try:
            async with asyncio.timeout(limit):
                telephony = await call.wait()
        except TimeoutError:
            telephony = await self._after_limit(call, limit)
        if context.started:
            try:
                async with asyncio.timeout(10.0):
                    await context.finished.wait()
            except TimeoutError:
                logger.warning("campaign call {}: its pipeline did not report within 10 s", call.sid)
        return self._attempt_record(call, telephony, context)

    async def _after_limit(self, call: OutboundCall, limit: float) -> CallRecord:
        """The call outlived the campaign's limit: hang up, unless the prospect is with the rep."""
        if call.transfer_status in ("dialing", "answered"):
            # The AI leg is over and a person has the call: it ends when they are done.
            transfer = self.features.transfer
            bridge = transfer.timeout + transfer.max_bridge_seconds
            logger.info("campaign call {}: transferred; following it for up to {:.0f}s more", call.sid, bridge)
            try:
                async with asyncio.timeout(bridge):
                    return await call.wait()
            except TimeoutError:
                pass
        logger.warning("campaign call {}: still up after {:.0f}s: hanging up", call.sid, limit)
        await self.server.hang_up(call)
        try:
            async with asyncio.timeout(30.0):
                return await call.wait()
        except TimeoutError:
            return call.finish(CallOutcome.ERROR, "timeout")

    def _attempt_record(self, call: OutboundCall, telephony: CallRecord, context: _CallContext) -> AttemptRecord:
        assert call.sid is not None
        sales = context.outcomes[-1] if context.outcomes else None
        outcome = TWILIO_STATUS_OUTCOMES.get(telephony.status, "error")
        if outcome == "completed":
            concluded = _CONCLUDED.get(telephony.outcome)
            if concluded is not None:
                outcome = concluded
            elif sales is not None:
                outcome = _SALES.get(sales.outcome, sales.outcome)
            elif telephony.outcome is CallOutcome.ERROR:
                outcome = "error"
            elif call.transfer_status == "not_answered":
                outcome = "transfer_unanswered"
            elif telephony.answered_by and telephony.answered_by.startswith("machine"):
                outcome = "machine"
        if sales is not None and sales.outcome == "do_not_call" and outcome not in ("busy", "no_answer", "failed"):
            outcome = "opted_out"  # whatever else happened, the prospect asked to be left alone
        by_service: dict[str, float] = {}
        turns: list[dict[str, Any]] = []
        for record in context.records:
            cost = record.get("cost") or {}
            for name, value in (cost.get("by_service") or {}).items():
                by_service[name] = by_service.get(name, 0.0) + float(value)
            turns.extend(record.get("turns", []))
        by_service["twilio"] = telephony.cost
        transcript: list[dict[str, Any]] = [
            {key: turn.get(key) for key in ("role", "text", "heard", "interrupted", "at") if key in turn}
            for turn in turns
        ]
        heard = " ".join(
            str(turn.get("heard") if turn.get("heard") is not None else turn.get("text", ""))
            for turn in turns
            if turn.get("role") == "assistant"
        ).strip()
        recording = None
        path = self._recording_path(context.job)
        if context.recording is not None and path is not None:
            if context.recording.write(path):
                recording = str(path)
        notes = sales.notes if sales is not None else ""
        if sales is not None and sales.meeting_time:
            notes = f"{notes} (meeting: {sales.meeting_time})".strip()
        if context.callback_note:
            notes = f"{notes} (callback: {context.callback_note})".strip()
        if context.opt_out_source is not None:
            notes = f"{notes} (opted out by {context.opt_out_source})".strip()
        if call.transfer is not None:
            fate = {"answered": "the rep answered", "not_answered": "the rep did not answer"}
            notes = f"{notes} (transfer: {fate.get(call.transfer_status or '', call.transfer_status)})".strip()
        if outcome == "voicemail_left":
            notes = f"{notes} (voicemail left after the {telephony.answered_by or 'machine'} greeting)".strip()
        if self.console_hub is not None:
            self.console_hub.refresh(call.sid, outcome=outcome)  # the campaign's outcome; the recording is written
        return AttemptRecord(
            outcome,
            twilio_status=telephony.status,
            call_sid=call.sid,
            duration=telephony.duration,
            cost=round(sum(by_service.values()), 6),
            cost_by_service=by_service,
            transcript=transcript,
            heard=heard,
            recording=recording,
            notes=notes,
            callback_at=context.callback_at.timestamp() if context.callback_at is not None else None,
            answered_by=telephony.answered_by,
        )

    def _recording_path(self, job: CallJob) -> Path | None:
        """Where the attempt's stereo recording goes (None: the campaign records no calls)."""
        if self.recordings_dir is None:
            return None
        return self.recordings_dir / f"{job.attempt.prospect_id}-{job.attempt.attempt}.wav"

    async def call_status(self, sid: str) -> CallStatus | None:
        return await self._lookup.call_status(sid)

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        return await self._lookup.find_calls(number, since)

    async def hang_up(self, sid: str) -> None:
        await self._lookup.hang_up(sid)

    # ----------------------------------------------------------- pipeline

    async def _build_pipeline(self, session: TwilioCall) -> PipelineTask:
        from vantum_pipeline.observability.collector import MetricsCollector
        from vantum_pipeline.observability.cost import CostTracker, Prices
        from vantum_pipeline.observability.record import CallRecorder, MemorySink
        from vantum_pipeline.pipeline import Pipeline
        from vantum_pipeline.processors.aggregators import AssistantAggregator, UserAggregator
        from vantum_pipeline.processors.context import LLMContext
        from vantum_pipeline.processors.sentence import SentenceAggregator
        from vantum_pipeline.services.cartesia import CartesiaTTSService
        from vantum_pipeline.services.deepgram import DeepgramSTTService
        from vantum_pipeline.services.openai import OpenAILLMService
        from vantum_pipeline.task import PipelineTask
        from vantum_pipeline.telephony.actions import CallActions
        from vantum_pipeline.telephony.keypad import KeypadProcessor, keypad_bindings
        from vantum_pipeline.telephony.voicemail import MachineDetectionGate

        context = self._contexts.get(session.parameters.get("prospect_id", ""))
        if context is None:
            raise LookupError(f"no campaign call waits for prospect {session.parameters.get('prospect_id')!r}")
        job = context.job
        control = session.call
        resumed = control.resumed_after is not None

        def scheduled(at: dt.datetime, note: str) -> None:
            context.callback_at, context.callback_note = at, note
            text = f"callback scheduled for {at:%Y-%m-%d %H:%M} UTC"
            self._emit(CampaignEvent("line", job.job_id, job.attempt.prospect_id, text, "tool"))

        def outcome(result: SalesOutcome) -> None:
            context.outcomes.append(result)
            if result.outcome == "do_not_call":
                self.dnc.add(job.number, source=f"opt-out on call {session.call_sid}")

        features = self.features
        variables = {**self.config.prompt_variables, **job.variables}
        # Built first: a voicemail variable the prospect lacks fails the set-up, not the message.
        gate = MachineDetectionGate(control, features.amd, variables=variables, name=f"amd-gate:{job.job_id}")
        actions = CallActions(
            control,
            features,
            dnc=_CallDnc(self.call_dnc, context),
            from_number=self.config.caller_id,
            name=f"call-actions:{job.job_id}",
        )
        keypad = KeypadProcessor(
            keypad_bindings(features.keypad_bindings(), actions),
            inter_digit_timeout=features.keypad.inter_digit_timeout,
            max_digits=features.keypad.max_digits,
            name=f"keypad:{job.job_id}",
        )
        tools = [
            schedule_callback_tool(
                timezone=job.timezone, hours=self.config.calling_hours, clock=self.clock, on_scheduled=scheduled
            ),
            *actions.tools(),
        ]
        if context.llm_context is None:
            context.llm_context = LLMContext.from_template(self.config.prompt, variables)
        llm_context = context.llm_context  # a call back from a transfer goes on with the same conversation
        tracker = CostTracker(Prices())
        recorder = CallRecorder(sink=MemorySink(), tracker=tracker, call_id=session.call_sid)
        if context.recording is None and self.recordings_dir is not None:
            context.recording = _LineTaps()
        taps = context.recording
        processors: list[FrameProcessor] = [
            session.transport.input(),
            _CalleeTap(taps),
            keypad,
            DeepgramSTTService(self.services.deepgram),
            _TranscriptTap(self, job),
            recorder.user_tap(),
            gate.turn_guard(),
            UserAggregator(llm_context),
            OpenAILLMService(self.services.openai, tools=tools, on_outcome=outcome),
            SentenceAggregator(),
            actions,
            gate,
            CartesiaTTSService(self.services.cartesia, cache=self.tts_cache),
            _BotTap(self, job, taps),
            session.transport.output(),
            AssistantAggregator(llm_context),
        ]
        task = PipelineTask(Pipeline(processors), audio_in_sample_rate=8000, audio_out_sample_rate=8000)
        MetricsCollector(tracker=tracker).attach(task)
        if self.console_hub is not None:
            self.console_hub.watch(
                task,
                recorder,  # attached by the hub
                call_id=session.call_sid,
                to=job.number,
                campaign_id=job.attempt.campaign_id,
                recording=self._recording_path(job),
            )
        else:
            recorder.attach(task)
        context.started = True
        context.running += 1
        context.finished.clear()

        async def watch() -> None:
            try:
                while not task.has_finished():  # noqa: ASYNC110 - the server owns the run; no event to await
                    await asyncio.sleep(0.1)
                context.records.append(await recorder.finish())
            finally:
                context.running -= 1
                if context.running == 0:
                    context.finished.set()

        watcher = asyncio.get_running_loop().create_task(watch(), name=f"campaign-record:{job.job_id}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        if not resumed:
            await task.queue_frame(LLMContextFrame(llm_context))  # outbound: the bot speaks first
        return task


#: What a call's pipeline is built from (``PhoneDialer._build_pipeline`` imports them where it needs them).
_CALL_MODULES = (
    "vantum_pipeline.observability.collector",
    "vantum_pipeline.observability.cost",
    "vantum_pipeline.observability.record",
    "vantum_pipeline.pipeline",
    "vantum_pipeline.processors.aggregators",
    "vantum_pipeline.processors.context",
    "vantum_pipeline.processors.sentence",
    "vantum_pipeline.services.cartesia",
    "vantum_pipeline.services.deepgram",
    "vantum_pipeline.services.openai",
    "vantum_pipeline.task",
    "vantum_pipeline.telephony.actions",
    "vantum_pipeline.telephony.keypad",
    "vantum_pipeline.telephony.voicemail",
)


def _load_call_modules() -> None:
    """Import the call pipeline's modules (the services' SDKs among them) when the dialer opens,
    before any call: left to the first call, they hold the event loop for seconds on a loaded
    machine while that call is up, and a worker's lease renewals and keep-alives wait for it
    (its places lapse and other workers take them: more calls than the cluster's cap)."""
    for name in _CALL_MODULES:
        importlib.import_module(name)


class _LineTaps:
    """The call as heard on the line, for a stereo WAV (callee left, bot right).

    Callee audio is placed where it arrived (the line paces it); bot audio
    arrives ahead of real time, so each chunk is placed where the previous
    one ends, and a barge-in cuts what had not been played yet."""

    MAX_SECONDS = 1800.0

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.callee: list[tuple[float, bytes]] = []
        self.bot: list[tuple[float, bytes]] = []
        self._cursor = 0.0

    def now(self) -> float:
        return time.monotonic() - self.started

    def add_callee(self, frame: InputAudioRawFrame) -> None:
        if frame.encoding == "mulaw" and self.now() < self.MAX_SECONDS:
            self.callee.append((self.now(), frame.audio))

    def add_bot(self, frame: TTSAudioRawFrame) -> None:
        if frame.encoding != "mulaw" or frame.sample_rate != 8000 or self.now() > self.MAX_SECONDS:
            return
        at = max(self.now(), self._cursor)
        self.bot.append((at, frame.audio))
        self._cursor = at + len(frame.audio) / 8000

    def interrupt(self) -> None:
        now = self.now()
        self.bot = [(at, audio[: max(0, round((now - at) * 8000))]) for at, audio in self.bot if at < now]
        self._cursor = now

    def write(self, path: Path) -> bool:
        from vantum_pipeline.demo.recording import stereo_line_recording

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stereo_line_recording(path, self.callee, self.bot)
        except OSError as exc:
            logger.warning("the recording {} could not be written: {}", mask_numbers(str(path)), exc)
            return False
        return True


class _CalleeTap(FrameProcessor):
    def __init__(self, taps: _LineTaps | None) -> None:
        super().__init__(name="campaign-callee-tap")
        self.taps = taps

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if self.taps is not None and isinstance(frame, InputAudioRawFrame):
            self.taps.add_callee(frame)
        await self.push_frame(frame, direction)


class _TranscriptTap(FrameProcessor):
    def __init__(self, dialer: PhoneDialer, job: CallJob) -> None:
        super().__init__(name="campaign-transcript-tap")
        self.dialer = dialer
        self.job = job

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if type(frame) is TranscriptionFrame and frame.text.strip():
            job = self.job
            self.dialer._emit(CampaignEvent("line", job.job_id, job.attempt.prospect_id, frame.text.strip(), "callee"))
        await self.push_frame(frame, direction)


class _BotTap(FrameProcessor):
    def __init__(self, dialer: PhoneDialer, job: CallJob, taps: _LineTaps | None) -> None:
        super().__init__(name="campaign-bot-tap")
        self.dialer = dialer
        self.job = job
        self.taps = taps

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, TTSAudioRawFrame):
            if self.taps is not None:
                self.taps.add_bot(frame)
        elif type(frame) is TextFrame and direction is FrameDirection.DOWNSTREAM and frame.text.strip():
            job = self.job
            self.dialer._emit(CampaignEvent("line", job.job_id, job.attempt.prospect_id, frame.text.strip(), "bot"))
        elif isinstance(frame, TTSSpeakFrame) and direction is FrameDirection.DOWNSTREAM and frame.text.strip():
            job, text = self.job, frame.text.strip()
            if frame.category in ("voicemail", "transfer", "opt_out", "transfer_failed"):
                text = f"[{frame.category.replace('_', ' ')}] {text}"
            self.dialer._emit(CampaignEvent("line", job.job_id, job.attempt.prospect_id, text, "bot"))
        elif isinstance(frame, InterruptionFrame) and self.taps is not None:
            self.taps.interrupt()
        await self.push_frame(frame, direction)
