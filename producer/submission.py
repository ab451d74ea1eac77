"""Turning ``POST /process-request`` into a queued job, without duplicate work."""

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Protocol

from common.lifecycle import Lifecycle
from common.logs import get_logger
from common.messages import JobMessage
from common.models import ACTIVE_STATUSES, JobState, JobStatus

log = get_logger(__name__)
_REUSED_STATUSES: frozenset[JobStatus] = ACTIVE_STATUSES | {"succeeded"}


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
    lifecycle: Lifecycle,
    publisher: Publisher,
    day: date,
    *,
    force: bool,
    stale_after: timedelta = timedelta(seconds=60),
    partial: bool = False,
) -> Submission:
    """The date's job: the existing one when it is queued, running or done, unless forced.

    ``force`` always makes a new job (it re-fetches a done date). A running job whose
    heartbeat is older than ``stale_after`` is replaced too.

    A new job claims the date (:meth:`Lifecycle.claim`), then is published; the request
    answers 202 only once the broker confirmed the message. A claim supersedes lazily: a
    running older job goes on until the new one starts, so if the publish fails the new
    claim is withdrawn (the one it replaced restored) and the new job ends ``failed``:
    the request answers 503 having changed nothing else. Once published, a replaced job
    that never started is ended (:meth:`Lifecycle.retire`). A queued job that never
    started and has waited longer than ``stale_after`` (its message may never have been
    confirmed: an API that died between claiming and publishing) is published again on a
    plain request; a second copy of a message is harmless (the consumer defers or drops it).

    Callers shield this from cancellation: a client that disconnects must not leave a
    claim half made.
    """

    def reuse(job: JobState, age: timedelta | None) -> bool:
        return not force and job.status in _REUSED_STATUSES and not is_stuck(job, age, stale_after)

    claimed = await lifecycle.claim(day, force=force, reuse=reuse, partial=partial)
    job, age = claimed.job, claimed.age
    message = JobMessage(job_id=job.job_id, date=day, force=job.force)
    if not claimed.created:
        if job.status == "queued" and job.attempts == 0 and age is not None and age > stale_after:
            try:
                await publisher.publish(message)
            except Exception as error:  # noqa: BLE001 - the job is answered as it is; next POST retries
                log.warning("job.republish_failed", job_id=job.job_id, error=repr(error))
            else:
                log.info("job.republished", job_id=job.job_id, date=day.isoformat())
        return Submission(job=job, created=False)
    try:
        await publisher.publish(message)
    except BaseException:
        # Not queued: undo this claim (and only it); the date is as it was.
        await lifecycle.withdraw(claimed, "the broker did not confirm the job: try again")
        raise
    log.info("job.published", job_id=job.job_id, date=day.isoformat(), force=force)
    try:
        await lifecycle.retire(claimed)
    except Exception as error:  # noqa: BLE001 - the new job stands; a delivery of the old ends it
        log.warning("job.retire_failed", job_id=job.job_id, error=repr(error))
    return Submission(job=job, created=True)
