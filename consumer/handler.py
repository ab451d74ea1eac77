"""The job itself: gather every city of a date into S3 and commit it. No AMQP in here.

Data path, top to bottom:

1. read the job's state; a job already committed (a redelivery after the commit) only
   finishes its state and sweep; a job that ended never runs again; a job whose claim
   was overtaken by a newer one (a ``force``, or a new job for a stuck one) stands down;
2. mark it running under a fresh run id and keep a heartbeat: every
   ``heartbeat_seconds`` the state's ``updated_at`` is rewritten and the date's claim
   is read again, so a newer claim stops this run within seconds;
3. fetch the city list; keep the complete cities an earlier attempt of the same job
   stored (their completion records), and stream every missing city concurrently
   (bounded) into its own object, with its sums made on the way;
4. write the rejected records aside; commit the date by replacing its manifest in one
   conditional PUT, only over a manifest of an older generation; mark the job succeeded;
5. sweep what runs of this generation or older left behind (:mod:`consumer.sweep`).

Which run wins is decided by the claim's generation and conditional writes, never by a
clock. An attempt that fails (any exception) or is interrupted keeps its complete
cities for the next delivery; the job's last attempt, or a job that stands down, deletes
everything the job wrote. The committed version of the date is never touched.
"""

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Final

import orjson

from common.jobs import JobStore, ManifestStore
from common.layout import Layout
from common.logs import get_logger
from common.messages import JobMessage
from common.models import CityRecord, JobState, Manifest, RejectsObject, utc_now
from common.settings import Settings
from common.storage import S3Store, WriteConflictError
from consumer.fetcher import City, PermanentFetchError, ReferenceClient, RetryableFetchError
from consumer.ingest import CityFailedError, CityIngest, CityResult
from consumer.metrics import ConsumerMetrics
from consumer.retry import GaveUpError, RetryPolicy
from consumer.sweep import Sweeper

log = get_logger(__name__)
_PROGRESS_SECONDS: Final = 1.0  # at most one progress write per job per second
_COMMIT_RACES: Final = 3


class JobFailedError(Exception):
    """The job did not commit. ``retryable``: another delivery may succeed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class SupersededError(Exception):
    """A newer claim of the date exists: this job stands down."""

    def __init__(self, by_job_id: str) -> None:
        super().__init__(f"superseded by job {by_job_id}, a newer request for this date")
        self.by_job_id = by_job_id


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
        self.sweeper = Sweeper(self.store, self.layout)
        self.retry = RetryPolicy(
            attempts=self.settings.retry_attempts,
            base_seconds=self.settings.retry_backoff_seconds,
            cap_seconds=self.settings.retry_backoff_max_seconds,
        )

    async def handle(
        self, message: JobMessage, *, last_delivery: bool, give_up: str | None = None
    ) -> JobState:
        """Run the job; raises :class:`JobFailedError` (state saved) or re-raises cancellation.

        A job that stands down for a newer claim returns its ``failed`` state: it ended.
        ``give_up``: end the job with this reason instead of running it (its deliveries are
        spent), unless it turns out to be committed already.
        """
        state = await self.job_state(message)
        committed, _ = await self.manifests.get(message.date)
        if committed is not None and committed.job_id == state.job_id:
            # A redelivery after the commit (the ack or the job's last write was lost):
            # finish what that delivery may not have, the state and the sweep.
            log.info("job.already_committed", status=state.status)
            if state.status != "succeeded":
                state = await self.save_succeeded(state, committed)
            await self.sweep(committed)
            return state
        if state.status in {"succeeded", "failed"}:
            log.info("job.already_ended", status=state.status)
            return state
        newer = await self.newer_claim(state)
        if newer is None and committed is not None and committed.generation >= state.generation:
            newer = committed.job_id
        if newer is not None:
            return await self.stand_down(state, newer)
        if give_up is not None:
            log.warning("job.gave_up", reason=give_up)
            ended = await self.end(state, give_up)
            self.metrics.jobs.labels("failed").inc()
            return ended
        run = _Run(self, state)
        return await run.execute(last_delivery=last_delivery)

    async def job_state(self, message: JobMessage) -> JobState:
        """The job's state, holding a claim of its date.

        A job published without the API (by hand), or queued before claims had
        generations, claims the date now, as the API would have, unless a newer job
        holds the date's claim.
        """
        state = await self.jobs.get(message.job_id)
        if state is None:
            state = JobState.queued(message.job_id, message.date, force=message.force)
        elif state.generation > 0 or state.status in {"succeeded", "failed"}:
            return state
        pointer, _ = await self.jobs.claim_of(message.date)
        if pointer is None or pointer.job_id == state.job_id:
            state = await self.jobs.claim(state)
            log.info("job.claimed", generation=state.generation)
        return state

    async def newer_claim(self, state: JobState) -> str | None:
        """The job id of a newer claim of the job's date, if one was made."""
        pointer, _ = await self.jobs.claim_of(state.date)
        if (
            pointer is not None
            and pointer.job_id != state.job_id
            and (pointer.generation > state.generation or state.generation == 0)
        ):
            return pointer.job_id
        return None

    async def stand_down(self, state: JobState, by_job_id: str) -> JobState:
        """End a job overtaken by a newer claim: ``failed``, and nothing it wrote is left."""
        reason = str(SupersededError(by_job_id))
        log.info("job.superseded", by_job_id=by_job_id)
        ended = await self.end(state, reason, superseded_by=by_job_id)
        self.metrics.jobs.labels("superseded").inc()
        return ended

    async def end(
        self, state: JobState, reason: str, *, superseded_by: str | None = None
    ) -> JobState:
        """Mark the job ``failed`` with ``reason``, then delete everything it wrote.

        Unless the date's manifest names the job after all (a commit whose answer was
        lost): then it succeeded, and nothing of it may be deleted. If the manifest
        cannot be read, the error goes up and nothing is deleted.
        """
        committed, _ = await self.manifests.get(state.date)
        if committed is not None and committed.job_id == state.job_id:
            log.info("job.committed_after_all", run_id=committed.run_id)
            return await self.save_succeeded(state, committed)
        now = utc_now()
        ended = state.model_copy(
            update={
                "status": "failed",
                "error": reason,
                "superseded_by": superseded_by,
                "finished_at": now,
                "updated_at": now,
            }
        )
        await self.jobs.save(ended)
        try:
            await self.sweeper.delete_job(state.date, state.generation, state.job_id)
        except Exception as error:  # noqa: BLE001 - the job's outcome stands; `sweep` finishes it
            log.warning("job.cleanup_failed", error=repr(error))
        return ended

    async def save_succeeded(self, state: JobState, manifest: Manifest) -> JobState:
        now = utc_now()
        done = state.model_copy(
            update={
                "status": "succeeded",
                "error": None,
                "cities_total": len(manifest.cities),
                "cities_done": len(manifest.cities),
                "records": manifest.records,
                "bytes": sum(city.bytes for city in manifest.cities),
                "bad_records": 0 if manifest.rejects is None else manifest.rejects.records,
                "finished_at": now,
                "updated_at": now,
            }
        )
        await self.jobs.save(done)
        return done

    async def sweep(self, manifest: Manifest) -> None:
        """Delete what runs of the manifest's generation or older left (best effort)."""
        try:
            await self.sweeper.after_commit(manifest)
        except Exception as error:  # noqa: BLE001 - the date is committed; the next sweep retries
            log.warning("date.sweep_failed", run_id=manifest.run_id, error=repr(error))


class _Run:
    """One attempt at a job, under its own run id."""

    def __init__(self, handler: Handler, state: JobState) -> None:
        self.h = handler
        self.day = state.date
        self.job_id = state.job_id
        self.generation = state.generation
        self.run_id = uuid.uuid4().hex
        self.started = utc_now()
        self._committing = False  # from here on, only the commit protocol decides
        self._committed = False
        self._superseded_by: str | None = None
        self.state = state.model_copy(
            update={
                "status": "running",
                "run_id": self.run_id,
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
        self._records: list[CityRecord] = []

    async def execute(self, *, last_delivery: bool) -> JobState:
        clock = time.monotonic()
        metrics = self.h.metrics
        metrics.jobs_in_flight.inc()
        try:
            manifest = await self._supervised()
            # Committed: from here on nothing may delete this run's objects, and the
            # job's last write is shielded from cancellation.
            done = await asyncio.shield(self.h.save_succeeded(self.state, manifest))
        except asyncio.CancelledError:
            await asyncio.shield(self._interrupted("interrupted: the job was requeued"))
            metrics.jobs.labels("requeued").inc()
            raise
        except SupersededError as superseded:
            return await asyncio.shield(self.h.stand_down(self.state, superseded.by_job_id))
        except JobFailedError as error:
            await asyncio.shield(self._failed(error, last_delivery=last_delivery))
            raise
        except Exception as error:
            # S3 or a bug: retried like any transient failure, with the state saved.
            log.exception("job.crashed", run_id=self.run_id, error=repr(error))
            failure = JobFailedError(f"unexpected error: {error!r}"[:500], retryable=True)
            await asyncio.shield(self._failed(failure, last_delivery=last_delivery))
            raise failure from error
        finally:
            metrics.jobs_in_flight.dec()
            metrics.job_seconds.observe(time.monotonic() - clock)
        metrics.jobs.labels("succeeded").inc()
        log.info(
            "job.succeeded",
            run_id=self.run_id,
            generation=self.generation,
            cities=done.cities_total,
            records=done.records,
            bytes=done.bytes,
            bad_records=done.bad_records,
            retries=self.state.retries,
            seconds=round(time.monotonic() - clock, 3),
        )
        await self.h.sweep(manifest)
        return done

    async def _supervised(self) -> Manifest:
        """The run's work beside its heartbeat; the heartbeat is over when this returns."""
        work = asyncio.create_task(self._work())
        stop = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(work, stop))
        try:
            return await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._superseded_by is not None and (current is None or not current.cancelling()):
                raise SupersededError(self._superseded_by) from None
            raise
        finally:
            # Not cancelled mid-write: a late heartbeat must never land after the final state.
            stop.set()
            await asyncio.wait([beat])

    async def _heartbeat(self, work: "asyncio.Task[Manifest]", stop: asyncio.Event) -> None:
        """Rewrite the state every ``heartbeat_seconds``; stop the work for a newer claim."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.h.settings.heartbeat_seconds):
                    await stop.wait()
            if stop.is_set():
                return
            try:
                newer = await self.h.newer_claim(self.state)
                if newer is not None and not self._committing:
                    self._superseded_by = newer
                    work.cancel("superseded by a newer claim")
                    return
                await self._save(force=True)
            except Exception as error:  # noqa: BLE001 - a missed beat is retried at the next
                log.warning("job.heartbeat_failed", run_id=self.run_id, error=repr(error))

    async def _work(self) -> Manifest:
        await self._save(force=True)
        log.info(
            "job.started",
            run_id=self.run_id,
            attempt=self.state.attempts,
            generation=self.generation,
        )
        cities = await self._cities()
        await self._resume(cities)
        done = {record.city.city_id for record in self._records}
        await self._ingest_all([city for city in cities if city.id not in done])
        return await self._commit()

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

    async def _resume(self, cities: list[City]) -> None:
        """Keep the complete cities that earlier attempts of this job stored."""
        if self.state.attempts <= 1:
            return
        wanted = {city.id: city for city in cities}
        store, layout = self.h.store, self.h.layout
        objects: dict[str, str] = {}
        records: list[str] = []
        prefix = layout.job_data(self.day, self.generation, self.job_id)
        async for item in store.list_objects(prefix):
            if item.key.endswith(".json"):
                records.append(item.key)
            else:
                objects[item.key] = item.etag
        adopted: dict[int, CityRecord] = {}
        for key in records:
            stored = await store.get(key)
            if stored is None:
                continue
            record = CityRecord.model_validate_json(stored.body)
            city = wanted.get(record.city.city_id)
            if (
                city is not None
                and record.city.city_id not in adopted
                and objects.get(record.city.key) == record.city.etag
                and (record.city.name, record.city.country) == (city.name, city.country)
            ):
                adopted[record.city.city_id] = record
        for record in adopted.values():
            self._add(record)
        if adopted:
            log.info("job.resumed", run_id=self.run_id, cities_kept=len(adopted))
            await self._save(force=True)

    async def _ingest_all(self, cities: list[City]) -> None:
        ingest = CityIngest(
            reference=self.h.reference,
            store=self.h.store,
            retry=self.h.retry,
            on_retry=lambda _error: self._note_retry(),
        )
        limit = asyncio.Semaphore(self.h.settings.city_concurrency)
        layout = self.h.layout
        names = (self.day, self.generation, self.job_id, self.run_id)

        async def one(city: City) -> None:
            async with limit:
                clock = time.monotonic()
                result = await ingest.ingest(city, self.day, layout.city_object(*names, city.id))
                self.h.metrics.fetch_seconds.observe(time.monotonic() - clock)
            record = result.record()
            await self.h.store.put(
                layout.city_record(*names, city.id), record.model_dump_json().encode()
            )
            await self._city_done(result, record)

        try:
            async with asyncio.TaskGroup() as group:
                for city in cities:
                    group.create_task(one(city))
        except* CityFailedError as failures:
            first = failures.exceptions[0]
            assert isinstance(first, CityFailedError)  # noqa: S101 - narrowed by except*
            permanent = isinstance(first.error, PermanentFetchError)
            raise JobFailedError(str(first), retryable=not permanent) from None

    def _note_retry(self) -> None:
        self.h.metrics.retries.inc()
        self.state = self.state.model_copy(update={"retries": self.state.retries + 1})

    def _add(self, record: CityRecord) -> None:
        self._records.append(record)
        state = self.state
        self.state = state.model_copy(
            update={
                "cities_done": state.cities_done + 1,
                "records": state.records + record.city.records,
                "bytes": state.bytes + record.city.bytes,
                "bad_records": state.bad_records + record.bad_records,
            }
        )

    async def _city_done(self, result: CityResult, record: CityRecord) -> None:
        metrics = self.h.metrics
        metrics.cities.inc()
        metrics.records.inc(result.records)
        metrics.bad_records.inc(result.bad_records)
        metrics.bytes_written.inc(result.written.size)
        self._add(record)
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

    async def _commit(self) -> Manifest:
        self._committing = True
        manifest = Manifest(
            date=self.day,
            job_id=self.job_id,
            run_id=self.run_id,
            generation=self.generation,
            fetched_at=self.started,
            cities=sorted((record.city for record in self._records), key=lambda city: city.city_id),
            rejects=await self._write_rejects(),
        )
        for _ in range(_COMMIT_RACES):
            current, etag = await self.h.manifests.get(self.day)
            if current is not None and current.generation >= self.generation:
                if current.job_id == self.job_id:
                    # Another run of this same job committed (a redelivery overtook a
                    # run thought lost): the job is done by it.
                    log.info("manifest.committed_by_other_run", by_run_id=current.run_id)
                    return current
                raise SupersededError(current.job_id)
            newer = await self.h.newer_claim(self.state)
            if newer is not None:
                raise SupersededError(newer)
            own = await self.h.jobs.get(self.job_id)
            if own is not None and own.status == "failed":
                # Another attempt of this job ended it (this run was thought lost).
                raise JobFailedError(own.error or "the job was ended", retryable=False)
            try:
                await self.h.manifests.commit(manifest, etag)
            except WriteConflictError:
                log.info("manifest.raced", run_id=self.run_id)
                continue
            except Exception:
                # The answer was lost, not necessarily the write: look before failing.
                current, _ = await self.h.manifests.get(self.day)
                if current is None or current.run_id != self.run_id:
                    raise
            self._committed = True
            log.info(
                "manifest.committed",
                run_id=self.run_id,
                generation=self.generation,
                cities=len(manifest.cities),
            )
            return manifest
        raise JobFailedError("the date's manifest kept changing during the commit", retryable=True)

    async def _write_rejects(self) -> RejectsObject | None:
        bad = [bad for record in self._records for bad in record.kept_bad]
        total = sum(record.bad_records for record in self._records)
        if not total:
            return None
        key = self.h.layout.rejects_object(self.day, self.generation, self.job_id, self.run_id)
        body = b"".join(
            orjson.dumps(
                {"city_id": item.city_id, "reason": item.reason, "raw": item.raw},
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for item in sorted(bad, key=lambda item: item.city_id)
        )
        await self.h.store.put(key, body, content_type="application/x-ndjson")
        return RejectsObject(key=key, records=total)

    async def _interrupted(self, reason: str) -> None:
        """Cancelled (shutdown, lost broker): the job goes back to the queue as it is."""
        if self._committed:
            # Interrupted after the commit: the date is this run's; the redelivery will
            # find it committed and finish the job's state and the sweep.
            log.warning("job.interrupted_after_commit", run_id=self.run_id, reason=reason)
            return
        log.warning("job.interrupted", run_id=self.run_id, reason=reason)
        await self._save_queued(reason)

    async def _failed(self, error: JobFailedError, *, last_delivery: bool) -> None:
        """Record the failure; keep the complete cities unless it is the job's last attempt."""
        final = last_delivery or not error.retryable
        self.h.metrics.jobs.labels("failed" if final else "retried").inc()
        log.warning("job.attempt_failed", run_id=self.run_id, reason=error.reason, final=final)
        if self._committed:
            return
        if final:
            # If even this fails, the error goes up: the worker requeues the message and
            # its next delivery, over the limit, ends the job with a saved reason.
            await self.h.end(self.state, error.reason)
        else:
            await self._save_queued(error.reason)

    async def _save_queued(self, reason: str) -> None:
        """Back to ``queued`` with the reason, for the next delivery (best effort)."""
        self.state = self.state.model_copy(
            update={"status": "queued", "error": reason, "updated_at": utc_now()}
        )
        try:
            async with self._save_lock:
                await self.h.jobs.save(self.state)
        except Exception as error:  # noqa: BLE001 - must not hide the job's own outcome
            log.warning("job.save_failed", run_id=self.run_id, error=repr(error))
