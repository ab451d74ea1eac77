"""Job state in S3: one JSON object per job plus a pointer from each date to its newest job."""

from datetime import date

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

    async def save(self, job: JobState) -> None:
        await self._store.put(self._layout.job(job.job_id), job.model_dump_json().encode())

    async def latest(self, day: date) -> tuple[JobState | None, str | None]:
        """The date's newest job and the pointer's ETag (for a compare-and-swap)."""
        stored = await self._store.get(self._layout.latest_job(day))
        if stored is None:
            return None, None
        try:
            pointer = LatestJob.model_validate_json(stored.body)
        except ValidationError:
            return None, stored.etag
        return await self.get(pointer.job_id), stored.etag

    async def point_to(self, job: JobState, expected_etag: str | None) -> bool:
        """Make ``job`` the date's newest unless another request did so first."""
        body = LatestJob(job_id=job.job_id).model_dump_json().encode()
        key = self._layout.latest_job(job.date)
        try:
            if expected_etag is None:
                await self._store.put(key, body, if_none_match=True)
            else:
                await self._store.put(key, body, if_match=expected_etag)
        except WriteConflictError:
            return False
        return True


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
