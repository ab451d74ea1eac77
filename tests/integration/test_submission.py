"""Concurrent and repeated requests for a date create exactly one job (real S3 and broker)."""

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection
from quart.typing import TestClientProtocol as Client

from common.settings import Settings
from common.storage import S3Store
from common.topology import declare_topology
from producer.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings, amqp: AbstractRobustConnection) -> AsyncIterator[Client]:
    app = create_app(settings)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_concurrent_requests_for_a_date_make_one_job(
    client: Client, settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    answers = await asyncio.gather(
        *(client.post("/process-request?date=2024-06-01") for _ in range(12))
    )
    bodies = [await answer.get_json() for answer in answers]
    assert sorted(answer.status_code for answer in answers) == [200] * 11 + [202]
    assert len({body["job_id"] for body in bodies}) == 1
    assert all(answer.headers["Location"] == bodies[0]["status_url"] for answer in answers)
    channel = await amqp.channel()
    topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
    message = await topology.queue.get(timeout=5)
    assert message.message_id == bodies[0]["job_id"]
    assert message.headers["date"] == "2024-06-01"
    assert message.content_type == "application/json"
    assert message.app_id == "bus-stats-api"
    await message.ack()
    assert await topology.queue.get(fail=False) is None
    # The requests that lost the race for the date's claim left only ended states behind
    # (a state is never deleted: a claim whose answer was lost may have taken effect), and
    # no index entry: the job lists show the one job.
    winner = f"jobs/{bodies[0]['job_id']}.json"
    states = [item.key async for item in store.list_objects("jobs/")]
    assert winner in states
    for key in states:
        if key != winner:
            stored = await store.get(key)
            assert stored is not None
            loser = orjson.loads(stored.body)
            assert (loser["status"], loser["error"]) == (
                "failed",
                "another request claimed the date first",
            ), loser
    listed = [item.key async for item in store.list_objects("jobs-index/all/")]
    assert [key.rpartition("-")[2] for key in listed] == [bodies[0]["job_id"]]


async def test_force_makes_a_new_job_even_while_one_is_queued(client: Client) -> None:
    first = await client.post("/process-request?date=2024-06-02")
    assert first.status_code == 202
    forced = await client.post("/process-request?date=2024-06-02&force=true")
    assert forced.status_code == 202
    assert (await forced.get_json())["job_id"] != (await first.get_json())["job_id"]
    again = await client.post("/process-request?date=2024-06-02")
    assert again.status_code == 200
    assert (await again.get_json())["job_id"] == (await forced.get_json())["job_id"]
    job = await client.get((await again.get_json())["status_url"])
    assert (await job.get_json())["force"] is True
