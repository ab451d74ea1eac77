"""Every path a user takes through ingestion, with real processes, broker, S3 and simulator."""

import asyncio
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection

from common.codec import CONTENT_TYPES, codec_of_key, decompress
from common.jobs import ManifestStore
from common.layout import Layout
from common.settings import Settings
from common.storage import S3Store
from common.topology import ROUTING_KEY, Names, declare_topology
from refsim import SimulatorConfig, expected_bad_records, expected_stats
from refsim.config import DateParam
from refsim.server import LiveSimulator, serve
from tests.figures import CountryDays
from tests.integration.services import (
    Api,
    running,
    start_api,
    start_consumer,
    wait_for_job,
)

pytestmark = pytest.mark.integration

DAY = date(2024, 1, 1)
FAST = SimulatorConfig(
    seed=7, cities=12, countries=4, records_min=50, records_max=400, latency_max=0.2
)


async def stored_stats(
    store: S3Store, settings: Settings, days: list[date]
) -> list[dict[str, Any]]:
    """The figures of what is committed in S3, computed with plain Python."""
    manifests = ManifestStore(store, Layout(settings.s3_prefix))
    figures = CountryDays()
    for day in days:
        manifest, _ = await manifests.get(day)
        assert manifest is not None, f"{day} has no manifest"
        for city in manifest.cities:
            stored = await store.get(city.key)
            assert stored is not None
            assert codec_of_key(city.key) == city.codec
            assert len(stored.body) == city.size_stored
            head = await store.client.head_object(Bucket=store.bucket, Key=city.key)
            assert head["ContentType"] == CONTENT_TYPES[city.codec]
            assert not head.get("ContentEncoding")  # clients must not decompress on the fly
            body = decompress(stored.body, city.codec)
            assert len(body) == city.bytes
            lines = body.splitlines()
            assert len(lines) == city.records
            for line in lines:
                record = orjson.loads(line)
                assert record["city_id"] == city.city_id
                figures.add(
                    day.isoformat(),
                    city.country,
                    record["passengers"],
                    record["delay_seconds"],
                    record["accident"],
                )
    return figures.rows()


@pytest.fixture
async def simulator() -> AsyncIterator[LiveSimulator]:
    async with serve(FAST) as live:
        yield live


def with_reference(settings: Settings, url: str, **overrides: Any) -> Settings:
    return settings.model_copy(update={"reference_url": url, **overrides})


async def post(http: aiohttp.ClientSession, api: Api, query: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{api.url}/process-request?{query}") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def ingest_one_date(
    settings: Settings, config: SimulatorConfig, day: date = DAY, **overrides: Any
) -> tuple[Settings, dict[str, Any]]:
    """Serve ``config``, run the API and one consumer, process ``day``: its final job."""
    async with serve(config) as live:
        settings = with_reference(settings, live.url, **overrides)
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={day}")
            return settings, await wait_for_job(http, api.url, body["job_id"])


async def test_dates_flow_from_request_to_s3_with_two_consumers(
    settings: Settings, store: S3Store, simulator: LiveSimulator, amqp: AbstractRobustConnection
) -> None:
    settings = with_reference(settings, simulator.url)
    days = [DAY + timedelta(days=offset) for offset in range(3)]
    api = await start_api(settings)
    consumers = [await start_consumer(settings, f"consumer-{n}") for n in range(2)]
    async with running(api.service, *consumers), aiohttp.ClientSession() as http:
        accepted = [await post(http, api, f"date={day}") for day in days]
        assert [status for status, _ in accepted] == [202, 202, 202]
        repeated = await post(http, api, f"date={days[0]}")
        assert repeated == (200, {**accepted[0][1], "status": repeated[1]["status"]})
        jobs = [await wait_for_job(http, api.url, body["job_id"]) for _, body in accepted]
        assert [job["status"] for job in jobs] == ["succeeded"] * 3
        assert all(job["cities_done"] == job["cities_total"] == FAST.cities for job in jobs)
        again = await post(http, api, f"date={days[0]}")
        assert again[0] == 200
        assert again[1]["status"] == "succeeded"
        query = f"from={days[0]}&to={days[-1] + timedelta(days=1)}"
        async with http.get(f"{api.url}/country-stats?{query}") as response:
            assert response.status == 200
            answer = await response.json()
    assert answer == {
        "from": days[0].isoformat(),
        "to": (days[-1] + timedelta(days=1)).isoformat(),
        "stats": expected_stats(FAST, days),
        "missing_dates": [(days[-1] + timedelta(days=1)).isoformat()],
        "unreadable_dates": [],
    }
    assert await stored_stats(store, settings, days) == expected_stats(FAST, days)
    handled_by = {
        line.get("job_id")
        for c in consumers
        for line in c.lines
        if line.get("event") == "job.succeeded"
    }
    assert handled_by == {body["job_id"] for _, body in accepted}


async def test_bad_dates_are_refused_with_a_clear_error(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    api = await start_api(settings)
    async with running(api.service), aiohttp.ClientSession() as http:
        for query in [
            "",
            "date=",
            "date=abc",
            "date=2024-13-01",
            "date=2024-1-1",
            "date=2024-02-30",
        ]:
            status, body = await post(http, api, query)
            assert status == 400, query
            assert "'date'" in body["error"]
            assert "YYYY-MM-DD" in body["error"] or "real date" in body["error"]
        status, body = await post(http, api, "date=2024-01-01&force=maybe")
        assert status == 400
        assert "'force'" in body["error"]
        async with http.get(f"{api.url}/jobs/{'0' * 32}") as response:
            assert response.status == 404
            assert "error" in await response.json()


async def test_malformed_records_are_counted_and_kept_aside(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    config = SimulatorConfig(
        seed=3,
        cities=5,
        countries=2,
        records_min=100,
        records_max=200,
        latency_max=0,
        malformed_rate=0.05,
    )
    settings, job = await ingest_one_date(settings, config)
    bad = sum(expected_bad_records(config, [DAY]).values())
    assert bad > 0
    assert job["status"] == "succeeded"
    assert job["bad_records"] == bad
    assert await stored_stats(store, settings, [DAY]) == expected_stats(config, [DAY])
    manifest, _ = await ManifestStore(store, Layout()).get(DAY)
    assert manifest is not None
    assert manifest.rejects is not None
    assert manifest.rejects.key.endswith("/rejects.jsonl.zst")  # the default codec
    rejects = await store.get(manifest.rejects.key)
    assert rejects is not None
    assert len(decompress(rejects.body, manifest.rejects.codec).splitlines()) == bad


@pytest.mark.parametrize("dialect", ["datetime", "date"])
async def test_both_date_dialects_are_learnt(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection, dialect: DateParam
) -> None:
    config = SimulatorConfig(
        seed=5,
        cities=4,
        countries=2,
        records_min=10,
        records_max=20,
        latency_max=0,
        date_param=dialect,
    )
    settings, job = await ingest_one_date(settings, config)
    assert job["status"] == "succeeded"
    assert await stored_stats(store, settings, [DAY]) == expected_stats(config, [DAY])


async def test_transient_faults_are_retried_and_the_result_is_exact(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    config = SimulatorConfig(
        seed=11, cities=10, countries=3, records_min=200, records_max=600, latency_max=0,
        fail_rate=0.3, timeout_rate=0.1, truncate_rate=0.1, fail_attempts=2,
    )  # fmt: skip
    settings, job = await ingest_one_date(settings, config, read_timeout_seconds=1.0)
    assert job["status"] == "succeeded", job
    assert job["retries"] > 0
    assert await stored_stats(store, settings, [DAY]) == expected_stats(config, [DAY])
    uploads = await store.pending_uploads("")
    assert uploads == []


async def test_a_city_that_never_answers_fails_the_job_and_dead_letters_it(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    config = SimulatorConfig(
        seed=2,
        cities=4,
        countries=2,
        records_min=10,
        records_max=20,
        latency_max=0,
        fail_permanently=frozenset({3}),
    )
    settings, job = await ingest_one_date(settings, config, retry_attempts=2, delivery_limit=1)
    assert job["status"] == "failed"
    assert "city 3" in job["error"]
    assert job["attempts"] == 2  # the first delivery and the one redelivery allowed
    manifest, _ = await ManifestStore(store, Layout()).get(DAY)
    assert manifest is None
    assert [item async for item in store.list_objects("data/")] == []
    channel = await amqp.channel()
    dead = await channel.get_queue(Names(settings.namespace).dead_letter_queue)
    message = await dead.get(timeout=5)
    assert message.message_id == job["job_id"]
    await message.ack()


async def test_a_poison_message_goes_straight_to_the_dead_letter_queue(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    consumer = await start_consumer(settings)
    async with running(consumer):
        channel = await amqp.channel(publisher_confirms=True)
        topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
        await topology.exchange.publish(
            aio_pika.Message(b"not json at all", message_id="poison"), routing_key=ROUTING_KEY
        )
        message = None
        async with asyncio.timeout(20):
            while message is None:
                message = await topology.dead_letter_queue.get(fail=False)
                if message is None:
                    await consumer.wait_for_event("message.settled")
        assert message.message_id == "poison"
        assert message.body == b"not json at all"
        await message.ack()
