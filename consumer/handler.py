"""The job itself: gather every city of a date into S3 and commit it. No AMQP in here.

Data path, top to bottom:

1. read the job's state; a job already succeeded (a redelivery after the commit) is done;
2. mark it running under a fresh run id; fetch the city list;
3. stream every city concurrently (bounded) into its own object under the run's folder;
4. write the rejected records aside; commit the date by replacing its manifest in one
   conditional PUT; mark the job succeeded;
5. sweep what older runs of the date left behind (objects, partials, unfinished uploads).

A failure or a cancellation deletes the run's objects (uploads in flight abort
themselves) and leaves the committed version of the date untouched.
"""

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import orjson

from common.jobs import JobStore, ManifestStore
from common.layout import Layout
from common.logs import get_logger
from common.messages import JobMessage
from common.models import CityObject, JobState, Manifest, RejectsObject, utc_now
from common.records import BadRecord
from common.settings import Settings
from common.storage import S3Store, WriteConflictError
from consumer.fetcher import City, PermanentFetchError, ReferenceClient, RetryableFetchError
from consumer.ingest import CityFailedError, CityIngest, CityResult
from consumer.metrics import ConsumerMetrics
from consumer.retry import GaveUpError, RetryPolicy

log = get_logger(__name__)
_PROGRESS_SECONDS = 1.0  # at most one progress write per job per second
_COMMIT_RACES = 3


class JobFailedError(Exception):
    """The job did not commit. ``retryable``: another delivery may succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass
class Handler:
    settings: Settings
    store: S3Store
    reference: ReferenceClient
    metrics: ConsumerMetrics

    def __post_init__(self) -> None:
        self.layout = Layout(self.settings.s3_prefix)
        self.jobs = JobStore(self.store, self.layout)
        self.manifests = ManifestStore(self.store, self.layout)
        self.retry = RetryPolicy(
            attempts=self.settings.retry_attempts,
            base_seconds=self.settings.retry_backoff_seconds,
            cap_seconds=self.settings.retry_backoff_max_seconds,
        )

    async def handle(self, message: JobMessage, *, last_delivery: bool) -> JobState:
        """Run the job; raises :class:`JobFailedError` (state saved) or re-raises cancellation."""
        # A job published without the API (e.g. replayed by hand) still gets a state.
        state = await self.jobs.get(message.job_id) or JobState.queued(
            message.job_id, message.date, force=message.force
        )
        committed, _ = await self.manifests.get(message.date)
        ours = committed is not None and committed.job_id == message.job_id
        if state.status == "succeeded" or ours:
            # A redelivery after the commit (the ack or the job's last write was lost):
            # finish what that delivery may not have, the state and the sweep.
            log.info("job.already_committed", status=state.status)
            if committed is not None and ours:
                if state.status != "succeeded":
                    state = await self._save_succeeded(state, committed)
                await self.sweep(committed)
            return state
        run = _Run(self, message, state)
        return await run.execute(last_delivery=last_delivery)

    async def _save_succeeded(self, state: JobState, manifest: Manifest) -> JobState:
        now = utc_now()
        done = state.model_copy(
            update={
                "status": "succeeded",
                "error": None,
                "cities_total": len(manifest.cities),
                "cities_done": len(manifest.cities),
                "records": manifest.records,
                "bytes": sum(city.bytes for city in manifest.cities),
                "finished_at": now,
                "updated_at": now,
            }
        )
        await self.jobs.save(done)
        return done

    async def sweep(self, manifest: Manifest) -> None:
        """Delete older runs' objects and partials, abort their uploads (best effort).

        Only what was created before the committed run started is touched: runs that
        started earlier can no longer commit (commits only move forward in time), and a
        run that started later owns its files.
        """
        keep = {city.key for city in manifest.cities}
        if manifest.rejects is not None:
            keep.add(manifest.rejects.key)
        layout, store = self.layout, self.store
        current_partials = f"{layout.date_partials(manifest.date)}run={manifest.run_id}/"
        try:
            stale = [
                item.key
                async for item in store.list_objects(layout.date_data(manifest.date))
                if item.key not in keep and item.last_modified < manifest.fetched_at
            ]
            stale += [
                item.key
                async for item in store.list_objects(layout.date_partials(manifest.date))
                if not item.key.startswith(current_partials)
                and item.last_modified < manifest.fetched_at
            ]
            await store.delete(stale)
            # This date's unfinished uploads from older runs, and any date's very old ones
            # (left by a process that died and whose date was never processed again).
            abandoned = utc_now() - timedelta(seconds=self.settings.stale_upload_seconds)
            uploads = [
                upload
                for upload in await store.pending_uploads(layout.data_root)
                if upload.initiated < abandoned
                or (
                    upload.key.startswith(layout.date_data(manifest.date))
                    and upload.initiated < manifest.fetched_at
                )
            ]
            for upload in uploads:
                await store.abort_upload(upload.key, upload.upload_id)
        except Exception as error:  # noqa: BLE001 - the date is committed; the next run sweeps again
            log.warning("date.sweep_failed", run_id=manifest.run_id, error=repr(error))
        else:
            log.info("date.swept", run_id=manifest.run_id, objects=len(stale), uploads=len(uploads))


class _Run:
    """One attempt at a job, under its own run id."""

    def __init__(self, handler: Handler, message: JobMessage, state: JobState) -> None:
        self.h = handler
        self.message = message
        self.day = message.date
        self.run_id = uuid.uuid4().hex
        self.started = utc_now()
        self._committed = False
        self.state = state.model_copy(
            update={
                "status": "running",
                "attempts": state.attempts + 1,
                "started_at": self.started,
                "updated_at": self.started,
                "error": None,
                "cities_total": None,
                "cities_done": 0,
                "records": 0,
                "bytes": 0,
                "bad_records": 0,
                "retries": 0,
            }
        )
        self._save_lock = asyncio.Lock()
        self._last_save = 0.0
        self._rejects: list[BadRecord] = []

    async def execute(self, *, last_delivery: bool) -> JobState:
        clock = time.monotonic()
        self.h.metrics.jobs_in_flight.inc()
        try:
            await self._save(force=True)
            log.info("job.started", run_id=self.run_id, attempt=self.state.attempts)
            results = await self._ingest_all(await self._cities())
            manifest = await self._commit(results)
            # Committed: from here on nothing may delete this run's objects, and the
            # job's last write is shielded from cancellation.
            done = await asyncio.shield(self.h._save_succeeded(self.state, manifest))
        except asyncio.CancelledError:
            await asyncio.shield(self._give_up("interrupted: the job was requeued", "queued"))
            self.h.metrics.jobs.labels("requeued").inc()
            raise
        except JobFailedError as error:
            final = last_delivery or not error.retryable
            await asyncio.shield(self._give_up(error.reason, "failed" if final else "queued"))
            self.h.metrics.jobs.labels("failed" if final else "retried").inc()
            raise
        finally:
            self.h.metrics.jobs_in_flight.dec()
            self.h.metrics.job_seconds.observe(time.monotonic() - clock)
        self.h.metrics.jobs.labels("succeeded").inc()
        log.info(
            "job.succeeded",
            run_id=self.run_id,
            cities=done.cities_total,
            records=done.records,
            bytes=done.bytes,
            bad_records=self.state.bad_records,
            retries=self.state.retries,
            seconds=round(time.monotonic() - clock, 3),
        )
        if manifest.run_id == self.run_id:
            await self.h.sweep(manifest)
        return done

    async def _cities(self) -> list[City]:
        try:
            cities, _ = await self.h.retry.run(
                self.h.reference.cities,
                retry_on=(RetryableFetchError,),
                on_retry=lambda _error: self._note_retry(),
            )
        except GaveUpError as gave_up:
            retryable = not isinstance(gave_up.error, PermanentFetchError)
            raise JobFailedError(f"city list: {gave_up.error}", retryable=retryable) from None
        self.state = self.state.model_copy(update={"cities_total": len(cities)})
        await self._save(force=True)
        return cities

    async def _ingest_all(self, cities: list[City]) -> list[CityResult]:
        ingest = CityIngest(
            reference=self.h.reference,
            store=self.h.store,
            retry=self.h.retry,
            on_retry=lambda _error: self._note_retry(),
        )
        limit = asyncio.Semaphore(self.h.settings.city_concurrency)

        async def one(city: City) -> CityResult:
            async with limit:
                clock = time.monotonic()
                key = self.h.layout.city_object(self.day, self.run_id, city.id)
                result = await ingest.ingest(city, self.day, key)
                self.h.metrics.fetch_seconds.observe(time.monotonic() - clock)
            await self._city_done(result)
            return result

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(city)) for city in cities]
        except* CityFailedError as failures:
            first = failures.exceptions[0]
            assert isinstance(first, CityFailedError)  # noqa: S101 - narrowed by except*
            permanent = isinstance(first.error, PermanentFetchError)
            raise JobFailedError(str(first), retryable=not permanent) from None
        return [task.result() for task in tasks]

    def _note_retry(self) -> None:
        self.h.metrics.retries.inc()
        self.state = self.state.model_copy(update={"retries": self.state.retries + 1})

    async def _city_done(self, result: CityResult) -> None:
        metrics = self.h.metrics
        metrics.cities.inc()
        metrics.records.inc(result.records)
        metrics.bad_records.inc(result.bad_records)
        metrics.bytes_written.inc(result.written.size)
        self._rejects.extend(result.kept_bad)
        state = self.state
        self.state = state.model_copy(
            update={
                "cities_done": state.cities_done + 1,
                "records": state.records + result.records,
                "bytes": state.bytes + result.written.size,
                "bad_records": state.bad_records + result.bad_records,
            }
        )
        log.debug(
            "city.stored", city_id=result.city.id, records=result.records, retries=result.retries
        )
        await self._save()

    async def _save(self, *, force: bool = False) -> None:
        """Write the job's state, at most once a second unless ``force``; never reordered."""
        if not force and time.monotonic() - self._last_save < _PROGRESS_SECONDS:
            return
        async with self._save_lock:
            self._last_save = time.monotonic()
            self.state = self.state.model_copy(update={"updated_at": utc_now()})
            await self.h.jobs.save(self.state)

    async def _commit(self, results: list[CityResult]) -> Manifest:
        rejects = await self._write_rejects()
        manifest = Manifest(
            date=self.day,
            job_id=self.message.job_id,
            run_id=self.run_id,
            fetched_at=self.started,
            cities=[
                CityObject(
                    city_id=result.city.id,
                    name=result.city.name,
                    country=result.city.country,
                    key=result.written.key,
                    etag=result.written.etag,
                    records=result.records,
                    bytes=result.written.size,
                )
                for result in sorted(results, key=lambda result: result.city.id)
            ],
            rejects=rejects,
        )
        for _ in range(_COMMIT_RACES):
            current, etag = await self.h.manifests.get(self.day)
            if current is not None and current.fetched_at >= self.started:
                # A run that started later has committed: its data is newer, and it may
                # already have swept this run's objects. This run's job is done by it.
                log.info("manifest.superseded", run_id=self.run_id, by_run_id=current.run_id)
                await self._delete_run_objects()
                return current
            try:
                await self.h.manifests.commit(manifest, etag)
            except WriteConflictError:
                log.info("manifest.raced", run_id=self.run_id)
                continue
            self._committed = True
            log.info("manifest.committed", run_id=self.run_id, cities=len(manifest.cities))
            return manifest
        raise JobFailedError("the date's manifest kept changing during the commit", retryable=True)

    async def _write_rejects(self) -> RejectsObject | None:
        if not self._rejects:
            return None
        key = self.h.layout.rejects_object(self.day, self.run_id)
        body = b"".join(
            orjson.dumps(
                {"city_id": bad.city_id, "reason": bad.reason, "raw": bad.raw},
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for bad in self._rejects
        )
        await self.h.store.put(key, body, content_type="application/x-ndjson")
        return RejectsObject(key=key, records=self.state.bad_records)

    async def _give_up(self, reason: str, status: str) -> None:
        """Record why the attempt ended and delete what it wrote (best effort)."""
        now = utc_now()
        update: dict[str, object] = {"status": status, "error": reason, "updated_at": now}
        if status == "failed":
            update["finished_at"] = now
        self.state = self.state.model_copy(update=update)
        if self._committed:
            # Interrupted after the commit: the date is this run's; the redelivery will
            # find it committed and finish the job's state and the sweep.
            log.warning("job.interrupted_after_commit", run_id=self.run_id, reason=reason)
            return
        log.warning("job.attempt_failed", run_id=self.run_id, reason=reason, status=status)
        try:
            await self.h.jobs.save(self.state)
            await self._delete_run_objects()
        except Exception as error:  # noqa: BLE001 - cleanup must not hide the job's own error
            log.warning("job.cleanup_failed", run_id=self.run_id, error=repr(error))

    async def _delete_run_objects(self) -> None:
        prefix = self.h.layout.run_data(self.day, self.run_id)
        await self.h.store.delete([item.key async for item in self.h.store.list_objects(prefix)])
