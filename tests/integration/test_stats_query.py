"""``GET /country-stats`` over a real Moto server: the sums path, the object path, verify,
the backfill, and dates processed end to end by the real consumer.

Legacy dates (committed before sums existed) are written here as the consumer wrote them
then: one object per city, then a manifest without sums. Figures are computed
independently, from the generated records, and compared exactly.
"""

import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from quart import Quart

from common.codec import Codec, codec_of_key
from common.jobs import ManifestStore
from common.layout import Layout
from common.models import CityObject, Manifest
from common.records import encode_line, format_duration, normalise_record
from common.settings import Settings
from common.storage import S3Store
from consumer.backfill import Backfill
from producer.app import create_app
from producer.stats import S3ObjectSource, StatsReader, StatsShared
from producer.stats.objects import ByteStream
from refsim import SimulatorConfig, expected_stats
from refsim.server import serve
from tests.integration.services import running, start_api, start_consumer, wait_for_job

pytestmark = pytest.mark.integration

DAY = date(2024, 1, 1)
CITIES = {
    0: ("Madrid", "Spain"),
    1: ("Seville", "Spain"),
    2: ("Lyon", "France"),
    3: ("Graz", "Austria"),
}


@dataclass(frozen=True)
class Departure:
    day: date
    city_id: int
    passengers: int
    delay: int
    accident: bool


def departures(day: date, seed: int, sizes: dict[int, int]) -> list[Departure]:
    rng = random.Random(seed)
    return [
        Departure(day, city_id, rng.randint(0, 90), rng.randint(0, 7200), rng.random() < 0.001)
        for city_id, size in sizes.items()
        for _ in range(size)
    ]


def expected(records: Sequence[Departure]) -> list[dict[str, Any]]:
    groups: dict[tuple[date, str], list[Departure]] = {}
    for item in records:
        groups.setdefault((item.day, CITIES[item.city_id][1]), []).append(item)
    return [
        {
            "date": day.isoformat(),
            "country": country,
            "buses_started": len(items),
            "passengers": sum(item.passengers for item in items),
            "accident": any(item.accident for item in items),
            "average_delay_seconds": sum(item.delay for item in items) / len(items),
        }
        for (day, country), items in sorted(groups.items())
    ]


def legacy_key(layout: Layout, day: date, run_id: str, city_id: int) -> str:
    return f"{layout.data_root}date={day.isoformat()}/run={run_id}/city={city_id}.jsonl"


async def commit_legacy(
    store: S3Store,
    layout: Layout,
    day: date,
    records: Sequence[Departure],
    empty: Sequence[int] = (),
) -> Manifest:
    """A date as the consumer committed it before sums: objects, then a manifest without.

    Cities in ``empty`` get an object without records (a city with no departures that day).
    """
    run_id = uuid.uuid4().hex
    cities = []
    for city_id in sorted({item.city_id for item in records} | set(empty)):
        key = legacy_key(layout, day, run_id, city_id)
        count = 0
        async with store.writer(key, "application/x-ndjson") as writer:
            for item in records:
                if item.city_id != city_id:
                    continue
                served = {
                    "departure-time": f"{day.isoformat()}T03:00:00",
                    "bus-type": "BUS-107",
                    "passengers": item.passengers,
                    "delay": format_duration(item.delay),
                    "accident": item.accident,
                }
                stored = normalise_record(city_id, served)
                assert isinstance(stored, dict)
                await writer.write(encode_line(stored))
                count += 1
        assert writer.result is not None
        name, country = CITIES[city_id]
        cities.append(
            CityObject(
                city_id=city_id,
                name=name,
                country=country,
                key=key,
                etag=writer.result.etag,
                records=count,
                bytes=writer.result.size,
            )
        )
    manifests = ManifestStore(store, layout)
    _, etag = await manifests.get(day)
    manifest = Manifest(
        date=day,
        job_id=uuid.uuid4().hex,
        run_id=run_id,
        generation=3,
        fetched_at=datetime.now(UTC),
        cities=cities,
    )
    await manifests.commit(manifest, etag)
    return manifest


async def keys(store: S3Store, prefix: str) -> list[str]:
    return [item.key async for item in store.list_objects(prefix)]


@pytest.fixture
def prefixed(settings: Settings) -> Settings:
    return settings.model_copy(update={"s3_prefix": "it/", "stats_concurrency": 3})


@contextlib.asynccontextmanager
async def api_app(settings: Settings) -> AsyncIterator[Quart]:
    """A fresh API process's app (its own empty cache)."""
    app = create_app(settings)
    async with app.test_app():
        yield app


async def query(app: Quart, start: date, end: date, extra: str = "") -> dict[str, Any]:
    response = await app.test_client().get(f"/country-stats?from={start}&to={end}{extra}")
    assert response.status_code == 200, await response.get_data()
    body: dict[str, Any] = await response.get_json()
    return body


def backfill_of(store: S3Store, layout: Layout) -> Backfill:
    return Backfill(store, S3ObjectSource(store.client, store.bucket), layout, objects_at_once=2)


async def test_legacy_dates_by_objects_then_backfilled_then_by_sums_alone(
    store: S3Store, prefixed: Settings, amqp: AbstractRobustConnection
) -> None:
    layout = Layout(prefixed.s3_prefix)
    # Madrid's object is larger than one S3 part and than one read block (8 MiB).
    first = departures(DAY, 1, {0: 80_000, 1: 300, 2: 500})
    third = departures(DAY + timedelta(days=2), 3, {1: 40, 2: 1, 3: 7})
    before = await commit_legacy(store, layout, DAY, first, empty=[3])
    await commit_legacy(store, layout, DAY + timedelta(days=2), third)
    assert before.cities[0].bytes > 8 * 1024 * 1024
    last = DAY + timedelta(days=3)

    async with api_app(prefixed) as app:
        body = await query(app, DAY, last)
    assert body["stats"] == expected(first + third)
    assert body["missing_dates"] == ["2024-01-02", "2024-01-04"]
    assert body["unreadable_dates"] == []
    assert await keys(store, f"{layout.prefix}partials/") == []  # no sidecars any more

    backfill = backfill_of(store, layout)
    outcomes = [await backfill.backfill(DAY + timedelta(days=n)) for n in range(4)]
    assert [item.outcome for item in outcomes] == ["written", "missing", "written", "missing"]
    after, _ = await ManifestStore(store, layout).get(DAY)
    assert after is not None
    assert all(city.sums is not None for city in after.cities)
    strip: dict[str, Any] = {"cities": []}
    assert after.model_copy(update=strip) == before.model_copy(update=strip)  # all else kept
    assert [c.model_copy(update={"sums": None}) for c in after.cities] == before.cities
    assert (await backfill.backfill(DAY)).outcome == "had_sums"

    await store.delete(await keys(store, layout.data_root))  # only the sums can answer now
    async with api_app(prefixed) as app:
        assert await query(app, DAY, last) == body
        sub = await query(app, DAY + timedelta(days=1), DAY + timedelta(days=2))
        assert sub["stats"] == expected(third)
        # verify needs the objects: a committed date without them is unreadable, not a 503.
        audited = await query(app, DAY, last, "&verify=true")
    assert [item["date"] for item in audited["unreadable_dates"]] == ["2024-01-01", "2024-01-03"]
    assert "missing or was replaced" in audited["unreadable_dates"][0]["reason"]
    assert audited["stats"] == []


async def test_verify_reports_stored_sums_that_disagree_with_the_objects(
    store: S3Store, prefixed: Settings, amqp: AbstractRobustConnection
) -> None:
    layout = Layout(prefixed.s3_prefix)
    records = departures(DAY, 5, {0: 50, 2: 60})
    await commit_legacy(store, layout, DAY, records)
    assert (await backfill_of(store, layout).backfill(DAY)).outcome == "written"
    manifests = ManifestStore(store, layout)
    manifest, etag = await manifests.get(DAY)
    assert manifest is not None
    lyon = manifest.cities[1]
    assert lyon.sums is not None
    wrong = lyon.sums.model_copy(update={"passengers": lyon.sums.passengers + 7})
    tampered = [manifest.cities[0], lyon.model_copy(update={"sums": wrong})]
    await manifests.commit(manifest.model_copy(update={"cities": tampered}), etag)

    async with api_app(prefixed) as app:
        plain = await query(app, DAY, DAY)
        audited = await query(app, DAY, DAY, "&verify=true")
        path = f"/country-stats?from={DAY}&to={DAY}&verify=true&format=csv"
        as_csv = await app.test_client().get(path)
    truth = expected(records)
    assert [row["passengers"] for row in plain["stats"]] == [
        row["passengers"] + (7 if row["country"] == "France" else 0) for row in truth
    ]
    assert audited["stats"] == truth
    report = audited["verify"]
    assert report["status"] == "mismatch"
    assert report["mismatched_dates"] == ["2024-01-01"]
    assert report["mismatches"] == [
        {
            "date": "2024-01-01",
            "city_id": 2,
            "key": lyon.key,
            "field": "passengers",
            "stored": wrong.passengers,
            "recomputed": lyon.sums.passengers,
        }
    ]
    assert report["objects_read"] == 2
    assert as_csv.headers["X-Verify-Status"] == "mismatch"


async def test_a_legacy_value_above_int64_is_answered_exactly(
    store: S3Store, prefixed: Settings, amqp: AbstractRobustConnection
) -> None:
    layout = Layout(prefixed.s3_prefix)
    manifest = await commit_legacy(store, layout, DAY, departures(DAY, 6, {0: 3}))
    big = 9_223_372_036_854_775_808  # 2^63: stored before ingest bounded passengers
    line = encode_line(
        {"city_id": 0, "departure_time": "2024-01-01T03:00:00", "bus_type": "B",
         "passengers": big, "delay_seconds": 4.0, "accident": False}
    )  # fmt: skip
    key = manifest.cities[0].key
    etag = await store.put(key, line * 2, content_type="application/x-ndjson")
    city = manifest.cities[0].model_copy(update={"etag": etag, "records": 2})
    manifests = ManifestStore(store, layout)
    _, current = await manifests.get(DAY)
    await manifests.commit(manifest.model_copy(update={"cities": [city]}), current)
    async with api_app(prefixed) as app:
        body = await query(app, DAY, DAY)
    assert body["stats"][0]["passengers"] == 2 * big
    assert (await backfill_of(store, layout).backfill(DAY)).outcome == "written"
    stored, _ = await manifests.get(DAY)
    assert stored is not None
    assert stored.cities[0].sums is not None
    assert stored.cities[0].sums.passengers == 2 * big
    async with api_app(prefixed) as app:
        assert (await query(app, DAY, DAY))["stats"] == body["stats"]


class ReprocessingSource(S3ObjectSource):
    """The real S3 object source; at the first object read, ``swap()`` runs first."""

    def __init__(self, store: S3Store, swap: Any) -> None:
        super().__init__(store.client, store.bucket)
        self.swap = swap
        self.swapped = False

    @contextlib.asynccontextmanager
    async def open(self, key: str, etag: str) -> AsyncIterator[ByteStream | None]:
        if not self.swapped:
            self.swapped = True
            await self.swap()
        async with super().open(key, etag) as stream:
            yield stream


async def test_a_date_reprocessed_while_read_is_answered_whole(
    store: S3Store, prefixed: Settings
) -> None:
    layout = Layout(prefixed.s3_prefix)
    old = departures(DAY, 10, {0: 50, 1: 60, 2: 70, 3: 80})
    new = departures(DAY, 11, {0: 5, 2: 6})
    await commit_legacy(store, layout, DAY, old)

    async def reprocess() -> None:
        gone = await keys(store, layout.date_data(DAY))
        await commit_legacy(store, layout, DAY, new)
        await store.delete(gone)

    source = ReprocessingSource(store, reprocess)
    reader = StatsReader(store, source, layout, StatsShared.create(objects_at_once=2))
    result = await reader.country_stats(DAY, DAY)
    assert source.swapped
    assert result.counts.dates_reread == 1
    rows = [asdict(row) | {"date": row.date.isoformat()} for row in result.rows]
    assert rows == expected(new)


async def test_the_backfill_keeps_a_manifest_that_changed_meanwhile(
    store: S3Store, prefixed: Settings
) -> None:
    layout = Layout(prefixed.s3_prefix)
    await commit_legacy(store, layout, DAY, departures(DAY, 12, {0: 20, 1: 30}))
    newer: list[Manifest] = []

    async def recommit() -> None:  # e.g. a re-processed date, committed meanwhile
        newer.append(await commit_legacy(store, layout, DAY, departures(DAY, 13, {2: 9})))

    backfill = Backfill(store, ReprocessingSource(store, recommit), layout, objects_at_once=2)
    outcome = await backfill.backfill(DAY)
    assert outcome.outcome == "written"
    final, _ = await ManifestStore(store, layout).get(DAY)
    assert final is not None
    assert final.run_id == newer[0].run_id  # the newer version, with its sums added
    assert [city.city_id for city in final.cities] == [2]
    assert final.cities[0].sums is not None
    assert final.cities[0].sums.departures == 9


# --- end to end, with the real consumer --------------------------------------------------

E2E = SimulatorConfig(seed=21, cities=10, countries=3, records_min=40, records_max=900)


@pytest.mark.timeout(300)  # three consumers, one codec each, one after the other
async def test_the_sums_path_and_the_object_path_agree_for_processed_dates(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection
) -> None:
    """Dates processed by the real consumer carry sums; their answer equals the oracle's
    and the object path's (verify, and the same dates with their sums removed).

    The three dates are written with three codecs, as a bucket holds them after the
    default changed: uncompressed (before codecs), gzip, and zstd (the default). verify,
    the object path and the backfill read each by its keys' suffix, side by side.
    """
    days = [DAY + timedelta(days=offset) for offset in range(3)]
    codecs: list[Codec] = ["none", "gzip", "zstd"]
    layout = Layout(settings.s3_prefix)
    async with serve(E2E) as live:
        settings = settings.model_copy(update={"reference_url": live.url})
        api = await start_api(settings)
        async with running(api.service), aiohttp.ClientSession() as http:
            for day, codec in zip(days, codecs, strict=True):
                consumer = await start_consumer(
                    settings, extra_env={"BUSSTATS_OBJECT_CODEC": codec}
                )
                async with running(consumer):
                    async with http.post(f"{api.url}/process-request?date={day}") as response:
                        job_id = (await response.json())["job_id"]
                    job = await wait_for_job(http, api.url, job_id, deadline=120)
                assert job["status"] == "succeeded", job

            async def ask(extra: str = "") -> dict[str, Any]:
                url = f"{api.url}/country-stats?from={days[0]}&to={days[-1]}{extra}"
                async with http.get(url) as response:
                    assert response.status == 200
                    body: dict[str, Any] = await response.json()
                    return body

            by_sums = await ask()
            audited = await ask("&verify=true")
    reads = [line for line in api.service.lines if line.get("event") == "stats.read"]
    assert (reads[0]["from_sums"], reads[0]["objects"]) == (3, 0)  # manifests alone
    assert reads[1]["objects"] == 3 * E2E.cities
    oracle = expected_stats(E2E, days)
    assert by_sums["stats"] == oracle
    assert audited["stats"] == oracle
    assert audited["verify"]["status"] == "ok"
    assert audited["verify"]["dates_without_sums"] == []

    # Each date's objects carry its codec in their keys and in the manifest.
    manifests = ManifestStore(store, layout)
    stored: list[Manifest] = []
    for day, codec in zip(days, codecs, strict=True):
        manifest, _ = await manifests.get(day)
        assert manifest is not None
        assert {(city.codec, codec_of_key(city.key)) for city in manifest.cities} == {
            (codec, codec)
        }
        lines = sum(city.bytes for city in manifest.cities)
        on_disk = sum(city.size_stored for city in manifest.cities)
        assert (on_disk == lines) == (codec == "none")
        stored.append(manifest)

    # The same dates as legacy dates (sums removed): the object path alone answers them,
    # and the backfill reads every codec back to the sums the consumer made.
    for manifest in stored:
        _, etag = await manifests.get(manifest.date)
        bare = [city.model_copy(update={"sums": None}) for city in manifest.cities]
        await manifests.commit(manifest.model_copy(update={"cities": bare}), etag)
    async with api_app(settings) as app:
        by_objects = await query(app, days[0], days[-1])
    assert by_objects["stats"] == oracle
    backfill = backfill_of(store, layout)
    assert [(await backfill.backfill(day)).outcome for day in days] == ["written"] * 3
    for manifest in stored:
        again, _ = await manifests.get(manifest.date)
        assert again is not None
        assert [city.sums for city in again.cities] == [city.sums for city in manifest.cities]
