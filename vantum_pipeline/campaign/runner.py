"""The campaign runner: due prospects → rules → store → dispatcher, and back.

``prepare_campaign`` reads the campaign's prospects (bad rows reported by
line), checks that the prompt template and the voicemail message have every
variable for every prospect *before* the first call, and imports prospects and the DNC file
into the store (idempotent: a restart imports nothing twice).

``CampaignRunner.run()``:

1. reconciles the attempts a previous run left open, before anyone is
   dialled: an attempt with a call sid is looked up on Twilio and followed
   until the call has ended (a call still on the line is never redialled);
   an attempt without one (killed between the claim and Twilio's answer) is
   searched for among Twilio's calls to that number since the claim, and
   forgotten only if Twilio never placed it. A call Twilio completed whose
   conversation we lost is ``interrupted`` (its rule: retry). The requests
   and the following are :mod:`.twilio_rest`'s, shared with the workers; a
   Twilio that does not answer stops the run (``ServiceError``) before anyone
   is dialled;
2. then, until no prospect is pending (or ``idle_exit`` seconds of nothing
   due, or ``stop()``): claims due prospects up to the dispatcher's free
   slots, skipping DNC numbers (final: never dialled) and deferring those
   outside their calling hours to the next opening; stops dialling when the
   spend so far plus ``reserve_per_call_usd`` per call in progress reaches
   the budget; records each result in one transaction with the rule's
   decision. The in-process dispatcher's calls go through a
   :class:`~.twilio_rest.ConfirmingDialer`: a dial that failed without
   Twilio's answer is looked up among Twilio's calls to the number, and a
   call found there (not one of the prospect's earlier calls) is the
   attempt's;
3. lets the calls in progress finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from vantum_pipeline.campaign.clock import Clock, SystemClock
from vantum_pipeline.campaign.config import CampaignConfig
from vantum_pipeline.campaign.dispatch import (
    CallJob,
    CampaignEvent,
    Dialer,
    Dispatcher,
    EventCallback,
    InProcessDispatcher,
)
from vantum_pipeline.campaign.dnc import read_dnc_file
from vantum_pipeline.campaign.prospects import ProspectList, RejectedRow, read_prospects
from vantum_pipeline.campaign.rules import ProspectState, decide, zone
from vantum_pipeline.campaign.store import AttemptRecord, AttemptRow, CampaignStore
from vantum_pipeline.campaign.twilio_rest import ConfirmingDialer, ask_twilio, follow_to_end, reconciled_record
from vantum_pipeline.errors import ConfigurationError, ServiceError
from vantum_pipeline.telephony.numbers import mask_number

__all__ = ["CampaignRunner", "Preparation", "RunSummary", "StoreDoNotCall", "prepare_campaign"]


@dataclass(slots=True)
class Preparation:
    prospects: ProspectList
    imported: int
    dnc_rejected: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> list[RejectedRow]:
        return self.prospects.rejected


def prepare_campaign(config: CampaignConfig, store: CampaignStore) -> Preparation:
    """Validate and import; ConfigurationError before any call if the prompt lacks a variable."""
    prospects = read_prospects(config.prospects, default_timezone=config.default_timezone)
    for row in prospects.rejected:
        logger.warning("{}: {}: skipped", config.prospects, row)
    templates = [("the prompt template", config.prompt)]
    if config.voicemail is not None:
        templates.append(("the voicemail message", config.voicemail))
    for what, template in templates:
        problems = []
        for prospect in prospects.prospects:
            missing = template.missing({**config.prompt_variables, **prospect.prompt_variables()})
            if missing:
                problems.append(f"line {prospect.line} ({prospect.id}): {', '.join(missing)}")
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise ConfigurationError(
                f"{config.prospects}: {what} needs variables these prospects lack "
                f"(add a column or set them under [prompt.variables] in {config.path.name}): {shown}"
            )
    store.ensure_campaign(config.id, config.name, {"file": str(config.path)})
    imported = store.import_prospects(config.id, prospects.prospects)
    dnc_rejected: list[str] = []
    if config.dnc_file is not None:
        dnc = read_dnc_file(config.dnc_file)
        store.import_dnc(dnc.numbers, source=f"file {config.dnc_file.name}")
        dnc_rejected = dnc.rejected
        for line in dnc.rejected:
            logger.warning("{}: skipped", line)
    return Preparation(prospects, imported, dnc_rejected)


class StoreDoNotCall:
    """The campaign's DNC list for a call's opt-out: ``add`` commits at once."""

    def __init__(self, store: CampaignStore, on_add: EventCallback | None = None) -> None:
        self._store = store
        self._on_add = on_add

    def add(self, number: str, *, source: str = "call") -> None:
        self._store.add_dnc(number, source=source)
        logger.info("{} added to the do-not-call list ({})", mask_number(number), source)
        if self._on_add is not None:
            self._on_add(CampaignEvent("note", text=f"{mask_number(number)} added to the do-not-call list"))

    def blocks(self, number: str) -> bool:
        return self._store.in_dnc(number)


@dataclass(slots=True)
class RunSummary:
    """Why ``run`` returned, and what this run did."""

    reason: str  # finished | waiting | budget | stopped
    dialled: int
    reconciled: int
    spend: float
    next_due: dt.datetime | None = None


class CampaignRunner:
    """Runs one campaign on one machine; see the module docstring."""

    def __init__(
        self,
        config: CampaignConfig,
        store: CampaignStore,
        dialer: Dialer,
        *,
        clock: Clock | None = None,
        dispatcher: Dispatcher | None = None,
        on_event: EventCallback | None = None,
        poll_interval: float = 0.5,
        idle_exit: float | None = None,
        reconcile_timeout: float = 120.0,
        write_records: bool = True,
        dnc: StoreDoNotCall | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.dialer = dialer
        self.clock = clock or SystemClock()
        self.on_event = on_event
        self.poll_interval = poll_interval
        self.idle_exit = idle_exit
        self.reconcile_timeout = reconcile_timeout
        self.dnc = dnc or StoreDoNotCall(store, on_event)
        self.dispatcher: Dispatcher = dispatcher or InProcessDispatcher(
            ConfirmingDialer(dialer, self._earlier_sids, timeout=reconcile_timeout),
            self,
            max_concurrent=config.max_concurrent_calls,
            calls_per_second=config.calls_per_second,
            dnc=self.dnc,
        )
        self.records_dir: Path | None = config.resolved_folder() / "calls" if write_records else None
        self.spend = store.spend(config.id)
        self.budget_reached = False
        self.dialled = 0
        self._wake = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------- control

    def stop(self) -> None:
        """Stop dialling; the calls in progress finish. Safe from a signal handler."""
        self._stopping = True
        self._wake.set()

    def _emit(self, event: CampaignEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                logger.opt(exception=True).error("campaign view failed on {}", event.kind)

    async def run(self) -> RunSummary:
        """Reconcile, dial until done, let calls in progress finish. Not cancel-safe
        for the calls in progress (cancelling abandons them; a restart reconciles)."""
        reconciled = await self.reconcile()
        try:
            reason = await self._loop()
        except BaseException:
            await self.dispatcher.aclose(graceful=False)
            raise
        await self.dispatcher.aclose(graceful=True, timeout=self.config.max_call_seconds + 30.0)
        next_due = self.store.next_due_at(self.config.id)
        return RunSummary(
            reason,
            self.dialled,
            reconciled,
            self.spend,
            dt.datetime.fromtimestamp(next_due, dt.UTC) if next_due is not None else None,
        )

    async def _loop(self) -> str:
        campaign = self.config.id
        while not self._stopping:
            now = self.clock.now()
            await self._dispatch_due(now)
            if self.dispatcher.in_flight == 0:
                if self._over_budget():
                    return "budget"
                next_due = self.store.next_due_at(campaign)
                if next_due is None:
                    return "finished"
                wait = next_due - now.timestamp()
                if self.idle_exit is not None and wait > self.idle_exit:
                    return "waiting"
                timeout = min(self.poll_interval, max(wait, 0.0)) if wait > 0 else self.poll_interval
            else:
                timeout = self.poll_interval
            self._wake.clear()
            try:
                async with asyncio.timeout(max(timeout, 0.001)):
                    await self._wake.wait()
            except TimeoutError:
                pass
        return "stopped"

    def _over_budget(self) -> bool:
        budget = self.config.budget_usd
        if budget is None:
            return False
        committed = self.spend + self.dispatcher.in_flight * self.config.reserve_per_call_usd
        if committed >= budget:
            if not self.budget_reached:
                self.budget_reached = True
                self._emit(
                    CampaignEvent(
                        "note",
                        text=f"budget: ${self.spend:.2f} spent + {self.dispatcher.in_flight} call(s) in progress "
                        f"reach the ${budget:.2f} cap: no new calls",
                    )
                )
                logger.warning("campaign {}: budget ${:.2f} reached: no new calls", self.config.id, budget)
            return True
        return False

    async def _dispatch_due(self, now: dt.datetime) -> None:
        campaign, hours = self.config.id, self.config.calling_hours
        now_ts = now.timestamp()
        while self.dispatcher.free_slots() > 0 and not self._stopping:
            free = self.dispatcher.free_slots()
            rows = self.store.due(campaign, now_ts, max(free, 64))
            if not rows:
                return
            moved = 0  # prospects this batch claimed, deferred or settled
            for row in rows:
                if self.dispatcher.free_slots() == 0 or self._stopping:
                    return
                if self.dnc.blocks(row.number):
                    self.store.skip_dnc(campaign, row.id)
                    moved += 1
                    self._emit(CampaignEvent("skipped", prospect_id=row.id, text="on the do-not-call list"))
                    continue
                tz = zone(row.timezone)
                if not hours.allows(now, tz):
                    opening = hours.next_opening(now, tz)
                    local = opening.astimezone(tz)
                    note = f"outside calling hours: next {local:%a %H:%M} {row.timezone}"
                    self.store.defer(campaign, row.id, opening.timestamp(), note)
                    moved += 1
                    self._emit(CampaignEvent("deferred", prospect_id=row.id, text=note))
                    continue
                if self._over_budget():
                    return
                # Attempt times are wall-clock (Twilio's clock, for reconciliation); due times follow self.clock.
                attempt = self.store.claim(campaign, row.id, time.time())
                if attempt is None:
                    continue
                job = CallJob(attempt, row.name, row.company, row.timezone, row.prompt_variables())
                self.dialled += 1
                moved += 1
                self._emit(
                    CampaignEvent(
                        "dialing", job.job_id, row.id, text=f"{row.name or row.id} (attempt {attempt.attempt})"
                    )
                )
                await self.dispatcher.submit(job)
            if moved == 0:
                return  # the batch stays due (claims refused): try again on the next tick, never spin

    # -------------------------------------------------------- result sink

    async def placed(self, job: CallJob, sid: str) -> None:
        self.store.placed(job.attempt, sid)
        self._emit(CampaignEvent("placed", job.job_id, job.attempt.prospect_id, text=sid))

    async def _earlier_sids(self, job: CallJob) -> set[str]:
        """The calls of the prospect's attempts so far (a failed dial's search must skip them)."""
        return self.store.call_sids(job.attempt.campaign_id, job.attempt.prospect_id)

    async def finished(self, job: CallJob, record: AttemptRecord) -> None:
        self._record(job.attempt, record)
        self._wake.set()

    def _record(self, attempt: AttemptRow, record: AttemptRecord) -> None:
        campaign = self.config.id
        now = self.clock.now()
        ended_this_way = self.store.ended_with(campaign, attempt.prospect_id, record.outcome) + 1
        callback_at = dt.datetime.fromtimestamp(record.callback_at, dt.UTC) if record.callback_at is not None else None
        decision = decide(
            record.outcome,
            rules=self.config.outcome_rules,
            ended_this_way=ended_this_way,
            now=now,
            callback_at=callback_at,
        )
        if decision.state is ProspectState.PENDING and decision.next_at is not None:
            row = self.store.prospect(campaign, attempt.prospect_id)
            if row is not None:
                tz = zone(row.timezone)
                opening = self.config.calling_hours.next_opening(decision.next_at, tz)
                decision = dataclasses.replace(decision, next_at=opening)
        self.store.finish(attempt, record, decision)
        self.spend += record.cost
        self._write_record(attempt, record, decision.state.value)
        self._emit(
            CampaignEvent(
                "ended",
                attempt.job_id,
                attempt.prospect_id,
                text=decision.reason,
                outcome=record.outcome,
            )
        )

    def _write_record(self, attempt: AttemptRow, record: AttemptRecord, state: str) -> None:
        if self.records_dir is None:
            return
        data: dict[str, Any] = {
            "campaign": attempt.campaign_id,
            "prospect": attempt.prospect_id,
            "attempt": attempt.attempt,
            "to": mask_number(attempt.number),
            "prospect_state": state,
            **dataclasses.asdict(record),
        }
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            path = self.records_dir / f"{_safe(attempt.prospect_id)}-{attempt.attempt}.json"
            path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        except OSError as exc:
            logger.warning("campaign {}: the call record could not be written: {}", attempt.log_id, exc)

    # ----------------------------------------------------- reconciliation

    async def reconcile(self) -> int:
        """Settle the attempts a previous run left open; returns how many."""
        # Attempts the dispatcher still holds (jobs with workers elsewhere) come back by themselves.
        # Called even with none open: a dispatcher reads results only once adoption is over.
        open_attempts = await self.dispatcher.adopt(self.store.open_attempts(self.config.id))
        if not open_attempts:
            return 0
        logger.info("campaign {}: reconciling {} attempt(s) left open", self.config.id, len(open_attempts))
        self._emit(CampaignEvent("note", text=f"reconciling {len(open_attempts)} call(s) left open by the last run"))
        try:
            async with asyncio.TaskGroup() as group:
                for attempt in open_attempts:
                    group.create_task(self._reconcile(attempt))
        except* ServiceError as failed:
            raise ServiceError(
                f"campaign {self.config.id}: {failed.exceptions[0]}: not dialling until it does",
                service="twilio",
                retryable=True,
            ) from failed
        return len(open_attempts)

    async def _reconcile(self, attempt: AttemptRow) -> None:
        sid = attempt.call_sid
        if sid is None:
            since = attempt.claimed_at - 60.0
            found = await ask_twilio(lambda: self.dialer.find_calls(attempt.number, since))
            # Calls of the prospect's earlier attempts are in the window too: they are not this one.
            known = self.store.call_sids(attempt.campaign_id, attempt.prospect_id)
            found = [call for call in found if call.sid not in known]
            if not found:
                self.store.unclaim(attempt, "not placed before the runner stopped")
                logger.info("attempt {} was never placed: the prospect is due again", attempt.log_id)
                return
            sid = found[-1].sid
            self.store.placed(attempt, sid)
        status = await follow_to_end(self.dialer, sid, timeout=self.reconcile_timeout)
        record = reconciled_record(sid, status, notes="reconciled after a restart")
        logger.info("attempt {} reconciled: Twilio says {} -> {}", attempt.log_id, record.twilio_status, record.outcome)
        self._record(attempt, record)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "+-_." else "_" for c in text)[:80]
