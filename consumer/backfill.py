"""``python -m consumer backfill-sums --from D --to D``: stored sums for older dates.

A date committed before sums existed has manifests whose cities carry no ``sums``: the
API answers it by reading every object, every time it is not cached. The backfill reads
each such object once (the stats object path: streamed in blocks, bounded memory) and
writes the sums into the date's manifest with a conditional PUT on the ETag it read, so
nothing else changes: generation, run id, keys and ETags stay as they were. If the
manifest changed meanwhile (the date was re-processed: its new manifest has sums of its
own, or another backfill got there first), it is read again and the backfill retries,
at most ``ATTEMPTS`` times, then skips the date and says so.

Run it as often as you like: a date whose every city has sums is left alone.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal

from common.days import days_between
from common.jobs import ManifestStore
from common.layout import Layout
from common.logs import get_logger
from common.models import CityObject, Manifest, ObjectSums
from common.settings import Settings
from common.storage import S3Store, WriteConflictError, open_store
from producer.stats.blocks import BadObjectError
from producer.stats.objects import BlockBudget, ObjectSource, S3ObjectSource, object_totals
from producer.stats.shared import Workers

log = get_logger(__name__)

ATTEMPTS: Final = 3
BLOCK_BYTES: Final = 8 * 1024 * 1024
Outcome = Literal["written", "had_sums", "missing", "changed", "unreadable"]


class _ChangedError(Exception):
    """An object of the manifest is gone or was replaced: the date changed."""


@dataclass(frozen=True)
class DateOutcome:
    date: date
    outcome: Outcome
    cities: int = 0
    detail: str = ""


async def backfill_sums(settings: Settings, start: date, end: date) -> list[DateOutcome]:
    """Backfill every date of ``start..end``; one outcome a date."""
    async with open_store(settings) as store:
        backfill = Backfill(
            store,
            S3ObjectSource(store.client, store.bucket),
            Layout(settings.s3_prefix),
            objects_at_once=settings.stats_concurrency,
        )
        outcomes = [await backfill.backfill(day) for day in days_between(start, end)]
    counts: Counter[str] = Counter(item.outcome for item in outcomes)
    log.info("backfill.finished", **counts)
    return outcomes


class Backfill:
    def __init__(
        self,
        store: S3Store,
        objects: ObjectSource,
        layout: Layout,
        *,
        objects_at_once: int,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self._manifests = ManifestStore(store, layout)
        self._objects = objects
        self._open = asyncio.Semaphore(objects_at_once)
        self._budget = BlockBudget(block_bytes, 2 * objects_at_once, Workers())

    async def backfill(self, day: date) -> DateOutcome:
        outcome = await self._date(day)
        log.info(
            "backfill.date",
            date=day.isoformat(),
            outcome=outcome.outcome,
            cities=outcome.cities,
            detail=outcome.detail or None,
        )
        return outcome

    async def _date(self, day: date) -> DateOutcome:
        for _ in range(ATTEMPTS):
            manifest, etag = await self._manifests.get(day)
            if manifest is None or etag is None:
                return DateOutcome(day, "missing")
            wanted = [city for city in manifest.cities if city.sums is None]
            if not wanted:
                return DateOutcome(day, "had_sums")
            try:
                sums = await self._sums(wanted)
            except _ChangedError:
                continue  # re-read the manifest: it has changed (or will be found broken)
            except BadObjectError as error:
                return DateOutcome(day, "unreadable", detail=str(error))
            try:
                await self._manifests.commit(_with_sums(manifest, sums), etag)
            except WriteConflictError:
                continue
            return DateOutcome(day, "written", cities=len(sums))
        return DateOutcome(
            day, "changed", detail=f"the manifest changed {ATTEMPTS} times while being read"
        )

    async def _sums(self, cities: list[CityObject]) -> dict[int, ObjectSums]:
        found: dict[int, ObjectSums] = {}

        async def one(city: CityObject) -> None:
            async with self._open:
                try:
                    read = await object_totals(self._objects, city.key, city.etag, self._budget)
                except BadObjectError as error:
                    raise BadObjectError(f"object {city.key}: {error}") from None
            if read is None:
                raise _ChangedError(city.key)
            totals = read.totals
            if totals.departures != city.records:
                log.warning(
                    "backfill.records_differ",
                    key=city.key,
                    manifest_records=city.records,
                    object_records=totals.departures,
                )
            found[city.city_id] = ObjectSums(
                departures=totals.departures,
                passengers=totals.passengers,
                accident=totals.accident,
                delay_seconds=totals.delay_seconds,
            )

        try:
            async with asyncio.TaskGroup() as group:
                for city in cities:
                    group.create_task(one(city))
        except ExceptionGroup as failures:
            first = failures.exceptions[0]
            if isinstance(first, BadObjectError):
                raise BadObjectError(str(first)) from None
            raise first from None
        return found


def _with_sums(manifest: Manifest, sums: dict[int, ObjectSums]) -> Manifest:
    """The same manifest, every field kept, with sums on the cities that had none."""
    cities = [
        city
        if city.sums is not None or city.city_id not in sums
        else city.model_copy(update={"sums": sums[city.city_id]})
        for city in manifest.cities
    ]
    return manifest.model_copy(update={"cities": cities})
