"""Reads per-country daily statistics for a range of dates.

For each date the committed manifest is read (one small GET). A manifest whose every
city carries its sums (made at ingest) answers the date alone: no other read. A city
without sums (a date committed before sums existed) is read through the object path
(:mod:`producer.stats.objects`). With ``verify``, every city of every date is read
through the object path and its stored sums are compared with its records.

A date is always answered from one manifest version. If an object of that version has
gone (the date was re-processed meanwhile and the old run deleted), the manifest is read
again: a new version is read from the start (at most ``max_attempts`` versions, then
:class:`DateChangingError`); the same version again means the committed date itself lost
an object, which no retry mends: the date is reported unreadable, with the key.

What every query of the process shares (:class:`StatsShared`): in-flight manifest, date
and object reads (single-flight), the byte-bounded cache of dates' figures keyed by
manifest ETag (a re-processed date has a new ETag, so no stale entry can answer), the
bound on objects open at once and the block budget.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Literal, TypeVar

from pydantic import ValidationError

from common.days import days_between
from common.jobs import NewerVersionError, UnreadableError, committed_of
from common.layout import Layout
from common.logs import get_logger
from common.models import CityObject
from common.storage import KeyValueStore, StoredObject
from producer.stats.aggregate import country_days
from producer.stats.blocks import BadObjectError
from producer.stats.figures import (
    CityFigures,
    CountryDay,
    DateFigures,
    Mismatch,
    Totals,
    Unreadable,
    by_country,
)
from producer.stats.objects import BlockBudget, ObjectRead, ObjectSource, object_totals
from producer.stats.shared import Served, SharedCache, SingleFlight, Workers
from producer.stats.verify import compare

log = get_logger(__name__)
T = TypeVar("T")

MIB: Final = 1024 * 1024
CACHE_BYTES: Final = 128 * MIB
BLOCK_BYTES: Final = 8 * MIB
MANIFEST_CONCURRENCY: Final = 8  # small reads in flight per query: more only queue on the loop


class DateChangingError(Exception):
    """Dates whose committed version kept changing while being read (try again)."""

    def __init__(self, days: Sequence[date]) -> None:
        super().__init__(", ".join(day.isoformat() for day in days))
        self.days = list(days)


@dataclass
class StatsShared:
    """The stats state of one API process, shared by all its queries."""

    dates: SharedCache[tuple[date, str], DateFigures]
    verifying: SingleFlight[tuple[date, str], DateFigures]
    manifests: SingleFlight[date, StoredObject | None]
    objects: SingleFlight[tuple[str, str], ObjectRead | None]
    open_objects: asyncio.Semaphore
    budget: BlockBudget
    workers: Workers

    @classmethod
    def create(
        cls,
        *,
        objects_at_once: int,
        cache_bytes: int = CACHE_BYTES,
        block_bytes: int = BLOCK_BYTES,
        block_slots: int | None = None,
    ) -> "StatsShared":
        """``objects_at_once`` objects open; ``block_slots`` (default twice that) blocks."""
        workers = Workers()
        return cls(
            dates=SharedCache(cache_bytes, DateFigures.size_estimate),
            verifying=SingleFlight(),
            manifests=SingleFlight(),
            objects=SingleFlight(),
            open_objects=asyncio.Semaphore(objects_at_once),
            budget=BlockBudget(block_bytes, block_slots or 2 * objects_at_once, workers),
            workers=workers,
        )


@dataclass(frozen=True, slots=True)
class ReadCounts:
    """What one query cost."""

    manifests_read: int
    dates_from_sums: int
    """Dates answered from their manifest's stored sums alone."""
    dates_from_objects: int
    """Dates read (wholly or partly) through the object path by this query."""
    dates_cached: int
    dates_shared: int
    """Dates another query was reading: this one waited for its answer."""
    sums_used: int
    objects_read: int
    bytes_read: int
    dates_reread: int


@dataclass(frozen=True, slots=True)
class Verification:
    """What ``verify`` found: each date's stored sums against its objects' records."""

    dates_verified: list[date]
    dates_without_sums: list[date]
    """Dates with cities that have no stored sums: nothing to compare (backfill them)."""
    mismatches: list[Mismatch]

    @property
    def status(self) -> Literal["ok", "mismatch"]:
        return "mismatch" if self.mismatches else "ok"

    @property
    def mismatched_dates(self) -> list[date]:
        return sorted({item.date for item in self.mismatches})


@dataclass(frozen=True, slots=True)
class CountryStats:
    start: date
    end: date
    rows: list[CountryDay]
    missing_dates: list[date]
    unreadable: list[Unreadable]
    counts: ReadCounts
    verification: Verification | None


@dataclass(slots=True)
class _Counter:
    manifests_read: int = 0
    dates_from_sums: int = 0
    dates_from_objects: int = 0
    dates_cached: int = 0
    dates_shared: int = 0
    sums_used: int = 0
    objects_read: int = 0
    bytes_read: int = 0
    dates_reread: int = 0

    def add(self, figures: DateFigures, served: Served) -> None:
        if served == "cached":
            self.dates_cached += 1
        elif served == "shared":
            self.dates_shared += 1
        else:
            self.objects_read += figures.objects_read
            self.bytes_read += figures.bytes_read
            if figures.cities > figures.sums_cities:
                self.dates_from_objects += 1
            else:
                self.dates_from_sums += 1
        self.sums_used += figures.sums_cities

    def frozen(self) -> ReadCounts:
        return ReadCounts(
            manifests_read=self.manifests_read,
            dates_from_sums=self.dates_from_sums,
            dates_from_objects=self.dates_from_objects,
            dates_cached=self.dates_cached,
            dates_shared=self.dates_shared,
            sums_used=self.sums_used,
            objects_read=self.objects_read,
            bytes_read=self.bytes_read,
            dates_reread=self.dates_reread,
        )


class _ObjectGoneError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _StillChangingError(Exception):
    pass


@dataclass(slots=True)
class _Outcome:
    figures: dict[date, DateFigures] = field(default_factory=dict)
    missing: list[date] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    changing: list[date] = field(default_factory=list)


class StatsReader:
    """Reads per-country daily statistics for a range of dates from the object store.

    Args:
        store: where the manifests live.
        objects: streams the data objects (the object path).
        layout: the bucket layout (prefix).
        shared: the process's shared reads, cache and bounds.
        max_attempts: how many versions of one date are tried while it keeps changing.
    """

    def __init__(
        self,
        store: KeyValueStore,
        objects: ObjectSource,
        layout: Layout,
        shared: StatsShared,
        *,
        max_attempts: int = 3,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._store = store
        self._objects = objects
        self._layout = layout
        self._shared = shared
        self._max_attempts = max_attempts

    async def country_stats(
        self, start: date, end: date, *, verify: bool = False, country: str | None = None
    ) -> CountryStats:
        """Rows for every committed (date, country) in ``start..end``, plus missing dates.

        Raises :class:`DateChangingError` if a date kept changing while being read.
        """
        if end < start:
            raise ValueError("end is before start")
        started = time.perf_counter()
        counter = _Counter()
        outcome = _Outcome()
        days = days_between(start, end)

        async def one(day: date) -> None:
            try:
                found = await self._date(day, verify=verify, counter=counter)
            except _StillChangingError:
                outcome.changing.append(day)
                return
            if found is None:
                outcome.missing.append(day)
            elif isinstance(found, Unreadable):
                outcome.unreadable.append(found)
            else:
                outcome.figures[day] = found

        await run_bounded(days, one, MANIFEST_CONCURRENCY)
        if outcome.changing:
            raise DateChangingError(sorted(outcome.changing))
        ordered = [outcome.figures[day] for day in sorted(outcome.figures)]
        rows = await self._shared.workers.run(country_days, ordered, country)
        counts = counter.frozen()
        verification = _verification(ordered) if verify else None
        log.info(
            "stats.read",
            start=start.isoformat(),
            end=end.isoformat(),
            verify=verify,
            rows=len(rows),
            missing=len(outcome.missing),
            unreadable=len(outcome.unreadable),
            manifests=counts.manifests_read,
            from_sums=counts.dates_from_sums,
            from_objects=counts.dates_from_objects,
            cached=counts.dates_cached,
            shared=counts.dates_shared,
            objects=counts.objects_read,
            bytes=counts.bytes_read,
            reread=counts.dates_reread,
            mismatches=None if verification is None else len(verification.mismatches),
            seconds=round(time.perf_counter() - started, 3),
        )
        return CountryStats(
            start=start,
            end=end,
            rows=rows,
            missing_dates=sorted(outcome.missing),
            unreadable=sorted(outcome.unreadable, key=lambda item: item.date),
            counts=counts,
            verification=verification,
        )

    async def _date(  # noqa: PLR0911 - one return per outcome of a date
        self, day: date, *, verify: bool, counter: _Counter
    ) -> DateFigures | Unreadable | None:
        """The date's figures; ``None`` if it has no committed data."""
        failed: tuple[str, str] | None = None  # (manifest ETag, object key) of the last try
        for attempt in range(1, self._max_attempts + 1):
            stored, _ = await self._shared.manifests.run(day, lambda: self._get_manifest(day))
            counter.manifests_read += 1
            if stored is None:
                return None
            try:
                if committed_of(day, stored) is None:
                    return None  # claimed or running, never committed
            except (NewerVersionError, UnreadableError) as error:
                return Unreadable(day, str(error))
            if failed is not None:
                if _same(stored.etag, failed[0]):
                    return Unreadable(
                        day,
                        f"object {failed[1]} of the committed manifest is missing or was "
                        "replaced; re-process the date (POST /process-request with force=true)",
                    )
                counter.dates_reread += 1
            try:
                return await self._figures(day, stored, verify=verify, counter=counter)
            except _ObjectGoneError as gone:
                failed = (stored.etag, gone.key)
                log.info("stats.date_changed", date=day.isoformat(), key=gone.key, attempt=attempt)
            except BadObjectError as error:
                return Unreadable(day, str(error))
            except ValidationError as error:
                return Unreadable(day, f"the manifest is not valid: {error.error_count()} error(s)")
        raise _StillChangingError(day.isoformat())

    async def _get_manifest(self, day: date) -> StoredObject | None:
        return await self._store.get(self._layout.manifest(day))

    async def _figures(
        self, day: date, stored: StoredObject, *, verify: bool, counter: _Counter
    ) -> DateFigures:
        key = (day, _plain(stored.etag))

        async def load() -> DateFigures:
            return await self._load(day, stored, verify=verify)

        if verify:  # always from the objects: shares a running check, never a cached one
            figures, started = await self._shared.verifying.run(key, load)
            served: Served = "loaded" if started else "shared"
        else:
            figures, served = await self._shared.dates.get(key, load)
        counter.add(figures, served)
        return figures

    async def _load(self, day: date, stored: StoredObject, *, verify: bool) -> DateFigures:
        manifest = committed_of(day, stored)
        if manifest is None:  # cannot happen: checked by the caller on the same bytes
            raise BadObjectError(f"date {day} has no committed version")
        wanted = [city for city in manifest.cities if verify or city.sums is None]
        reads = await self._read_objects(wanted)
        cities: list[CityFigures] = []  # kept only until grouped per country
        mismatches: list[Mismatch] = []
        sums_cities = 0
        for city in manifest.cities:
            read = reads.get(city.key)
            stored_sums = None if city.sums is None else Totals.of(city.sums)
            if read is None:
                if stored_sums is None:  # cannot happen: a city without sums is read
                    raise BadObjectError(f"object {city.key} was not read")
                totals = stored_sums
                sums_cities += 1
            else:
                totals = read.totals
                if stored_sums is not None:
                    mismatches += compare(day, city.city_id, city.key, stored_sums, totals)
            cities.append(CityFigures(city.city_id, city.country, totals))
        return DateFigures(
            date=day,
            manifest_etag=_plain(stored.etag),
            cities=len(cities),
            countries=by_country(cities),
            sums_cities=sums_cities,
            objects_read=len(reads),
            bytes_read=sum(read.bytes_read for read in reads.values()),
            mismatches=tuple(mismatches),
            has_sums=all(city.sums is not None for city in manifest.cities),
        )

    async def _read_objects(self, cities: list[CityObject]) -> dict[str, ObjectRead]:
        """Every city's object totals; raises _ObjectGoneError or BadObjectError."""
        found: dict[str, ObjectRead] = {}

        async def one(city: CityObject) -> None:
            read, _ = await self._shared.objects.run(
                (city.key, _plain(city.etag)), lambda: self._read_object(city)
            )
            if read is None:
                raise _ObjectGoneError(city.key)
            found[city.key] = read

        await run_all(cities, one)
        return found

    async def _read_object(self, city: CityObject) -> ObjectRead | None:
        async with self._shared.open_objects:
            try:
                return await object_totals(self._objects, city.key, city.etag, self._shared.budget)
            except BadObjectError as error:
                raise BadObjectError(f"object {city.key}: {error}") from None


def _verification(figures: Sequence[DateFigures]) -> Verification:
    return Verification(
        dates_verified=[item.date for item in figures],
        dates_without_sums=[item.date for item in figures if not item.has_sums],
        mismatches=[mismatch for item in figures for mismatch in item.mismatches],
    )


def _plain(etag: str) -> str:
    return etag.strip().strip('"')


def _same(left: str, right: str) -> bool:
    return _plain(left) == _plain(right)


async def run_all(items: Iterable[T], work: Callable[[T], Coroutine[Any, Any, None]]) -> None:
    """``work(item)`` for every item at once; the first failure is raised alone."""
    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(work(item))
    except ExceptionGroup as failures:
        raise _first(failures) from None


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
        raise _first(failures) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
