"""``POST /process-request`` and ``GET /jobs/<id>``."""

import asyncio
from datetime import date, datetime, timedelta

from pydantic import BaseModel, Field
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_response

from common.jobs import NEWER_VERSION, JobStore, NewerVersionError
from common.lifecycle import Lifecycle
from common.models import JobState, JobStatus
from producer.http import ApiError, ErrorBody, json_response, parse_flag
from producer.params import check_names, requested_day
from producer.publisher import PublishError
from producer.services import get_services
from producer.submission import submit

blueprint = Blueprint("jobs", __name__)


class ProcessRequestQuery(BaseModel):
    date: str = Field(description="YYYY-MM-DD, before today (UTC); today needs allow_partial")
    force: bool = False
    allow_partial: bool = Field(
        False, description="accept today's date (still running): the job is marked partial"
    )


class JobAccepted(BaseModel):
    job_id: str
    date: date
    status: JobStatus
    status_url: str


class JobView(BaseModel):
    job_id: str
    date: date
    status: JobStatus
    cities_total: int | None
    cities_done: int
    records: int
    bytes: int
    bad_records: int
    retries: int
    attempts: int
    error: str | None
    force: bool
    generation: int = Field(
        description="the date's claim this job holds: a newer job of the date supersedes it"
    )
    superseded_by: str | None = Field(
        description="the newer job of the date that made this one stand down (then failed)"
    )
    next_attempt_at: datetime | None = Field(
        description="when a job waiting after a failed attempt is tried again (status queued)"
    )
    partial: bool = Field(description="requested while its date was still running: incomplete")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


@blueprint.post("/process-request")
@document_querystring(ProcessRequestQuery)
@document_response(JobAccepted, 202)
@document_response(JobAccepted, 200)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 401)
@document_response(ErrorBody, 409)
@document_response(ErrorBody, 503)
async def process_request() -> Response:
    """Queue the gathering of every city's data for a date (or return the date's job)."""
    check_names(("date", "force", "allow_partial"))
    force = parse_flag(request.args.get("force"), "force")
    allow_partial = parse_flag(request.args.get("allow_partial"), "allow_partial")
    requested = requested_day(request.args.get("date"), "date", allow_partial=allow_partial)
    day = requested.day
    services = get_services()
    stale_after = timedelta(seconds=services.settings.stale_job_seconds)
    lifecycle = Lifecycle(services.store, services.layout, stale_after=stale_after)
    try:
        # Shielded: a client that disconnects (Quart cancels the handler) must not leave
        # a claim half made; the submission completes or undoes itself either way.
        submission = await asyncio.shield(
            submit(
                lifecycle,
                services.publisher,
                day,
                force=force,
                stale_after=stale_after,
                partial=requested.partial,
            )
        )
    except NewerVersionError as error:
        raise ApiError(409, f"date {day}: {NEWER_VERSION}; upgrade this API") from error
    except PublishError as error:
        raise ApiError(503, f"the job could not be queued, try again: {error}") from error
    job = submission.job
    status_url = f"/jobs/{job.job_id}"
    body = JobAccepted(job_id=job.job_id, date=job.date, status=job.status, status_url=status_url)
    return json_response(body, 202 if submission.created else 200, {"Location": status_url})


@blueprint.get("/jobs/<job_id>")
@document_response(JobView, 200)
@document_response(ErrorBody, 404)
async def get_job(job_id: str) -> Response:
    """A job's status and progress."""
    check_names(())
    services = get_services()
    job: JobState | None = await JobStore(services.store, services.layout).get(job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id[:40]!r}")
    return json_response(JobView.model_validate(job.model_dump()))
