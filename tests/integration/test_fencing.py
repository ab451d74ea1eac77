"""Issue 17's scenarios 1-6, each with real processes: no process can undo a decided date.

1. Two consumers with a 2-second broker heartbeat; the one running a job is paused
   (SIGSTOP), the other resumes the job and it succeeds; the paused one is resumed
   (SIGCONT) and does its worst: the job stays ``succeeded``, a plain POST answers it,
   ``verify=true`` is ok.
2. A second API whose broker link goes silent answers 503 to a ``force`` while a job
   runs: the running job still ends ``succeeded``, not superseded.
3. The date's pointer objects deleted or garbled after a commit: new jobs still commit,
   under a generation above the committed one.
4. ``DeleteObjects`` that refuses keys: the leftovers are reported and retried, never
   counted as deleted.
5. S3 answering 409s, 503s, lost answers and delays: every date ends committed with its
   newest job, states final and stable, data readable and exact. (A store that ignores
   conditional headers is refused at start-up: ``test_store_probe.py``.)
6. A manifest or job state of a newer format version ends the job ``failed`` ("written
   by a newer version of bus-stats") or leaves it alone, never a dead-letter loop.

The services talk to S3 through the fault-injecting proxy (:mod:`.s3_proxy`); the test
reads the bucket directly. Only what users and operators see is asked of the system:
answers of the API, job states, ``/dates``, ``/country-stats``, the keys of the bucket,
the broker's queues and the processes' log lines.
"""

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection

from common.settings import Settings
from common.storage import S3Store, open_store
from common.topology import Names
from refsim import SimulatorConfig, expected_stats
from refsim.server import serve
from tests.conftest import AMQP_URL, make_settings
from tests.integration import s3_proxy, services
from tests.integration.broker import queue_depths
from tests.integration.s3_proxy import S3Proxy
from tests.integration.services import Api, Service, running, start_api, start_consumer
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_ingest_e2e import post
from tests.integration.test_races import job_json, runner_of, wait_job

pytestmark = pytest.mark.integration

POLL: Final = 0.1  # S3, the broker and the logs cannot notify: polled this often
NEWER: Final = "written by a newer version of bus-stats"
# About 8 s a job with one city at a time: long enough to pause or cut something mid-job.
SLOW: Final = SimulatorConfig(
    seed=17, cities=6, countries=2, records_min=100, records_max=400,
    latency_min=1.0, latency_max=1.5,
)  # fmt: skip
FAST: Final = SimulatorConfig(
    seed=7, cities=4, countries=2, records_min=50, records_max=300, latency_max=0.2
)
DAY: Final = date(2024, 9, 1)


@dataclass
class Rig:
    settings: Settings
    """The services' settings: S3 through the proxy."""
    store: S3Store
    """The bucket, read directly (no fault of the proxy touches the test's reads)."""
    proxy: S3Proxy
    config: SimulatorConfig


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as opened:
        yield opened


@pytest.fixture
async def proxy(moto_reset: str) -> AsyncIterator[S3Proxy]:
    async with S3Proxy(moto_reset, seed=17) as opened:
        opened.record = False  # thousands of requests: not kept
        yield opened


@dataclass(frozen=True)
class Ctx:
    """What every scenario starts from: the proxy, Moto behind it, the test's namespace."""

    proxy: S3Proxy
    moto_url: str
    namespace: str


@pytest.fixture
def ctx(proxy: S3Proxy, moto_reset: str, namespace: str, amqp: AbstractRobustConnection) -> Ctx:
    return Ctx(proxy, moto_reset, namespace)


@contextlib.asynccontextmanager
async def open_rig(ctx: Ctx, config: SimulatorConfig, **extra: Any) -> AsyncIterator[Rig]:
    """The simulator serving ``config``, the services' settings and a direct store."""
    values: dict[str, Any] = {"heartbeat_seconds": 0.5, "shutdown_grace_seconds": 1.0}
    values.update(extra)
    async with serve(config) as simulator:
        settings = make_settings(
            ctx.proxy.url, ctx.namespace, reference_url=simulator.url, **values
        )
        async with open_store(make_settings(ctx.moto_url, ctx.namespace)) as store:
            yield Rig(settings=settings, store=store, proxy=ctx.proxy, config=config)


# -- what users and operators see ------------------------------------------------------


async def date_view(http: aiohttp.ClientSession, api: Api, day: date) -> dict[str, Any]:
    async with http.get(f"{api.url}/dates?from={day}&to={day}") as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
    [view] = body["dates"]
    return view  # type: ignore[no-any-return]  # JSON


async def committed_job(http: aiohttp.ClientSession, api: Api, day: date) -> str | None:
    view = await date_view(http, api, day)
    return None if view["committed"] is None else str(view["committed"]["job_id"])


async def verified(
    http: aiohttp.ClientSession, api: Api, config: SimulatorConfig, days: list[date]
) -> None:
    """``verify=true`` is ok, no date is missing or unreadable, the figures are exact."""
    start, end = min(days), max(days)
    query = f"{api.url}/country-stats?from={start}&to={end}&verify=true"
    async with http.get(query) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        assert response.status == 200, body
    assert body["missing_dates"] == [], body["missing_dates"]
    assert body["unreadable_dates"] == [], body["unreadable_dates"]
    assert body["verify"]["status"] == "ok", body["verify"]
    inside = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    expected = await asyncio.to_thread(expected_stats, config, inside)
    assert body["stats"] == expected


def lines_of(service: Service, job_id: str, prefix: str, after: int = 0) -> list[dict[str, Any]]:
    return [
        line
        for line in service.lines[after:]
        if line.get("job_id") == job_id and str(line.get("event", "")).startswith(prefix)
    ]


async def settled(service: Service, job_id: str, after: int, *, deadline: float = 60.0) -> None:
    """Until ``service`` settled its delivery of the job (ack, reject or failing to)."""
    async with asyncio.timeout(deadline):
        while not lines_of(service, job_id, "message.settle", after):
            assert service.process.returncode is None, service.lines[-5:]
            await asyncio.sleep(POLL)


async def idle(namespace: str, *, deadline: float = 60.0) -> dict[str, tuple[int, int]]:
    """Until no message of the namespace is ready or unacked: the queues' depths."""
    depths: dict[str, tuple[int, int]] = {}
    async with asyncio.timeout(deadline):
        while True:
            depths = await queue_depths(namespace)
            names = Names(namespace)
            busy = {n: d for n, d in depths.items() if n != names.dead_letter_queue and any(d)}
            if not busy:
                return depths
            await asyncio.sleep(0.3)


def dead_letters(depths: dict[str, tuple[int, int]], namespace: str) -> int:
    return sum(depths.get(Names(namespace).dead_letter_queue, (0, 0)))


@contextlib.contextmanager
def paused(service: Service) -> Iterator[None]:
    """SIGSTOP ``service`` for the block; SIGCONT on the way out, whatever happens."""
    service.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if service.process.returncode is None:
            service.process.send_signal(signal.SIGCONT)


async def final_state(store: S3Store, job_id: str, *, deadline: float = 120.0) -> dict[str, Any]:
    return await wait_job(store, job_id, "final", deadline=deadline)


# -- 1. a paused consumer --------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_paused_consumer_never_rewrites_a_finished_job(
    ctx: Ctx, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    async with open_rig(
        ctx, SLOW,
        amqp_url=f"{AMQP_URL.rstrip('/')}/?heartbeat=2", job_concurrency=1, city_concurrency=1,
    ) as rig:  # fmt: skip
        api = await start_api(rig.settings)
        consumers = [await start_consumer(rig.settings, f"consumer-{n}") for n in (1, 2)]
        async with running(api.service, *consumers):
            status, body = await post(http, api, f"date={DAY}")
            assert status == 202, body
            job_id = body["job_id"]
            await wait_job(rig.store, job_id, "running")
            sleeper = await runner_of(consumers, job_id)
            with paused(sleeper):
                # The broker misses two heartbeats, gives the delivery to the other one.
                done = await final_state(rig.store, job_id, deadline=150)
                assert done["status"] == "succeeded", done
                mark = len(sleeper.lines)
            # Resumed: it finds its connection gone, and its run does whatever it does,
            # until it settles (or fails to settle) its stale delivery.
            await settled(sleeper, job_id, mark)
            await idle(ctx.namespace)
            after = await job_json(rig.store, job_id)
            assert after["status"] == "succeeded", after
            assert after.get("error") is None, after
            assert await committed_job(http, api, DAY) == job_id
            again = await post(http, api, f"date={DAY}")
            assert again == (200, again[1])
            assert again[1]["job_id"] == job_id
            assert again[1]["status"] == "succeeded"
            await verified(http, api, SLOW, [DAY])
            assert (await job_json(rig.store, job_id))["status"] == "succeeded"


# -- 2. a refused force ----------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_force_refused_with_503_changes_nothing(
    ctx: Ctx, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    async with (
        open_rig(ctx, SLOW, job_concurrency=1, city_concurrency=1)
        as rig,
        TcpProxy("127.0.0.1", 5672) as link,
    ):  # fmt: skip
        cut_off = make_settings(
            ctx.proxy.url, ctx.namespace, reference_url=rig.settings.reference_url,
            amqp_url=link.url_of(AMQP_URL), publish_timeout_seconds=2.0,
        )  # fmt: skip
        api = await start_api(rig.settings)
        second = await start_api(cut_off)
        consumer = await start_consumer(rig.settings)
        async with running(api.service, second.service, consumer):
            status, body = await post(http, api, f"date={DAY}")
            assert status == 202, body
            job_id = body["job_id"]
            await wait_job(rig.store, job_id, "running")
            link.partition()
            refused = await post(http, second, f"date={DAY}&force=true")
            assert refused[0] == 503, refused
            assert (await job_json(rig.store, job_id))["status"] == "running"
            done = await final_state(rig.store, job_id)
            assert done["status"] == "succeeded", done
            assert done.get("superseded_by") is None, done
            assert await committed_job(http, api, DAY) == job_id
            again = await post(http, api, f"date={DAY}")
            assert again[0] == 200, again
            assert again[1]["job_id"] == job_id
            await verified(http, api, SLOW, [DAY])
            link.heal()


# -- 3. a missing or unreadable pointer ------------------------------------------------


async def tamper_pointers(store: S3Store, day: date, how: str) -> None:
    """Delete every object under ``dates/date=D/``, or write garbage as its pointer.

    (Versions with a per-date arbiter may keep nothing there: deleting is then a no-op,
    and the garbage pointer is what an older version or a botched restore left behind.)
    """
    keys = [item.key async for item in store.list_objects(f"dates/date={day}/")]
    if how == "deleted":
        await store.delete(keys)
        return
    for key in {*keys, f"dates/date={day}/latest-job.json"}:
        await store.put(key, b'{"job_id": "garbage", "generation": "x"')


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["deleted", "garbage"])
async def test_generations_never_go_back_after_the_pointer_is_lost(
    ctx: Ctx, http: aiohttp.ClientSession, how: str,
) -> None:  # fmt: skip
    async with open_rig(ctx, FAST) as rig:
        api = await start_api(rig.settings)
        consumer = await start_consumer(rig.settings)
        async with running(api.service, consumer):
            _, first = await post(http, api, f"date={DAY}")
            first_state = await final_state(rig.store, first["job_id"])
            assert first_state["status"] == "succeeded", first_state
            await tamper_pointers(rig.store, DAY, how)
            # A plain POST: the date's job, or a new one that completes.
            status, plain = await post(http, api, f"date={DAY}")
            assert status in {200, 202}, plain
            plain_state = await final_state(rig.store, plain["job_id"])
            assert plain_state["status"] == "succeeded", plain_state
            assert await committed_job(http, api, DAY) == plain["job_id"]
            # A force: a new job that commits, under a generation above every earlier one.
            status, forced = await post(http, api, f"date={DAY}&force=true")
            assert status == 202, forced
            forced_state = await final_state(rig.store, forced["job_id"])
            assert forced_state["status"] == "succeeded", forced_state
            assert forced_state["generation"] > max(
                first_state["generation"], plain_state["generation"]
            )
            assert await committed_job(http, api, DAY) == forced["job_id"]
            await verified(http, api, FAST, [DAY])
            again = await post(http, api, f"date={DAY}")
            assert (again[0], again[1]["job_id"]) == (200, forced["job_id"])


# -- 4. deletes that fail --------------------------------------------------------------


def sweep_lines(output: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for raw in output.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            line = orjson.loads(raw)
            if isinstance(line, dict):
                found.append(line)
    return found


async def data_of(store: S3Store, day: date, job_id: str) -> set[str]:
    return {
        item.key async for item in store.list_objects(f"data/date={day}/") if job_id in item.key
    }


@pytest.mark.timeout(300)
async def test_deletes_that_fail_are_reported_and_retried_never_counted(
    ctx: Ctx, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    async with open_rig(ctx, FAST) as rig:
        api = await start_api(rig.settings)
        consumer = await start_consumer(rig.settings)
        async with running(api.service, consumer):
            _, first = await post(http, api, f"date={DAY}")
            assert (await final_state(rig.store, first["job_id"]))["status"] == "succeeded"
            await idle(ctx.namespace)  # acked: its own commit's sweep is over
            older = await data_of(rig.store, DAY, first["job_id"])
            assert older
            refusal = ctx.proxy.add(s3_proxy.delete_errors(first["job_id"]))
            _, forced = await post(http, api, f"date={DAY}&force=true")
            done = await final_state(rig.store, forced["job_id"])
            assert done["status"] == "succeeded", done
            await idle(ctx.namespace)
            assert await data_of(rig.store, DAY, first["job_id"]) == older  # refused: all there
            assert refusal.hits > 0, "the commit's sweep never tried to delete the older data"
        env = services.environment(rig.settings)
        args = ("sweep", "--from", str(DAY), "--to", str(DAY))
        refused = await services.run_to_exit("consumer", env, *args, deadline=120)
        output = refused.out + refused.err
        assert await data_of(rig.store, DAY, first["job_id"]) == older
        finished = [line for line in sweep_lines(output) if line.get("event") == "sweep.finished"]
        assert all(line.get("objects", 0) == 0 for line in finished), finished
        reported = (
            refused.status != 0 or any(key in output for key in older) or ("AccessDenied" in output)
        )
        assert reported, f"the sweep said nothing of {len(older)} keys it could not delete"
        ctx.proxy.remove(refusal)
        retried = await services.run_to_exit("consumer", env, *args, deadline=120)
        assert retried.status == 0, retried.err[-2000:]
        assert await data_of(rig.store, DAY, first["job_id"]) == set()
        finished = [
            line
            for line in sweep_lines(retried.out + retried.err)
            if line.get("event") == "sweep.finished"
        ]
        assert [line["objects"] for line in finished] == [len(older)], finished


# -- 5. S3 as it really behaves --------------------------------------------------------

FAULTY_DAYS: Final = [DAY + timedelta(days=n) for n in range(3)]


async def post_through(
    http: aiohttp.ClientSession, api: Api, query: str, *, tries: int = 5
) -> tuple[int, dict[str, Any]]:
    """POST as a client would: a 503 ("try again") is tried again; a 500 is a bug."""
    for _ in range(tries):
        status, body = await post(http, api, query)
        if status != 503:
            break
    if status == 500:
        raise AssertionError(f"{query}: 500 {body}; the API logged: {await api_failures(api)}")
    return status, body


async def api_failures(api: Api) -> list[dict[str, Any]]:
    """The API's ``request.failed`` lines (the line may trail the answer a moment)."""
    with contextlib.suppress(TimeoutError):
        await api.service.wait_for_event("request.failed", deadline=5)
    return [line for line in api.service.lines if line.get("event") == "request.failed"]


@pytest.mark.timeout(400)
async def test_conflicts_server_errors_and_lost_answers_keep_the_protocol(
    ctx: Ctx, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    async with open_rig(ctx, FAST) as rig:
        api = await start_api(rig.settings)
        consumers = [await start_consumer(rig.settings, f"consumer-{n}") for n in (1, 2)]
        faults = [
            ctx.proxy.add(s3_proxy.conflict(conditional=True, probability=0.1)),
            ctx.proxy.add(s3_proxy.slow_down(method="PUT", probability=0.05)),
            ctx.proxy.add(s3_proxy.slow_down(method="GET", probability=0.03)),
            ctx.proxy.add(s3_proxy.lose(conditional=True, probability=0.1)),
            ctx.proxy.add(s3_proxy.lose("500", method="PUT", conditional=False, probability=0.05)),
            ctx.proxy.add(s3_proxy.delay(0.3, probability=0.05)),
        ]
        async with running(api.service, *consumers):
            pairs: list[tuple[date, str, str]] = []
            for day in FAULTY_DAYS:
                plain = await post_through(http, api, f"date={day}")
                forced = await post_through(http, api, f"date={day}&force=true")
                assert (plain[0], forced[0]) == (202, 202), (plain, forced)
                pairs.append((day, plain[1]["job_id"], forced[1]["job_id"]))
            finals: dict[str, dict[str, Any]] = {}
            for _, plain_id, forced_id in pairs:
                for job_id in (plain_id, forced_id):
                    finals[job_id] = await final_state(rig.store, job_id, deadline=240)
            depths = await idle(ctx.namespace, deadline=120)
            ctx.proxy.clear()
            problems: list[str] = []
            for day, plain_id, forced_id in pairs:
                if finals[forced_id]["status"] != "succeeded":
                    problems.append(f"{day}: the forced job {finals[forced_id]}")
                older = finals[plain_id]
                if older["status"] != "succeeded" and older.get("superseded_by") != forced_id:
                    problems.append(f"{day}: the plain job {older}")
                if (committed := await committed_job(http, api, day)) != forced_id:
                    problems.append(f"{day}: committed {committed}, not the forced {forced_id}")
            for job_id, state in finals.items():
                now = await job_json(rig.store, job_id)
                if (now["status"], now.get("error")) != (state["status"], state.get("error")):
                    problems.append(f"{job_id} changed after it ended: {state} -> {now}")
            assert problems == []
            assert dead_letters(depths, ctx.namespace) == 0
            await verified(http, api, FAST, FAULTY_DAYS)
        assert all(fault.hits > 0 for fault in faults), [(f.action, f.hits) for f in faults]


# -- 6. newer formats ------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_a_newer_manifest_ends_the_job_failed_without_a_dead_letter_loop(
    ctx: Ctx, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    async with open_rig(ctx, FAST) as rig:
        api = await start_api(rig.settings)
        consumer = await start_consumer(rig.settings)
        async with running(api.service, consumer):
            _, first = await post(http, api, f"date={DAY}")
            assert (await final_state(rig.store, first["job_id"]))["status"] == "succeeded"
            manifests = [item.key async for item in rig.store.list_objects("manifests/")]
            assert manifests, "no manifest to make newer"
            newer: dict[str, bytes] = {}
            for key in manifests:
                stored = await rig.store.get(key)
                assert stored is not None
                body = orjson.loads(stored.body)
                body["version"] = 99
                newer[key] = orjson.dumps(body)
                await rig.store.put(key, newer[key])
            status, forced = await post(http, api, f"date={DAY}&force=true")
            if "job_id" in forced:  # taken: the job ends failed, saying why
                done = await final_state(rig.store, forced["job_id"])
                assert done["status"] == "failed", done
                assert NEWER in (done.get("error") or ""), done
                settles = lines_of(consumer, forced["job_id"], "message.settle")
                assert len(settles) == 1, settles  # one delivery, settled once: no loop
            else:  # or refused at once, saying why (no job, no message)
                assert status not in {500, 503}, (status, forced, await api_failures(api))
                assert NEWER in forced["error"], (status, forced)
            depths = await idle(ctx.namespace)
            assert dead_letters(depths, ctx.namespace) == 0
            for key, body in newer.items():  # the newer version's data, untouched
                stored = await rig.store.get(key)
                assert stored is not None
                assert stored.body == body


@pytest.mark.timeout(300)
async def test_a_newer_job_state_is_never_looped_on_nor_overwritten(
    ctx: Ctx, http: aiohttp.ClientSession,
) -> None:  # fmt: skip
    async with open_rig(ctx, FAST) as rig:
        api = await start_api(rig.settings)
        async with running(api.service):
            _, queued = await post(http, api, f"date={DAY}")
            job_id = queued["job_id"]
            key = f"jobs/{job_id}.json"
            state = await job_json(rig.store, job_id)
            state["version"] = 99
            body = orjson.dumps(state)
            await rig.store.put(key, body)
            consumer = await start_consumer(rig.settings)
            async with running(consumer):
                await settled(consumer, job_id, 0)
                depths = await idle(ctx.namespace)
            assert dead_letters(depths, ctx.namespace) == 0
            assert len(lines_of(consumer, job_id, "message.settle")) == 1
            assert any(NEWER in orjson.dumps(line).decode() for line in consumer.lines) or any(
                "newer" in str(line.get("event", "")) for line in consumer.lines
            ), "the consumer never said why it left the job"
            stored = await rig.store.get(key)
            assert stored is not None
            assert orjson.loads(stored.body)["version"] == 99  # the newer version's state


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["lost", "conflict"])
async def test_a_lost_answer_or_a_409_on_the_date_is_resolved_not_a_lost_race(
    ctx: Ctx, http: aiohttp.ClientSession, fault: str
) -> None:
    """The first conditional writes of the date's committed object lose their answer (the
    write took effect) or answer 409: the job still commits at once, nothing fails."""
    async with open_rig(ctx, FAST) as rig:
        api = await start_api(rig.settings)
        consumer = await start_consumer(rig.settings)
        async with running(api.service, consumer):
            make = s3_proxy.lose if fault == "lost" else s3_proxy.conflict
            injected = ctx.proxy.add(make(method="PUT", target=r"/manifests/", conditional=True))
            injected.times = 3
            status, body = await post(http, api, f"date={DAY}")
            assert status == 202, body
            done = await final_state(rig.store, body["job_id"])
            assert done["status"] == "succeeded", done
            assert injected.hits > 0, "no conditional write of the date met the fault"
            ctx.proxy.clear()
            depths = await idle(ctx.namespace)
            assert dead_letters(depths, ctx.namespace) == 0
            assert await committed_job(http, api, DAY) == body["job_id"]
            await verified(http, api, FAST, [DAY])
