"""``POST /process-request`` and ``GET /jobs/<id>``."""

import hmac
from datetime import date, datetime, timedelta

from pydantic import BaseModel, Field
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_response, security_scheme

from common.jobs import JobStore
from common.models import JobState, JobStatus
from producer.http import ApiError, ErrorBody, json_response, parse_day, parse_flag
from producer.publisher import PublishError
from producer.services import get_services
from producer.submission import submit

blueprint = Blueprint("jobs", __name__)


class ProcessRequestQuery(BaseModel):
    date: str
    force: bool = False


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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
"""The OpenAPI security requirement of the routes that check the token."""


def _check_token() -> None:
    """With ``BUSSTATS_API_TOKEN`` set, require ``Authorization: Bearer <token>``.

    The scheme is case-insensitive (RFC 9110); a 401 carries ``WWW-Authenticate: Bearer``
    (added by the app's error handler to every 401).
    """
    token = get_services().settings.api_token
    if token is None or not token.get_secret_value():
        return
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise ApiError(401, "a valid 'Authorization: Bearer <token>' header is required")


@blueprint.post("/process-request")
@security_scheme(BEARER)
@document_querystring(ProcessRequestQuery)
@document_response(JobAccepted, 202)
@document_response(JobAccepted, 200)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 401)
@document_response(ErrorBody, 503)
async def process_request() -> Response:
    """Queue the gathering of every city's data for a date (or return the date's job)."""
    _check_token()
    day = parse_day(request.args.get("date"), "date")
    force = parse_flag(request.args.get("force"), "force")
    services = get_services()
    jobs = JobStore(services.store, services.layout)
    try:
        submission = await submit(
            jobs,
            services.publisher,
            day,
            force=force,
            stale_after=timedelta(seconds=services.settings.stale_job_seconds),
        )
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
    services = get_services()
    job: JobState | None = await JobStore(services.store, services.layout).get(job_id)
    if job is None:
        raise ApiError(404, f"no job with id {job_id[:40]!r}")
    return json_response(JobView.model_validate(job.model_dump()))
