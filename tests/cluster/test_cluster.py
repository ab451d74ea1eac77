"""bus-stats on a three-node RabbitMQ cluster that loses a node, twice (``make cluster-test``).

The API and two consumers run as real processes with ``BUSSTATS_AMQP_URL`` naming all
three nodes, against the reference simulator and Moto. Two faults, one after the other:

1. **the job queue's leader is SIGKILLed mid-job** (jobs running): a follower takes over,
   clients on that node fail over to another, running jobs finish or are redelivered;
2. **the node the API is connected to is SIGKILLed during a burst of POSTs**: publishes
   whose confirm was lost are published again on another node; a POST answers 202 only
   for a message the cluster confirmed (a majority of the queue's replicas hold it).

Each killed node is restarted on its own data and must rejoin (running, and back among
the queue's online members). Then, over the quiet system: every job a POST accepted
(202) succeeded and is its date's one committed version, committed by one run; nothing
was dead-lettered; the served and the stored figures equal the oracle's. The run's
figures (jobs, kills, recovery times) are printed (``make cluster-test`` shows them).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from common import amqp
from common.settings import Settings
from common.storage import open_store
from common.topology import Names
from refsim import SimulatorConfig
from refsim.server import serve
from tests.cluster.nodes import Cluster, Node, cluster, processes_of
from tests.conftest import make_settings
from tests.integration import invariants
from tests.integration.services import Api, Service, running, start_api, start_consumer

pytestmark = pytest.mark.cluster

CONFIG = SimulatorConfig(
    seed=29, cities=8, countries=3, records_min=300, records_max=1500, latency_max=0.6
)
DAYS = [date(2024, 5, 1) + timedelta(days=n) for n in range(22)]  # one range: the stats check
FIRST_DAYS, BURST_DAYS = DAYS[:6], DAYS[6:]
BURST_CONCURRENCY = 4
KILL_AFTER_ANSWERS = 3  # the API's node dies once this many burst POSTs were answered
PROBE_AFTER_KILL = 20  # the probe publisher goes on this many messages after the kill
DEADLINE = 150.0  # seconds for the jobs of a phase to end
POLL_SECONDS = 0.2  # job states and the broker's queues cannot notify: they are polled


@dataclass
class Figures:
    """What the run measured; printed at the end."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    kills: list[datetime] = field(default_factory=list)
    """When each node was killed (wall clock, to compare with the services' log times)."""

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"
        self.lines.append(line)
        print(f"cluster-test: {line}", flush=True)  # noqa: T201 - the run's figures


@dataclass
class System:
    nodes: Cluster
    settings: Settings
    api: Api
    consumers: list[Service]
    http: aiohttp.ClientSession
    figures: Figures
    accepted: dict[str, date] = field(default_factory=dict)
    """Job id -> date of every POST answered 202."""
    answers: list[int] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return Names(self.settings.namespace).queue

    @property
    def services(self) -> list[Service]:
        return [self.api.service, *self.consumers]

    async def post(self, day: date) -> tuple[int, dict[str, Any]]:
        url = f"{self.api.url}/process-request?date={day}"
        async with self.http.post(url) as response:
            body: dict[str, Any] = await response.json(content_type=None)
        self.answers.append(response.status)
        if response.status == 202:
            self.accepted[body["job_id"]] = day
        return response.status, body

    async def status(self, job_id: str) -> str:
        async with self.http.get(f"{self.api.url}/jobs/{job_id}") as response:
            body: dict[str, Any] = await response.json()
        status: str = body["status"]
        return status

    async def wait_until_running(self, job_ids: list[str]) -> None:
        """Until one of the jobs runs (a consumer is mid-job)."""
        async with asyncio.timeout(DEADLINE):
            while True:
                statuses = [await self.status(job_id) for job_id in job_ids]
                if "running" in statuses:
                    return
                await asyncio.sleep(POLL_SECONDS)

    async def wait_final(self, job_ids: list[str]) -> float:
        """Until every job is final; how long it took."""
        clock = time.monotonic()
        async with asyncio.timeout(DEADLINE):
            for job_id in job_ids:
                while await self.status(job_id) not in invariants.FINAL:  # noqa: ASYNC110 - polled API
                    await asyncio.sleep(POLL_SECONDS)
        return time.monotonic() - clock

    async def kill_and_restart(
        self, node: Node, why: str, killed: asyncio.Event | None = None
    ) -> None:
        """SIGKILL ``node``, wait for a new queue leader, restart the node, await its rejoin."""
        clock = time.monotonic()
        await self.nodes.kill(node)
        self.figures.kills.append(datetime.now(UTC))
        if killed is not None:
            killed.set()
        self.figures.note(f"SIGKILLed {node.name} ({why})")
        async with asyncio.timeout(DEADLINE):
            while True:
                with contextlib.suppress(RuntimeError, LookupError):
                    leader = await self.nodes.leader(self.queue)
                    if leader is not node:
                        break
                await asyncio.sleep(POLL_SECONDS)
        self.figures.note(
            f"rabbitmqctl shows {leader.name} leading the queue, "
            f"{time.monotonic() - clock:.1f}s after the kill"
        )
        restart = time.monotonic()
        await self.nodes.restart(node)
        async with asyncio.timeout(DEADLINE):
            while True:
                members, online = await self.nodes.members(self.queue)
                if online == members == {n.name for n in self.nodes.nodes}:
                    break
                await asyncio.sleep(POLL_SECONDS)
        self.figures.note(
            f"{node.name} restarted and rejoined (running, queue member online) in "
            f"{time.monotonic() - restart:.1f}s"
        )


@contextlib.asynccontextmanager
async def system(moto_url: str, namespace: str, figures: Figures) -> AsyncIterator[System]:
    async with cluster() as nodes, serve(CONFIG) as simulator:
        figures.note(f"cluster of {len(nodes.nodes)} nodes up: {', '.join(nodes.urls)}")
        settings = make_settings(
            moto_url,
            namespace,
            amqp_url=",".join(nodes.urls),
            reference_url=simulator.url,
            publish_timeout_seconds=20.0,
            heartbeat_seconds=0.5,
            stale_job_seconds=30.0,
        )
        api = await start_api(settings)
        services = list(
            await asyncio.gather(*(start_consumer(settings, f"consumer-{n}") for n in range(2)))
        )
        figures.note("the API and two consumers are up, given the three URLs")
        async with running(api.service, *services), aiohttp.ClientSession() as http:
            yield System(nodes, settings, api, services, http, figures)


async def quiet(world: invariants.World, nodes: Cluster) -> None:
    """Until every reachable job is final and the job queue is empty, nothing unacked."""
    queue = Names(world.settings.namespace).queue
    async with asyncio.timeout(DEADLINE):
        while True:
            jobs = await invariants.all_jobs(world)
            reached = await invariants.referenced_jobs(world, jobs)
            active = [j for j in reached if j not in jobs or jobs[j].status not in invariants.FINAL]
            depths = (await nodes.depths(queue)).get(queue)
            if not active and depths == (0, 0):
                return
            await asyncio.sleep(POLL_SECONDS)


def switch_delay(kills: list[datetime], stamp: object) -> str:
    """How long after the last kill before it a logged switch happened (for the figures)."""
    if not isinstance(stamp, str):
        return ""
    at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    before = [kill for kill in kills if kill <= at]
    return f"({(at - before[-1]).total_seconds():.1f}s after the kill)" if before else ""


def events(service: Service, name: str) -> list[dict[str, Any]]:
    return [line for line in service.lines if line.get("event") == name]


async def phase_leader_killed(run: System) -> None:
    """POST the first dates; once a job runs, SIGKILL the node leading the job queue."""
    members, online = await run.nodes.members(run.queue)
    assert members == online == {node.name for node in run.nodes.nodes}, "not on every node"
    answers = [await run.post(day) for day in FIRST_DAYS]
    assert [status for status, _ in answers] == [202] * len(FIRST_DAYS)
    job_ids = [body["job_id"] for _, body in answers]
    await run.wait_until_running(job_ids)
    run.figures.note(f"{len(job_ids)} POSTs answered 202; a job is running")
    leader = await run.nodes.leader(run.queue)
    clock = time.monotonic()
    await run.kill_and_restart(leader, "the job queue's leader, mid-job")
    await run.wait_final(job_ids)
    run.figures.note(
        f"phase 1: {len(job_ids)} jobs final {time.monotonic() - clock:.1f}s after the kill"
    )


async def probe_publishes(
    run: System, victim: Node, publishing: asyncio.Event, killed: asyncio.Event
) -> tuple[int, int, int]:
    """Publish without pause through a connection to ``victim`` until a while after its kill.

    POSTs spend most of their time in S3, so a kill rarely catches the API's publish in
    flight; this publisher always has one in flight, so its confirm is lost with the node
    and :func:`common.amqp.publish_confirmed` must publish it again on another node.
    Returns (messages confirmed, published again, confirmed but missing from the queue).
    """
    urls = [victim.url, *(node.url for node in run.nodes.nodes if node is not victim)]
    connection = await amqp.connect(
        urls,
        app="bus-stats-cluster-probe",
        namespace=run.settings.namespace,
        connect_seconds=10,
        reconnect_interval=0.5,
    )
    name = f"{run.settings.namespace}.probe"
    arguments = {"x-queue-type": "quorum"}
    sent = retried = after = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments=arguments)
        while after < PROBE_AFTER_KILL:
            message = aio_pika.Message(
                str(sent).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            clock = time.monotonic()
            attempts = await amqp.publish_confirmed(
                channel, channel.default_exchange, message, routing_key=name, within_seconds=60
            )
            if attempts > 1:
                retried += 1
                run.figures.note(
                    f"a probe publish took {attempts} attempts and "
                    f"{time.monotonic() - clock:.1f}s to be confirmed"
                )
            sent += 1
            after += killed.is_set()
            publishing.set()
        await channel.ready()
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        bodies: set[bytes] = set()
        while (got := await queue.get(no_ack=True, fail=False)) is not None:
            bodies.add(got.body)
        await queue.delete(if_unused=False, if_empty=False)
    missing = len({str(number).encode() for number in range(sent)} - bodies)
    return sent, retried, missing


async def phase_api_node_killed(run: System) -> None:
    """A burst of POSTs; after the first answers, SIGKILL the node the API is connected to."""
    api_nodes = await run.nodes.connection_nodes("bus-stats-api ", f" {run.settings.namespace}")
    assert len(api_nodes) == 1, f"the API holds {len(api_nodes)} connections"
    victim = api_nodes[0]
    answered = asyncio.Event()
    gate = asyncio.Semaphore(BURST_CONCURRENCY)
    results: dict[date, int] = {}

    async def post(day: date) -> None:
        async with gate:
            status, _ = await run.post(day)
        results[day] = status
        if len(results) >= KILL_AFTER_ANSWERS:
            answered.set()

    killed, publishing = asyncio.Event(), asyncio.Event()

    async def kill() -> None:
        await answered.wait()
        await publishing.wait()
        await run.kill_and_restart(victim, "the API's node, during a burst of POSTs", killed)

    clock = time.monotonic()
    killer = asyncio.create_task(kill())
    probe = asyncio.create_task(probe_publishes(run, victim, publishing, killed))
    await asyncio.gather(*(post(day) for day in BURST_DAYS))
    burst_seconds = time.monotonic() - clock
    refused = sorted(day for day, status in results.items() if status != 202)
    run.figures.note(
        f"phase 2: {len(BURST_DAYS)} POSTs in {burst_seconds:.1f}s, "
        f"{len(BURST_DAYS) - len(refused)} answered 202, others {[results[d] for d in refused]}"
    )
    assert all(results[day] in {202, 503} for day in refused), results
    await killer
    sent, retried, missing = await probe
    run.figures.note(
        f"probe publisher on {victim.name}: {sent} confirmed publishes, {retried} published "
        f"again after a lost confirm, {missing} missing from the queue"
    )
    assert retried >= 1, "no confirm was lost in flight: the kill came too early or late"
    assert missing == 0
    for day in refused:  # refused (503): nothing queued; asked again, now accepted
        status, _ = await run.post(day)
        assert status in {200, 202}, (day, status)
    burst_jobs = [job_id for job_id, day in run.accepted.items() if day in BURST_DAYS]
    waited = await run.wait_final(burst_jobs)
    run.figures.note(f"phase 2: {len(burst_jobs)} jobs final {waited:.1f}s after the burst")


async def check(run: System, connection: AbstractRobustConnection) -> list[str]:
    """Every invariant over the quiet system; the violations found."""
    async with open_store(run.settings) as store:
        world = invariants.World(
            settings=run.settings,
            store=store,
            api_url=run.api.url,
            days=DAYS,
            oracle=invariants.Oracle(CONFIG),
            visible_jobs=set(run.accepted),
        )
        await quiet(world, run.nodes)
        jobs = await invariants.all_jobs(world)
        reached = await invariants.referenced_jobs(world, jobs)
        problems = invariants.check_job_states(world, jobs, reached)
        problems += await invariants.check_dates(world, jobs)
        problems += await invariants.check_served(run.http, world)
        problems += await invariants.check_objects(world)
        problems += await invariants.check_dead_letters(world, connection, jobs)
        if world.dead_jobs:
            problems.append(f"dead-lettered jobs: {world.dead_jobs}")
        succeeded = [
            line.get("job_id")
            for consumer in run.consumers
            for line in events(consumer, "job.succeeded")
        ]
        for job_id, day in run.accepted.items():
            job = jobs.get(job_id)
            manifest, _ = await world.manifests.get(day)
            if job is None or job.status != "succeeded":
                problems.append(f"accepted job {job_id} ({day}) ended {job and job.status}")
            if manifest is None or manifest.job_id != job_id:
                problems.append(f"{day}: committed {invariants.manifest_summary(manifest)}")
            if succeeded.count(job_id) != 1:
                problems.append(f"job {job_id} succeeded {succeeded.count(job_id)} times")
    return problems


@pytest.mark.timeout(420)
async def test_the_cluster_loses_a_node_twice_and_nothing_is_lost_or_doubled(
    moto_reset: str, namespace: str
) -> None:
    figures = Figures()
    async with system(moto_reset, namespace, figures) as run:
        await phase_leader_killed(run)
        await phase_api_node_killed(run)
        connection = await amqp.connect(
            run.nodes.urls,
            app="bus-stats-cluster-test",
            namespace=namespace,
            connect_seconds=10,
            reconnect_interval=1,
        )
        async with connection:
            problems = await check(run, connection)
        switches = {
            service.name: [
                f"{line.get('from')} -> {line.get('to')} "
                f"{switch_delay(figures.kills, line.get('timestamp'))}"
                for line in events(service, "broker.switched")
            ]
            for service in run.services
        }
        retried = len(events(run.api.service, "job.publish_retried"))
        consumer_events = {
            name: sum(len(events(consumer, name)) for consumer in run.consumers)
            for name in (
                "broker.connection_lost",
                "broker.channel_lost",
                "message.settle_failed",
                "message.duplicate",
            )
        }
    assert not processes_of(run.nodes.folder), "a node or epmd outlived the cluster"
    figures.note(f"broker.switched lines: {switches}")
    figures.note(f"consumer events: {consumer_events}")
    figures.note(
        f"jobs accepted (202): {len(run.accepted)}; POST answers: "
        f"{ {status: run.answers.count(status) for status in sorted(set(run.answers))} }; "
        f"publishes retried after a lost confirm: {retried}; node kills: 2"
    )
    assert switches["api"], "the API never switched node although its node was killed"
    assert not problems, "\n".join(problems)
