"""The state machine of a job and of its date: each transition, who takes it, and the one
conditional write that makes it atomic. Read this module to review the protocol.

A date has one mutable arbiter, its :class:`~common.models.DateState`; a job has its
state. Everything else (city objects, completion records, rejects) is written once under
a key naming its generation, job and run, and is only ever read or deleted.

Date state (``claim``, ``run`` lease, ``committed``), every change one compare-and-swap:

========================  ====================  ================================================
transition                taken by              condition (checked on the version it replaces)
========================  ====================  ================================================
claim J at g              API, replay, a        g = the highest generation the date has seen + 1
                          hand-published job
take the lease (run R)    a consumer's delivery  claim is J and not ended; J not final
commit R                  the run R             run is R (nothing moved since R took the lease)
                                                and committed generation < g; clears the lease
end J (give up)           a run R of J, the     committed is not J; with a lease, run is R;
                          last delivery, the    sets claim.ended if J is the claim, clears a
                          API (publish failed)  lease of J
========================  ====================  ================================================

Job state: ``queued`` -> ``running`` (a run took the lease) -> ``queued`` (a retryable
failure; the next delivery resumes) ... -> ``succeeded`` | ``failed``. The last two are
final: every job-state write is conditional on the version its writer read or wrote last,
and no writer replaces a final state. A run writes only over the state it wrote itself
(its ETag is the run's second fencing token): a ``412`` means another run took over or
the job ended, and the run stops at once (:class:`FencedError`), writing and deleting
nothing more.

Why no interleaving undoes a decided date:
- A commit is a CAS on the date state whose precondition is "the lease is still mine".
  Every other transition (a new run of any job, a give-up) changes the date state, so a
  run paused for any time between its check and its write finds the ETag changed and
  re-reads: it can no longer commit. The check and the act are one write.
- A committed version is replaced only by a commit of a higher generation, and a claim
  always takes a generation above everything the date has seen (claim, lease, committed,
  and the data keys when the state had to be rebuilt): dates never go back.
- A job's objects are deleted only after its date state says it can never commit again
  (not the claim or an ended one, and not the lease holder): :meth:`Lifecycle.end` first
  writes that, then deletes. The commit's sweep deletes only generations at or below the
  committed one, which can never commit again either.
- A newer claim supersedes lazily: an older run is fenced only when the newer job takes
  the lease. A request that is refused (the broker did not confirm its message) ends its
  own claim and has changed nothing else; the older run commits as if it never happened.
- Lost answers and ``409`` conflicts are resolved by reading back
  (:func:`common.jobs.put_conditionally`).
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

from common.jobs import DateLedger, JobStore
from common.layout import Layout
from common.logs import get_logger
from common.models import Claim, DateState, JobState, JobStatus, Manifest, RunLease, utc_now
from common.storage import ObjectStore, WriteConflictError

log = get_logger(__name__)
FINAL: Final[frozenset[JobStatus]] = frozenset({"succeeded", "failed"})
_RACES: Final = 8  # re-reads after losing a compare-and-swap, before giving up for now


class FencedError(Exception):
    """The run lost its lease or its job state: another run or an ending took over."""


def superseded_reason(by_job_id: str | None) -> str:
    if by_job_id is None:
        return "superseded: the date was claimed by a newer request"
    return f"superseded by job {by_job_id}, a newer request for this date"


@dataclass(frozen=True)
class Claimed:
    """What :meth:`Lifecycle.claim` found or made: the date's job, and what it replaced.

    ``age``: for a reused job, how long ago its state was written (S3's clock).
    ``previous``: for a new claim, the claim it replaced (to retire or to restore).
    """

    job: JobState
    created: bool
    age: timedelta | None = None
    previous: Claim | None = None


@dataclass(frozen=True)
class Committed:
    """The job's run already committed the date (a redelivery after the commit)."""

    manifest: Manifest
    job: JobState | None


@dataclass(frozen=True)
class Ended:
    """The job is ``succeeded`` or ``failed``: nothing more to do."""

    job: JobState | None


@dataclass(frozen=True)
class Duplicate:
    """A second copy of a job's message while a live run works on it: dropped."""

    job: JobState


@dataclass(frozen=True)
class Superseded:
    """A newer claim took the date: the job ended ``failed`` and its objects are gone."""

    job: JobState | None
    by_job_id: str | None


class Lifecycle:
    """Every transition of jobs and dates, over one bucket."""

    def __init__(self, store: ObjectStore, layout: Layout, *, stale_after: timedelta) -> None:
        self.store = store
        self.layout = layout
        self.dates = DateLedger(store, layout)
        self.jobs = JobStore(store, layout)
        self.stale_after = stale_after

    # -- claims ---------------------------------------------------------------------------

    async def claim(
        self,
        day: date,
        *,
        force: bool,
        reuse: Callable[[JobState, timedelta | None], bool],
        partial: bool = False,
    ) -> Claimed:
        """The date's job: the claim's, if ``reuse`` says so, else a new claim.

        A new job is written ``queued`` first (nothing points to it yet), then made the
        claim under the next generation by a compare-and-swap of the date state; a lost
        race deletes the new state and looks again. Nothing else changes yet: the claim it
        replaced is retired (:meth:`retire`) once the new job's message is confirmed, or
        restored (:meth:`withdraw`) if it never is.
        """
        for _ in range(_RACES):
            state, etag = await self.dates.read(day)
            if state.claim is not None and not state.claim.ended:
                # A given-up claim is never reused, whatever its job's state still says
                # (the process that gave it up may have died before writing that).
                current, _, age = await self.jobs.read(state.claim.job_id)
                if current is not None and reuse(current, age):
                    return Claimed(current, created=False, age=age)
            job = JobState.queued(
                uuid.uuid4().hex, day, force=force, generation=state.top_generation + 1
            )
            if partial:
                job = job.model_copy(update={"partial": True})
            await self.jobs.create(job)
            if not await self._make_claim(job, state, etag):
                continue
            return Claimed(job, created=True, previous=state.claim)
        raise WriteConflictError(f"date {day}: claim")

    async def _make_claim(self, job: JobState, state: DateState, etag: str | None) -> bool:
        """Make ``job`` (its state just created) the claim of ``state``'s date, by CAS.

        ``False``: another claim came first, and the job ends as having lost the race.
        """
        claim = Claim(job_id=job.job_id, generation=job.generation)
        try:
            await self.dates.swap(state.model_copy(update={"claim": claim}), etag)
        except WriteConflictError:
            log.info("job.raced", date=job.date.isoformat(), job_id=job.job_id)
            await self._lost_race(job)
            return False
        try:
            await self.jobs.index(job)
        except Exception as error:  # noqa: BLE001 - the index only lists jobs; the claim stands
            log.warning("job.index_failed", job_id=job.job_id, error=repr(error))
        log.info(
            "job.claimed", job_id=job.job_id, date=job.date.isoformat(), generation=job.generation
        )
        return True

    async def latest(self, day: date) -> JobState | None:
        """The job the date's claim names (its newest request), if any."""
        state, _ = await self.dates.read(day)
        return None if state.claim is None else await self.jobs.get(state.claim.job_id)

    async def retire(self, claimed: Claimed) -> None:
        """After the new job's message is confirmed: end the claim it replaced, if idle.

        A replaced job that holds no lease can never run again (only the claim's job may
        take the lease): it ends ``failed``, superseded, so it never stays ``queued``
        without a message. One that holds the lease runs on until the new job takes it.
        """
        previous = claimed.previous
        if previous is None or previous.ended or previous.job_id == claimed.job.job_id:
            return
        state, _ = await self.dates.read(claimed.job.date)
        if state.run is not None and state.run.job_id == previous.job_id:
            return
        job = await self.jobs.get(previous.job_id)
        if job is None or job.status in FINAL:
            return
        await self._end_quietly(previous.job_id, claimed.job.date, superseded_by=claimed.job.job_id)

    async def withdraw(self, claimed: Claimed, reason: str) -> JobState | None:
        """The new job's message was never confirmed: undo its claim, end it, change nothing else.

        The claim it replaced is restored when that job holds the lease (it runs, or waits
        between two deliveries): it goes on as if the request never came; the withdrawn
        generation stays used (the date's floor keeps it). A replaced job that holds no
        lease is not brought back: a sweep that read the date meanwhile took it for dead,
        and it must stay so (its next delivery ends it; a plain request makes a new job).
        If the new job already took the lease (its message did arrive after all), it runs
        and the date gets fresh data.
        """
        job = claimed.job
        too_late = False

        def change(state: DateState) -> dict[str, Any] | None:
            nonlocal too_late
            if state.run is not None and state.run.job_id == job.job_id:
                too_late = True
                return None
            if state.claim is None or state.claim.job_id != job.job_id:
                return None
            previous = claimed.previous
            if (
                previous is not None
                and state.run is not None
                and state.run.job_id == previous.job_id
            ):
                claim: Claim = previous
            else:
                claim = state.claim.model_copy(update={"ended": True})
            return {"claim": claim, "floor": max(state.floor, job.generation)}

        await self._change_date(job.date, change, "withdraw")
        if too_late:
            log.warning("job.withdraw_too_late", job_id=job.job_id)
            return None
        now = utc_now()
        return await self._final(
            job.job_id, {"status": "failed", "error": reason, "finished_at": now, "updated_at": now}
        )

    # -- runs -----------------------------------------------------------------------------

    async def start(  # noqa: PLR0911 - one return per outcome of a delivery
        self, job_id: str, day: date, *, force: bool = False, redelivered: bool = True
    ) -> "Run | Committed | Ended | Duplicate | Superseded":
        """What a delivery of job ``job_id`` does: run it (taking the lease), or not.

        ``redelivered``: the broker gave this delivery back (a consumer died, paused or
        lost its link), as opposed to a second copy of the message (a publish repeated
        after a lost confirm). A copy is dropped while the job runs under a live run (its
        heartbeat younger than ``stale_after`` on S3's clock); a redelivery takes over.
        """
        for _ in range(_RACES):
            state, etag = await self.dates.read(day)
            if state.committed is not None and state.committed.job_id == job_id:
                return Committed(state.committed, await self.finish(job_id, state.committed))
            job, job_etag, age = await self.jobs.read(job_id)
            if job is None:
                if not await self._claim_for_message(
                    job_id, day, force=force, state=state, etag=etag
                ):
                    return Superseded(None, state.claim.job_id if state.claim else None)
                continue
            if job.status in FINAL:
                return Ended(job)
            if (
                state.run is not None
                and state.run.job_id == job_id
                and state.run.run_id == job.run_id
                and job.status == "running"
                and not redelivered
                and age is not None
                and age < self.stale_after
            ):
                return Duplicate(job)
            claim = state.claim
            if claim is None or claim.job_id != job_id:
                by = None if claim is None else claim.job_id
                ended = await self.end(job_id, day, superseded_reason(by), superseded_by=by)
                return Superseded(ended, by)
            if claim.ended:
                return Ended(await self.end(job_id, day, job.error or "the job was given up"))
            lease = RunLease(job_id=job_id, generation=claim.generation, run_id=uuid.uuid4().hex)
            try:
                _, _ = await self.dates.swap(state.model_copy(update={"run": lease}), etag)
            except WriteConflictError:
                continue
            previous = state.run
            if previous is not None and previous.job_id != job_id:
                # That run (an older claim's, running on) can never commit now: end it.
                await self._end_quietly(previous.job_id, day, superseded_by=job_id)
            assert job_etag is not None  # noqa: S101 - read with the job
            return await self._running(lease, job, job_etag)
        raise WriteConflictError(f"date {day}: lease")

    async def _running(self, lease: RunLease, job: JobState, etag: str) -> "Run":
        """Mark the job ``running`` under the lease just taken (the run's first write)."""
        for _ in range(_RACES):
            now = utc_now()
            running = job.model_copy(
                update={
                    "status": "running",
                    "run_id": lease.run_id,
                    "attempts": job.attempts + 1,
                    "started_at": now,
                    "updated_at": now,
                    "error": None,
                    "cities_total": None,
                    "cities_done": 0,
                    "records": 0,
                    "bytes": 0,
                    "bad_records": 0,
                    "retries": 0,
                }
                | _cleared_retry_fields(job)
            )
            try:
                new_etag = await self.jobs.replace(running, etag)
            except WriteConflictError:
                # A run this lease just fenced wrote meanwhile: its next write fails.
                fresh, fresh_etag, _ = await self.jobs.read(job.job_id)
                if fresh is None or fresh.status in FINAL or fresh_etag is None:
                    raise FencedError(f"job {job.job_id} ended while starting") from None
                job, etag = fresh, fresh_etag
                continue
            return Run(self, lease, running, new_etag)
        raise FencedError(f"job {job.job_id}: its state kept changing")

    async def _claim_for_message(
        self, job_id: str, day: date, *, force: bool, state: DateState, etag: str | None
    ) -> bool:
        """A message published by hand (no state): claim the date for it, as the API would.

        Only when no live claim holds the date: otherwise that claim is newer.
        """
        if state.claim is not None and not state.claim.ended:
            held = state.committed is not None and state.committed.job_id == state.claim.job_id
            if not held:
                return False
        job = JobState.queued(job_id, day, force=force, generation=state.top_generation + 1)
        try:
            await self.jobs.create(job)
        except WriteConflictError:
            return True  # created meanwhile: look again
        await self._make_claim(job, state, etag)
        return True

    # -- endings --------------------------------------------------------------------------

    async def end(
        self,
        job_id: str,
        day: date,
        reason: str,
        *,
        superseded_by: str | None = None,
        lease: RunLease | None = None,
        extra: dict[str, Any] | None = None,
    ) -> JobState | None:
        """End the job ``failed`` with ``reason`` and delete everything it wrote.

        First the date state stops it for good (its claim ended, its lease cleared: no run
        of it can start or commit), then its state says ``failed``, then its objects go.
        With ``lease`` (a run ending itself) only while that lease holds, else
        :class:`FencedError`. A job the date's committed version names succeeded after all
        (a commit whose answer was lost): then nothing of it is deleted.
        """
        committed: Manifest | None = None

        def change(state: DateState) -> dict[str, Any] | None:
            nonlocal committed
            if state.committed is not None and state.committed.job_id == job_id:
                committed = state.committed
                return None
            if lease is not None and state.run != lease:
                raise FencedError(f"run {lease.run_id} lost its lease")
            update: dict[str, Any] = {}
            if state.claim is not None and state.claim.job_id == job_id and not state.claim.ended:
                update["claim"] = state.claim.model_copy(update={"ended": True})
            if state.run is not None and state.run.job_id == job_id:
                update["run"] = None
            return update or None

        await self._change_date(day, change, "end")
        if committed is not None:
            return await self.finish(job_id, committed)
        now = utc_now()
        ended = await self._final(
            job_id,
            {
                "status": "failed",
                "error": reason,
                "superseded_by": superseded_by,
                "finished_at": now,
                "updated_at": now,
            }
            | (extra or {}),
        )
        if ended is not None and ended.status == "failed":
            await self.delete_job_data(day, ended.generation, job_id)
        return ended

    async def fail_only_state(self, job_id: str, reason: str) -> JobState | None:
        """End the job's state ``failed`` without touching its date or objects.

        For a date state of a newer format, which this version must not rewrite: the job
        says why it stopped instead of its message looping until dead-lettered.
        """
        now = utc_now()
        update = {"status": "failed", "error": reason, "finished_at": now, "updated_at": now}
        return await self._final(job_id, update)

    async def _change_date(
        self, day: date, change: Callable[[DateState], dict[str, Any] | None], what: str
    ) -> None:
        """Apply ``change`` (fields to update, or ``None``: nothing to write) to the date's
        state by compare-and-swap, deciding again on a fresh read after each lost race."""
        for _ in range(_RACES):
            state, etag = await self.dates.read(day)
            update = change(state)
            if update is None:
                return
            try:
                await self.dates.swap(state.model_copy(update=update), etag)
            except WriteConflictError:
                continue
            return
        raise WriteConflictError(f"date {day}: {what}")

    async def _lost_race(self, job: JobState) -> None:
        """A new job whose claim lost the race: ``failed``, never deleted.

        Its claim may have taken effect after all (an answer lost, then another claim
        replaced it and ended it): a state is never deleted, and a final one never changes.
        """
        now = utc_now()
        reason = "another request claimed the date first"
        await self._final(
            job.job_id, {"status": "failed", "error": reason, "finished_at": now, "updated_at": now}
        )

    async def _end_quietly(self, job_id: str, day: date, *, superseded_by: str) -> None:
        try:
            await self.end(
                job_id, day, superseded_reason(superseded_by), superseded_by=superseded_by
            )
        except Exception as error:  # noqa: BLE001 - it can never commit; the final sweep cleans up
            log.warning("job.end_failed", ended_job_id=job_id, error=repr(error))

    async def finish(self, job_id: str, manifest: Manifest) -> JobState | None:
        """Mark the job that ``manifest`` names ``succeeded`` (it committed the date)."""
        now = utc_now()
        return await self._final(
            job_id,
            {
                "status": "succeeded",
                "error": None,
                "cities_total": len(manifest.cities),
                "cities_done": len(manifest.cities),
                "records": manifest.records,
                "bytes": sum(city.bytes for city in manifest.cities),
                "bad_records": 0 if manifest.rejects is None else manifest.rejects.records,
                "finished_at": now,
                "updated_at": now,
            },
        )

    async def _final(self, job_id: str, update: dict[str, Any]) -> JobState | None:
        """Write a final state over whatever non-final state the job has; never over a final one."""
        for _ in range(_RACES):
            job, etag, _ = await self.jobs.read(job_id)
            if job is None or etag is None:
                return None
            if job.status in FINAL:
                return job
            final = job.model_copy(update=update)
            try:
                await self.jobs.replace(final, etag)
            except WriteConflictError:
                continue
            return final
        raise WriteConflictError(f"job {job_id}: final state")

    async def delete_job_data(self, day: date, generation: int, job_id: str) -> int:
        """Everything one job wrote under the date; only for a job that can never commit."""
        prefix = self.layout.job_data(day, generation, job_id)
        keys = [item.key async for item in self.store.list_objects(prefix)]
        await self.store.delete(keys)
        for upload in await self.store.pending_uploads(prefix):
            await self.store.abort_upload(upload.key, upload.upload_id)
        return len(keys)

    # -- what may be deleted --------------------------------------------------------------

    @staticmethod
    def may_commit(state: DateState, job_id: str, generation: int) -> bool:
        """Whether any run of the job could still commit, by the date state alone."""
        if state.committed is not None and generation <= state.committed.generation:
            return False
        claim, run = state.claim, state.run
        holds_claim = claim is not None and claim.job_id == job_id and not claim.ended
        holds_lease = run is not None and run.job_id == job_id
        return holds_claim or holds_lease


def _cleared_retry_fields(job: JobState) -> dict[str, Any]:
    """Fields a new run resets, where the job has them (``next_attempt_at``)."""
    return {name: None for name in ("next_attempt_at",) if name in type(job).model_fields}


class Run:
    """One run of a job, holding the date's lease; every write it makes is fenced."""

    def __init__(self, lifecycle: Lifecycle, lease: RunLease, state: JobState, etag: str) -> None:
        self._lifecycle = lifecycle
        self.lease = lease
        self.state = state
        self._etag = etag
        self.committed = False

    @property
    def run_id(self) -> str:
        return self.lease.run_id

    async def save(self, state: JobState) -> None:
        """Write the job's state over the one this run wrote last, or stop (fenced).

        A write of this run that took effect but whose answer never came back (cancelled
        mid-PUT, a lost answer) left an ETag this run does not know: the stored state then
        still carries this run's id and is not final — only this run writes that — so
        its ETag is adopted and the write made again. Any other state means another run
        or an ending took over.
        """
        jobs = self._lifecycle.jobs
        for _ in range(2):
            try:
                self._etag = await jobs.replace(state, self._etag)
            except WriteConflictError:
                stored, etag, _ = await jobs.read(self.lease.job_id)
                if (
                    stored is None
                    or etag is None
                    or stored.run_id != self.run_id
                    or stored.status in FINAL
                    or etag == self._etag
                ):
                    raise FencedError(f"run {self.run_id}: its job state was taken over") from None
                self._etag = etag
                continue
            self.state = state
            return
        raise FencedError(f"run {self.run_id}: its job state keeps changing")

    async def check(self) -> DateState:
        """Raise :class:`FencedError` unless the date's lease is still this run's."""
        state, _ = await self._lifecycle.dates.read(self.state.date)
        if state.run != self.lease:
            raise FencedError(f"run {self.run_id} lost its lease")
        return state

    async def commit(self, manifest: Manifest) -> Manifest:
        """Make ``manifest`` the date's committed version, in one CAS on the date state."""
        dates = self._lifecycle.dates
        for _ in range(_RACES):
            state, etag = await dates.read(self.state.date)
            if state.committed is not None and state.committed.run_id == self.run_id:
                self.committed = True  # an earlier try took effect; its answer was lost
                return state.committed
            if state.run != self.lease:
                raise FencedError(f"run {self.run_id} lost its lease before committing")
            if state.committed is not None and state.committed.generation >= self.lease.generation:
                raise FencedError(f"date {self.state.date} holds a newer version")
            manifest = manifest.model_copy(update={"committed_at": utc_now()})
            try:
                await dates.swap(
                    state.model_copy(update={"committed": manifest, "run": None}), etag
                )
            except WriteConflictError:
                continue
            self.committed = True
            return manifest
        raise WriteConflictError(f"date {self.state.date}: commit")

    async def succeed(self, manifest: Manifest) -> JobState:
        """After the commit: the job's state says ``succeeded``."""
        done = await self._lifecycle.finish(self.lease.job_id, manifest)
        assert done is not None  # noqa: S101 - a running job has a state
        self.state = done
        return done

    async def release(self, reason: str, base: JobState | None = None, **extra: Any) -> None:
        """A retryable failure: back to ``queued`` for the next delivery, if still ours."""
        state = (base or self.state).model_copy(
            update={"status": "queued", "error": reason, "updated_at": utc_now()} | extra
        )
        await self.save(state)

    async def give_up(self, reason: str) -> JobState | None:
        """The job's last attempt failed: end it, only while this run holds the lease."""
        return await self._lifecycle.end(
            self.lease.job_id, self.state.date, reason, lease=self.lease
        )
