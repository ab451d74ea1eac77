"""Each race of issue 10, made deterministic: the window is held open, or hit every time.

The randomized test (``test_chaos.py``) finds such windows by chance; these tests open
each one on purpose, so that a regression fails here every time:

1. a ``force`` while the date's job runs, 20 times over (every date stays readable and
   exact, the newest claim wins); two consumers whose clocks are an hour apart racing on
   one date (no clock decides which run wins); a newer claim while the older job's
   manifest PUT is in flight (what it commits keeps its objects);
2. a rolling restart (four SIGTERMs during one job) never dead-letters it; an S3 error
   at commit on the last delivery leaves the job ``failed`` with nothing of it stored;
   a job whose consumer is killed on every delivery ends ``failed`` with a reason;
4. a multipart upload whose completion fails is aborted; a commit never aborts a live
   upload of another date, whatever its age;

and the mechanisms behind them: a redelivered job resumes (keeps its complete cities,
fetches only the missing ones), a running job beats while no city completes, and a plain
POST replaces a job whose heartbeat stopped, and never a live job whose consumer's clock
is behind (the heartbeat's age is read on S3's clock alone). Two windows the old chaos
suite hit now and then close the file: the broker lost between the commit and the job's
final save, and a consumer killed while it sweeps.

Job states are read as JSON from the bucket, not through the models, so that this file
also runs against older code (to show which of these failed there).
"""

import asyncio
import dataclasses
import itertools
import re
import signal
import time
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any, Final

import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection
from botocore.exceptions import ClientError

from common.jobs import ManifestStore
from common.layout import Layout
from common.models import Manifest
from common.settings import Settings
from common.storage import S3Store, open_store
from common.topology import Names
from refsim import SimulatorConfig, expected_stats
from refsim.server import serve
from tests.conftest import make_settings
from tests.integration.broker import close_connections, drain, queue_depths
from tests.integration.s3_server import Failure, RestartableMoto, Trap
from tests.integration.services import (
    Api,
    Service,
    clock_offset,
    running,
    start_api,
    start_consumer,
    wait_for_job,
)
from tests.integration.test_ingest_e2e import post, stored_stats

pytestmark = pytest.mark.integration

MIB: Final = 1024 * 1024
POLL: Final = 0.05  # S3 and the broker cannot notify: their state is polled this often
LASTING_503_SECONDS: Final = 5.0


# -- helpers ---------------------------------------------------------------------------


def race_settings(
    moto: RestartableMoto, namespace: str, reference_url: str, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "reference_url": reference_url,
        "heartbeat_seconds": 0.5,
        "shutdown_grace_seconds": 1.0,
    }
    values.update(extra)
    return make_settings(moto.url, namespace, **values)


async def job_json(store: S3Store, job_id: str) -> dict[str, Any]:
    """The job's state as stored (all its fields, whichever version wrote it)."""
    stored = await store.get(f"jobs/{job_id}.json")
    assert stored is not None, f"job {job_id} has no state"
    state: dict[str, Any] = orjson.loads(stored.body)
    return state


async def wait_job(
    store: S3Store, job_id: str, condition: str, *, deadline: float = 60.0, seen: Any = ()
) -> dict[str, Any]:
    """Until the job is ``running`` under a run not in ``seen`` (its ``started_at``), or final.

    ``condition`` is ``"running"`` or ``"final"``.
    """
    state: dict[str, Any] = {}
    try:
        async with asyncio.timeout(deadline):
            while True:
                state = await job_json(store, job_id)
                if condition == "final" and state["status"] in {"succeeded", "failed"}:
                    return state
                if (
                    condition == "running"
                    and state["status"] == "running"
                    and state["started_at"] not in seen
                ):
                    return state
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"job {job_id} not {condition} after {deadline}s: {state}") from None


async def final_or_dead_lettered(
    store: S3Store, namespace: str, job_id: str, *, deadline: float = 90.0
) -> dict[str, Any]:
    """Until the job is final or its message reached the dead-letter queue: its state."""
    dead = Names(namespace).dead_letter_queue
    state: dict[str, Any] = {}
    async with asyncio.timeout(deadline):
        while True:
            state = await job_json(store, job_id)
            if state["status"] in {"succeeded", "failed"}:
                return state
            if (await queue_depths(namespace)).get(dead, (0, 0))[0] > 0:
                return state
            await asyncio.sleep(0.2)


async def country_stats(
    http: aiohttp.ClientSession, api: Api, start: date, end: date
) -> tuple[int, dict[str, Any]]:
    """``/country-stats``, retried while it answers 503 for at most a few seconds."""
    query = f"{api.url}/country-stats?from={start}&to={end}"
    give_up = time.monotonic() + LASTING_503_SECONDS
    while True:
        async with http.get(query) as response:
            status, body = response.status, await response.json(content_type=None)
        if status != 503 or time.monotonic() > give_up:
            return status, body
        await asyncio.sleep(0.2)


async def data_keys(store: S3Store, day: date) -> list[str]:
    return [item.key async for item in store.list_objects(f"data/date={day}/")]


async def committed(store: S3Store, day: date) -> Manifest | None:
    manifest, _ = await ManifestStore(store, Layout()).get(day)
    return manifest


def started_by(service: Service, job_id: str) -> bool:
    return any(
        line.get("event") == "job.started" and line.get("job_id") == job_id
        for line in service.lines
    )


async def start_consumers(settings: Settings, count: int) -> list[Service]:
    """``count`` consumers, started at once (each takes seconds to start)."""
    names = [f"consumer-{n}" for n in range(1, count + 1)]
    return list(await asyncio.gather(*(start_consumer(settings, name) for name in names)))


async def runner_of(consumers: list[Service], job_id: str) -> Service:
    """The consumer, still alive, that logged the start of the job (each runs it once)."""
    async with asyncio.timeout(30):
        while True:
            for consumer in consumers:
                if consumer.process.returncode is None and started_by(consumer, job_id):
                    return consumer
            await asyncio.sleep(POLL)  # its log line is on its way


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


# -- 1. a force while a job runs -------------------------------------------------------

FORCE_RACE: Final = SimulatorConfig(
    seed=31, cities=8, countries=3, records_min=100, records_max=800, latency_max=0.3
)
RACE_DAYS: Final = [date(2024, 6, 1) + timedelta(days=n) for n in range(20)]


async def _date_after_race(
    http: aiohttp.ClientSession, api: Api, store: S3Store, day: date, forced: str
) -> list[str]:
    """What is wrong with ``day`` once its plain job and its forced job are both final."""
    problems: list[str] = []
    newest = await job_json(store, forced)
    if newest["status"] != "succeeded":
        problems.append(f"the forced job {newest['status']}: {newest.get('error')}")
    manifest = await committed(store, day)
    if manifest is None or manifest.job_id != forced:
        problems.append(f"committed: {None if manifest is None else manifest.job_id}, not {forced}")
    done = [d for d in RACE_DAYS if d <= day]
    for start, end in [
        (day, day),
        (RACE_DAYS[0], day),
        (day - timedelta(days=1), day + timedelta(days=1)),
    ]:
        status, body = await country_stats(http, api, start, end)
        if status != 200:
            problems.append(f"{start}..{end}: {status} {body} for {LASTING_503_SECONDS}s")
            continue
        inside = [d for d in done if start <= d <= end]
        expected = await asyncio.to_thread(expected_stats, FORCE_RACE, inside)
        if body["stats"] != expected:
            problems.append(f"{start}..{end}: figures differ from the oracle")
    again = await post(http, api, f"date={day}")
    if again[0] != 200 or again[1]["job_id"] != forced:
        problems.append(f"a plain POST answered {again}, not the newest job {forced}")
    return problems


@pytest.mark.timeout(300)
async def test_a_force_while_a_job_runs_leaves_the_date_whole_20_times(
    moto: RestartableMoto,
    namespace: str,
    amqp: AbstractRobustConnection,
    http: aiohttp.ClientSession,
) -> None:
    """POST D, at once POST D&force=true, two consumers: 20 dates, every one exact."""
    async with (
        serve(FORCE_RACE) as simulator,
        open_store(
            settings := race_settings(moto, namespace, simulator.url, job_concurrency=1)
        ) as store,
    ):
        api = await start_api(settings)
        consumers = [await start_consumer(settings, f"consumer-{n}") for n in (1, 2)]
        broken: dict[str, list[str]] = {}
        async with running(api.service, *consumers):
            for day in RACE_DAYS:
                plain = await post(http, api, f"date={day}")
                forced = await post(http, api, f"date={day}&force=true")
                assert (plain[0], forced[0]) == (202, 202), (plain, forced)
                first = await wait_job(store, plain[1]["job_id"], "final")
                await wait_job(store, forced[1]["job_id"], "final")
                problems = await _date_after_race(http, api, store, day, forced[1]["job_id"])
                if (
                    first["status"] == "failed"
                    and first.get("superseded_by") != forced[1]["job_id"]
                ):
                    problems.append(f"the plain job failed, not superseded: {first.get('error')}")
                if problems:
                    broken[str(day)] = problems
    assert broken == {}, f"{len(broken)} of {len(RACE_DAYS)} dates broken: {broken}"


# One city at a time (city_concurrency=1), about 10 s a job: the older job still runs
# when the second consumer, started after it, is ready to take the forced one.
SKEW: Final = SimulatorConfig(
    seed=41, cities=6, countries=2, records_min=100, records_max=500,
    latency_min=1.5, latency_max=2.0,
)  # fmt: skip
SKEW_DAYS: Final = [date(2024, 7, 1), date(2024, 7, 2)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "clocks", [("+1h", "-1h"), ("-1h", "+1h")], ids=["ahead-first", "behind-first"]
)
async def test_clocks_an_hour_apart_never_decide_which_run_wins(
    clocks: tuple[str, str],
    moto: RestartableMoto,
    namespace: str,
    amqp: AbstractRobustConnection,
    http: aiohttp.ClientSession,
) -> None:
    """The older job runs on a consumer ``older`` of true time, the forced one ``newer``."""
    older, newer = clocks
    async with (
        serve(SKEW) as simulator,
        open_store(
            settings := race_settings(
                moto, namespace, simulator.url, job_concurrency=1, city_concurrency=1
            )
        ) as store,
    ):
        api = await start_api(settings)
        async with running(api.service):
            for day in SKEW_DAYS:
                first = await start_consumer(
                    settings, f"older{older}", extra_env=clock_offset(older)
                )
                async with running(first):
                    _, plain = await post(http, api, f"date={day}")
                    await wait_job(store, plain["job_id"], "running")
                    second = await start_consumer(
                        settings, f"newer{newer}", extra_env=clock_offset(newer)
                    )
                    async with running(second):
                        state = await job_json(store, plain["job_id"])
                        assert state["status"] == "running", f"no race: the first job {state}"
                        _, forced = await post(http, api, f"date={day}&force=true")
                        await wait_job(store, plain["job_id"], "final")
                        await wait_job(store, forced["job_id"], "final")
                        assert started_by(second, forced["job_id"]), "the forced job ran elsewhere"
                newest = await job_json(store, forced["job_id"])
                assert newest["status"] == "succeeded", newest
                manifest = await committed(store, day)
                assert manifest is not None
                assert manifest.job_id == forced["job_id"], "the older claim won the date"
                oldest = await job_json(store, plain["job_id"])
                assert oldest["status"] == "succeeded" or (
                    oldest["superseded_by"] == forced["job_id"]
                ), oldest
                status, body = await country_stats(http, api, day, day)
                assert status == 200, body
                assert body["stats"] == expected_stats(SKEW, [day])
                again = await post(http, api, f"date={day}")
                assert again[1]["job_id"] == forced["job_id"]
        assert await stored_stats(store, settings, SKEW_DAYS) == expected_stats(SKEW, SKEW_DAYS)


async def _two_beats_or_final(store: S3Store, job_id: str) -> None:
    """Until the job ended, or its heartbeat wrote its state twice more (it saw the claim)."""
    last = (await job_json(store, job_id))["updated_at"]
    beats = 0
    async with asyncio.timeout(30):
        while beats < 2:
            state = await job_json(store, job_id)
            if state["status"] in {"succeeded", "failed"}:
                return
            if state["updated_at"] != last:
                beats, last = beats + 1, state["updated_at"]
            await asyncio.sleep(POLL)  # S3 cannot notify


COMMITTING: Final = SimulatorConfig(
    seed=42, cities=4, countries=2, records_min=50, records_max=100, latency_max=0
)


@pytest.mark.timeout(120)
async def test_a_newer_claim_during_the_commit_never_leaves_a_manifest_without_its_objects(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """A force arrives while the older job's manifest PUT is in flight (held in S3).

    The PUT reaches S3 whatever the older run decides meanwhile, so that run must not
    delete what it is committing. The forced job then fails for good (every city answers
    500), so nothing newer repairs the date: what is committed must be whole and exact.
    """
    day = date(2024, 7, 10)
    # The date state's third PUT is the commit (after the claim and the lease).
    moto.trap = trap = Trap("PUT", f"manifests/date={day}/", armed=True, skip=2)
    async with (
        serve(COMMITTING) as simulator,
        open_store(
            settings := race_settings(
                moto, namespace, simulator.url, delivery_limit=1, retry_attempts=1
            )
        ) as store,
    ):
        api = await start_api(settings)
        consumers = await start_consumers(settings, 2)
        try:
            async with running(api.service, *consumers), aiohttp.ClientSession() as http:
                _, older = await post(http, api, f"date={day}")
                assert await asyncio.to_thread(trap.caught.wait, 60), "no commit was seen"
                everything_fails = frozenset(range(COMMITTING.cities))
                simulator.state.config = dataclasses.replace(
                    COMMITTING, fail_permanently=everything_fails
                )
                _, forced = await post(http, api, f"date={day}&force=true")
                newer = await wait_job(store, forced["job_id"], "final")
                await _two_beats_or_final(store, older["job_id"])
                trap.released.set()
                oldest = await wait_job(store, older["job_id"], "final")
                status, body = await country_stats(http, api, day, day)
        finally:
            trap.released.set()
            moto.trap = None
        manifest = await committed(store, day)
        assert newer["status"] == "failed", newer
        if manifest is not None:
            assert manifest.job_id == older["job_id"], manifest
            assert oldest["status"] == "succeeded", f"committed, but the job says {oldest}"
            missing = [c.key for c in manifest.cities if await store.get(c.key) is None]
            assert missing == [], f"the committed manifest's objects were deleted: {missing}"
            assert status == 200, body
            assert body["stats"] == expected_stats(COMMITTING, [day])
        else:
            assert oldest["status"] == "failed", oldest


# -- 2. dead letters only with a reason, and never for a rolling restart ----------------

ROLLING: Final = SimulatorConfig(
    seed=51, cities=12, countries=3, records_min=100, records_max=400,
    latency_min=0.8, latency_max=1.2,
)  # fmt: skip


@pytest.mark.timeout(240)
async def test_a_rolling_restart_does_not_use_up_the_job_s_deliveries(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """Four graceful SIGTERMs during one job (delivery limit 3): the job succeeds.

    Five consumers run; four times, the one running the job is stopped with SIGTERM
    (a rolling restart); one city at a time makes the job outlast them.
    """
    day = date(2024, 8, 1)
    async with serve(ROLLING) as simulator, open_store(
        settings := race_settings(
            moto, namespace, simulator.url, delivery_limit=3, city_concurrency=1,
            shutdown_grace_seconds=0.2,
        )
    ) as store:  # fmt: skip
        api = await start_api(settings)
        consumers = await start_consumers(settings, 5)
        async with running(api.service, *consumers), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            runs: list[str] = []
            for _ in range(4):
                state = await wait_job(store, body["job_id"], "running", seen=runs)
                runs.append(state["started_at"])
                runner = await runner_of(consumers, body["job_id"])
                assert await runner.stop() == 0, runner.lines[-5:]
            state = await final_or_dead_lettered(store, namespace, body["job_id"])
            dead = await drain(amqp, Names(namespace).dead_letter_queue)
        assert state["status"] == "succeeded", f"{state}; dead letters {dead}"
        assert dead == []
        assert await stored_stats(store, settings, [day]) == expected_stats(ROLLING, [day])


COMMIT_FAILS: Final = SimulatorConfig(
    seed=61, cities=6, countries=2, records_min=50, records_max=200, latency_max=0.1
)


@pytest.mark.timeout(120)
async def test_an_s3_error_at_commit_on_the_last_delivery_ends_the_job_and_its_objects(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """The commit's PUT is refused on every delivery: ``failed``, explained, nothing left.

    The date state's PUTs are the claim, then per delivery the lease and the commit, then
    the give-up: the 3rd and the 5th are the two deliveries' commits.
    """
    day = date(2024, 8, 2)
    commits = frozenset({3, 5})
    moto.failures.append(
        Failure("PUT", (f"manifests/date={day}/",), 403, "AccessDenied", only=commits)
    )
    async with (
        serve(COMMIT_FAILS) as simulator,
        open_store(
            settings := race_settings(moto, namespace, simulator.url, delivery_limit=1)
        ) as store,
    ):
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            state = await final_or_dead_lettered(store, namespace, body["job_id"])
            state = await wait_job(store, body["job_id"], "final", deadline=10)
        dead = await drain(amqp, Names(namespace).dead_letter_queue)
        left = await data_keys(store, day)
        uploads = await store.pending_uploads("")
        depths = (await queue_depths(namespace))[Names(namespace).queue]
    assert state["status"] == "failed", state
    assert state["finished_at"] is not None, state
    assert "AccessDenied" in state["error"], state
    assert [message.message_id for message in dead] == [body["job_id"]]
    assert left == [], "the job's objects were left behind"
    assert uploads == []
    assert depths == (0, 0)


KILLED: Final = SimulatorConfig(
    seed=62, cities=6, countries=2, records_min=50, records_max=200,
    latency_min=2.0, latency_max=3.0,
)  # fmt: skip


@pytest.mark.timeout(180)
async def test_a_job_killed_on_every_delivery_ends_failed_with_a_reason(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """SIGKILL on each allowed delivery (limit 1): the job is ``failed`` and dead-lettered.

    No consumer sees the job fail: the broker alone counts its deliveries.
    """
    day = date(2024, 8, 3)
    async with (
        serve(KILLED) as simulator,
        open_store(
            settings := race_settings(moto, namespace, simulator.url, delivery_limit=1)
        ) as store,
    ):
        api = await start_api(settings)
        consumers = await start_consumers(settings, 3)
        async with running(api.service, *consumers), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            runs: list[str] = []
            for _ in range(2):
                state = await wait_job(store, body["job_id"], "running", seen=runs)
                runs.append(state["started_at"])
                runner = await runner_of(consumers, body["job_id"])
                runner.kill()
                await runner.stop()
            state = await final_or_dead_lettered(store, namespace, body["job_id"])
            dead = await drain(amqp, Names(namespace).dead_letter_queue)
        left = await data_keys(store, day)
    assert state["status"] == "failed", f"{state}; dead letters {dead}"
    assert state["error"], state
    assert state["finished_at"] is not None, state
    assert [message.message_id for message in dead] == [body["job_id"]]
    assert left == [], "the job's objects were left behind"


# -- 4. uploads ------------------------------------------------------------------------


async def test_a_multipart_upload_whose_completion_fails_is_aborted(
    moto: RestartableMoto, namespace: str
) -> None:
    settings = make_settings(moto.url, namespace)
    key = "data/aborted.jsonl"
    async with open_store(settings) as store:
        moto.failures.append(Failure("POST", ("uploadId=",), 400, "InvalidPart"))
        with pytest.raises(ClientError, match="InvalidPart"):
            async with store.writer(key, "application/x-ndjson") as writer:
                await writer.write(b"x" * (6 * MIB))  # one part sent, the rest at completion
        assert moto.failures[0].failed >= 1, "the completion was never tried"
        moto.failures.clear()
        assert await store.pending_uploads("") == [], "the upload was left pending"
        assert await store.get(key) is None


BIG: Final = SimulatorConfig(
    seed=71, cities=1, countries=1, records_min=45_000, records_max=50_000, latency_max=0.1
)


@pytest.mark.timeout(180)
async def test_a_commit_never_aborts_a_live_upload_of_another_date(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """Date A's upload is held mid-way while date B commits: nobody may abort A's upload.

    ``BUSSTATS_STALE_UPLOAD_SECONDS=0`` makes any upload "old" for code that ages uploads
    by their start time (the consumers before issue 10); today's code ignores the age.
    """
    day_a, day_b = date(2024, 9, 1), date(2024, 9, 2)
    async with serve(BIG) as simulator, open_store(
        settings := race_settings(
            moto, namespace, simulator.url, part_size_bytes=5 * MIB,
            memory_budget_bytes=20 * MIB, job_concurrency=2, object_codec="none",
        )
    ) as store:  # fmt: skip
        api = await start_api(settings)
        consumer = await start_consumer(settings, extra_env={"BUSSTATS_STALE_UPLOAD_SECONDS": "0"})
        moto.record()
        moto.trap = trap = Trap("PUT", f"data/date={day_a}/", "partNumber=", armed=True)
        try:
            async with running(api.service, consumer), aiohttp.ClientSession() as http:
                _, job_a = await post(http, api, f"date={day_a}")
                assert await asyncio.to_thread(trap.caught.wait, 60), "A's upload never started"
                _, job_b = await post(http, api, f"date={day_b}")
                done_b = await wait_job(store, job_b["job_id"], "final", deadline=90)
                async with asyncio.timeout(30):  # until B's delivery is settled (acked)
                    while (await queue_depths(namespace))[Names(namespace).queue] != (0, 1):  # noqa: ASYNC110
                        await asyncio.sleep(0.2)  # the broker's counters cannot notify
                aborted = moto.requested("DELETE", [f"data/date={day_a}/", "uploadId="])
                trap.released.set()
                done_a = await wait_job(store, job_a["job_id"], "final", deadline=90)
        finally:
            trap.released.set()
            moto.trap = None
        assert aborted == [], "a commit of another date aborted A's live upload"
        assert done_b["status"] == "succeeded", done_b
        assert done_a["status"] == "succeeded", done_a
        assert done_a["attempts"] == 1, done_a
        days = [day_a, day_b]
        assert await stored_stats(store, settings, days) == expected_stats(BIG, days)


# -- resume, heartbeat, staleness ------------------------------------------------------

RESUME: Final = SimulatorConfig(
    seed=81, cities=12, countries=3, records_min=100, records_max=300,
    latency_min=0.3, latency_max=0.6,
)  # fmt: skip
_CITY_KEY: Final = re.compile(r"city=(\d+)\.jsonl(?:\.zst|\.gz)?$")  # any codec's suffix


def record_key(object_key: str) -> str:
    """The completion record beside a city object: ``city=3.jsonl.zst`` -> ``city=3.json``."""
    return _CITY_KEY.sub(lambda match: f"city={match[1]}.json", object_key)


async def _complete_cities(store: S3Store, day: date) -> dict[int, tuple[str, str]]:
    """The cities of the date stored whole: ``{city_id: (key, etag)}``.

    Whole means with a completion record beside the object (``city=<id>.json``); a
    layout without completion records (before issue 10) counts every object.
    """
    items = {item.key: item.etag async for item in store.list_objects(f"data/date={day}/")}
    records = {key for key in items if key.endswith(".json")}
    complete: dict[int, tuple[str, str]] = {}
    for key, etag in items.items():
        match = _CITY_KEY.search(key)
        if match and (not records or record_key(key) in records):
            complete[int(match[1])] = (key, etag)
    return complete


@pytest.mark.timeout(120)
async def test_a_redelivered_job_keeps_its_complete_cities_and_fetches_only_the_rest(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    day = date(2024, 10, 1)
    async with (
        serve(RESUME) as simulator,
        open_store(
            settings := race_settings(moto, namespace, simulator.url, city_concurrency=2)
        ) as store,
    ):
        api = await start_api(settings)
        first = await start_consumer(settings, "first")
        async with running(api.service), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            async with asyncio.timeout(60):
                while len(complete := await _complete_cities(store, day)) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(POLL)  # S3 cannot notify
            first.kill()
            await first.stop()
            fetched_before = {city: simulator.attempts(city, day) for city in range(RESUME.cities)}
            second = await start_consumer(settings, "second")
            async with running(second):
                job = await wait_for_job(http, api.url, body["job_id"])
        assert job["status"] == "succeeded", job
        manifest = await committed(store, day)
        assert manifest is not None
        kept = {city.city_id: (city.key, city.etag) for city in manifest.cities}
        refetched = {
            city: simulator.attempts(city, day) - fetched_before[city] for city in complete
        }
        assert refetched == dict.fromkeys(complete, 0), "complete cities were fetched again"
        assert {city: kept[city] for city in complete} == complete, "complete objects were replaced"
        missing = set(range(RESUME.cities)) - complete.keys()
        assert all(simulator.attempts(city, day) >= 1 for city in missing)
        assert await stored_stats(store, settings, [day]) == expected_stats(RESUME, [day])


SLOW: Final = SimulatorConfig(
    seed=91, cities=3, countries=1, records_min=10, records_max=20,
    latency_min=6.0, latency_max=6.0,
)  # fmt: skip


@pytest.mark.timeout(90)
async def test_a_running_job_beats_while_no_city_completes(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """Every city takes 6 s; over 3 s the state's ``updated_at`` moves every 0.5 s."""
    day = date(2024, 10, 2)
    async with (
        serve(SLOW) as simulator,
        open_store(
            settings := race_settings(moto, namespace, simulator.url, heartbeat_seconds=0.5)
        ) as store,
    ):
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            await wait_job(store, body["job_id"], "running")
            changes: list[float] = []
            beats: list[str] = []
            done: list[int] = []
            begin = time.monotonic()
            while time.monotonic() - begin < 3.0:
                state = await job_json(store, body["job_id"])
                done.append(state["cities_done"])
                if not beats or beats[-1] != state["updated_at"]:
                    beats.append(state["updated_at"])
                    changes.append(time.monotonic() - begin)
                await asyncio.sleep(0.1)  # sampling the state over a fixed window
            job = await wait_for_job(http, api.url, body["job_id"])
    assert set(done) == {0}, "a city completed during the window: it proves nothing"
    assert len(beats) >= 4, f"updated_at moved {len(beats) - 1} time(s) in 3 s: {beats}"
    gaps = [later - earlier for earlier, later in itertools.pairwise(changes)]
    assert max(gaps) < 1.5, f"a heartbeat gap of {max(gaps):.2f}s (heartbeat 0.5 s)"
    assert job["status"] == "succeeded", job


STUCK: Final = SimulatorConfig(
    seed=92, cities=4, countries=2, records_min=50, records_max=100,
    latency_min=2.0, latency_max=3.0,
)  # fmt: skip


@pytest.mark.timeout(120)
async def test_a_plain_post_replaces_a_job_whose_heartbeat_stopped(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """A consumer frozen (SIGSTOP) mid-job: once its heartbeat is stale, POST makes a new job."""
    day = date(2024, 10, 3)
    stale = 2.0
    async with (
        serve(STUCK) as simulator,
        open_store(
            settings := race_settings(
                moto, namespace, simulator.url, heartbeat_seconds=0.5, stale_job_seconds=stale
            )
        ) as store,
    ):
        api = await start_api(settings)
        frozen = await start_consumer(settings, "frozen")
        async with running(api.service, frozen), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            stuck = body["job_id"]
            await wait_job(store, stuck, "running")
            assert await post(http, api, f"date={day}") == (200, {**body, "status": "running"})
            frozen.process.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            try:
                async with asyncio.timeout(stale + 15):
                    while (again := await post(http, api, f"date={day}"))[0] == 200:
                        assert again[1]["job_id"] == stuck, again
                        await asyncio.sleep(0.25)  # asking again, as a user would
                waited = time.monotonic() - frozen_at
                replacement = await start_consumer(settings, "replacement")
            finally:
                frozen.process.send_signal(signal.SIGCONT)
            async with running(replacement):
                newest = await wait_for_job(http, api.url, again[1]["job_id"])
                oldest = await wait_job(store, stuck, "final")
        assert again[0] == 202, again
        assert waited >= stale - 1.0, f"replaced after {waited:.1f}s, before it was stale"
        assert newest["status"] == "succeeded", newest
        assert oldest["status"] == "failed", oldest
        assert oldest["superseded_by"] == again[1]["job_id"], oldest
        manifest = await committed(store, day)
        assert manifest is not None
        assert manifest.job_id == again[1]["job_id"]
        assert await stored_stats(store, settings, [day]) == expected_stats(STUCK, [day])


@pytest.mark.timeout(120)
async def test_a_consumer_clock_behind_does_not_make_its_running_job_look_stuck(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """A live job on a consumer whose clock is an hour behind: a plain POST returns it."""
    day = date(2024, 10, 4)
    async with (
        serve(STUCK) as simulator,
        open_store(
            settings := race_settings(
                moto, namespace, simulator.url, heartbeat_seconds=0.5, stale_job_seconds=10.0
            )
        ) as store,
    ):
        api = await start_api(settings)
        behind = await start_consumer(settings, "behind", extra_env=clock_offset("-1h"))
        async with running(api.service, behind), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            await wait_job(store, body["job_id"], "running")
            again = await post(http, api, f"date={day}")
            await wait_for_job(http, api.url, again[1]["job_id"])
        assert again == (200, {**body, "status": "running"}), "a live job was replaced"


# -- windows the chaos suite hit now and then -------------------------------------------

SMALL: Final = SimulatorConfig(
    seed=5, cities=4, countries=2, records_min=20, records_max=50, latency_max=0
)


@pytest.mark.timeout(60)
async def test_a_connection_lost_right_after_the_commit_keeps_the_date(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """The broker drops the consumer between the date's commit and the job's final save.

    The worker cancels the job at once (its delivery can no longer be acked); the date is
    committed already, so it must stay whole and the redelivered job must succeed.
    """
    day = date(2024, 5, 1)
    async with (
        serve(SMALL) as simulator,
        open_store(settings := race_settings(moto, namespace, simulator.url)) as store,
    ):
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        moto.trap = trap = Trap("PUT", "/jobs/")  # the job's state, saved after the commit
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            assert await asyncio.to_thread(trap.caught.wait, 30), "no commit was seen"
            assert await close_connections(namespace) >= 1
            await consumer.wait_for_event("broker.connection_lost")
            trap.released.set()
            job = await wait_for_job(http, api.url, body["job_id"])
        moto.trap = None
        assert job["status"] == "succeeded", job
        manifest = await committed(store, day)
        assert manifest is not None
        missing = [city.key for city in manifest.cities if await store.get(city.key) is None]
        assert missing == [], "the committed date's objects were deleted"
        assert await stored_stats(store, settings, [day]) == expected_stats(SMALL, [day])


SWEPT: Final = SimulatorConfig(
    seed=6, cities=6, countries=2, records_min=20, records_max=50, latency_max=4
)


@pytest.mark.timeout(90)
async def test_a_consumer_killed_during_the_sweep_leaves_nothing_behind(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """A killed run leaves objects; the run that commits next is killed while sweeping.

    The job is redelivered once more and finds its date committed: the older runs'
    objects must still be removed, or they stay in the bucket for good.
    """
    day = date(2024, 5, 2)
    async with (
        serve(SWEPT) as simulator,
        open_store(settings := race_settings(moto, namespace, simulator.url)) as store,
    ):
        api = await start_api(settings)
        first = await start_consumer(settings, "first")
        async with running(api.service), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            async with asyncio.timeout(30):
                while not await data_keys(store, day):  # noqa: ASYNC110
                    await asyncio.sleep(POLL)  # S3 cannot notify
            first.kill()
            await first.stop()
            # The date was claimed and leased before: the second run's lease, then its
            # commit; the sweep's listing comes next.
            moto.trap = trap = Trap("GET", f"prefix=data/date={day}/", arm_after=2)
            second = await start_consumer(settings, "second")
            assert await asyncio.to_thread(trap.caught.wait, 60), "no sweep was seen"
            second.kill()
            await second.stop()
            trap.released.set()
            moto.trap = None
            third = await start_consumer(settings, "third")
            async with running(third):
                job = await wait_for_job(http, api.url, body["job_id"])
                await third.wait_for_event("message.settled")
        assert job["status"] == "succeeded", job
        manifest = await committed(store, day)
        assert manifest is not None
        named = {city.key for city in manifest.cities}
        records = {record_key(key) for key in named}
        left = set(await data_keys(store, day)) - named - records
        assert left == set(), f"older runs' objects were left: {sorted(left)}"
        assert await store.pending_uploads("") == []
