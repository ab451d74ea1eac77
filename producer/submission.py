"""Turning ``POST /process-request`` into a queued job, without duplicate work."""

import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from common.jobs import JobStore
from common.logs import get_logger
from common.messages import JobMessage
from common.models import ACTIVE_STATUSES, JobState, JobStatus, utc_now

log = get_logger(__name__)
_REUSED_STATUSES: frozenset[JobStatus] = ACTIVE_STATUSES | {"succeeded"}
_POINTER_RACES = 5  # how often to re-read after losing the race for the date's pointer


class Publisher(Protocol):
    async def publish(self, job: JobMessage) -> None: ...


@dataclass(frozen=True)
class Submission:
    job: JobState
    created: bool


def is_stuck(job: JobState, heartbeat_age: timedelta | None, stale_after: timedelta) -> bool:
    """A running job whose heartbeat stopped: its consumer died or hangs.

    ``heartbeat_age`` is how long ago the job's state was last written, measured on S3's
    clock alone (its answer's ``Date`` minus the object's ``LastModified``): the clocks of
    the consumer and of this process play no part. Where S3 does not say, the job is not
    taken for stuck (``force`` still frees it). Either way a new job is always safe: which
    data wins is decided by the claim's generation.
    """
    return job.status == "running" and heartbeat_age is not None and heartbeat_age > stale_after


async def submit(
    jobs: JobStore,
    publisher: Publisher,
    day: date,
    *,
    force: bool,
    stale_after: timedelta = timedelta(seconds=60),
) -> Submission:
    """The date's job: the existing one when it is queued, running or done, unless forced.

    ``force`` always makes a new job: it re-fetches a done date, and it is also the way
    out for a job whose message was lost (the API died between claiming and publishing).
    A running job whose heartbeat is older than ``stale_after`` is replaced too.

    A new job takes the date's next generation, is written as ``queued``, made the date's
    newest claim with a compare-and-swap (so two concurrent requests create one job), then
    published; publishing raises ``PublishError`` when the broker does not confirm, and
    the job is marked failed. A running job of an older claim notices the new claim
    within a heartbeat and stands down.
    """
    for _ in range(_POINTER_RACES):
        pointer, etag = await jobs.claim_of(day)
        current, age = (None, None) if pointer is None else await jobs.get_with_age(pointer.job_id)
        if (
            current is not None
            and not force
            and current.status in _REUSED_STATUSES
            and not is_stuck(current, age, stale_after)
        ):
            return Submission(job=current, created=False)
        candidate = JobState.queued(uuid.uuid4().hex, day, force=force)
        claimed = await jobs.try_claim(candidate, pointer, etag)
        if claimed is not None:
            job = claimed
            break
        log.info("job.raced", date=day.isoformat(), job_id=candidate.job_id)
        await jobs.discard(candidate)  # nothing points to it: no state left behind
    else:
        raise RuntimeError(f"could not claim date {day} after {_POINTER_RACES} tries")
    try:
        await publisher.publish(JobMessage(job_id=job.job_id, date=day, force=force))
    except BaseException:
        failed = job.model_copy(
            update={
                "status": "failed",
                "error": "broker did not confirm the job",
                "updated_at": utc_now(),
            }
        )
        await jobs.save(failed)
        raise
    log.info("job.published", job_id=job.job_id, date=day.isoformat(), force=force)
    return Submission(job=job, created=True)
