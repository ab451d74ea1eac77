"""A reference-server outage costs no job: failed deliveries wait, growing, in a delay queue.

The waits are scaled down (``1,2,4`` s) but the outages are not: each lasts far longer
than the immediate redeliveries of the old consumer took to use up every delivery (four
deliveries in about 16 s), so only waiting between deliveries carries a job through.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from common.settings import Settings
from common.topology import delete_topology
from consumer.delays import parse_delays
from refsim import SimulatorConfig
from refsim.server import serve
from tests.integration.services import (
    Api,
    Service,
    free_port,
    running,
    start_api,
    start_consumer,
    wait_for_job,
)

pytestmark = pytest.mark.integration

DAY = date(2024, 2, 1)
FAST = SimulatorConfig(seed=3, cities=6, countries=2, records_min=20, records_max=60, latency_max=0)
DELAYS = "1,2,4"


def outage_settings(settings: Settings, port: int) -> Settings:
    return settings.model_copy(
        update={
            "reference_url": f"http://127.0.0.1:{port}",
            "retry_delays_seconds": DELAYS,
            "retry_budget_seconds": 600.0,
            "delivery_limit": 100,
            "retry_attempts": 2,
            "connect_timeout_seconds": 1.0,
            "read_timeout_seconds": 2.0,
        }
    )


@contextlib.asynccontextmanager
async def delay_queues_deleted(
    amqp: AbstractRobustConnection, namespace: str
) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await delete_topology(await amqp.channel(), namespace, parse_delays(DELAYS))


@contextlib.asynccontextmanager
async def hanging_server(port: int) -> AsyncIterator[None]:
    """Accepts connections on ``port`` and never answers (a server that hangs)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def job_of(http: aiohttp.ClientSession, api: Api, job_id: str) -> dict[str, Any]:
    async with http.get(f"{api.url}/jobs/{job_id}") as response:
        job: dict[str, Any] = await response.json()
        return job


async def request_through_outage(
    settings: Settings,
    port: int,
    outage: contextlib.AbstractAsyncContextManager[None],
    seconds: float,
) -> tuple[dict[str, Any], list[dict[str, Any]], Service]:
    """POST the date while the server is out for ``seconds``, then serve it: the final job."""
    api = await start_api(settings)
    consumer = await start_consumer(settings)
    async with running(api.service, consumer), aiohttp.ClientSession() as http:
        async with outage:
            started = time.monotonic()
            async with http.post(f"{api.url}/process-request?date={DAY}") as response:
                assert response.status == 202, [str(x)[-1500:] for x in api.service.lines[-2:]]
                job_id = (await response.json())["job_id"]
            waiting = await consumer.wait_for_event("message.delayed", deadline=30)
            assert waiting["wait_seconds"] == 1.0
            seen: list[dict[str, Any]] = []
            while time.monotonic() - started < seconds:
                job = await job_of(http, api, job_id)
                assert job["status"] != "failed", job
                seen.append(job)
                await asyncio.sleep(0.5)  # the outage's length is the test's subject
        async with serve(FAST, port=port):
            final = await wait_for_job(http, api.url, job_id, deadline=60)
    return final, seen, consumer


def check_waited(final: dict[str, Any], seen: list[dict[str, Any]], consumer: Service) -> None:
    assert final["status"] == "succeeded", final
    assert final["cities_done"] == FAST.cities
    assert final["next_attempt_at"] is None
    waits = [line["wait_seconds"] for line in consumer.lines if line["event"] == "message.delayed"]
    assert waits[:3] == [1.0, 2.0, 4.0]
    assert set(waits[3:]) <= {4.0}
    assert final["attempts"] == len(waits) + 1
    waiting = [job for job in seen if job["status"] == "queued" and job["next_attempt_at"]]
    assert waiting, "the job's state never said when its next attempt is"
    for job in waiting:
        assert datetime.fromisoformat(job["next_attempt_at"]) > datetime.fromisoformat(
            job["started_at"]
        )
        assert job["error"]


async def test_a_job_outlasts_a_30_s_outage_of_refused_connections(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    port = free_port()
    settings = outage_settings(settings, port)
    async with delay_queues_deleted(amqp, settings.namespace):
        final, seen, consumer = await request_through_outage(
            settings, port, contextlib.nullcontext(), 30
        )
    check_waited(final, seen, consumer)
    error = next(job["error"] for job in seen if job["error"])
    assert "refused" in error or "Cannot connect" in error, error


@pytest.mark.timeout(240)
async def test_a_job_outlasts_a_90_s_outage_of_a_hanging_server(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    port = free_port()
    settings = outage_settings(settings, port)
    async with delay_queues_deleted(amqp, settings.namespace):
        final, seen, consumer = await request_through_outage(
            settings, port, hanging_server(port), 90
        )
    check_waited(final, seen, consumer)
    error = next(job["error"] for job in seen if job["error"])
    assert "time" in error or "answer" in error, error


async def test_a_city_answering_404_fails_the_job_at_once(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    """404 will not heal: no wait, no second delivery."""
    app = web.Application()

    async def cities(_request: web.Request) -> web.Response:
        return web.json_response([{"id": 1, "name": "Gone", "country": "Nowhere"}])

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({"status_code": 404, "detail": "Not Found"}, status=404)

    app.router.add_get("/cities", cities)
    app.router.add_get("/cities/{city_id}/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    settings = outage_settings(settings, port)
    try:
        async with delay_queues_deleted(amqp, settings.namespace):
            api = await start_api(settings)
            consumer = await start_consumer(settings)
            async with running(api.service, consumer), aiohttp.ClientSession() as http:
                async with http.post(f"{api.url}/process-request?date={DAY}") as response:
                    job_id = (await response.json())["job_id"]
                final = await wait_for_job(http, api.url, job_id, deadline=30)
    finally:
        await runner.cleanup()
    assert final["status"] == "failed"
    assert "HTTP 404" in final["error"]
    assert final["attempts"] == 1
    assert not [line for line in consumer.lines if line["event"] == "message.delayed"]
