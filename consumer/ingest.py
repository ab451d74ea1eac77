"""One city's records, from the reference server's body to an S3 object, with retries.

The body is decoded chunk by chunk (:class:`common.records.ArrayDecoder`), normalised,
encoded as JSON lines, compressed (:class:`common.codec.Compressor`: one zstd frame or
gzip member per object) and written into a streaming S3 writer. A chunk is at most
``CHUNK_BYTES`` (256 KiB, about 2,300 records, about 4 ms of CPU), so it is converted on
the event loop: measured, a worker thread per chunk cost more (GIL hand-offs, one malloc
arena per thread) than it gave, in both throughput and peak memory. Compressing a
chunk's lines costs about 0.3 ms more with zstd 1 (3 ms with gzip 6, measured in
:mod:`common.codec`), and is done on the loop for the same reasons.

The stored object's key ends in the codec's suffix (``.jsonl.zst``) and its
``Content-Type`` names the container (``application/zstd``, ``application/gzip``,
``application/x-ndjson`` uncompressed; :data:`common.codec.CONTENT_TYPES`), never a
``Content-Encoding``. The lines inside are byte for byte the uncompressed form, and the
object's ``bytes`` in the manifest counts them; ``stored_bytes`` is the object's size.

A failed attempt aborts its upload and starts the city over, so an object never mixes
two fetches. The figures the statistics need (:class:`common.models.ObjectSums`) are
summed from the same pass, so a city's sums are ready the moment its object is.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Final

from common.codec import CONTENT_TYPES, Codec, Compressor, codec_of_key
from common.failures import REFERENCE, S3, Explained, component_of, describe
from common.models import CityObject, CityRecord, ObjectSums
from common.records import ArrayDecoder, BadRecord, MalformedBodyError
from common.storage import S3Store, WrittenObject
from consumer.convert import Converted, Sums, convert
from consumer.fetcher import City, ReferenceClient, RetryableFetchError
from consumer.retry import GaveUpError, RetryPolicy

KEPT_BAD_RECORDS: Final = 1000  # per city: the rest are counted, not kept


@dataclass(frozen=True)
class CityResult:
    city: City
    written: WrittenObject  # its size: the bytes stored (compressed)
    line_bytes: int  # the object's lines, uncompressed
    codec: Codec
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
                bytes=self.line_bytes,
                codec=self.codec,
                stored_bytes=self.written.size,
                sums=self.sums,
            ),
            bad_records=self.bad_records,
            kept_bad=self.kept_bad,
            retries=self.retries,
        )


class CityFailedError(Explained):
    """A city still failing after its retry budget (or failing for good).

    Its message is for users (:func:`common.failures.describe`): the component and the
    error's class or code, never the error's text (which may name hosts or keys).
    """

    def __init__(self, city: City, error: Exception, attempts: int) -> None:
        component = component_of(error, default=REFERENCE)
        doing = f"{'storing' if component == S3 else 'fetching'} city {city.id}"
        super().__init__(
            f"{describe(error, component=component, doing=doing)}, "
            f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        )
        self.city = city
        self.error = error


@dataclass
class CityIngest:
    """Fetches and stores cities; one per job, sharing the process's clients."""

    reference: ReferenceClient
    store: S3Store
    retry: RetryPolicy
    on_retry: Callable[[Exception], None] | None = None  # for progress and metrics
    codec: Codec = "none"  # the key given to ingest must end in its suffix
    level: int | None = None  # None: the codec's default

    async def ingest(self, city: City, day: date, key: str) -> CityResult:
        if codec_of_key(key) != self.codec:  # readers go by the suffix: it must not lie
            raise ValueError(f"{key} does not end in the suffix of codec {self.codec}")
        try:
            (written, line_bytes, sums, bad_records, kept_bad), attempts = await self.retry.run(
                lambda: self._attempt(city, day, key),
                retry_on=(RetryableFetchError, MalformedBodyError),
                on_retry=self.on_retry,
            )
        except GaveUpError as gave_up:
            raise CityFailedError(city, gave_up.error, gave_up.attempts) from gave_up.error
        return CityResult(
            city=city,
            written=written,
            line_bytes=line_bytes,
            codec=self.codec,
            records=sums.departures,
            bad_records=bad_records,
            kept_bad=kept_bad,
            retries=attempts - 1,
            sums=sums.frozen(),
        )

    async def _attempt(
        self, city: City, day: date, key: str
    ) -> tuple[WrittenObject, int, Sums, int, list[BadRecord]]:
        decoder = ArrayDecoder()
        compressor = Compressor(self.codec, self.level)  # one per attempt: a fresh frame
        sums = Sums()
        line_bytes = 0
        bad_records = 0
        kept_bad: list[BadRecord] = []

        async def take(converted: Converted) -> None:
            nonlocal bad_records, line_bytes
            sums.add(converted)
            bad_records += len(converted.bad)
            kept_bad.extend(converted.bad[: KEPT_BAD_RECORDS - len(kept_bad)])
            line_bytes += len(converted.lines)
            await writer.write(compressor.compress(converted.lines))

        async with self.store.writer(key, CONTENT_TYPES[self.codec]) as writer:
            async with self.reference.city_stats(city.id, day) as chunks:
                async for chunk in chunks:
                    await take(convert(decoder, city.id, chunk))
            await take(convert(decoder, city.id, None))
            await writer.write(compressor.flush())
        assert writer.result is not None  # noqa: S101 - set when the block completes
        return writer.result, line_bytes, sums, bad_records, kept_bad
