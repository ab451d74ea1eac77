"""Job state in S3: one JSON object per job plus a pointer from each date to its newest job."""

import re
from datetime import UTC, date, datetime, timedelta
from typing import Final

from pydantic import ValidationError

from common.layout import Layout
from common.models import JobState, LatestJob, Manifest
from common.storage import ObjectStore, WriteConflictError


class JobStore:
    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self._store = store
        self._layout = layout

    async def get(self, job_id: str) -> JobState | None:
        try:
            key = self._layout.job(job_id)
        except ValueError:
            return None
        stored = await self._store.get(key)
        return None if stored is None else JobState.model_validate_json(stored.body)

    async def get_with_age(self, job_id: str) -> tuple[JobState | None, timedelta | None]:
        """The job and how long ago its state was last written, by S3's clock alone.

        A running job's state is rewritten at every heartbeat, so this is the age of its
        heartbeat, whatever the clocks of the consumer and of this process say.
        """
        try:
            key = self._layout.job(job_id)
        except ValueError:
            return None, None
        stored = await self._store.get(key)
        if stored is None:
            return None, None
        return JobState.model_validate_json(stored.body), stored.age

    async def save(self, job: JobState) -> None:
        await self._store.put(self._layout.job(job.job_id), job.model_dump_json().encode())

    async def claim_of(self, day: date) -> tuple[LatestJob | None, str | None]:
        """The date's claim (its newest job and generation) and the pointer's ETag."""
        stored = await self._store.get(self._layout.latest_job(day))
        if stored is None:
            return None, None
        try:
            return LatestJob.model_validate_json(stored.body), stored.etag
        except ValidationError:
            return None, stored.etag

    async def latest(self, day: date) -> tuple[JobState | None, str | None]:
        """The date's newest job and the pointer's ETag (for a compare-and-swap)."""
        pointer, etag = await self.claim_of(day)
        if pointer is None:
            return None, etag
        return await self.get(pointer.job_id), etag

    async def discard(self, job: JobState) -> None:
        """Delete the state of a job that never became a claim (it lost the race)."""
        await self._store.delete([self._layout.job(job.job_id)])

    async def point_to(self, job: JobState, expected_etag: str | None) -> bool:
        """Make ``job`` the date's newest claim unless another request did so first.

        ``job.generation`` must be one more than the generation of the pointer read with
        ``expected_etag``: the compare-and-swap makes generations strictly increasing.
        """
        body = LatestJob(job_id=job.job_id, generation=job.generation).model_dump_json()
        key = self._layout.latest_job(job.date)
        try:
            if expected_etag is None:
                await self._store.put(key, body.encode(), if_none_match=True)
            else:
                await self._store.put(key, body.encode(), if_match=expected_etag)
        except WriteConflictError:
            return False
        return True

    async def try_claim(
        self, job: JobState, pointer: LatestJob | None, etag: str | None
    ) -> JobState | None:
        """Make ``job`` the date's claim under the generation after ``pointer``'s.

        ``pointer`` and ``etag`` are the claim as just read (:meth:`claim_of`). The job is
        saved, then the pointer swapped to it on that ETag; the claimed job is listed in
        the index and returned, or ``None`` if another claim came first.
        """
        job = job.model_copy(update={"generation": (pointer.generation if pointer else 0) + 1})
        await self.save(job)
        if not await self.point_to(job, etag):
            return None
        await self.index(job)
        return job

    async def claim(self, job: JobState, races: int = 5) -> JobState:
        """Save ``job`` as the date's newest claim, under the next generation.

        Used for a job whose message arrived without a state (published by hand): the
        consumer claims the date for it as the API would have. Raises
        :class:`WriteConflictError` if other claims kept winning.
        """
        for _ in range(races):
            pointer, etag = await self.claim_of(job.date)
            claimed = await self.try_claim(job, pointer, etag)
            if claimed is not None:
                return claimed
        raise WriteConflictError(self._layout.latest_job(job.date))

    async def index(self, job: JobState) -> None:
        """List a new job in the index of every job and in its date's, newest first."""
        entry = index_entry(job)
        for day in (None, job.date):
            key = f"{self._layout.job_index(day)}{entry}"
            await self._store.put(key, b"", content_type="application/octet-stream")

    async def indexed(self, day: date | None, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` index entries, newest first, after the entry ``after`` if given.

        ``day`` selects one date's jobs; ``None`` every job. Entries name jobs
        (:func:`index_entry_job`); a job created before the index existed is not listed.
        """
        root = self._layout.job_index(day)
        entries: list[str] = []
        start = f"{root}{after}" if after else ""
        async for item in self._store.list_objects(root, start_after=start):
            entry = item.key.removeprefix(root)
            if INDEX_ENTRY.fullmatch(entry):
                entries.append(entry)
            if len(entries) >= limit:
                break
        return entries


# The job index: one empty object per job, named so that S3's lexicographic listing is
# newest first. The name is ``<inverted creation time>-<job_id>``: the creation time
# (API clock, microseconds) only orders the listing, it never decides anything.
_INDEX_SPAN: Final = 10**17  # microseconds: later than the year 5000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
INDEX_ENTRY: Final = re.compile(r"^[0-9]{17}-[0-9a-f]{32}$")


def index_entry(job: JobState) -> str:
    """The job's name in the index: sorts before every job created earlier."""
    micros = (job.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{_INDEX_SPAN - 1 - micros:017d}-{job.job_id}"


def index_entry_job(entry: str) -> str:
    """The job id an index entry names."""
    return entry.rpartition("-")[2]


class ManifestStore:
    """The committed version of each date."""

    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self._store = store
        self._layout = layout

    async def get(self, day: date) -> tuple[Manifest | None, str | None]:
        stored = await self._store.get(self._layout.manifest(day))
        if stored is None:
            return None, None
        return Manifest.model_validate_json(stored.body), stored.etag

    async def commit(self, manifest: Manifest, expected_etag: str | None) -> None:
        """Switch the date to ``manifest`` in one PUT; raises WriteConflictError if it moved."""
        body = manifest.model_dump_json().encode()
        key = self._layout.manifest(manifest.date)
        if expected_etag is None:
            await self._store.put(key, body, if_none_match=True)
        else:
            await self._store.put(key, body, if_match=expected_etag)
