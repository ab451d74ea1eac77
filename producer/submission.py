"""Turning ``POST /process-request`` into a queued job, without duplicate work."""

import uuid
from dataclasses import dataclass
from datetime import date
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


async def submit(jobs: JobStore, publisher: Publisher, day: date, *, force: bool) -> Submission:
    """The date's job: the existing one when it is queued, running or done, unless forced.

    ``force`` always makes a new job: it re-fetches a done date, and it is also the way
    out for a job whose message was lost (the API died between claiming and publishing).

    A new job is written as ``queued``, made the date's newest with a compare-and-swap
    (so two concurrent requests create one job), then published; publishing raises
    ``PublishError`` when the broker does not confirm, and the job is marked failed.
    """
    for _ in range(_POINTER_RACES):
        current, etag = await jobs.latest(day)
        if current is not None and not force and current.status in _REUSED_STATUSES:
            return Submission(job=current, created=False)
        job = JobState.queued(uuid.uuid4().hex, day, force=force)
        await jobs.save(job)
        if await jobs.point_to(job, etag):
            break
        log.info("job.raced", date=day.isoformat(), job_id=job.job_id)
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
