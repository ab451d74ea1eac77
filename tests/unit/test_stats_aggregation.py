"""The statistics: blocks and exact sums, pandas aggregation, and the reader on a fake store.

The fake store keeps objects in memory and streams them in small, uneven chunks, so
that the object path's blocks are cut anywhere; it counts every read.
"""

import asyncio
import contextlib
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.layout import Layout
from common.models import CityObject, Manifest, ObjectSums
from common.records import (
    ACCIDENT,
    BUS_TYPE,
    CITY_ID,
    DELAY_SECONDS,
    DEPARTURE_TIME,
    PASSENGERS,
    encode_line,
)
from common.storage import StoredObject
from producer.stats.aggregate import country_days
from producer.stats.blocks import (
    BadObjectError,
    _stored_layout,
    exact_totals,
    lines_totals,
    parse_block,
    stitch,
)
from producer.stats.figures import CityFigures, CountryDay, DateFigures, Totals, by_country
from producer.stats.objects import ByteStream
from producer.stats.reader import DateChangingError, StatsReader, StatsShared
from producer.stats.render import csv_bytes, json_bytes
from producer.stats.verify import compare

DAY = date(2024, 1, 1)
LAYOUT = Layout("pfx/")


def record(city_id: int, passengers: int, delay: float, accident: bool = False) -> dict[str, Any]:
    return {
        CITY_ID: city_id,
        DEPARTURE_TIME: "2024-01-01T03:00:00",
        BUS_TYPE: "BUS-107",
        PASSENGERS: passengers,
        DELAY_SECONDS: delay,
        ACCIDENT: accident,
    }


def body_of(records: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(encode_line(item) for item in records)


def blocks_of(body: bytes, size: int) -> Totals:
    """The object path's sums of ``body`` cut into blocks of ``size`` bytes."""
    return stitch([parse_block(body[at : at + size]) for at in range(0, len(body), size)])


# --- blocks and exact sums ------------------------------------------------------------------


def test_a_block_sums_only_its_complete_lines_and_hands_back_the_cut_ends() -> None:
    body = body_of([record(3, 44, 5340.0, accident=True), record(3, 6, 60.0), record(3, 1, 1.0)])
    lines = body.splitlines(keepends=True)
    cut = body[5 : len(body) - 4]
    block = parse_block(cut)
    assert block.head == lines[0][5:]
    assert block.tail == lines[2][:-4]
    assert block.totals == Totals(1, 6, False, 60.0)


@pytest.mark.parametrize("body", [b"", b"\n", b"  \n\n"])
def test_an_empty_object_has_no_sums(body: bytes) -> None:
    assert blocks_of(body, 3) == Totals() if body else stitch([]) == Totals()


@settings(max_examples=80, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 604_800), st.booleans()), max_size=40
    ),
    size=st.integers(1, 400),
)
def test_cutting_an_object_into_blocks_anywhere_never_changes_its_sums(
    records: list[tuple[int, int, bool]], size: int
) -> None:
    body = body_of([record(1, p, float(d), a) for p, d, a in records])
    expected = Totals(
        departures=len(records),
        passengers=sum(p for p, _, _ in records),
        accident=any(a for _, _, a in records),
        delay_seconds=float(sum(d for _, d, _ in records)),
    )
    assert blocks_of(body, size) == expected
    assert blocks_of(body, len(body) + 1) == expected
    assert exact_totals(body) == expected


def test_a_large_region_goes_through_pyarrow_and_pandas_with_the_same_sums() -> None:
    records = [record(1, n % 90, float(n % 7200), n == 77) for n in range(5000)]
    body = body_of(records)
    assert len(body) > 4096  # large enough for the pyarrow path
    assert lines_totals(body) == exact_totals(body)
    assert lines_totals(body).departures == 5000


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(record(1, 5, 2.0) | {BUS_TYPE: "A,B"}, id="comma-in-a-string"),
        pytest.param(record(1, 5, 2.0) | {BUS_TYPE: 'x","passengers":999,"y":"'}, id="fake-key"),
        pytest.param(dict(reversed(record(1, 5, 2.0).items())), id="other-order"),
        pytest.param(record(1, 5, 2.0) | {"extra": [1, {"a": 2}]}, id="extra-field"),
        pytest.param({PASSENGERS: 5, DELAY_SECONDS: 2, ACCIDENT: False}, id="few-fields"),
    ],
)
def test_lines_of_any_layout_give_the_same_sums_as_the_exact_path(odd: dict[str, Any]) -> None:
    body = body_of([record(1, n % 90, float(n), n == 3) for n in range(300)] + [odd] * 7)
    assert len(body) > 4096
    assert lines_totals(body) == exact_totals(body)
    assert lines_totals(body).passengers == sum(n % 90 for n in range(300)) + 35
    assert _stored_layout(pa.py_buffer(body)) is None  # never misread by the fast path


def test_lines_as_the_consumer_writes_them_take_the_fast_path() -> None:
    body = body_of([record(1, n % 90, float(n), n == 3) for n in range(300)])
    fast = _stored_layout(pa.py_buffer(body))
    assert fast is not None
    assert fast.num_rows == 300


def test_values_above_int64_are_summed_exactly_not_refused() -> None:
    big = 9_223_372_036_854_775_808  # 2^63: pyarrow cannot read it as int64
    body = body_of([record(1, big, 1.0)] + [record(1, 1, 1.0)] * 100)
    assert lines_totals(body) == Totals(101, big + 100, False, 101.0)
    assert blocks_of(body, 97).passengers == big + 100


def test_sums_that_overflow_int64_stay_exact() -> None:
    quarter = 2**62  # each fits in int64; their sum does not
    body = body_of([record(1, quarter, 0.0)] * 200)
    assert lines_totals(body).passengers == 200 * quarter


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json\n", "a line is not JSON"),
        (b'{"passengers": 1.5, "delay_seconds": 1, "accident": false}\n', "not an integer"),
        (b'{"passengers": 1, "accident": false}\n', "delay_seconds is not a number"),
        (b'{"passengers": 1, "delay_seconds": 1e999, "accident": false}\n', "finite"),
        (b'{"passengers": 1, "delay_seconds": 1, "accident": 0}\n', "accident is not a boolean"),
        (b"[1, 2]\n", "not a JSON object"),
    ],
)
def test_lines_that_are_not_records_are_bad_data_naming_the_line(line: bytes, reason: str) -> None:
    with pytest.raises(BadObjectError, match=reason):
        lines_totals(encode_line(record(1, 1, 1.0)) + line)
    with pytest.raises(BadObjectError, match=reason):
        lines_totals(encode_line(record(1, 1, 1.0)) * 100 + line)


def test_integers_and_accident_must_match_exactly_the_delay_within_rounding() -> None:
    stored = Totals(3, 10, False, 0.1 + 0.2 + 0.3)
    same = Totals(3, 10, False, 0.3 + 0.2 + 0.1)  # another order: another rounding
    assert stored.delay_seconds != same.delay_seconds
    assert compare(DAY, 1, "k", stored, same) == []
    fields = [
        (Totals(4, 10, False, 0.6), "departures"),
        (Totals(3, 11, False, 0.6), "passengers"),
        (Totals(3, 10, True, 0.6), "accident"),
        (Totals(3, 10, False, 1.6), "delay_seconds"),
        (Totals(3, 10, False, float("nan")), "delay_seconds"),
    ]
    for other, field in fields:
        assert [m.field for m in compare(DAY, 1, "k", stored, other)] == [field]


# --- aggregation ------------------------------------------------------------------------------


def figures(day: date, *cities: tuple[int, str, Totals]) -> DateFigures:
    listed = [CityFigures(city_id, country, totals) for city_id, country, totals in cities]
    return DateFigures(
        date=day,
        manifest_etag="e",
        cities=len(listed),
        sums_cities=len(listed),
        countries=by_country(listed),
    )


def test_the_average_delay_is_weighted_by_departures_not_a_mean_of_city_means() -> None:
    # City 1: one departure 100 s late; city 2: three on time. Mean of means would be 50.
    rows = country_days(
        [figures(DAY, (1, "Spain", Totals(1, 1, False, 100.0)), (2, "Spain", Totals(3, 2)))]
    )
    assert rows == [CountryDay(DAY, "Spain", 4, 3, False, 25.0)]


def test_accident_is_any_rows_are_sorted_and_a_country_filter_keeps_its_own() -> None:
    later = DAY + timedelta(days=1)
    dates = [
        figures(later, (1, "Austria", Totals(1, 1, False, 3.0))),
        figures(
            DAY,
            (2, "Spain", Totals(1, 1, False, 3.0)),
            (3, "Spain", Totals(1, 1, True, 3.0)),
            (4, "France", Totals(1, 1, False, 3.0)),
        ),
    ]
    rows = country_days(dates)
    assert [(row.date, row.country, row.accident) for row in rows] == [
        (DAY, "France", False),
        (DAY, "Spain", True),
        (later, "Austria", False),
    ]
    assert rows[1].buses_started == 2
    assert country_days(dates, "Spain") == [rows[1]]
    assert country_days(dates, "Narnia") == []


def test_a_country_without_departures_gives_no_row() -> None:
    assert country_days([figures(DAY, (1, "Spain", Totals()))]) == []
    assert country_days([]) == []


def test_sums_beyond_int64_are_exact_and_written_exactly() -> None:
    quarter = 2**62
    rows = country_days(
        [figures(DAY, (1, "Spain", Totals(1, quarter)), (2, "Spain", Totals(1, quarter)))]
    )
    assert rows[0].passengers == 2**63  # not -2^63, as int64 would make it
    shaped = _stats(rows)
    assert json.loads(json_bytes(shaped))["stats"][0]["passengers"] == 2**63
    assert csv_bytes(rows).splitlines()[1] == b"2024-01-01,Spain,2,9223372036854775808,false,0.0"


def _stats(rows: list[CountryDay]) -> Any:
    from producer.stats.reader import CountryStats, ReadCounts  # noqa: PLC0415 - one test's

    return CountryStats(DAY, DAY, rows, [], [], ReadCounts(0, 0, 0, 0, 0, 0, 0, 0, 0), None)


def test_csv_quotes_what_needs_quoting() -> None:
    rows = [CountryDay(DAY, 'Bosnia, "Herz."', 2, 3, True, 1.5)]
    assert csv_bytes(rows) == (
        b"date,country,buses_started,passengers,accident,average_delay_seconds\r\n"
        b'2024-01-01,"Bosnia, ""Herz.""",2,3,true,1.5\r\n'
    )


# --- properties ------------------------------------------------------------------------------

COUNTRIES = ("Austria", "France", "Spain")


@dataclass(frozen=True)
class Rec:
    day: int
    city_id: int
    passengers: int
    delay: int
    accident: bool


recs = st.lists(
    st.builds(
        Rec,
        day=st.integers(0, 2),
        city_id=st.integers(0, 5),
        passengers=st.integers(0, 200),
        # Whole seconds, as the reference server sends them: sums are exact in any order.
        delay=st.integers(0, 100_000),
        accident=st.booleans(),
    ),
    max_size=60,
)


def country_of(city_id: int) -> str:
    return COUNTRIES[city_id % len(COUNTRIES)]


def reference(records: Sequence[Rec]) -> list[CountryDay]:
    """Computed without pandas, blocks or the code under test."""
    groups: dict[tuple[date, str], list[Rec]] = {}
    for item in records:
        key = (DAY + timedelta(days=item.day), country_of(item.city_id))
        groups.setdefault(key, []).append(item)
    return [
        CountryDay(
            date=day,
            country=country,
            buses_started=len(items),
            passengers=sum(item.passengers for item in items),
            accident=any(item.accident for item in items),
            average_delay_seconds=float(sum(item.delay for item in items)) / len(items),
        )
        for (day, country), items in sorted(groups.items())
    ]


def body_of_recs(records: Sequence[Rec]) -> bytes:
    return body_of([record(r.city_id, r.passengers, float(r.delay), r.accident) for r in records])


def sums_of(records: Sequence[Rec]) -> ObjectSums:
    return ObjectSums(
        departures=len(records),
        passengers=sum(r.passengers for r in records),
        accident=any(r.accident for r in records),
        delay_seconds=float(sum(r.delay for r in records)),
    )


# --- the reader, on an in-memory store ----------------------------------------------------------


class ChunkStream:
    def __init__(self, body: bytes, chunk: int) -> None:
        self._body = memoryview(body)
        self._chunk = chunk
        self._at = 0

    async def read(self, size: int) -> bytes:
        await asyncio.sleep(0)  # a network read yields to other tasks
        end = min(self._at + min(size, self._chunk), len(self._body))
        data = bytes(self._body[self._at : end])
        self._at = end
        return data


class MemoryStore:
    """Manifests by ``get``, objects by ``open`` (in chunks of 37 bytes); counts reads."""

    def __init__(self) -> None:
        self.objects: dict[str, StoredObject] = {}
        self.gets: list[str] = []
        self.opened: list[str] = []

    async def get(self, key: str) -> StoredObject | None:
        self.gets.append(key)
        await asyncio.sleep(0)
        return self.objects.get(key)

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        etag = f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'
        self.objects[key] = StoredObject(body=body, etag=etag)
        return etag

    @contextlib.asynccontextmanager
    async def open(self, key: str, etag: str) -> AsyncIterator[ByteStream | None]:
        self.opened.append(key)
        await asyncio.sleep(0)
        stored = self.objects.get(key)
        if stored is None or stored.etag.strip('"') != etag.strip('"'):
            yield None
        else:
            yield ChunkStream(stored.body, 37)

    def objects_opened(self) -> list[str]:
        return [key for key in self.opened if key.endswith(".jsonl")]


def object_key(day: date, run: str, city_id: int) -> str:
    return f"{LAYOUT.prefix}data/date={day.isoformat()}/run={run}/city={city_id}.jsonl"


async def commit_day(
    store: MemoryStore,
    day: date,
    records: Sequence[Rec],
    *,
    run: str = "a",
    sums: bool = True,
    cities: Sequence[int] = (),
) -> Manifest:
    """Writes a date as the consumer does: one object per city, then the manifest."""
    listed = []
    for city_id in sorted({item.city_id for item in records} | set(cities)):
        key = object_key(day, run, city_id)
        own = [item for item in records if item.city_id == city_id]
        body = body_of_recs(own)
        etag = await store.put(key, body, content_type="application/x-ndjson")
        listed.append(
            CityObject(
                city_id=city_id,
                name=f"City {city_id}",
                country=country_of(city_id),
                key=key,
                etag=etag,
                records=len(own),
                bytes=len(body),
                sums=sums_of(own) if sums else None,
            )
        )
    manifest = Manifest(
        date=day, job_id="b" * 32, run_id="c" * 32, fetched_at=datetime.now(UTC), cities=listed
    )
    await store.put(LAYOUT.manifest(day), manifest.model_dump_json().encode())
    return manifest


def rec(day: int, city_id: int, passengers: int, delay: int, accident: bool = False) -> Rec:
    return Rec(day, city_id, passengers, delay, accident)


def reader_of(store: MemoryStore, **options: Any) -> StatsReader:
    shared = StatsShared.create(objects_at_once=2, block_bytes=64, block_slots=3)
    return StatsReader(store, store, LAYOUT, shared, **options)


RECORDS = [rec(0, 1, 10, 60), rec(0, 2, 5, 0, True), rec(0, 4, 7, 30), rec(2, 1, 1, 1)]


async def commit_records(store: MemoryStore, records: Sequence[Rec], *, sums: bool) -> None:
    for offset in sorted({item.day for item in records}):
        day = DAY + timedelta(days=offset)
        await commit_day(store, day, [r for r in records if r.day == offset], sums=sums)


async def test_dates_with_sums_are_answered_from_their_manifests_alone() -> None:
    store = MemoryStore()
    await commit_records(store, RECORDS, sums=True)
    result = await reader_of(store).country_stats(DAY, DAY + timedelta(days=3))
    assert result.rows == reference(RECORDS)
    assert result.missing_dates == [DAY + timedelta(days=1), DAY + timedelta(days=3)]
    assert store.objects_opened() == []
    assert len(store.gets) == 4  # one small read a date, missing ones included
    counts = result.counts
    assert (counts.dates_from_sums, counts.objects_read, counts.sums_used) == (2, 0, 4)


async def test_dates_without_sums_are_read_from_their_objects_once_then_cached() -> None:
    store = MemoryStore()
    await commit_records(store, RECORDS, sums=False)
    reader = reader_of(store)
    first = await reader.country_stats(DAY, DAY + timedelta(days=3))
    assert first.rows == reference(RECORDS)
    assert (first.counts.dates_from_objects, first.counts.objects_read) == (2, 4)
    assert first.counts.bytes_read == sum(
        len(stored.body) for key, stored in store.objects.items() if key.endswith(".jsonl")
    )
    store.opened.clear()
    second = await reader.country_stats(DAY, DAY + timedelta(days=3))
    assert second.rows == first.rows
    assert store.objects_opened() == []
    assert second.counts.dates_cached == 2


async def test_a_date_with_sums_on_some_cities_reads_only_the_others() -> None:
    store = MemoryStore()
    manifest = await commit_day(store, DAY, RECORDS[:3])
    cities = [manifest.cities[0].model_copy(update={"sums": None}), *manifest.cities[1:]]
    await store.put(
        LAYOUT.manifest(DAY),
        manifest.model_copy(update={"cities": cities}).model_dump_json().encode(),
    )
    result = await reader_of(store).country_stats(DAY, DAY)
    assert result.rows == reference(RECORDS[:3])
    assert store.objects_opened() == [manifest.cities[0].key]
    assert result.counts.sums_used == 2


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=recs, cut=st.integers(0, 2), with_sums=st.lists(st.booleans(), min_size=3))
async def test_the_sums_path_and_the_object_path_give_identical_answers(
    records: list[Rec], cut: int, with_sums: list[bool]
) -> None:
    by_sums, by_objects = MemoryStore(), MemoryStore()
    for offset in range(3):
        day = DAY + timedelta(days=offset)
        own = [r for r in records if r.day == offset]
        await commit_day(by_sums, day, own, sums=with_sums[offset])
        await commit_day(by_objects, day, own, sums=False)
    last = DAY + timedelta(days=2)
    whole = await reader_of(by_sums).country_stats(DAY, last)
    audited = await reader_of(by_sums).country_stats(DAY, last, verify=True)
    raw = await reader_of(by_objects).country_stats(DAY, last)
    assert whole.rows == audited.rows == raw.rows == reference(records)
    assert audited.verification is not None
    assert audited.verification.status == "ok"
    # Splitting the range never changes a row.
    reader = reader_of(by_sums)
    head = await reader.country_stats(DAY, DAY + timedelta(days=cut))
    tail = await reader.country_stats(DAY + timedelta(days=cut + 1), last) if cut < 2 else None
    assert head.rows + (tail.rows if tail else []) == whole.rows


async def test_verify_reads_every_object_and_reports_sums_that_disagree() -> None:
    store = MemoryStore()
    manifest = await commit_day(store, DAY, RECORDS[:3])
    second = DAY + timedelta(days=1)
    await commit_day(store, second, [rec(1, 5, 1, 1)], sums=False)
    city = manifest.cities[1]
    assert city.sums is not None
    wrong = city.sums.model_copy(update={"passengers": city.sums.passengers + 1})
    cities = [manifest.cities[0], city.model_copy(update={"sums": wrong}), manifest.cities[2]]
    await store.put(
        LAYOUT.manifest(DAY),
        manifest.model_copy(update={"cities": cities}).model_dump_json().encode(),
    )
    plain = await reader_of(store).country_stats(DAY, second)
    spain = [r.passengers for r in plain.rows if r.country == city.country and r.date == DAY]
    truth = [row.passengers for row in reference(RECORDS[:3]) if row.country == city.country]
    assert spain == [truth[0] + 1]  # as stored: only verify reads the objects

    store.opened.clear()
    checked = await reader_of(store).country_stats(DAY, second, verify=True)
    assert sorted(store.objects_opened()) == sorted(
        key for key in store.objects if key.endswith(".jsonl")
    )
    assert checked.verification is not None
    assert checked.verification.status == "mismatch"
    assert checked.verification.mismatched_dates == [DAY]
    assert checked.verification.dates_without_sums == [second]
    [mismatch] = checked.verification.mismatches
    assert (mismatch.city_id, mismatch.key, mismatch.field) == (
        city.city_id,
        city.key,
        "passengers",
    )
    assert (mismatch.stored, mismatch.recomputed) == (wrong.passengers, city.sums.passengers)
    # The verified answer is the objects' own.
    assert checked.rows == reference([*RECORDS[:3], rec(1, 5, 1, 1)])
    body = orjson.loads(json_bytes(checked))
    assert body["verify"]["status"] == "mismatch"
    assert body["verify"]["mismatches"][0]["field"] == "passengers"


async def test_concurrent_queries_read_each_date_and_object_once() -> None:
    store = MemoryStore()
    await commit_records(store, RECORDS, sums=False)
    reader = reader_of(store)
    results = await asyncio.gather(
        *(reader.country_stats(DAY, DAY + timedelta(days=3)) for _ in range(20))
    )
    assert all(result.rows == reference(RECORDS) for result in results)
    opened = store.objects_opened()
    assert sorted(opened) == sorted(set(opened))  # each object once
    assert len(opened) == 4
    manifests = [key for key in store.gets if key.endswith("manifest.json")]
    assert len(manifests) <= 4 * 20
    assert sum(result.counts.objects_read for result in results) == 4


async def test_the_cache_is_bounded_in_bytes() -> None:
    store = MemoryStore()
    days = [DAY + timedelta(days=offset) for offset in range(10)]
    for day in days:
        await commit_day(store, day, [rec(0, 1, 1, 1)], sums=False)
    city = CityFigures(1, "x", Totals())
    one_date = DateFigures(DAY, "e", 1, 0, countries=by_country([city])).size_estimate()
    shared = StatsShared.create(objects_at_once=2, cache_bytes=3 * one_date)
    reader = StatsReader(store, store, LAYOUT, shared)
    await reader.country_stats(days[0], days[-1])
    assert len(shared.dates) == 3
    assert shared.dates.bytes <= 3 * one_date


class SwappingStore(MemoryStore):
    """Re-processes the date at the first read of a key containing ``trigger``: a new run,
    then the new manifest, then the old run's data objects deleted (as the consumer does)."""

    def __init__(self, replacement: list[Rec], trigger: str, *, sums: bool) -> None:
        super().__init__()
        self.replacement = replacement
        self.trigger = trigger
        self.sums = sums
        self.armed = False

    async def _swap(self, key: str) -> None:
        if self.armed and self.trigger in key:
            self.armed = False
            old = [k for k in self.objects if k.endswith(".jsonl")]
            await commit_day(self, DAY, self.replacement, run="new", sums=self.sums)
            for gone in old:
                del self.objects[gone]

    async def get(self, key: str) -> StoredObject | None:
        await self._swap(key)
        return await super().get(key)

    @contextlib.asynccontextmanager
    async def open(self, key: str, etag: str) -> AsyncIterator[ByteStream | None]:
        await self._swap(key)
        async with super().open(key, etag) as stream:
            yield stream


OLD = [rec(0, 1, 10, 60), rec(0, 2, 5, 0), rec(0, 3, 1, 9)]
NEW = [rec(0, 1, 99, 1), rec(0, 5, 3, 3, True)]


@pytest.mark.parametrize("verify", [False, True])
async def test_a_date_reprocessed_mid_read_gives_one_whole_version(verify: bool) -> None:
    store = SwappingStore(NEW, ".jsonl", sums=False)
    await commit_day(store, DAY, OLD, sums=False)
    store.armed = True
    result = await reader_of(store).country_stats(DAY, DAY, verify=verify)
    assert not store.armed
    assert result.rows == reference(NEW)
    assert result.counts.dates_reread == 1


async def test_a_date_reprocessed_after_its_manifest_was_read_answers_that_version() -> None:
    store = SwappingStore(NEW, "never", sums=True)
    await commit_day(store, DAY, OLD, sums=True)
    result = await reader_of(store).country_stats(DAY, DAY)
    assert result.rows == reference(OLD)  # answered from the sums: no object needed


async def test_a_committed_date_that_lost_an_object_is_unreadable_not_a_lasting_503() -> None:
    store = MemoryStore()
    manifest = await commit_day(store, DAY, [rec(0, 1, 10, 60)], sums=False)
    await commit_day(store, DAY + timedelta(days=1), [rec(1, 1, 10, 60)], sums=False)
    del store.objects[manifest.cities[0].key]
    result = await reader_of(store).country_stats(DAY, DAY + timedelta(days=1))
    assert [item.date for item in result.unreadable] == [DAY]
    assert manifest.cities[0].key in result.unreadable[0].reason
    assert result.rows == [CountryDay(DAY + timedelta(days=1), "France", 1, 10, False, 60.0)]
    assert result.missing_dates == []
    assert json.loads(json_bytes(result))["unreadable_dates"][0]["date"] == "2024-01-01"


class EverChangingStore(MemoryStore):
    """Every object read finds the date re-committed (a new manifest) and the object gone."""

    async def get(self, key: str) -> StoredObject | None:
        stored = await super().get(key)
        if stored is None or not key.endswith("manifest.json"):
            return stored
        return StoredObject(stored.body, f'"{len(self.gets)}"')  # a new version each read

    @contextlib.asynccontextmanager
    async def open(self, key: str, etag: str) -> AsyncIterator[ByteStream | None]:
        self.opened.append(key)
        yield None


async def test_a_date_that_keeps_changing_is_a_retryable_error() -> None:
    store = EverChangingStore()
    await commit_day(store, DAY, [rec(0, 1, 10, 60)], sums=False)
    with pytest.raises(DateChangingError) as raised:
        await reader_of(store, max_attempts=2).country_stats(DAY, DAY)
    assert raised.value.days == [DAY]


async def test_an_object_that_is_not_records_makes_its_date_unreadable() -> None:
    store = MemoryStore()
    manifest = await commit_day(store, DAY, [rec(0, 1, 10, 60)], sums=False)
    await store.put(manifest.cities[0].key, b"{broken\n")
    manifest.cities[0].etag = store.objects[manifest.cities[0].key].etag
    await store.put(LAYOUT.manifest(DAY), manifest.model_dump_json().encode())
    result = await reader_of(store).country_stats(DAY, DAY)
    assert result.rows == []
    [bad] = result.unreadable
    assert "is not JSON" in bad.reason
    assert manifest.cities[0].key in bad.reason


async def test_a_legacy_object_above_int64_is_answered_exactly() -> None:
    store = MemoryStore()
    manifest = await commit_day(store, DAY, [rec(0, 1, 1, 1)], sums=False)
    big = 9_223_372_036_854_775_808
    key = manifest.cities[0].key
    await store.put(key, body_of([record(1, big, 1.0), record(1, big, 2.0)]))
    manifest.cities[0].etag = store.objects[key].etag
    await store.put(LAYOUT.manifest(DAY), manifest.model_dump_json().encode())
    result = await reader_of(store).country_stats(DAY, DAY)
    assert [(row.buses_started, row.passengers) for row in result.rows] == [(2, 2 * big)]
    assert orjson.loads(json_bytes(result).replace(b"18446744073709551616", b"0"))  # valid JSON
    assert json.loads(json_bytes(result))["stats"][0]["passengers"] == 2 * big


def test_splitting_cities_across_objects_never_changes_the_rows() -> None:
    records = [rec(0, city, city * 3, city * 7, city == 2) for city in range(6)]
    per_city = [figures(DAY, *((r.city_id, country_of(r.city_id), _totals([r])) for r in records))]
    merged = [
        figures(DAY, *((i, c, _totals(group)) for i, (c, group) in enumerate(_by_country(records))))
    ]
    assert country_days(per_city) == country_days(merged) == reference(records)


def _totals(records: Sequence[Rec]) -> Totals:
    sums = sums_of(records)
    return Totals(sums.departures, sums.passengers, sums.accident, sums.delay_seconds)


def _by_country(records: Sequence[Rec]) -> list[tuple[str, list[Rec]]]:
    ordered = sorted(records, key=lambda r: country_of(r.city_id))
    return [
        (country, list(group))
        for country, group in itertools.groupby(ordered, key=lambda r: country_of(r.city_id))
    ]
