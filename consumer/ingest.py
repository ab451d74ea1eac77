"""One city's records, from the reference server's body to an S3 object, with retries.

The body is decoded chunk by chunk (:class:`common.records.ArrayDecoder`), normalised,
encoded as JSON lines and written into a streaming S3 writer. A chunk is at most
``CHUNK_BYTES`` (256 KiB, about 2,300 records, about 4 ms of CPU), so it is converted on
the event loop: measured, a worker thread per chunk cost more (GIL hand-offs, one malloc
arena per thread) than it gave, in both throughput and peak memory.

A failed attempt aborts its upload and starts the city over, so an object never mixes
two fetches. The figures the statistics need (:class:`common.models.ObjectSums`) are
summed from the same pass, so a city's sums are ready the moment its object is.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Final

from common.models import CityObject, CityRecord, ObjectSums
from common.records import ArrayDecoder, BadRecord, MalformedBodyError
from common.storage import S3Store, WrittenObject
from consumer.convert import Converted, Sums, convert
from consumer.fetcher import City, ReferenceClient, RetryableFetchError
from consumer.retry import GaveUpError, RetryPolicy

CONTENT_TYPE: Final = "application/x-ndjson"
KEPT_BAD_RECORDS: Final = 1000  # per city: the rest are counted, not kept


@dataclass(frozen=True)
class CityResult:
    city: City
    written: WrittenObject
    records: int
    bad_records: int
    kept_bad: list[BadRecord]
    retries: int
    sums: ObjectSums

    def record(self) -> CityRecord:
        """What is stored beside the object once it is complete (a redelivery resumes)."""
        return CityRecord(
            city=CityObject(
                city_id=self.city.id,
                name=self.city.name,
                country=self.city.country,
                key=self.written.key,
                etag=self.written.etag,
                records=self.records,
                bytes=self.written.size,
                sums=self.sums,
            ),
            bad_records=self.bad_records,
            kept_bad=self.kept_bad,
            retries=self.retries,
        )


class CityFailedError(Exception):
    """A city still failing after its retry budget (or failing for good)."""

    def __init__(self, city: City, error: Exception, attempts: int) -> None:
        super().__init__(f"city {city.id} failed after {attempts} attempt(s): {error}")
        self.city = city
        self.error = error


@dataclass
class CityIngest:
    """Fetches and stores cities; one per job, sharing the process's clients."""

    reference: ReferenceClient
    store: S3Store
    retry: RetryPolicy
    on_retry: Callable[[Exception], None] | None = None  # for progress and metrics

    async def ingest(self, city: City, day: date, key: str) -> CityResult:
        try:
            (written, sums, bad_records, kept_bad), attempts = await self.retry.run(
                lambda: self._attempt(city, day, key),
                retry_on=(RetryableFetchError, MalformedBodyError),
                on_retry=self.on_retry,
            )
        except GaveUpError as gave_up:
            raise CityFailedError(city, gave_up.error, gave_up.attempts) from gave_up.error
        return CityResult(
            city=city,
            written=written,
            records=sums.departures,
            bad_records=bad_records,
            kept_bad=kept_bad,
            retries=attempts - 1,
            sums=sums.frozen(),
        )

    async def _attempt(
        self, city: City, day: date, key: str
    ) -> tuple[WrittenObject, Sums, int, list[BadRecord]]:
        decoder = ArrayDecoder()
        sums = Sums()
        bad_records = 0
        kept_bad: list[BadRecord] = []

        async def take(converted: Converted) -> None:
            nonlocal bad_records
            sums.add(converted)
            bad_records += len(converted.bad)
            kept_bad.extend(converted.bad[: KEPT_BAD_RECORDS - len(kept_bad)])
            await writer.write(converted.lines)

        async with self.store.writer(key, CONTENT_TYPE) as writer:
            async with self.reference.city_stats(city.id, day) as chunks:
                async for chunk in chunks:
                    await take(convert(decoder, city.id, chunk))
            await take(convert(decoder, city.id, None))
        assert writer.result is not None  # noqa: S101 - set when the block completes
        return writer.result, sums, bad_records, kept_bad
