"""Per-country daily statistics: pure aggregation, and the reader that feeds it from S3.

The aggregation has two steps. :func:`partial_sums` turns the records of one data object
into per-city sums (departures, passengers, any accident, total delay); :func:`combine`
adds such sums up per (date, country). The per-object sums are cached in S3 as a small
JSON sidecar keyed by the object's ETag, so a date read once is never parsed again, and
a re-processed date (new objects, new ETags) never meets a stale sidecar.

:class:`StatsReader` reads a range of dates: the manifests first, then every committed
object (or its sidecar) with at most ``concurrency`` objects in flight, so that memory is
bounded by the largest object times the concurrency, not by the range. Parsing and pandas
run in worker threads; the event loop only moves bytes.

Once a date is read whole, its sums are cached again at the date level: in S3, keyed by
the manifest's ETag (one small read per date for a warm query, from any API process),
and in the process's memory (no read at all). A re-processed date has a new manifest
ETag, so neither cache can answer for it.

A date is always read from one manifest: if an object of that manifest has vanished (the
date was re-processed meanwhile), everything read for the date is dropped and the date is
read again from its new manifest.
"""

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Final, Literal, TypeVar

import pandas as pd
import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError
from pyarrow import json as pa_json
from pydantic import BaseModel, ConfigDict, ValidationError

from common.layout import Layout
from common.logs import get_logger
from common.models import CityObject, Manifest
from common.records import ACCIDENT, CITY_ID, DELAY_SECONDS, PASSENGERS
from common.storage import KeyValueStore

log = get_logger(__name__)
T = TypeVar("T")

# Only the columns the statistics need; every other field of a record is skipped unparsed.
RECORD_SCHEMA: Final = pa.schema(
    [
        (CITY_ID, pa.int64()),
        (PASSENGERS, pa.int64()),
        (DELAY_SECONDS, pa.float64()),
        (ACCIDENT, pa.bool_()),
    ]
)
_PARSE_OPTIONS: Final = pa_json.ParseOptions(
    explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="ignore"
)
_READ_OPTIONS: Final = pa_json.ReadOptions(use_threads=True, block_size=8 * 1024 * 1024)


class CitySums(BaseModel):
    """One city's sums within one data object."""

    model_config = ConfigDict(frozen=True)

    city_id: int
    departures: int
    passengers: int
    accident: bool
    delay_seconds: float


class ObjectPartial(BaseModel):
    """The cached sidecar of one data object; names the object and ETag it was made from."""

    model_config = ConfigDict(frozen=True)

    version: Literal[1] = 1
    key: str
    etag: str
    cities: list[CitySums]


@dataclass(frozen=True, slots=True)
class CountryDay:
    """One row of the answer (a dataclass: orjson serialises it natively, and fast)."""

    date: date
    country: str
    buses_started: int
    passengers: int
    accident: bool
    average_delay_seconds: float


@dataclass(frozen=True, slots=True)
class ReadCounts:
    """What one query cost: how many objects came from sidecars and how many were parsed."""

    manifests_read: int
    partials_used: int
    objects_read: int
    bytes_read: int
    dates_reread: int
    dates_cached: int


@dataclass(frozen=True, slots=True)
class CountryStats:
    start: date
    end: date
    rows: list[CountryDay]
    missing_dates: list[date]
    counts: ReadCounts


# --- pure aggregation -------------------------------------------------------------------


def read_records(body: bytes) -> pd.DataFrame:
    """The needed columns of a JSON-lines object (blocking: call it from a thread)."""
    if not body or body.isspace():
        frame: pd.DataFrame = RECORD_SCHEMA.empty_table().to_pandas()
        return frame
    table = pa_json.read_json(
        pa.BufferReader(body), read_options=_READ_OPTIONS, parse_options=_PARSE_OPTIONS
    )
    frame = table.to_pandas()
    return frame


def partial_sums(frame: pd.DataFrame) -> list[CitySums]:
    """Per-city sums of a frame of records, sorted by city id (blocking for large frames)."""
    if frame.empty:
        return []
    sums = frame.groupby(CITY_ID, sort=True).agg(
        departures=(PASSENGERS, "size"),
        passengers=(PASSENGERS, "sum"),
        accident=(ACCIDENT, "any"),
        delay_seconds=(DELAY_SECONDS, "sum"),
    )
    return [
        CitySums(
            city_id=int(city_id),
            departures=int(departures),
            passengers=int(passengers),
            accident=bool(accident),
            delay_seconds=float(delay),
        )
        for city_id, departures, passengers, accident, delay in zip(
            sums.index,
            sums["departures"],
            sums["passengers"],
            sums["accident"],
            sums["delay_seconds"],
            strict=True,
        )
    ]


def sums_of_body(body: bytes) -> list[CitySums]:
    """:func:`partial_sums` of a raw object (blocking: call it from a thread)."""
    return partial_sums(read_records(body))


@dataclass(slots=True)
class _Totals:
    departures: int = 0
    passengers: int = 0
    accident: bool = False
    delays: list[float] = field(default_factory=list)


def combine(items: Iterable[tuple[date, str, CitySums]]) -> list[CountryDay]:
    """Rows per (date, country) from city sums, sorted by date then country.

    The average delay is weighted: total delay over total departures of the country-day
    (``math.fsum`` keeps it independent of how the records were split, for exact inputs).
    A country-day without departures has no average and gives no row.
    """
    totals: dict[tuple[date, str], _Totals] = {}
    for day, country, sums in items:
        total = totals.setdefault((day, country), _Totals())
        total.departures += sums.departures
        total.passengers += sums.passengers
        total.accident = total.accident or sums.accident
        total.delays.append(sums.delay_seconds)
    return [
        CountryDay(
            date=day,
            country=country,
            buses_started=total.departures,
            passengers=total.passengers,
            accident=total.accident,
            average_delay_seconds=math.fsum(total.delays) / total.departures,
        )
        for (day, country), total in sorted(totals.items())
        if total.departures > 0
    ]


def city_countries(manifest: Manifest) -> dict[int, str]:
    """The manifest's city → country map."""
    return {city.city_id: city.country for city in manifest.cities}


# --- reading from the object store ------------------------------------------------------


class DateSummary(BaseModel):
    """The sidecar of a whole committed date: every city's sums with its country."""

    version: Literal[1] = 1
    date: date
    manifest_etag: str
    cities: list[tuple[str, CitySums]]


DayItems = list[tuple[date, str, CitySums]]


class SummaryCache:
    """The sums of recently read dates, by (date, manifest ETag), least recently used out."""

    def __init__(self, max_dates: int = 4096) -> None:
        self._items: OrderedDict[tuple[date, str], DayItems] = OrderedDict()
        self._max_dates = max_dates

    def get(self, day: date, manifest_etag: str) -> DayItems | None:
        key = (day, manifest_etag)
        items = self._items.get(key)
        if items is not None:
            self._items.move_to_end(key)
        return items

    def put(self, day: date, manifest_etag: str, items: DayItems) -> None:
        self._items[day, manifest_etag] = items
        self._items.move_to_end((day, manifest_etag))
        while len(self._items) > self._max_dates:
            self._items.popitem(last=False)


class DateChangingError(Exception):
    """A date's committed version kept changing (or lost an object) while being read."""

    def __init__(self, days: Sequence[date]) -> None:
        super().__init__(", ".join(day.isoformat() for day in days))
        self.days = list(days)


async def run_bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """``work(item)`` for every item, by ``limit`` workers; the first failure is raised."""
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await work(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(limit):
                group.create_task(worker())
    except ExceptionGroup as failures:
        # Callers handle one error, not a group; the others are usually the same one.
        raise failures.exceptions[0] from None


def _same_etag(left: str, right: str) -> bool:
    return left.strip().strip('"') == right.strip().strip('"')


@dataclass(slots=True)
class _Counter:
    manifests_read: int = 0
    partials_used: int = 0
    objects_read: int = 0
    bytes_read: int = 0
    dates_reread: int = 0
    dates_cached: int = 0

    def frozen(self) -> ReadCounts:
        return ReadCounts(
            manifests_read=self.manifests_read,
            partials_used=self.partials_used,
            objects_read=self.objects_read,
            bytes_read=self.bytes_read,
            dates_reread=self.dates_reread,
            dates_cached=self.dates_cached,
        )


class StatsReader:
    """Reads per-country daily statistics for a range of dates from the object store.

    Args:
        store: where manifests, data objects and sidecars live.
        layout: the bucket layout (prefix).
        concurrency: objects (and manifests) in flight per query.
        slots: bounds raw objects being downloaded or parsed at once; pass one semaphore
            shared by every query of the process so concurrent queries share the bound.
        max_attempts: how often one date is read again after its version changed.
        cache: the process's cache of whole dates' sums (shared by its queries).
    """

    def __init__(
        self,
        store: KeyValueStore,
        layout: Layout,
        *,
        concurrency: int,
        slots: asyncio.Semaphore | None = None,
        max_attempts: int = 3,
        cache: SummaryCache | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        self._store = store
        self._layout = layout
        self._concurrency = concurrency
        self._slots = slots if slots is not None else asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts
        self._cache = cache if cache is not None else SummaryCache()

    async def country_stats(self, start: date, end: date) -> CountryStats:
        """Rows for every committed (date, country) in ``start..end``, plus missing dates."""
        if end < start:
            raise ValueError("end is before start")
        started = time.perf_counter()
        counter = _Counter()
        days = [start + timedelta(days=offset) for offset in range((end - start).days + 1)]
        manifests = await self._manifests(days, counter)
        missing = {day for day, manifest in manifests.items() if manifest is None}
        pending = {day: manifest for day, manifest in manifests.items() if manifest is not None}
        done: dict[date, DayItems] = {}
        attempt = 1
        while True:
            await self._cached_dates(pending, done, counter)
            read: dict[date, DayItems] = {}
            changed = await self._read_dates(pending, read, counter)
            done.update(read)
            await self._save_summaries({day: pending[day] for day in read}, read)
            if not changed:
                break
            if attempt >= self._max_attempts:
                raise DateChangingError(sorted(changed))
            attempt += 1
            counter.dates_reread += len(changed)
            fresh = await self._manifests(sorted(changed), counter)
            missing.update(day for day in changed if fresh[day] is None)
            pending = {day: manifest for day, manifest in fresh.items() if manifest is not None}
        rows = combine(item for day in sorted(done) for item in done[day])
        counts = counter.frozen()
        log.info(
            "stats.read",
            start=start.isoformat(),
            end=end.isoformat(),
            rows=len(rows),
            missing=len(missing),
            manifests=counts.manifests_read,
            partials=counts.partials_used,
            objects=counts.objects_read,
            bytes=counts.bytes_read,
            reread=counts.dates_reread,
            cached_dates=counts.dates_cached,
            seconds=round(time.perf_counter() - started, 3),
        )
        return CountryStats(start, end, rows, sorted(missing), counts)

    async def _manifests(
        self, days: Sequence[date], counter: _Counter
    ) -> dict[date, "_Committed | None"]:
        found: dict[date, _Committed | None] = {}

        async def read(day: date) -> None:
            stored = await self._store.get(self._layout.manifest(day))
            counter.manifests_read += 1
            found[day] = (
                None
                if stored is None
                else _Committed(Manifest.model_validate_json(stored.body), stored.etag)
            )

        # Manifests are small: more of them in flight than raw objects.
        await run_bounded(days, read, max(self._concurrency, _SMALL_READS))
        return found

    async def _cached_dates(
        self, pending: "dict[date, _Committed]", done: dict[date, DayItems], counter: _Counter
    ) -> None:
        """Move the dates whose sums are cached (memory, then S3) from pending to done."""
        unknown: list[date] = []
        for day, committed in pending.items():
            items = self._cache.get(day, committed.etag)
            if items is None:
                unknown.append(day)
            else:
                done[day] = items

        async def read(day: date) -> None:
            committed = pending[day]
            key = self._layout.date_summary(day, committed.manifest.run_id, committed.etag)
            stored = await self._store.get(key)
            summary = None if stored is None else _decode_summary(stored.body, committed)
            if summary is not None:
                items = [(day, country, sums) for country, sums in summary.cities]
                self._cache.put(day, committed.etag, items)
                done[day] = items

        await run_bounded(unknown, read, max(self._concurrency, _SMALL_READS))
        for day in [day for day in pending if day in done]:
            counter.dates_cached += 1
            del pending[day]

    async def _save_summaries(
        self, committed: "dict[date, _Committed]", read: dict[date, DayItems]
    ) -> None:
        for day, items in read.items():
            version = committed[day]
            self._cache.put(day, version.etag, items)
            summary = DateSummary(
                date=day,
                manifest_etag=version.etag,
                cities=[(country, sums) for _, country, sums in items],
            )
            key = self._layout.date_summary(day, version.manifest.run_id, version.etag)
            await self._save_sidecar(key, summary)

    async def _read_dates(
        self,
        committed: "dict[date, _Committed]",
        done: dict[date, DayItems],
        counter: _Counter,
    ) -> set[date]:
        """Reads every object of the given manifests; returns the dates that changed."""
        manifests = {day: version.manifest for day, version in committed.items()}
        found: dict[date, DayItems] = {day: [] for day in manifests}
        countries = {day: city_countries(manifest) for day, manifest in manifests.items()}
        changed: set[date] = set()
        units = [(day, city) for day, manifest in manifests.items() for city in manifest.cities]

        async def read(unit: tuple[date, CityObject]) -> None:
            day, city = unit
            if day in changed:
                return
            sums = await self._object_sums(city, counter)
            if sums is None:
                changed.add(day)
                return
            found[day].extend(
                (day, countries[day].get(item.city_id, city.country), item) for item in sums
            )

        await run_bounded(units, read, self._concurrency)
        done.update((day, items) for day, items in found.items() if day not in changed)
        return changed

    async def _object_sums(self, city: CityObject, counter: _Counter) -> list[CitySums] | None:
        """The object's city sums, from its sidecar or its records; None if it is gone."""
        partial_key = self._layout.partial(city.key, city.etag)
        cached = await self._store.get(partial_key)
        if cached is not None:
            partial = _decode_partial(cached.body, city)
            if partial is not None:
                counter.partials_used += 1
                return partial.cities
        async with self._slots:
            stored = await self._store.get(city.key)
            if stored is None or not _same_etag(stored.etag, city.etag):
                return None
            counter.objects_read += 1
            counter.bytes_read += len(stored.body)
            sums = await asyncio.to_thread(sums_of_body, stored.body)
            del stored
        await self._save_sidecar(
            partial_key, ObjectPartial(key=city.key, etag=city.etag, cities=sums)
        )
        return sums

    async def _save_sidecar(self, key: str, sidecar: BaseModel) -> None:
        try:
            await self._store.put(key, sidecar.model_dump_json().encode())
        except (ClientError, BotoCoreError) as error:
            # The sidecar is a cache: the answer is right without it, the next query
            # simply parses the object again.
            log.warning("partial.write_failed", key=key, error=repr(error))


@dataclass(frozen=True, slots=True)
class _Committed:
    """A date's manifest and the ETag it was read with (its version)."""

    manifest: Manifest
    etag: str


_SMALL_READS: Final = 16  # manifests and date summaries in flight at once


def _decode_summary(body: bytes, committed: _Committed) -> DateSummary | None:
    try:
        summary = DateSummary.model_validate_json(body)
    except ValidationError:
        log.warning("summary.invalid", date=committed.manifest.date.isoformat())
        return None
    if summary.date != committed.manifest.date or not _same_etag(
        summary.manifest_etag, committed.etag
    ):
        log.warning("summary.mismatch", date=committed.manifest.date.isoformat())
        return None
    return summary


def _decode_partial(body: bytes, city: CityObject) -> ObjectPartial | None:
    try:
        partial = ObjectPartial.model_validate_json(body)
    except ValidationError:
        log.warning("partial.invalid", key=city.key)
        return None
    if partial.key != city.key or not _same_etag(partial.etag, city.etag):
        log.warning("partial.mismatch", key=city.key)
        return None
    return partial
