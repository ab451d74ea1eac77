"""What can fail during ingestion: killed consumers, dropped connections, re-processing."""

import asyncio
import re
from datetime import date

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from common.jobs import ManifestStore
from common.layout import Layout
from common.settings import Settings
from common.storage import S3Store
from refsim import SimulatorConfig, cities, expected_stats
from refsim.server import serve
from tests.integration.broker import close_connections
from tests.integration.services import running, start_api, start_consumer, wait_for_job
from tests.integration.test_ingest_e2e import ingest_one_date, post, stored_stats, with_reference

pytestmark = pytest.mark.integration

DAY = date(2024, 3, 1)
MIB = 1024 * 1024
# Large cities (about 7 MB each) so that S3 multipart uploads are in flight when killed.
LARGE = SimulatorConfig(
    seed=21, cities=6, countries=2, records_min=45_000, records_max=50_000, latency_max=0.3
)


async def wait_for_pending_upload(store: S3Store) -> None:
    """Until some multipart upload is in flight (polling S3, the only observer)."""
    async with asyncio.timeout(60):
        while not await store.pending_uploads("data/"):  # noqa: ASYNC110 - S3 cannot notify
            await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
async def test_a_consumer_killed_mid_upload_loses_and_duplicates_nothing(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    async with serve(LARGE) as live:
        settings = with_reference(  # uncompressed: the cities must need multipart uploads
            settings,
            live.url,
            part_size_bytes=5 * MIB,
            memory_budget_bytes=20 * MIB,
            object_codec="none",
        )
        api = await start_api(settings)
        victim = await start_consumer(settings, "victim")
        async with running(api.service), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={DAY}")
            await victim.wait_for_event("job.started")
            await wait_for_pending_upload(store)
            victim.kill()
            await victim.stop()
            survivor = await start_consumer(settings, "survivor")
            async with running(survivor):
                job = await wait_for_job(http, api.url, body["job_id"], deadline=180)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert await stored_stats(store, settings, [DAY]) == expected_stats(LARGE, [DAY])
    assert await store.pending_uploads("") == []
    manifest, _ = await ManifestStore(store, Layout()).get(DAY)
    assert manifest is not None
    stored = {item.key async for item in store.list_objects("data/")}
    assert stored == {city.key for city in manifest.cities}


@pytest.mark.timeout(180)
async def test_sigterm_requeues_a_running_job_for_another_consumer(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    config = SimulatorConfig(
        seed=4,
        cities=8,
        countries=2,
        records_min=100,
        records_max=200,
        latency_min=3,
        latency_max=4,
    )
    async with serve(config) as live:
        settings = with_reference(settings, live.url, shutdown_grace_seconds=0.5)
        api = await start_api(settings)
        first = await start_consumer(settings, "first")
        async with running(api.service), aiohttp.ClientSession() as http:
            _, body = await post(http, api, f"date={DAY}")
            await first.wait_for_event("job.started")
            assert await first.stop() == 0
            # A graceful stop re-publishes a confirmed copy and acks the original: the
            # shutdown does not count as a failed delivery.
            assert any(line.get("event") == "message.republished" for line in first.lines)
            assert any(line.get("decision") == "ack" for line in first.lines)
            second = await start_consumer(settings, "second")
            async with running(second):
                job = await wait_for_job(http, api.url, body["job_id"], deadline=60)
    assert job["status"] == "succeeded"
    assert await stored_stats(store, settings, [DAY]) == expected_stats(config, [DAY])


@pytest.mark.timeout(180)
async def test_dropped_broker_connections_heal_without_losing_a_job(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    config = SimulatorConfig(
        seed=8,
        cities=8,
        countries=3,
        records_min=100,
        records_max=300,
        latency_min=5,  # rabbitmqctl takes seconds: the first job is still fetching then
        latency_max=6,
    )
    days = [DAY, date(2024, 3, 2)]
    async with serve(config) as live:
        settings = with_reference(settings, live.url)
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            _, first = await post(http, api, f"date={days[0]}")
            await consumer.wait_for_event("job.started")
            assert await close_connections(settings.namespace) >= 2  # the API's and the consumer's
            await consumer.wait_for_event("broker.connection_lost")
            async with asyncio.timeout(30):
                # A client retries after a 503 until the API has its broker back.
                while (answer := await post(http, api, f"date={days[1]}"))[0] == 503:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            assert answer[0] == 202
            jobs = [
                await wait_for_job(http, api.url, job_id, deadline=90)
                for job_id in (first["job_id"], answer[1]["job_id"])
            ]
            # The loss is counted for the BusStatsBrokerErrors alert.
            port = (await consumer.wait_for_event("metrics.listening"))["port"]
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                metrics = await response.text()
            assert "\nbusstats_consumer_broker_connection_losses_total 1.0\n" in metrics
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    assert await stored_stats(store, settings, days) == expected_stats(config, days)


async def test_force_replaces_a_date_whole_and_removes_the_old_version(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    config = SimulatorConfig(
        seed=9, cities=5, countries=2, records_min=20, records_max=50, latency_max=0
    )
    async with serve(config) as live:
        settings = with_reference(settings, live.url)
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            _, old = await post(http, api, f"date={DAY}")
            await wait_for_job(http, api.url, old["job_id"])
            old_manifest, _ = await ManifestStore(store, Layout()).get(DAY)
            status, new = await post(http, api, f"date={DAY}&force=true")
            assert status == 202
            assert new["job_id"] != old["job_id"]
            job = await wait_for_job(http, api.url, new["job_id"])
    assert job["status"] == "succeeded"
    manifest, _ = await ManifestStore(store, Layout()).get(DAY)
    assert old_manifest is not None
    assert manifest is not None
    assert manifest.run_id != old_manifest.run_id
    stored = {item.key async for item in store.list_objects("data/")}
    assert stored == {city.key for city in manifest.cities}
    assert await stored_stats(store, settings, [DAY]) == expected_stats(config, [DAY])


async def test_untrusted_city_names_never_become_key_paths(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    config = SimulatorConfig(
        seed=1, cities=12, countries=3, records_min=5, records_max=10, latency_max=0
    )
    names = {city.name for city in cities(config)}
    assert {"../x", "Zürich/Nord"} <= names
    await ingest_one_date(settings, config, DAY)
    allowed = re.compile(
        r"^(jobs/[0-9a-f]{32}\.json"
        r"|dates/date=\d{4}-\d{2}-\d{2}/latest-job\.json"
        r"|manifests/date=\d{4}-\d{2}-\d{2}/manifest\.json"
        r"|jobs-index/(?:all|date=\d{4}-\d{2}-\d{2})/\d+-[0-9a-f]{32}"
        r"|data/date=\d{4}-\d{2}-\d{2}/gen=\d+/job=[0-9a-f]{32}/run=[0-9a-f]{32}"
        r"/city=\d+\.jsonl\.zst)$"
    )
    keys = [item.key async for item in store.list_objects("")]
    assert keys
    assert [key for key in keys if not allowed.match(key)] == []
    manifest, _ = await ManifestStore(store, Layout()).get(DAY)
    assert manifest is not None
    assert {city.name for city in manifest.cities} == names
