"""One city's records, from the reference server's body to an S3 object, with retries.

The body is decoded chunk by chunk (:class:`common.records.ArrayDecoder`), normalised,
encoded as JSON lines and written into a streaming S3 writer. A chunk is at most
``CHUNK_BYTES`` (256 KiB, about 2,300 records, about 4 ms of CPU), so it is converted on
the event loop: measured, a worker thread per chunk cost more (GIL hand-offs, one malloc
arena per thread) than it gave, in both throughput and peak memory.

A failed attempt aborts its upload and starts the city over, so an object never mixes
two fetches.
"""

import random
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from common.records import (
    ArrayDecoder,
    BadRecord,
    MalformedBodyError,
    encode_line,
    normalise_record,
)
from common.storage import S3Store, WrittenObject
from consumer.fetcher import City, ReferenceClient, RetryableFetchError, backoff

CONTENT_TYPE: Final = "application/x-ndjson"
KEPT_BAD_RECORDS: Final = 1000  # per city: the rest are counted, not kept


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    base_seconds: float
    cap_seconds: float


@dataclass(frozen=True)
class Converted:
    lines: bytes
    records: int
    bad: list[BadRecord]


@dataclass(frozen=True)
class CityResult:
    city: City
    written: WrittenObject
    records: int
    bad_records: int
    kept_bad: list[BadRecord]
    retries: int


class CityFailedError(Exception):
    """A city still failing after its retry budget (or failing for good)."""

    def __init__(self, city: City, error: Exception, attempts: int) -> None:
        super().__init__(f"city {city.id} failed after {attempts} attempt(s): {error}")
        self.city = city
        self.error = error


def convert(decoder: ArrayDecoder, city_id: int, chunk: bytes | None) -> Converted:
    """Decode a chunk (``None``: end of body) into stored lines and rejected records."""
    items = decoder.finish() if chunk is None else decoder.feed(chunk)
    out = bytearray()
    bad: list[BadRecord] = []
    for item in items:
        record = normalise_record(city_id, item)
        if isinstance(record, BadRecord):
            bad.append(record)
        else:
            out += encode_line(record)
    return Converted(lines=bytes(out), records=len(items) - len(bad), bad=bad)


@dataclass
class CityIngest:
    """Fetches and stores cities; one per job, sharing the process's clients."""

    reference: ReferenceClient
    store: S3Store
    retry: RetryPolicy
    on_retry: Any = None  # called with (city, error) before each retry, for progress/metrics
    rng: random.Random = field(default_factory=random.Random)

    async def ingest(self, city: City, day: date, key: str) -> CityResult:
        last_error: Exception | None = None
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1:
                await backoff(
                    attempt - 1, self.retry.base_seconds, self.retry.cap_seconds, self.rng
                )
            try:
                written, records, bad_records, kept_bad = await self._attempt(city, day, key)
            except (RetryableFetchError, MalformedBodyError) as error:
                last_error = error
                if self.on_retry is not None and attempt < self.retry.attempts:
                    self.on_retry(city, error)
                continue
            except Exception as error:
                raise CityFailedError(city, error, attempt) from error
            return CityResult(
                city=city,
                written=written,
                records=records,
                bad_records=bad_records,
                kept_bad=kept_bad,
                retries=attempt - 1,
            )
        assert last_error is not None  # noqa: S101 - the loop ran at least once
        raise CityFailedError(city, last_error, self.retry.attempts)

    async def _attempt(
        self, city: City, day: date, key: str
    ) -> tuple[WrittenObject, int, int, list[BadRecord]]:
        decoder = ArrayDecoder()
        records = bad_records = 0
        kept_bad: list[BadRecord] = []

        async def take(converted: Converted) -> None:
            nonlocal records, bad_records
            records += converted.records
            bad_records += len(converted.bad)
            kept_bad.extend(converted.bad[: KEPT_BAD_RECORDS - len(kept_bad)])
            await writer.write(converted.lines)

        async with self.store.writer(key, CONTENT_TYPE) as writer:
            async with self.reference.city_stats(city.id, day) as chunks:
                async for chunk in chunks:
                    await take(convert(decoder, city.id, chunk))
            await take(convert(decoder, city.id, None))
        assert writer.result is not None  # noqa: S101 - set when the block completes
        return writer.result, records, bad_records, kept_bad
