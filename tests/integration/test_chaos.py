"""Chaos: many dates through three consumers while processes, the broker and S3 misbehave.

What runs: 30 dates are submitted through the real API; three consumer processes take
them from the real RabbitMQ, fetch from the reference simulator and write into Moto. Some
cities are larger than one S3 part, so multipart uploads are in flight most of the time.
Meanwhile a seeded schedule (``CHAOS_SEED``, printed in every failure message, replays the
same sequence of actions) does, between random pauses:

- SIGKILL a consumer, preferably one with a job running, and start a replacement;
- have the broker close every connection of the namespace (``rabbitmqctl``);
- restart the S3 endpoint while an upload is pending (see below);

and the simulator injects its own transient faults on top (500/503, hanging requests cut
by a 1 s read timeout, bodies truncated mid-record).

How S3 is restarted, and why that way. Moto keeps its state in memory: killing a Moto
*process* would lose the bucket, every committed date and every job state, which no real
S3 (nor a restarted MinIO with its disk) does; a test built on that would either assert
nothing after the restart or assert against an impossible world. So this module runs its
own Moto HTTP server in a thread (:class:`RestartableMoto`, not the session fixture) and
restarts the *endpoint*: the listening socket is closed, every open connection is cut
(keep-alive ones included), the port refuses connections for a moment, then a new server
binds the same port. Moto's backend lives in the test process and survives, exactly like
a real object store's disks survive a restart of its front end. What clients see, reset
connections and refused connects in the middle of multipart uploads, is what matters.

Which jobs are meant to fail. Every submitted date is meant to succeed: the simulator's
faults heal within the retry budget, and the delivery limit is raised to 8 so that a date
that happens to be hit by several kills and dropped connections is not dead-lettered for
it (with the default of 3 that would be correct behaviour, but not a deterministic
outcome to assert). The jobs meant to fail are two messages published straight to the
job exchange that no consumer of this version can do, a future message version and a
body that is not JSON; the dead-letter queue must hold exactly those two.

Afterwards: every job is final (``GET /jobs/<id>``) and succeeded, or failed with a
reason; every date is exact against the oracle, both as stored and as the API serves it;
each date holds exactly its manifest's objects (no duplicate, no leftover run); no
multipart upload is left pending; the job queue is empty with nothing unacknowledged.

The chaos is random in its timing, so a window a few milliseconds wide is hit only now
and then. Two such windows, both hit by the chaos run above, get deterministic tests of
their own (a :class:`Trap` holds one S3 request in Moto while the fault is applied): the
broker connection lost between a date's commit and the job's final save, and the
committing consumer killed while it sweeps older runs' leftovers.
"""

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import unquote

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from common.jobs import JobStore, ManifestStore
from common.layout import Layout
from common.settings import Settings
from common.storage import S3Store, open_store
from common.topology import ROUTING_KEY, Names, declare_topology
from refsim import SimulatorConfig, expected_stats
from refsim.server import serve
from tests.conftest import make_settings
from tests.integration.broker import close_connections
from tests.integration.services import (
    Api,
    Service,
    free_port,
    running,
    start_api,
    start_consumer,
    wait_for_job,
)
from tests.integration.test_ingest_e2e import post, stored_stats

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
log = logging.getLogger(__name__)

SEED = int(os.environ.get("CHAOS_SEED", "20240501"))
MIB = 1024 * 1024
DAYS = [date(2024, 5, 1) + timedelta(days=offset) for offset in range(30)]
CONSUMERS = 3
# Cities of 2_000..48_000 records: about one pair in four is larger than a 5 MiB part.
SIMULATOR = SimulatorConfig(
    seed=SEED % 1000, cities=5, countries=3, records_min=2_000, records_max=48_000,
    latency_min=0.2, latency_max=1.5, fail_rate=0.1, timeout_rate=0.05, truncate_rate=0.1,
    fail_attempts=2, hang_seconds=30,
)  # fmt: skip
# One action of each kind first (shuffled), then more at random.
FIRST_ACTIONS = ["kill", "drop", "s3"]
MORE_ACTIONS = ["kill", "kill", "kill", "drop", "s3"]
PROCESSING_DEADLINE = 110.0
POISON = {
    "future-version": b'{"version": 2, "job_id": "' + b"f" * 32 + b'", "date": "2024-05-01"}',
    "not-json": b"\x00\xff not json",
}


class Trap:
    """Holds the first request ``method`` to ``target`` that follows a manifest commit.

    ``target`` is looked for in the request's decoded path and query. The request is held
    in Moto's request thread, so the consumer waits on it, until :attr:`released` is set.
    """

    def __init__(self, method: str, target: str) -> None:
        self.method = method
        self.target = target
        self.caught = threading.Event()
        self.released = threading.Event()
        self._armed = False
        self._lock = threading.Lock()

    def before(self, method: str, target: str) -> None:
        with self._lock:
            hold = self._armed and method == self.method and self.target in target
            if hold:
                self._armed = False
                self.caught.set()
        if hold:
            self.released.wait(timeout=60)

    def after(self, method: str, target: str) -> None:
        if method == "PUT" and "/manifests/" in target and not self.caught.is_set():
            with self._lock:
                self._armed = True


class RestartableMoto:
    """A Moto S3 endpoint on a fixed port whose front end can be restarted.

    Moto's backend (buckets, objects, uploads) is module state of this process, so it
    survives :meth:`restart`; only the HTTP server goes away and comes back.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.trap: Trap | None = None
        self._moto = DomainDispatcherApplication(create_backend_app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        trap, method = self.trap, environ["REQUEST_METHOD"]
        target = f"{environ['PATH_INFO']}?{unquote(environ.get('QUERY_STRING', ''))}"
        if trap is not None:
            trap.before(method, target)
        answer = self._moto(environ, start_response)
        if trap is not None:
            trap.after(method, target)
        return answer

    def start(self) -> None:
        tracked, lock = self._connections, self._lock

        class Handler(MotoRequestHandler):
            def setup(self) -> None:
                super().setup()
                with lock:
                    tracked.add(self.connection)

            def finish(self) -> None:
                with lock:
                    tracked.discard(self.connection)
                super().finish()

        self._server = make_server("127.0.0.1", self.port, self._app, True, request_handler=Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection, mid-request or idle."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    async def restart(self, down_seconds: float) -> None:
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_seconds)  # the outage itself
        await asyncio.to_thread(self.start)


@pytest.fixture
async def moto() -> AsyncIterator[RestartableMoto]:
    server = RestartableMoto()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.start()  # reset through the API, then stop for good
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{server.url}/moto-api/reset") as response,
        ):
            response.raise_for_status()
        server.stop()


@dataclass
class Chaos:
    """The seeded schedule of faults and what it did (the log is in failure messages)."""

    rng: random.Random
    settings: Settings
    moto: RestartableMoto
    store: S3Store
    consumers: list[Service]
    retired: list[Service] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        self.done.append(f"{time.monotonic() - self.started:.1f}s {text}")
        log.info("chaos: %s", self.done[-1])

    def report(self) -> str:
        return f"CHAOS_SEED={SEED}; chaos: " + "; ".join(self.done)

    def story(self, day: str) -> str:
        """What the consumers logged about one date, in order, for failure messages."""
        lines = [
            (line.get("timestamp", ""), service.name, line)
            for service in [*self.retired, *self.consumers]
            for line in service.lines
            if line.get("date") == day
        ]
        keys = ("event", "run_id", "delivery", "decision", "reason", "error")
        return f"{day}: " + " | ".join(
            f"{stamp} {name} " + " ".join(str(line[k]) for k in keys if k in line)
            for stamp, name, line in sorted(lines, key=lambda item: str(item[0]))
        )

    async def kill(self) -> None:
        busy = [n for n, service in enumerate(self.consumers) if _running_jobs(service) > 0]
        slot = self.rng.choice(busy) if busy else self.rng.randrange(len(self.consumers))
        victim = self.consumers[slot]
        running_jobs = _running_jobs(victim)
        victim.kill()
        await victim.stop()
        self.retired.append(victim)
        name = f"consumer-{len(self.consumers) + len(self.retired)}"
        self.consumers[slot] = await start_consumer(self.settings, name)
        self.note(f"SIGKILL {victim.name} ({running_jobs} job(s) running), started {name}")

    async def drop(self) -> None:
        closed = await close_connections(self.settings.namespace)
        self.note(f"broker closed {closed} connection(s)")

    async def s3(self) -> None:
        pending = await self._wait_for_upload()
        down = round(self.rng.uniform(0.5, 2.0), 2)
        await self.moto.restart(down)
        self.note(f"S3 restarted, down {down}s, {pending} multipart upload(s) pending")

    async def _wait_for_upload(self) -> int:
        """Until a multipart upload is pending (at most a few seconds): restart mid-upload."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(8):
                while True:
                    uploads = await self.store.pending_uploads("")
                    if uploads:
                        return len(uploads)
                    await asyncio.sleep(0.05)  # S3 cannot notify
        return 0

    async def act(self, action: str) -> None:
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "kill": self.kill,
            "drop": self.drop,
            "s3": self.s3,
        }
        await actions[action]()


def _running_jobs(service: Service) -> int:
    """Jobs a consumer started and has not finished, as its own log tells."""
    events = [line.get("event") for line in service.lines]
    return (
        events.count("job.started")
        - events.count("job.succeeded")
        - events.count("job.attempt_failed")
    )


async def _final(jobs: JobStore, job_ids: list[str]) -> bool:
    for job_id in job_ids:
        state = await jobs.get(job_id)
        if state is None or state.status not in {"succeeded", "failed"}:
            return False
    return True


async def _queue_depths(namespace: str) -> dict[str, tuple[int, int]]:
    """Ready and unacknowledged messages of the namespace's queues, as the broker counts."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "list_queues", "name", "messages_ready", "messages_unacknowledged",
        "--quiet", "--no-table-headers",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    depths: dict[str, tuple[int, int]] = {}
    for line in out.decode().splitlines():
        name, ready, unacked = line.split("\t")
        if name.startswith(f"{namespace}."):
            depths[name] = (int(ready), int(unacked))
    return depths


async def _publish_poison(connection: AbstractRobustConnection, settings: Settings) -> None:
    channel = await connection.channel(publisher_confirms=True)
    topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
    for message_id, body in POISON.items():
        await topology.exchange.publish(
            aio_pika.Message(body, message_id=message_id), routing_key=ROUTING_KEY
        )
    await channel.close()


async def _drain(connection: AbstractRobustConnection, queue_name: str) -> list[str | None]:
    channel = await connection.channel()
    queue = await channel.get_queue(queue_name)
    ids: list[str | None] = []
    while (message := await queue.get(fail=False)) is not None:
        ids.append(message.message_id)
        await message.ack()
    await channel.close()
    return ids


async def _api_job(http: aiohttp.ClientSession, api: Api, job_id: str) -> dict[str, Any]:
    async with http.get(f"{api.url}/jobs/{job_id}") as response:
        assert response.status == 200, await response.text()
        job: dict[str, Any] = await response.json()
        return job


def chaos_settings(moto: RestartableMoto, namespace: str, reference_url: str) -> Settings:
    return make_settings(
        moto.url,
        namespace,
        reference_url=reference_url,
        read_timeout_seconds=1.0,
        part_size_bytes=5 * MIB,
        memory_budget_bytes=20 * MIB,
        delivery_limit=8,
        shutdown_grace_seconds=2.0,
    )


async def run_chaos(chaos: Chaos, jobs: JobStore, job_ids: list[str]) -> None:
    """Play the seeded schedule while jobs run, then wait for every job to be final."""
    rng = chaos.rng
    schedule = rng.sample(FIRST_ACTIONS, len(FIRST_ACTIONS))
    schedule += [rng.choice(MORE_ACTIONS) for _ in range(len(MORE_ACTIONS))]
    try:
        async with asyncio.timeout(PROCESSING_DEADLINE):
            while not await _final(jobs, job_ids):
                if schedule:
                    await asyncio.sleep(rng.uniform(0.5, 2.5))  # chaos pauses, seeded
                    await chaos.act(schedule.pop(0))
                else:
                    await asyncio.sleep(0.2)  # polling job states: S3 cannot notify
    except TimeoutError:
        pytest.fail(f"jobs not final after {PROCESSING_DEADLINE}s; {chaos.report()}")
    assert not schedule, f"the dates were done before the chaos was; {chaos.report()}"


async def check_api(
    http: aiohttp.ClientSession, api: Api, job_ids: list[str], chaos: Chaos
) -> None:
    """Every job final with a reason if failed (none is meant to), every date exact."""
    report = chaos.report()
    views = [await _api_job(http, api, job_id) for job_id in job_ids]
    failed = {view["date"]: view["error"] for view in views if view["status"] != "succeeded"}
    assert all(failed.values()), f"a job failed without a reason: {failed}; {report}"
    assert failed == {}, f"dates meant to succeed failed: {failed}; {report}"
    async with http.get(f"{api.url}/country-stats?from={DAYS[0]}&to={DAYS[-1]}") as response:
        text = await response.text()
        stories = [chaos.story(str(day)) for day in DAYS if str(day) in text]
        assert response.status == 200, f"{text}; {report}; " + "; ".join(stories)
        served = await response.json()
    assert served["missing_dates"] == [], report
    assert served["stats"] == expected_stats(SIMULATOR, DAYS), report


async def check_broker(
    amqp: AbstractRobustConnection, consumers: list[Service], namespace: str, report: str
) -> None:
    """The job queue empty with nothing unacknowledged; dead letters exactly the poison."""
    names = Names(namespace)
    # Wait for the last acks, stop the consumers (anything still unacknowledged would go
    # back to ready), then the queue must still be empty.
    async with asyncio.timeout(30):
        while (await _queue_depths(namespace)).get(names.queue) != (0, 0):  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # the broker's counters cannot notify
    for consumer in consumers:
        assert await consumer.stop() == 0, consumer.lines[-5:]
    assert (await _queue_depths(namespace))[names.queue] == (0, 0), report
    channel = await amqp.channel()
    queue = await channel.declare_queue(names.queue, passive=True)
    assert queue.declaration_result.message_count == 0, report
    await channel.close()
    dead = await _drain(amqp, names.dead_letter_queue)
    assert sorted(map(str, dead)) == sorted(POISON), f"dead letters {dead}; {report}"


async def check_store(store: S3Store, settings: Settings, chaos: Chaos) -> None:
    """Exact figures, each date exactly its manifest's objects, no upload left pending."""
    report = chaos.report()
    expected = expected_stats(SIMULATOR, DAYS)
    layout = Layout(settings.s3_prefix)
    manifests = ManifestStore(store, layout)
    for day in DAYS:
        manifest, _ = await manifests.get(day)
        assert manifest is not None, f"{report}; {chaos.story(str(day))}"
        departures = sum(row["buses_started"] for row in expected if row["date"] == str(day))
        assert manifest.records == departures, f"{report}; {chaos.story(str(day))}"
        stored = {item.key async for item in store.list_objects(layout.date_data(day))}
        listed = {city.key for city in manifest.cities}
        assert stored == listed, f"{report}; {chaos.story(str(day))}"
    assert await stored_stats(store, settings, DAYS) == expected, report
    assert await store.pending_uploads("") == [], report


@pytest.mark.timeout(170)  # with the two below: the file stays within 4 minutes
async def test_chaos_loses_nothing_and_duplicates_nothing(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    async with serve(SIMULATOR) as simulator, contextlib.AsyncExitStack() as stack:
        settings = chaos_settings(moto, namespace, simulator.url)
        store = await stack.enter_async_context(open_store(settings))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        api = await start_api(settings)
        consumers = [await start_consumer(settings, f"consumer-{n + 1}") for n in range(CONSUMERS)]
        chaos = Chaos(random.Random(SEED), settings, moto, store, consumers)

        async def stop_everything() -> None:
            async with running(api.service, *chaos.consumers, *chaos.retired):
                pass

        stack.push_async_callback(stop_everything)

        await _publish_poison(amqp, settings)
        accepted = [await post(http, api, f"date={day}") for day in DAYS]
        assert [status for status, _ in accepted] == [202] * len(DAYS), accepted
        job_ids = [body["job_id"] for _, body in accepted]
        chaos.note(f"{len(job_ids)} dates submitted")

        await run_chaos(chaos, JobStore(store, Layout(settings.s3_prefix)), job_ids)
        await check_api(http, api, job_ids, chaos)
        await check_broker(amqp, chaos.consumers, namespace, chaos.report())
        await check_store(store, settings, chaos)


@pytest.mark.timeout(35)
async def test_a_connection_lost_right_after_the_commit_keeps_the_date(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """The broker drops the consumer between the date's commit and the job's final save.

    The worker cancels the job at once (its delivery can no longer be acked); the date is
    committed already, so it must stay whole and the redelivered job must succeed.
    """
    config = SimulatorConfig(
        seed=5, cities=4, countries=2, records_min=20, records_max=50, latency_max=0
    )
    day = DAYS[0]
    async with (
        serve(config) as simulator,
        open_store(
            settings := make_settings(moto.url, namespace, reference_url=simulator.url)
        ) as store,
    ):
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        moto.trap = trap = Trap("PUT", "/jobs/")  # the job's state, saved after the commit
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            assert await asyncio.to_thread(trap.caught.wait, 30), "no commit was seen"
            assert await close_connections(namespace) >= 1
            await consumer.wait_for_event("message.settle_failed")  # the cancelled job
            trap.released.set()
            job = await wait_for_job(http, api.url, body["job_id"])
        moto.trap = None
        assert job["status"] == "succeeded", job
        manifest, _ = await ManifestStore(store, Layout()).get(day)
        assert manifest is not None
        missing = [city.key for city in manifest.cities if await store.get(city.key) is None]
        assert missing == [], "the committed date's objects were deleted"
        assert await stored_stats(store, settings, [day]) == expected_stats(config, [day])


@pytest.mark.timeout(35)
async def test_a_consumer_killed_during_the_sweep_leaves_nothing_behind(
    moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    """A killed run leaves objects; the run that commits next is killed while sweeping.

    The job is redelivered once more and finds its date committed: the older runs'
    objects must still be removed, or they stay in the bucket for good.
    """
    config = SimulatorConfig(
        seed=6, cities=6, countries=2, records_min=20, records_max=50, latency_max=4
    )
    day = DAYS[1]
    layout = Layout()
    prefix = layout.date_data(day)
    async with (
        serve(config) as simulator,
        open_store(
            settings := make_settings(moto.url, namespace, reference_url=simulator.url)
        ) as store,
    ):
        api = await start_api(settings)
        first = await start_consumer(settings, "first")
        async with running(api.service), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            async with asyncio.timeout(30):
                # Until the first run stored a city (polling: S3 cannot notify).
                while not [item async for item in store.list_objects(prefix)]:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            first.kill()
            await first.stop()
            moto.trap = trap = Trap("GET", "prefix=data/date=")  # the sweep's listing
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
        manifest, _ = await ManifestStore(store, layout).get(day)
        assert manifest is not None
        stored = {item.key async for item in store.list_objects(prefix)}
        assert stored == {city.key for city in manifest.cities}, "older runs' objects were left"
