"""The job itself: gather every city of a date into S3 and commit it. No AMQP in here.

Data path, top to bottom (the transitions and their conditional writes are
:mod:`common.lifecycle`; this module does the work between them):

1. :meth:`Lifecycle.start` decides what the delivery does: a job already committed only
   finishes its state and sweep; an ended job, or a second copy of the message while a
   live run works, does nothing; a job whose date a newer job took ends; otherwise the
   run takes the date's lease and marks the job running;
2. a heartbeat every ``heartbeat_seconds`` checks the lease and rewrites the job's state
   (fenced: only over the state this run wrote last): a run that lost either stops at
   once and writes nothing more;
3. fetch the city list; keep the complete cities an earlier run of the same job stored
   (their completion records), and stream every missing city concurrently (bounded)
   into its own object, with its sums made on the way;
4. write the rejected records aside; commit the date in one compare-and-swap of its
   state (only while the lease is this run's); mark the job succeeded;
5. sweep what runs of this generation or older left behind (:mod:`consumer.sweep`).

A retryable failure puts the job back to ``queued`` (its complete cities kept for the next
delivery); the last attempt, or a permanent error, ends it and deletes what it wrote.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

from common.codec import CONTENT_TYPES
from common.failures import component_of, describe
from common.jobs import NEWER_VERSION, NewerVersionError
from common.layout import Layout
from common.lifecycle import (
    Committed,
    Duplicate,
    Ended,
    FencedError,
    Lifecycle,
    Run,
    Superseded,
)
from common.logs import get_logger
from common.messages import JobMessage
from common.models import CityRecord, JobState, Manifest, RejectsObject, utc_now
from common.settings import Settings
from common.storage import S3Store
from consumer.fetcher import City, PermanentFetchError, ReferenceClient, RetryableFetchError
from consumer.ingest import CityFailedError, CityIngest, CityResult
from consumer.metrics import ConsumerMetrics
from consumer.rejects import encode_rejects
from consumer.retry import GaveUpError, RetryPolicy
from consumer.sweep import Sweeper

log = get_logger(__name__)
_PROGRESS_SECONDS: Final = 1.0  # at most one progress write per job per second
_RELEASE_SECONDS: Final = 10.0  # the longest a failed run waits to say so before letting go


class DeferredError(Exception):
    """A second copy of a job's message while a run in another process works on it.

    That run may be alive or may have just died: the copy is put back to wait (it is not
    a failure) rather than dropped, so the job always keeps a message until it ends.
    """


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
        self.lifecycle = Lifecycle(
            self.store, self.layout, stale_after=timedelta(seconds=self.settings.stale_job_seconds)
        )
        self.sweeper = Sweeper(self.store, self.layout)
        self.live_runs: set[str] = set()  # jobs with a run in this process
        self.retry = RetryPolicy(
            attempts=self.settings.retry_attempts,
            base_seconds=self.settings.retry_backoff_seconds,
            cap_seconds=self.settings.retry_backoff_max_seconds,
        )

    async def handle(
        self,
        message: JobMessage,
        *,
        last_delivery: bool,
        give_up: str | None = None,
        retry_after: float | None = None,
        redelivered: bool = True,
    ) -> JobState | None:
        """Run the job; raises :class:`JobFailedError` (state saved) or re-raises cancellation.

        Returns the job's state when this delivery is done with it (``None``: the job has no
        state this version may touch). ``give_up``: end the job with this reason instead of
        running it (its deliveries are spent), unless it is committed already.
        ``retry_after``: how long the job waits before its next delivery if this attempt
        fails and is retried (its state then says when: ``next_attempt_at``).
        ``redelivered``: the broker's flag (see :meth:`Lifecycle.start`).
        """
        try:
            return await self._handle(
                message,
                last_delivery=last_delivery,
                give_up=give_up,
                retry_after=retry_after,
                redelivered=redelivered,
            )
        except NewerVersionError as newer:
            return await self.newer_version(message, newer)

    async def _handle(
        self,
        message: JobMessage,
        *,
        last_delivery: bool,
        give_up: str | None,
        retry_after: float | None,
        redelivered: bool,
    ) -> JobState | None:
        lifecycle = self.lifecycle
        if give_up is not None:
            ended = await lifecycle.end(message.job_id, message.date, give_up)
            if ended is not None and ended.status == "failed":
                log.warning("job.gave_up", reason=give_up)
                self.metrics.jobs.labels("failed").inc()
            return ended
        start = await lifecycle.start(
            message.job_id, message.date, force=message.force, redelivered=redelivered
        )
        if isinstance(start, Committed):
            # A redelivery after the commit (the ack or the job's last write was lost).
            log.info("job.already_committed", run_id=start.manifest.run_id)
            await self.sweep(start.manifest)
            return start.job
        if isinstance(start, Ended):
            log.info("job.already_ended", status=None if start.job is None else start.job.status)
            return start.job
        if isinstance(start, Duplicate):
            log.info("message.duplicate", run_id=start.job.run_id)
            if message.job_id not in self.live_runs:
                raise DeferredError(message.job_id)
            return start.job
        if isinstance(start, Superseded):
            log.info("job.superseded", by_job_id=start.by_job_id)
            self.metrics.jobs.labels("superseded").inc()
            return start.job
        self.live_runs.add(message.job_id)
        try:
            return await _Run(self, start).execute(
                last_delivery=last_delivery, retry_after=retry_after
            )
        finally:
            self.live_runs.discard(message.job_id)

    async def newer_version(self, message: JobMessage, newer: NewerVersionError) -> JobState | None:
        """A date or job state of a newer format: end the job, never loop on it.

        The job's state says so if this version can write it; a newer job state itself
        is left as it is (the newer version owns it).
        """
        log.error("job.newer_version", what=newer.what)
        reason = f"the job's data was {NEWER_VERSION}: upgrade the consumers"
        try:
            ended = await self.lifecycle.fail_only_state(message.job_id, reason)
        except NewerVersionError:
            return None
        self.metrics.jobs.labels("failed").inc()
        return ended

    async def sweep(self, manifest: Manifest) -> None:
        """Delete what runs of the manifest's generation or older left (best effort)."""
        try:
            await self.sweeper.after_commit(manifest)
        except Exception as error:  # noqa: BLE001 - the date is committed; the next sweep retries
            log.warning("date.sweep_failed", run_id=manifest.run_id, error=repr(error))


class _Run:
    """One attempt at a job, under the lease and run id :meth:`Lifecycle.start` gave it."""

    def __init__(self, handler: Handler, run: Run) -> None:
        self.h = handler
        self.run = run
        self.day = run.state.date
        self.job_id = run.lease.job_id
        self.generation = run.lease.generation
        self.run_id = run.run_id
        self.started = run.state.started_at or utc_now()
        self.state = run.state
        self._committing = False  # from here on, only the commit's compare-and-swap decides
        self._fenced: FencedError | None = None
        self._silent: float | None = None  # seconds without a heartbeat, when given up
        self._save_lock = asyncio.Lock()
        self._last_save = 0.0
        self._records: list[CityRecord] = []

    async def execute(
        self, *, last_delivery: bool, retry_after: float | None = None
    ) -> JobState | None:
        clock = time.monotonic()
        metrics = self.h.metrics
        metrics.jobs_in_flight.inc()
        try:
            manifest = await self._supervised()
            # Committed: nothing may delete this run's objects, and the job's last write
            # is shielded from cancellation.
            done = await asyncio.shield(self.run.succeed(manifest))
        except asyncio.CancelledError:
            await asyncio.shield(self._interrupted("interrupted: the job was requeued"))
            metrics.jobs.labels("requeued").inc()
            raise
        except FencedError as fenced:
            # Another run of this job, or an ending, took over: write nothing more.
            log.warning("run.fenced", run_id=self.run_id, reason=str(fenced))
            metrics.jobs.labels("fenced").inc()
            return None
        except JobFailedError as error:
            await asyncio.shield(self._failed(error, last_delivery, retry_after))
            raise
        except Exception as error:
            # S3 or a bug: retried like any transient failure, with the state saved.
            log.exception("job.crashed", run_id=self.run_id, error=repr(error))
            component = component_of(error, default="the consumer")
            failure = JobFailedError(describe(error, component=component), retryable=True)
            await asyncio.shield(self._failed(failure, last_delivery, retry_after))
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
            if current is None or not current.cancelling():
                if self._fenced is not None:
                    raise self._fenced from None
                if self._silent is not None:
                    reason = f"S3 did not take the job's heartbeat for {self._silent:.0f} s"
                    raise JobFailedError(reason, retryable=True) from None
            raise
        finally:
            # Not cancelled mid-write: a late heartbeat must never land after the final state.
            stop.set()
            await asyncio.wait([beat])

    async def _heartbeat(self, work: "asyncio.Task[Manifest]", stop: asyncio.Event) -> None:
        """Every ``heartbeat_seconds``: check the lease and rewrite the state, or stop the work.

        A run that cannot beat for half of ``stale_job_seconds`` (S3 unreachable from here,
        a link gone silent) gives its delivery up: the job waits in the queue for a
        consumer that can reach S3, instead of being held by one that cannot.
        """
        settings = self.h.settings
        last_beat = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.heartbeat_seconds):
                    await stop.wait()
            if stop.is_set() or self._committing:
                return
            try:
                async with asyncio.timeout(2 * settings.heartbeat_seconds):
                    await self.run.check()
                    await self._save(force=True)
                last_beat = time.monotonic()
            except FencedError as fenced:
                if not self._committing:
                    self._fenced = fenced
                    work.cancel("fenced: another run or an ending took over")
                return
            except Exception as error:  # noqa: BLE001 - a missed beat is retried at the next
                log.warning("job.heartbeat_failed", run_id=self.run_id, error=repr(error))
                silent = time.monotonic() - last_beat
                if silent > settings.stale_job_seconds / 2 and not self._committing:
                    self._silent = silent
                    work.cancel("no heartbeat could be written")
                    return

    async def _work(self) -> Manifest:
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
            log.warning("cities.failed", run_id=self.run_id, error=repr(gave_up.error))
            retryable = not isinstance(gave_up.error, PermanentFetchError)
            reason = describe(
                gave_up.error, component="the reference server", doing="listing cities"
            )
            raise JobFailedError(reason, retryable=retryable) from None
        self.state = self.state.model_copy(update={"cities_total": len(cities)})
        await self._save(force=True)
        return cities

    async def _resume(self, cities: list[City]) -> None:
        """Keep the complete cities that earlier runs of this job stored."""
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
            codec=self.h.settings.object_codec,
            level=self.h.settings.object_level,
        )
        limit = asyncio.Semaphore(self.h.settings.city_concurrency)
        layout = self.h.layout
        names = (self.day, self.generation, self.job_id, self.run_id)

        async def one(city: City) -> None:
            async with limit:
                clock = time.monotonic()
                key = layout.city_object(*names, city.id, codec=ingest.codec)
                result = await ingest.ingest(city, self.day, key)
                self.h.metrics.fetch_seconds.observe(time.monotonic() - clock)
            record = result.record()
            try:
                await self.h.store.put(
                    layout.city_record(*names, city.id), record.model_dump_json().encode()
                )
            except (ClientError, BotoCoreError) as error:
                raise CityFailedError(city, error, 1) from error
            await self._city_done(result, record)

        try:
            async with asyncio.TaskGroup() as group:
                for city in cities:
                    group.create_task(one(city))
        except* FencedError as fenced:
            raise fenced.exceptions[0] from None
        except* CityFailedError as failures:
            first = failures.exceptions[0]
            assert isinstance(first, CityFailedError)  # noqa: S101 - narrowed by except*
            log.warning(
                "city.failed", run_id=self.run_id, city_id=first.city.id, error=repr(first.error)
            )
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
        """Write the job's state (fenced), at most once a second unless ``force``; in order."""
        if not force and time.monotonic() - self._last_save < _PROGRESS_SECONDS:
            return
        async with self._save_lock:
            self._last_save = time.monotonic()
            self.state = self.state.model_copy(update={"updated_at": utc_now()})
            await self.run.save(self.state)

    async def _commit(self) -> Manifest:
        manifest = Manifest(
            date=self.day,
            job_id=self.job_id,
            run_id=self.run_id,
            generation=self.generation,
            fetched_at=self.started,
            cities=sorted((record.city for record in self._records), key=lambda city: city.city_id),
            rejects=await self._write_rejects(),
        )
        async with self._save_lock:  # no progress write crosses the commit
            self._committing = True
            manifest = await self.run.commit(manifest)
        log.info(
            "manifest.committed",
            run_id=self.run_id,
            generation=self.generation,
            cities=len(manifest.cities),
        )
        return manifest

    async def _write_rejects(self) -> RejectsObject | None:
        bad = [bad for record in self._records for bad in record.kept_bad]
        total = sum(record.bad_records for record in self._records)
        if not total:
            return None
        codec, settings = self.h.settings.object_codec, self.h.settings
        key = self.h.layout.rejects_object(
            self.day, self.generation, self.job_id, self.run_id, codec=codec
        )
        body = encode_rejects(bad, codec, settings.object_level)
        await self.h.store.put(key, body, content_type=CONTENT_TYPES[codec])
        return RejectsObject(key=key, records=total, codec=codec)

    async def _interrupted(self, reason: str) -> None:
        """Cancelled (shutdown, lost broker or channel): back to the queue as it is."""
        if self.run.committed:
            # Interrupted after the commit: the date is this run's; the redelivery will
            # find it committed and finish the job's state and the sweep.
            log.warning("job.interrupted_after_commit", run_id=self.run_id, reason=reason)
            return
        log.warning("job.interrupted", run_id=self.run_id, reason=reason)
        await self._release(reason)

    async def _failed(
        self, error: JobFailedError, last_delivery: bool, retry_after: float | None
    ) -> None:
        """Record the failure; keep the complete cities unless it is the job's last attempt."""
        final = last_delivery or not error.retryable
        self.h.metrics.jobs.labels("failed" if final else "retried").inc()
        log.warning("job.attempt_failed", run_id=self.run_id, reason=error.reason, final=final)
        if self.run.committed:
            return
        if final:
            try:
                await self.run.give_up(error.reason)
            except FencedError:
                log.warning("run.fenced", run_id=self.run_id, during="give-up")
            # Any other error goes up: the worker retries the message and its next
            # delivery, over the limit, ends the job with a saved reason.
        else:
            # When the next delivery comes, counted from now (the attempt took its time).
            next_attempt_at = None
            if retry_after is not None:
                next_attempt_at = utc_now() + timedelta(seconds=retry_after)
            await self._release(error.reason, next_attempt_at)

    async def _release(self, reason: str, next_attempt_at: datetime | None = None) -> None:
        """Back to ``queued`` with the reason, for the next delivery (best effort, fenced).

        Bounded: S3 may be what failed; then the state stays as it was and the next
        delivery takes over once its heartbeat is stale.
        """
        try:
            bound = max(_RELEASE_SECONDS, 2 * self.h.settings.heartbeat_seconds)
            async with asyncio.timeout(bound), self._save_lock:
                await self.run.release(reason, self.state, next_attempt_at=next_attempt_at)
        except FencedError:
            log.warning("run.fenced", run_id=self.run_id, during="release")
        except Exception as error:  # noqa: BLE001 - must not hide the job's own outcome
            log.warning("job.save_failed", run_id=self.run_id, error=repr(error))
