"""``GET /country-stats`` over data written into the Moto server exactly as the consumer does.

Figures are computed independently here, from the generated records, and compared exactly.
"""

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from quart import Quart

from common.jobs import ManifestStore
from common.layout import Layout
from common.models import CityObject, Manifest
from common.records import encode_line, format_duration, normalise_record
from common.settings import Settings
from common.storage import S3Store, StoredObject
from producer.app import create_app
from producer.stats import StatsReader

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


async def commit(
    store: S3Store,
    layout: Layout,
    day: date,
    records: Sequence[Departure],
    empty: Sequence[int] = (),
) -> Manifest:
    """Writes a date as the consumer does: a new run's objects, then the manifest in one PUT.

    Cities in ``empty`` get an object without records (a city with no departures that day).
    """
    run_id = uuid.uuid4().hex
    cities = []
    for city_id in sorted({item.city_id for item in records} | set(empty)):
        key = layout.city_object(day, run_id, city_id)
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


@pytest.fixture
async def app(prefixed: Settings, amqp: AbstractRobustConnection) -> AsyncIterator[Quart]:
    app = create_app(prefixed)
    async with app.test_app():
        yield app


async def query(app: Quart, start: date, end: date) -> dict[str, Any]:
    response = await app.test_client().get(f"/country-stats?from={start}&to={end}")
    assert response.status_code == 200, await response.get_data()
    body: dict[str, Any] = await response.get_json()
    return body


async def test_exact_figures_then_partials_without_raw_data(
    app: Quart, store: S3Store, prefixed: Settings
) -> None:
    layout = Layout(prefixed.s3_prefix)
    # Madrid's object is larger than one S3 part: a multipart ETag ("...-2") keys its partial.
    first = departures(DAY, 1, {0: 80_000, 1: 300, 2: 500})
    third = departures(DAY + timedelta(days=2), 3, {1: 40, 2: 1, 3: 7})
    await commit(store, layout, DAY, first, empty=[3])
    await commit(store, layout, DAY + timedelta(days=2), third)
    madrid = (await ManifestStore(store, layout).get(DAY))[0]
    assert madrid is not None
    assert madrid.cities[0].etag.strip('"').endswith("-2")

    body = await query(app, DAY, DAY + timedelta(days=3))
    assert body["stats"] == expected(first + third)
    assert body["missing_dates"] == ["2024-01-02", "2024-01-04"]
    assert body["from"] == "2024-01-01"
    assert body["to"] == "2024-01-04"

    data = await keys(store, f"{layout.prefix}data/")
    partials = await keys(store, f"{layout.prefix}partials/")
    assert len(data) == 7
    wanted: list[str] = []
    for day in (DAY, DAY + timedelta(days=2)):
        manifest, etag = await ManifestStore(store, layout).get(day)
        assert manifest is not None
        assert etag is not None
        wanted.extend(layout.partial(city.key, city.etag) for city in manifest.cities)
        wanted.append(layout.date_summary(day, manifest.run_id, etag))
    assert sorted(partials) == sorted(wanted)

    await store.delete(data)  # from now on only the partials can answer
    assert await query(app, DAY, DAY + timedelta(days=3)) == body
    # A sub-range answers the same rows for its dates.
    sub = await query(app, DAY + timedelta(days=1), DAY + timedelta(days=2))
    assert sub["stats"] == expected(third)
    assert sub["missing_dates"] == ["2024-01-02"]


class ReprocessingStore(S3Store):
    """The real S3 store; at the first data-object read, the date is re-processed first."""

    def __init__(self, base: S3Store, layout: Layout, replacement: list[Departure]) -> None:
        super().__init__(base.client, base.bucket, base.budget, base.part_size)
        self.layout = layout
        self.replacement = replacement
        self.swapped = False

    async def get(self, key: str) -> StoredObject | None:
        if key.endswith(".jsonl") and not self.swapped:
            self.swapped = True
            old = await keys(self, self.layout.date_data(DAY))
            await commit(self, self.layout, DAY, self.replacement)
            await self.delete(old)
        return await super().get(key)


async def test_a_date_reprocessed_while_read_is_answered_whole(
    store: S3Store, prefixed: Settings
) -> None:
    layout = Layout(prefixed.s3_prefix)
    old = departures(DAY, 10, {0: 50, 1: 60, 2: 70, 3: 80})
    new = departures(DAY, 11, {0: 5, 2: 6})
    await commit(store, layout, DAY, old)
    swapping = ReprocessingStore(store, layout, new)
    reader = StatsReader(swapping, layout, concurrency=2)

    result = await reader.country_stats(DAY, DAY)

    assert swapping.swapped
    assert result.counts.dates_reread == 1
    rows = [asdict(row) | {"date": row.date.isoformat()} for row in result.rows]
    assert rows == expected(new)
