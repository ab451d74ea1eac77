"""The statistics: pure aggregation on small frames, properties, and the reader on a fake store."""

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.layout import Layout
from common.models import CityObject, Manifest
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
from producer.stats import (
    CitySums,
    CountryDay,
    DateChangingError,
    ObjectPartial,
    StatsReader,
    combine,
    partial_sums,
    read_records,
    sums_of_body,
)

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


# --- pure aggregation -------------------------------------------------------------------


def test_read_records_keeps_only_the_needed_columns() -> None:
    line = record(3, 44, 5340.0, accident=True) | {"extra": {"nested": [1, 2]}}
    frame = read_records(body_of([line]))
    assert list(frame.columns) == [CITY_ID, PASSENGERS, DELAY_SECONDS, ACCIDENT]
    assert frame.to_dict("records") == [
        {CITY_ID: 3, PASSENGERS: 44, DELAY_SECONDS: 5340.0, ACCIDENT: True}
    ]


@pytest.mark.parametrize("body", [b"", b"\n", b"  \n\n"])
def test_an_empty_object_has_no_sums(body: bytes) -> None:
    frame = read_records(body)
    assert frame.empty
    assert list(frame.columns) == [CITY_ID, PASSENGERS, DELAY_SECONDS, ACCIDENT]
    assert partial_sums(frame) == []


def test_partial_sums_per_city() -> None:
    frame = pd.DataFrame(
        {
            CITY_ID: [2, 1, 2, 2],
            PASSENGERS: [10, 5, 20, 30],
            DELAY_SECONDS: [60.0, 0.0, 0.0, 30.0],
            ACCIDENT: [False, False, True, False],
        }
    )
    assert partial_sums(frame) == [
        CitySums(city_id=1, departures=1, passengers=5, accident=False, delay_seconds=0.0),
        CitySums(city_id=2, departures=3, passengers=60, accident=True, delay_seconds=90.0),
    ]


def test_the_average_delay_is_weighted_by_departures_not_a_mean_of_city_means() -> None:
    # City 1: one departure 100 s late; city 2: three on time. Mean of means would be 50.
    late = CitySums(city_id=1, departures=1, passengers=1, accident=False, delay_seconds=100.0)
    punctual = CitySums(city_id=2, departures=3, passengers=2, accident=False, delay_seconds=0.0)
    rows = combine([(DAY, "Spain", late), (DAY, "Spain", punctual)])
    assert rows == [CountryDay(DAY, "Spain", 4, 3, False, 25.0)]


def test_accident_is_any_and_rows_are_sorted_by_date_then_country() -> None:
    def sums(city_id: int, accident: bool) -> CitySums:
        return CitySums(
            city_id=city_id, departures=1, passengers=1, accident=accident, delay_seconds=3.0
        )

    later = DAY + timedelta(days=1)
    rows = combine(
        [
            (later, "Austria", sums(1, False)),
            (DAY, "Spain", sums(2, False)),
            (DAY, "Spain", sums(3, True)),
            (DAY, "France", sums(4, False)),
        ]
    )
    assert [(row.date, row.country, row.accident) for row in rows] == [
        (DAY, "France", False),
        (DAY, "Spain", True),
        (later, "Austria", False),
    ]
    assert rows[1].buses_started == 2
    assert rows[1].average_delay_seconds == 3.0


def test_a_country_without_departures_gives_no_row() -> None:
    empty = CitySums(city_id=1, departures=0, passengers=0, accident=False, delay_seconds=0.0)
    assert combine([(DAY, "Spain", empty)]) == []


# --- properties ---------------------------------------------------------------------------

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
    """Computed without pandas, partials or the code under test."""
    groups: dict[tuple[date, str], list[Rec]] = {}
    for item in records:
        groups.setdefault((DAY + timedelta(days=item.day), country_of(item.city_id)), []).append(
            item
        )
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


def split(records: Sequence[Rec], cuts: Sequence[int]) -> Iterator[Sequence[Rec]]:
    """The records in consecutive pieces at the given cut points (pieces may be empty)."""
    bounds = sorted({min(cut, len(records)) for cut in cuts} | {0, len(records)})
    yield from (records[a:b] for a, b in itertools.pairwise(bounds))
    yield []


def body_of_recs(records: Sequence[Rec]) -> bytes:
    return body_of([record(r.city_id, r.passengers, float(r.delay), r.accident) for r in records])


@settings(max_examples=60, deadline=None)
@given(records=recs, cuts=st.lists(st.integers(0, 60), max_size=8), via_cache=st.booleans())
def test_splitting_records_across_objects_never_changes_the_answer(
    records: list[Rec], cuts: list[int], via_cache: bool
) -> None:
    items: list[tuple[date, str, CitySums]] = []
    for day in range(3):
        of_day = [item for item in records if item.day == day]
        for piece in split(of_day, cuts):
            sums = sums_of_body(body_of_recs(piece))
            if via_cache:  # the sidecar's round trip must not change a figure
                partial = ObjectPartial(key="k", etag="e", cities=sums)
                sums = ObjectPartial.model_validate_json(partial.model_dump_json()).cities
            items.extend((DAY + timedelta(days=day), country_of(s.city_id), s) for s in sums)
    assert combine(items) == reference(records)


# --- the reader, on an in-memory store ----------------------------------------------------


class MemoryStore:
    """The two calls the reader makes, over a dict; ETags are MD5s as S3 makes them."""

    def __init__(self) -> None:
        self.objects: dict[str, StoredObject] = {}
        self.gets: list[str] = []

    async def get(self, key: str) -> StoredObject | None:
        self.gets.append(key)
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


async def commit_day(
    store: MemoryStore, day: date, records: Sequence[Rec], run_id: str = "a" * 32
) -> Manifest:
    """Writes a date as the consumer does: one object per city, then the manifest."""
    cities = []
    for city_id in sorted({item.city_id for item in records}):
        key = LAYOUT.city_object(day, run_id, city_id)
        body = body_of_recs([item for item in records if item.city_id == city_id])
        etag = await store.put(key, body, content_type="application/x-ndjson")
        cities.append(
            CityObject(
                city_id=city_id,
                name=f"City {city_id}",
                country=country_of(city_id),
                key=key,
                etag=etag,
                records=body.count(b"\n"),
                bytes=len(body),
            )
        )
    manifest = Manifest(
        date=day, job_id="b" * 32, run_id=run_id, fetched_at=datetime.now(UTC), cities=cities
    )
    await store.put(LAYOUT.manifest(day), manifest.model_dump_json().encode())
    return manifest


def rec(day: int, city_id: int, passengers: int, delay: int, accident: bool = False) -> Rec:
    return Rec(day, city_id, passengers, delay, accident)


async def test_reader_reports_missing_dates_and_uses_partials_the_second_time() -> None:
    store = MemoryStore()
    records = [rec(0, 1, 10, 60), rec(0, 2, 5, 0, True), rec(0, 4, 7, 30), rec(2, 1, 1, 1)]
    await commit_day(store, DAY, [r for r in records if r.day == 0])
    await commit_day(store, DAY + timedelta(days=2), [r for r in records if r.day == 2])
    reader = StatsReader(store, LAYOUT, concurrency=2)

    first = await reader.country_stats(DAY, DAY + timedelta(days=3))
    assert first.rows == reference(records)
    assert first.missing_dates == [DAY + timedelta(days=1), DAY + timedelta(days=3)]
    assert (first.counts.objects_read, first.counts.partials_used) == (4, 0)

    store.gets.clear()
    second = await reader.country_stats(DAY, DAY + timedelta(days=3))
    assert second.rows == first.rows
    assert second.missing_dates == first.missing_dates
    counts = second.counts
    assert (counts.objects_read, counts.partials_used, counts.dates_cached) == (0, 0, 2)
    assert not [key for key in store.gets if "/manifest.json" not in key]  # memory answered

    store.gets.clear()
    another_process = StatsReader(store, LAYOUT, concurrency=2)
    third = await another_process.country_stats(DAY, DAY + timedelta(days=3))
    assert third.rows == first.rows
    assert (third.counts.objects_read, third.counts.dates_cached) == (0, 2)
    assert not [key for key in store.gets if key.endswith(".jsonl")]
    assert len([key for key in store.gets if "/date." in key]) == 2  # one summary a date

    store.gets.clear()
    without_summaries = StatsReader(store, LAYOUT, concurrency=2)
    for key in [key for key in store.objects if "/date." in key]:
        del store.objects[key]
    fourth = await without_summaries.country_stats(DAY, DAY + timedelta(days=3))
    assert fourth.rows == first.rows
    assert (fourth.counts.objects_read, fourth.counts.partials_used) == (0, 4)
    assert not [key for key in store.gets if key.endswith(".jsonl")]


async def test_a_partial_of_another_object_or_garbage_is_ignored() -> None:
    store = MemoryStore()
    records = [rec(0, 1, 10, 60), rec(0, 2, 5, 0)]
    manifest = await commit_day(store, DAY, records)
    one, two = manifest.cities
    forged = ObjectPartial(key=two.key, etag=two.etag, cities=[])
    await store.put(LAYOUT.partial(one.key, one.etag), forged.model_dump_json().encode())
    await store.put(LAYOUT.partial(two.key, two.etag), b"{not json")
    result = await StatsReader(store, LAYOUT, concurrency=1).country_stats(DAY, DAY)
    assert result.rows == reference(records)
    assert result.counts.objects_read == 2


class SwappingStore(MemoryStore):
    """Re-processes the date at the first read of a key containing ``trigger``: a new run,
    then the new manifest, then the old run's data objects deleted (as the consumer does)."""

    def __init__(self, replacement: list[Rec], trigger: str) -> None:
        super().__init__()
        self.replacement = replacement
        self.trigger = trigger
        self.armed = False

    async def get(self, key: str) -> StoredObject | None:
        if self.armed and self.trigger in key:
            self.armed = False
            old = [k for k in self.objects if "/run=" in k and k.endswith(".jsonl")]
            await commit_day(self, DAY, self.replacement, run_id="c" * 32)
            for gone in old:
                del self.objects[gone]
        return await super().get(key)


@pytest.mark.parametrize(
    ("cached", "trigger", "expect_new"),
    [
        pytest.param("none", ".jsonl", True, id="no-partials-swap-at-first-object"),
        pytest.param("none", "partials/", True, id="no-partials-swap-at-first-partial"),
        pytest.param("all", "partials/", False, id="old-partials-answer-the-old-version"),
        pytest.param("some", "partials/", True, id="some-partials-redo-with-the-new"),
    ],
)
async def test_a_date_reprocessed_mid_read_gives_one_whole_version(
    cached: str, trigger: str, expect_new: bool
) -> None:
    old = [rec(0, 1, 10, 60), rec(0, 2, 5, 0), rec(0, 3, 1, 9)]
    new = [rec(0, 1, 99, 1), rec(0, 5, 3, 3, True)]
    store = SwappingStore(new, trigger)
    manifest = await commit_day(store, DAY, old)
    if cached != "none":
        await StatsReader(store, LAYOUT, concurrency=1).country_stats(DAY, DAY)
    if cached == "some":
        city = manifest.cities[-1]
        del store.objects[LAYOUT.partial(city.key, city.etag)]
        for key in [key for key in store.objects if "/date." in key]:
            del store.objects[key]  # no whole-date summary either: per-object partials only
    store.armed = True
    result = await StatsReader(store, LAYOUT, concurrency=2).country_stats(DAY, DAY)
    assert not store.armed
    assert result.rows == reference(new if expect_new else old)
    assert result.counts.dates_reread == (1 if expect_new else 0)


async def test_a_date_that_keeps_losing_objects_is_an_error_not_a_partial_answer() -> None:
    store = MemoryStore()
    manifest = await commit_day(store, DAY, [rec(0, 1, 10, 60)])
    del store.objects[manifest.cities[0].key]
    with pytest.raises(DateChangingError) as raised:
        await StatsReader(store, LAYOUT, concurrency=1, max_attempts=2).country_stats(DAY, DAY)
    assert raised.value.days == [DAY]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=recs, cut=st.integers(0, 2), concurrency=st.integers(1, 4))
async def test_splitting_a_query_or_reading_again_never_changes_the_answer(
    records: list[Rec], cut: int, concurrency: int
) -> None:
    store = MemoryStore()
    for day in range(3):
        await commit_day(store, DAY + timedelta(days=day), [r for r in records if r.day == day])
    reader = StatsReader(store, LAYOUT, concurrency=concurrency)
    last = DAY + timedelta(days=2)
    whole = await reader.country_stats(DAY, last)  # raw path, writes partials
    head = await reader.country_stats(DAY, DAY + timedelta(days=cut))  # partials
    tail = await reader.country_stats(DAY + timedelta(days=cut + 1), last) if cut < 2 else None
    assert whole.rows == reference(records)
    assert head.rows + (tail.rows if tail else []) == whole.rows
    assert whole.missing_dates == []
