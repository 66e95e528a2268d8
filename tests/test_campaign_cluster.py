"""Campaign dispatch through a real Redis: the coordinator's RedisDispatcher and
CampaignWorkers, with a scripted phone line standing in for Twilio (the whole
calls through the fakes are in test_campaign_cluster_calls.py)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("arq", reason="the redis extra is not installed")

from vantum_pipeline.campaign import CampaignRunner, CampaignStore, FrozenClock, load_campaign, prepare_campaign
from vantum_pipeline.campaign.dispatch import CallJob, CallStatus, PlacedCallback
from vantum_pipeline.campaign.jobs import BadJob, Keys, decode_job, encode_job
from vantum_pipeline.campaign.redis_dispatch import RedisDispatcher
from vantum_pipeline.campaign.store import AttemptRecord
from vantum_pipeline.campaign.worker import CampaignWorker
from vantum_pipeline.errors import ServiceError

TUESDAY_MORNING = dt.datetime(2026, 12, 8, 15, 0, tzinfo=dt.UTC)  # 10:00 in New York


class ScriptedLine:
    """Each number answers the way its last digit says; counts its dials."""

    OUTCOMES: ClassVar[dict[str, str]] = {"0": "busy", "1": "no_answer", "2": "failed"}

    def __init__(self, log: list[tuple[str, str]], hold: float = 0.05) -> None:
        self.log = log
        self.hold = hold
        self.live = 0
        self.peak = 0

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        self.log.append((job.job_id, job.number))
        self.live += 1
        self.peak = max(self.peak, self.live)
        try:
            sid = f"CA{len(self.log):032d}"
            await placed(sid)
            await asyncio.sleep(self.hold)
            outcome = self.OUTCOMES.get(job.number[-1], "completed")
            return AttemptRecord(outcome, call_sid=sid, duration=1.0, cost=0.01)
        finally:
            self.live -= 1

    async def call_status(self, sid: str) -> CallStatus | None:
        return CallStatus(sid, "completed", 1.0)

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        return []

    async def hang_up(self, sid: str) -> None:
        return None


def write_campaign(folder: Path, numbers: list[str], **rules: Any) -> Path:
    (folder / "prospects.csv").write_text(
        "number,name,company,timezone\n"
        + "".join(f"{n},Prospect {i},Co {i},America/New_York\n" for i, n in enumerate(numbers))
    )
    retry = "\n".join(f"[rules.outcomes.{k}]\n{v}" for k, v in rules.items())
    path = folder / "campaign.toml"
    path.write_text(
        f"""
[campaign]
name = "Cluster test"
caller_id = "+15005550006"
prospects = "prospects.csv"
record_calls = false

[prompt.variables]
agent_name = "Alex"
company_name = "Vantum"
product_name = "the phone agent"

[rules]
max_concurrent_calls = 4
calls_per_second = 50

{retry}
"""
    )
    return path


@contextlib.asynccontextmanager
async def workers(
    url: str, line: ScriptedLine, n: int, prefix: str = "w", **options: Any
) -> AsyncIterator[list[CampaignWorker]]:
    @contextlib.asynccontextmanager
    async def factory(config: Any, dnc: Any) -> AsyncIterator[ScriptedLine]:
        yield line

    made = [
        CampaignWorker(url, factory, limits={"calls": 3}, calls_per_second=100, lease_ttl=2, worker_id=f"{prefix}{i}",
                       max_jobs=5, poll_delay=0.05, **options)
        for i in range(n)
    ]  # fmt: skip
    tasks = [asyncio.get_running_loop().create_task(w.run()) for w in made]
    try:
        yield made
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_campaign_through_redis_workers(redis_server: Any, tmp_path: Path) -> None:
    numbers = [f"+1415555{i:04d}" for i in range(30)]
    path = write_campaign(tmp_path, numbers)
    config = load_campaign(path)
    dials: list[tuple[str, str]] = []
    line = ScriptedLine(dials)
    with CampaignStore(tmp_path / "store.db") as store:
        prepare_campaign(config, store)
        async with RedisDispatcher(
            redis_server.url, campaign_id=config.id, config_text=path.read_text(), config_path=str(path),
            max_outstanding=6,
        ) as dispatcher, workers(redis_server.url, line, 2):  # fmt: skip
            runner = CampaignRunner(
                config, store, line, clock=FrozenClock(TUESDAY_MORNING), dispatcher=dispatcher, poll_interval=0.05,
                idle_exit=0.0, write_records=False,
            )  # fmt: skip
            dispatcher.bind(runner, dnc=runner.dnc)
            summary = await asyncio.wait_for(runner.run(), 60)
        assert summary.reason in ("finished", "waiting")
        attempts = store.attempts(config.id)
        job_ids = [job_id for job_id, _ in dials]
        assert len(job_ids) == len(set(job_ids)), "an attempt was dialled twice"
        assert line.peak <= 3, f"cluster cap 3 exceeded: {line.peak}"
        assert len(attempts) == len(dials) == 30
        outcomes = store.outcome_counts(config.id)
        assert outcomes.get("busy") == 3 and outcomes.get("no_answer") == 3 and outcomes.get("failed") == 3
        assert outcomes.get("completed") == 21


class OverloadedLine(ScriptedLine):
    """A worker's line whose process is overloaded (as PhoneDialer says while its loop runs late)."""

    def overloaded(self) -> bool:
        return True


async def test_an_overloaded_worker_puts_its_jobs_back_undialled(redis_server: Any, tmp_path: Path) -> None:
    numbers = [f"+1415555{i:04d}" for i in range(3, 9)]  # all answer "completed"
    path = write_campaign(tmp_path, numbers)
    config = load_campaign(path)
    dials: list[tuple[str, str]] = []
    late = OverloadedLine([])
    with CampaignStore(tmp_path / "store.db") as store:
        prepare_campaign(config, store)
        async with (
            RedisDispatcher(
                redis_server.url, campaign_id=config.id, config_text=path.read_text(), config_path=str(path),
                max_outstanding=6,
            ) as dispatcher,
            workers(redis_server.url, late, 1) as (overloaded,),
        ):  # fmt: skip
            runner = CampaignRunner(
                config, store, late, clock=FrozenClock(TUESDAY_MORNING), dispatcher=dispatcher, poll_interval=0.05,
                idle_exit=0.0, write_records=False,
            )  # fmt: skip
            dispatcher.bind(runner, dnc=runner.dnc)
            running = asyncio.get_running_loop().create_task(runner.run())
            async with asyncio.timeout(30):
                while overloaded.overloaded_deferrals < 3:  # noqa: ASYNC110 - the worker's counter has no event
                    await asyncio.sleep(0.05)
            assert not late.log and store.attempts(config.id) != []  # claimed, put back, never dialled
            assert overloaded.health()["overloaded_deferrals"] >= 3
            async with workers(redis_server.url, ScriptedLine(dials), 1, prefix="on-time-"):  # takes them
                summary = await asyncio.wait_for(running, 60)
        assert summary.reason in ("finished", "waiting")
        assert not late.log
        assert sorted(number for _, number in dials) == numbers  # each dialled once, by the worker on time
        assert len(store.attempts(config.id)) == 6  # one attempt each: the deferrals spent none
        assert store.outcome_counts(config.id) == {"completed": 6}


def test_poison_jobs_are_refused_with_the_field_named() -> None:
    for text, reason in [
        ("{", "not valid JSON"),
        ("[]", "'attempt' object"),
        ('{"attempt": {}}', "no 'campaign_id'"),
        (
            json.dumps({"attempt": {"campaign_id": "c", "prospect_id": "p", "attempt": 1, "number": "12",
                                    "state": "claimed", "claimed_at": 0}}),
            "'number'",
        ),
        (
            json.dumps({"attempt": {"campaign_id": "c", "prospect_id": "p", "attempt": "1", "number": "+14155550100",
                                    "state": "claimed", "claimed_at": 0}}),
            "'attempt' must be a int",
        ),
        ("x" * 70_000, "exceeds"),
    ]:  # fmt: skip
        with pytest.raises(BadJob, match=reason):
            decode_job(text)


async def test_a_poison_job_fails_alone(redis_server: Any, tmp_path: Path) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    numbers = ["+14155550103", "+14155550104"]
    path = write_campaign(tmp_path, numbers)
    config = load_campaign(path)
    line = ScriptedLine([])
    with CampaignStore(tmp_path / "store.db") as store:
        prepare_campaign(config, store)
        async with RedisDispatcher(
            redis_server.url, campaign_id=config.id, config_text=path.read_text(), max_outstanding=4
        ) as dispatcher, workers(redis_server.url, line, 1):  # fmt: skip
            runner = CampaignRunner(config, store, line, clock=FrozenClock(TUESDAY_MORNING), dispatcher=dispatcher,
                                    poll_interval=0.05, idle_exit=0.0, write_records=False)  # fmt: skip
            dispatcher.bind(runner, dnc=runner.dnc)
            # a job for this campaign whose data is bad, straight onto the queue
            pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
            claimed = store.claim(config.id, numbers[1], TUESDAY_MORNING.timestamp())
            assert claimed is not None
            bad = json.loads(encode_job(CallJob(claimed)))
            bad["attempt"]["number"] = "not a number"
            await pool.enqueue_job("place_call", json.dumps(bad), _job_id=claimed.job_id, _queue_name=Keys.QUEUE)
            await pool.aclose()
            await asyncio.wait_for(runner.run(), 30)
        attempts = {a["prospect_id"]: a for a in store.attempts(config.id)}
        assert attempts[numbers[1]]["outcome"] == "error" and "bad job" in attempts[numbers[1]]["notes"]
        assert attempts[numbers[0]]["outcome"] == "completed"


async def test_a_coordinator_stopped_mid_campaign_resumes_without_a_second_dial(
    redis_server: Any, tmp_path: Path
) -> None:
    """The coordinator is cancelled with jobs queued, running and with results unread; a new one
    on the same store adopts them: every attempt is dialled once and recorded once."""
    numbers = [f"+1415555{i:04d}" for i in range(40)]
    path = write_campaign(tmp_path, numbers)
    config = load_campaign(path)
    dials: list[tuple[str, str]] = []
    line = ScriptedLine(dials, hold=0.2)

    def dispatcher() -> RedisDispatcher:
        return RedisDispatcher(
            redis_server.url, campaign_id=config.id, config_text=path.read_text(), config_path=str(path),
            max_outstanding=8,
        )  # fmt: skip

    def runner_for(store: CampaignStore, remote: RedisDispatcher) -> CampaignRunner:
        runner = CampaignRunner(
            config, store, line, clock=FrozenClock(TUESDAY_MORNING), dispatcher=remote, poll_interval=0.05,
            idle_exit=0.0, write_records=False,
        )  # fmt: skip
        remote.bind(runner, dnc=runner.dnc)
        return runner

    async with workers(redis_server.url, line, 2):
        with CampaignStore(tmp_path / "store.db") as store:
            prepare_campaign(config, store)
            async with dispatcher() as first:
                run = asyncio.get_running_loop().create_task(runner_for(store, first).run())
                async with asyncio.timeout(30):
                    while len(dials) < 12:  # noqa: ASYNC110 - the dials are a plain list
                        await asyncio.sleep(0.01)
                run.cancel()  # abandoned: jobs with the workers, results on the stream unread
                with contextlib.suppress(asyncio.CancelledError):
                    await run
            left_open = len(store.open_attempts(config.id))
            assert left_open > 0, "the coordinator stopped with nothing open: the test tested nothing"
        with CampaignStore(tmp_path / "store.db") as store:
            async with dispatcher() as second:
                summary = await asyncio.wait_for(runner_for(store, second).run(), 60)
            assert summary.reason in ("finished", "waiting")  # waiting: busy numbers retry in 15 minutes
            attempts = store.attempts(config.id)
    job_ids = [job_id for job_id, _ in dials]
    assert len(job_ids) == len(set(job_ids)), "an attempt was dialled twice"
    assert len(attempts) == len(dials) == 40
    assert all(a["state"] == "ended" for a in attempts)


async def test_a_result_waiting_before_adoption_is_recorded_not_dropped(redis_server: Any) -> None:
    """A worker finished a call while no coordinator ran: its result waits on the stream. A new
    coordinator must adopt the attempt before reading results, or the result is dropped as not
    outstanding and the attempt is waited on for ever."""
    from redis.asyncio import Redis

    from vantum_pipeline.campaign.jobs import encode_event, encode_record
    from vantum_pipeline.campaign.store import AttemptRow

    row = AttemptRow("cluster-test", "+14155550123", 1, "+14155550123", "placed", None, 0.0)
    job = CallJob(row)
    keys = Keys("cluster-test")
    redis = Redis.from_url(redis_server.url)
    try:
        record = AttemptRecord("completed", call_sid="CA" + "7" * 32, duration=3.0, cost=0.01)
        await redis.xadd(
            keys.results, encode_event("finished", job.job_id, encode_job(job), record=encode_record(record))
        )
        await redis.hset(keys.dial(job.job_id), mapping={"state": "done", "outcome": "completed"})
    finally:
        await redis.aclose()

    recorded: list[tuple[str, str]] = []

    class Sink:
        async def placed(self, job: CallJob, sid: str) -> None:
            return None

        async def finished(self, job: CallJob, record: AttemptRecord) -> None:
            recorded.append((job.job_id, record.outcome))

    async with RedisDispatcher(
        redis_server.url, campaign_id="cluster-test", config_text="", config_path="", max_outstanding=8
    ) as remote:
        remote.bind(Sink())
        await asyncio.sleep(0.3)  # the time a results reader started at once needs to read the entry early
        assert await remote.adopt([row]) == []  # the worker's marker says done: its result will come
        async with asyncio.timeout(10):
            while not recorded:  # noqa: ASYNC110 - a plain list
                await asyncio.sleep(0.01)
    assert recorded == [(job.job_id, "completed")]
    assert remote.duplicates == 0


def test_worker_options_flags_win_over_the_environment() -> None:
    from vantum_pipeline.campaign.cluster_command import WorkerOptions, parse_service_limits
    from vantum_pipeline.errors import ConfigurationError

    env = {"CLUSTER_MAX_CALLS": "40", "CLUSTER_CALLS_PER_SECOND": "2.5", "WORKER_MAX_JOBS": "7"}
    options = WorkerOptions.from_env(
        "redis://r:6379/0", env, max_calls=None, max_jobs=3, service_limits=parse_service_limits(["cartesia=20"])
    )
    assert (options.max_calls, options.max_jobs, options.calls_per_second) == (40, 3, 2.5)
    assert options.limits == {"calls": 40, "deepgram": 50, "cartesia": 20}  # Deepgram's 50 by default
    with pytest.raises(ConfigurationError, match="'deepgram=none'"):
        parse_service_limits(["deepgram=none"])
    with pytest.raises(ConfigurationError, match="CLUSTER_MAX_CALLS"):
        WorkerOptions.from_env("redis://r:6379/0", {"CLUSTER_MAX_CALLS": "lots"})


def test_vantum_worker_names_what_is_missing(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TWILIO_API_BASE_URL")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    run = subprocess.run(
        [sys.executable, "-m", "vantum_pipeline", "worker"], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "REDIS_URL" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "vantum_pipeline", "worker", "--fake", "--redis", "redis://127.0.0.1:1/0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "TWILIO_API_BASE_URL" in run.stderr


@pytest.mark.parametrize("owner_finishes", [True, False], ids=["owner-alive", "owner-dead"])
async def test_a_job_another_worker_placed_is_never_redialled(
    redis_server: Any, tmp_path: Path, owner_finishes: bool
) -> None:
    """A job whose marker says another worker placed the call (its job ran again, as after an
    in-progress key lapsed): while that worker lives, the job waits and the worker's own result
    is recorded; once it is dead, Twilio is asked (the call completed → interrupted) and the
    retry is a new attempt. Attempt 1 is never dialled again."""
    import redis.asyncio as redis_asyncio

    from vantum_pipeline.campaign.jobs import encode_event, encode_record

    number = "+14155550105"
    path = write_campaign(tmp_path, [number])
    config = load_campaign(path)
    dials: list[tuple[str, str]] = []
    line = ScriptedLine(dials)
    with CampaignStore(tmp_path / "store.db") as store:
        prepare_campaign(config, store)
        claimed = store.claim(config.id, number, TUESDAY_MORNING.timestamp())
        assert claimed is not None
        store.placed(claimed, "CA" + "1" * 32)
        client = redis_asyncio.Redis.from_url(redis_server.url)
        keys = Keys(config.id)
        await client.hset(keys.dial(claimed.job_id), mapping={"state": "placed", "sid": "CA" + "1" * 32,
                                                               "worker": "ghost", "at": "0"})  # fmt: skip
        await client.set(Keys.worker("ghost"), "{}", px=30_000 if owner_finishes else 1500)

        async def ghost_finishes() -> None:
            await asyncio.sleep(8.0)  # later than a reconciliation would wait for a worker that looks dead
            record = AttemptRecord("meeting_booked", call_sid="CA" + "1" * 32, duration=30.0)
            async with client.pipeline(transaction=True) as pipe:
                pipe.xadd(keys.results, encode_event("finished", claimed.job_id, "", record=encode_record(record)))
                pipe.hset(keys.dial(claimed.job_id), mapping={"state": "done"})
                await pipe.execute()

        async with RedisDispatcher(
            redis_server.url, campaign_id=config.id, config_text=path.read_text(), max_outstanding=4
        ) as dispatcher:
            from arq import create_pool
            from arq.connections import RedisSettings

            pool = await create_pool(RedisSettings.from_dsn(redis_server.url))
            await pool.enqueue_job("place_call", encode_job(CallJob(claimed)), _job_id=claimed.job_id,
                                   _queue_name=Keys.QUEUE)  # fmt: skip
            await pool.aclose()
            async with workers(redis_server.url, line, 1):
                runner = CampaignRunner(config, store, line, clock=FrozenClock(TUESDAY_MORNING), dispatcher=dispatcher,
                                        poll_interval=0.05, idle_exit=0.0, write_records=False)  # fmt: skip
                dispatcher.bind(runner, dnc=runner.dnc)
                async with asyncio.TaskGroup() as group:
                    if owner_finishes:
                        group.create_task(ghost_finishes())
                    summary = await asyncio.wait_for(runner.run(), 60)
        await client.aclose()
        attempts = sorted(store.attempts(config.id), key=lambda a: a["attempt"])
    assert summary.reconciled == 0  # adopted: the workers settled it, not the coordinator
    assert attempts[0]["call_sid"] == "CA" + "1" * 32
    if owner_finishes:
        assert dials == [], "a call was placed while the worker that owned the attempt was alive"
        assert [a["outcome"] for a in attempts] == ["meeting_booked"]
    else:
        assert [job_id for job_id, _ in dials] == [f"{config.id}:{number}:2"], "attempt 1 was dialled again"
        assert attempts[0]["outcome"] == "interrupted" and "worker was lost" in attempts[0]["notes"]
        assert attempts[1]["outcome"] == "completed"


def claim_one(tmp_path: Path, number: str) -> tuple[Path, Any, Any]:
    """A campaign of one prospect (its file, its config) in a fresh store, its attempt claimed for Tuesday morning."""
    path = write_campaign(tmp_path, [number])
    config = load_campaign(path)
    with CampaignStore(tmp_path / "store.db") as store:
        prepare_campaign(config, store)
        claimed = store.claim(config.id, number, TUESDAY_MORNING.timestamp())
    assert claimed is not None
    return path, config, claimed


@pytest.mark.parametrize("second", ["another-worker", "same-worker"])
async def test_a_job_run_twice_at_once_is_dialled_once(redis_server: Any, tmp_path: Path, second: str) -> None:
    """A job runs twice at once when its in-progress key lapses while its worker is held up (a
    loaded machine, a Redis restart) and arq hands it out again. Here the first run is held
    between reading the attempt's marker and its dial (opening the campaign's dialer, as on a
    worker's first job) while the second runs the whole call: the held run must dial nobody
    and leave the job to the queue, whose next run finds it done."""
    import redis.asyncio as redis_asyncio
    from arq.worker import Retry

    number = "+14155550106"
    path, config, claimed = claim_one(tmp_path, number)
    dials: list[tuple[str, str]] = []
    line = ScriptedLine(dials)
    opening, opened = asyncio.Event(), asyncio.Event()

    def dialers(held: bool) -> Any:
        @contextlib.asynccontextmanager
        async def factory(config: Any, dnc: Any) -> AsyncIterator[ScriptedLine]:
            if held:
                opening.set()
                await opened.wait()
            yield line

        return factory

    client = redis_asyncio.Redis.from_url(redis_server.url)
    await client.set(Keys(config.id).config, json.dumps({"text": path.read_text(), "path": str(path)}))
    options: dict[str, Any] = {"limits": {"calls": 3}, "calls_per_second": 100, "lease_ttl": 2.0,
                               "queue_name": "vantum:calls:unused"}  # fmt: skip
    slow = CampaignWorker(redis_server.url, dialers(held=True), worker_id="slow", **options)
    other = CampaignWorker(redis_server.url, dialers(held=False), worker_id="other", **options)
    running = [asyncio.get_running_loop().create_task(w.run()) for w in (slow, other)]
    try:
        async with asyncio.timeout(20):
            while not (slow.redis_ok and other.redis_ok):  # noqa: ASYNC110 - run() reports no readiness event
                await asyncio.sleep(0.05)
            ctx, text = {"job_id": claimed.job_id}, encode_job(CallJob(claimed))
            held = asyncio.get_running_loop().create_task(slow.place_call(ctx, text))
            await opening.wait()
            if second == "another-worker":
                assert await other.place_call(ctx, text) == "completed"
                opened.set()
                with pytest.raises(Retry):
                    await held
            else:
                with pytest.raises(Retry):
                    await slow.place_call(ctx, text)
                opened.set()
                assert await held == "completed"
            assert await slow.place_call(ctx, text) == "done before"  # the queue's next run of the job
            marker = await client.hgetall(Keys(config.id).dial(claimed.job_id))
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await client.aclose()
    assert dials == [(claimed.job_id, number)], "the attempt was dialled twice"
    assert marker[b"state"] == b"done"
    assert marker[b"worker"] == (b"other" if second == "another-worker" else b"slow")


class LostAnswerLine(ScriptedLine):
    """Places each call, but the dial's answer is lost (an ``error`` without a sid); Twilio's
    list of calls cannot be read while ``twilio_down``."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        super().__init__(log)
        self.twilio_down = True
        self.placed: dict[str, str] = {}

    async def call(self, job: CallJob, placed: PlacedCallback) -> AttemptRecord:
        self.log.append((job.job_id, job.number))
        self.placed[f"CA{len(self.log):032d}"] = job.number
        return AttemptRecord("error", twilio_status="failed", notes="creating a call: no answer within 10s")

    async def find_calls(self, number: str, since: float) -> list[CallStatus]:
        if self.twilio_down:
            raise ServiceError("Twilio is unreachable", service="twilio", retryable=True)
        return [CallStatus(sid, "completed", 3.0) for sid, to in self.placed.items() if to == number]


async def test_a_dial_twilio_cannot_confirm_is_settled_by_the_jobs_next_run_on_any_worker(
    redis_server: Any, tmp_path: Path
) -> None:
    """The dial's answer is lost and Twilio cannot be asked whether it placed the call: the
    attempt is not reported, its marker stays open and owned by nobody, so the job's next run,
    on another worker while the first one lives, finds the call through Twilio instead of
    waiting for the first worker for ever or dialling again."""
    import redis.asyncio as redis_asyncio
    from arq.worker import Retry

    number = "+14155550107"
    path, config, claimed = claim_one(tmp_path, number)
    dials: list[tuple[str, str]] = []
    line = LostAnswerLine(dials)

    @contextlib.asynccontextmanager
    async def factory(config: Any, dnc: Any) -> AsyncIterator[ScriptedLine]:
        yield line

    client = redis_asyncio.Redis.from_url(redis_server.url)
    await client.set(Keys(config.id).config, json.dumps({"text": path.read_text(), "path": str(path)}))
    options: dict[str, Any] = {"limits": {"calls": 3}, "calls_per_second": 100, "lease_ttl": 2.0,
                               "queue_name": "vantum:calls:unused", "reconcile_timeout": 5.0}  # fmt: skip
    first = CampaignWorker(redis_server.url, factory, worker_id="first", **options)
    second = CampaignWorker(redis_server.url, factory, worker_id="second", **options)
    running = [asyncio.get_running_loop().create_task(w.run()) for w in (first, second)]
    marker_key = Keys(config.id).dial(claimed.job_id)
    try:
        async with asyncio.timeout(120):
            while not (first.redis_ok and second.redis_ok):  # noqa: ASYNC110 - run() reports no readiness event
                await asyncio.sleep(0.05)
            ctx, text = {"job_id": claimed.job_id}, encode_job(CallJob(claimed))
            with pytest.raises(Retry):
                await first.place_call(ctx, text)
            left = await client.hgetall(marker_key)
            line.twilio_down = False
            assert await second.place_call(ctx, text) == "interrupted"
            marker = await client.hgetall(marker_key)
            results = await client.xrange(Keys(config.id).results)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await client.aclose()
    assert (left[b"state"], left[b"worker"]) == (b"dialing", b"")
    assert dials == [(claimed.job_id, number)], "the attempt was dialled again"
    assert marker[b"state"] == b"done"
    (sid,) = line.placed
    finished = [fields for _, fields in results if fields[b"type"] == b"finished"]
    assert len(finished) == 1 and json.loads(finished[0][b"record"])["call_sid"] == sid
