"""Health, readiness, metrics, the bearer token and the runbook's replay command."""

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import date, timedelta

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from moto.server import ThreadedMotoServer
from pydantic import SecretStr
from quart.typing import TestClientProtocol as Client

from common.layout import Layout
from common.lifecycle import Lifecycle
from common.messages import JobMessage, decode_job
from common.settings import Settings
from common.storage import S3Store
from common.topology import declare_topology
from producer.app import create_app
from tests.conftest import make_settings
from tests.integration.services import ROOT, environment, free_port, start, start_consumer

pytestmark = pytest.mark.integration


def NEVER(*_: object) -> bool:  # noqa: N802 - a constant-like predicate
    """A reuse rule that always makes a new job."""
    return False


@pytest.fixture
async def client(settings: Settings, amqp: AbstractRobustConnection) -> AsyncIterator[Client]:
    app = create_app(settings)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_health_and_readiness_answer_when_everything_is_up(
    client: Client,
) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert await health.get_json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert await ready.get_json() == {"status": "ready", "checks": {"broker": "ok", "s3": "ok"}}


async def test_readiness_names_the_broker_when_it_is_unreachable(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "amqp_url": SecretStr(f"amqp://guest:guest@127.0.0.1:{free_port()}/"),
            "publish_timeout_seconds": 1.0,
        }
    )
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        checks = (await ready.get_json())["checks"]
        assert checks["s3"] == "ok"
        assert checks["broker"].startswith("failed")
        queued = await client.post("/process-request?date=2024-01-01")
        assert queued.status_code == 503
        assert "could not be queued" in (await queued.get_json())["error"]


async def test_readiness_names_s3_when_it_goes_away(
    namespace: str, amqp: AbstractRobustConnection
) -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = make_settings(f"http://{host}:{port}", namespace, connect_timeout_seconds=0.5)
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/readyz")).status_code == 200
        server.stop()
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        checks = (await ready.get_json())["checks"]
        assert checks["broker"] == "ok"
        assert checks["s3"].startswith("failed")
        assert str(port) not in checks["s3"], "the error's text (the endpoint) is not served"


async def test_metrics_count_requests_by_route_and_status(client: Client) -> None:
    await client.get("/healthz")
    await client.post("/process-request?date=nope")
    accepted = await client.post("/process-request?date=2024-05-01")
    assert accepted.status_code == 202
    text = await (await client.get("/metrics")).get_data(as_text=True)
    assert 'busstats_api_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert (
        'busstats_api_requests_total{method="POST",route="/process-request",status="400"} 1.0'
        in text
    )
    assert "busstats_api_publish_seconds_count 1.0" in text


async def test_the_token_guards_process_request(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    app = create_app(settings.model_copy(update={"api_token": SecretStr("s3cret")}))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        missing = await client.post("/process-request?date=2024-01-01")
        assert missing.status_code == 401
        assert "Bearer" in (await missing.get_json())["error"]
        wrong = await client.post(
            "/process-request?date=2024-01-01", headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        right = await client.post(
            "/process-request?date=2024-01-01", headers={"Authorization": "Bearer s3cret"}
        )
        assert right.status_code == 202
        assert (await client.get("/country-stats?from=2024-01-01&to=2024-01-01")).status_code == 200


async def test_consumer_serves_its_metrics(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    port = free_port()
    consumer = await start(
        "consumer", "consumer", environment(settings, BUSSTATS_METRICS_PORT=str(port))
    )
    try:
        await consumer.wait_for_event("consumer.started")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
        assert response.status == 200
        assert "busstats_consumer_jobs_in_flight 0.0" in text
        assert "busstats_consumer_cities_fetched_total 0.0" in text
    finally:
        assert await consumer.stop() == 0


async def test_replay_dead_letters_queues_new_jobs_and_keeps_poison(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    channel = await amqp.channel(publisher_confirms=True)
    topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
    dead_exchange = await channel.get_exchange(topology.names.dead_letter_exchange)
    lifecycle = Lifecycle(store, Layout(), stale_after=timedelta(seconds=60))
    day, other_day = date(2024, 1, 1), date(2024, 1, 2)
    # A dead job that still holds its date's claim, and one overtaken by a newer job.
    dead = (await lifecycle.claim(day, force=False, reuse=NEVER)).job
    overtaken = (await lifecycle.claim(other_day, force=False, reuse=NEVER)).job
    await lifecycle.claim(other_day, force=True, reuse=NEVER)
    for job in (dead, overtaken):
        message = JobMessage(job_id=job.job_id, date=job.date)
        await dead_exchange.publish(
            aio_pika.Message(message.encode(), message_id=job.job_id), routing_key=""
        )
    await dead_exchange.publish(aio_pika.Message(b"poison", message_id="poison"), routing_key="")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "consumer", "replay-dead-letters"),
        cwd=ROOT,
        env=environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output
    assert b'"count": 1' in output
    replayed = await topology.queue.get(timeout=5)
    # An ended job never runs again: the replay is a new job of the date, the next claim.
    replay = decode_job(replayed.body)
    assert (replay.date, replay.force) == (day, True)
    assert replay.job_id != dead.job_id
    assert replayed.message_id == replay.job_id
    await replayed.ack()
    pointer = (await lifecycle.dates.read(day))[0].claim
    assert pointer is not None
    assert (pointer.job_id, pointer.generation) == (replay.job_id, dead.generation + 1)
    assert await topology.queue.get(fail=False) is None  # the overtaken one is not replayed
    left = await topology.dead_letter_queue.get(timeout=5)
    assert left.body == b"poison"
    await left.ack()
    assert await topology.dead_letter_queue.get(fail=False) is None


async def test_a_consumer_stops_cleanly_on_sigterm_when_idle(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    consumer = await start_consumer(settings)
    assert await consumer.stop() == 0
    assert any(line.get("event") == "consumer.stopped" for line in consumer.lines)
