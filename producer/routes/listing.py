"""``GET /jobs`` (recent jobs, newest first, paginated) and ``GET /dates`` (each date's state).

Both read S3 only: the job index (``jobs-index/``), the jobs' states, the dates' claim
pointers and manifests, through :mod:`common.jobs`. Reads run a bounded number at a time.
"""

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_response

from common.days import days_between
from common.jobs import INDEX_ENTRY, DateLedger, JobStore, NewerVersionError, index_entry_job
from common.layout import Layout
from common.models import JobState, JobStatus, Manifest
from common.storage import ObjectStore
from producer.http import ApiError, ErrorBody, json_response, parse_day
from producer.limits import PAGE_TOO_LARGE, RefusedError
from producer.params import check_names, parse_range
from producer.routes.jobs import JobView
from producer.services import get_services

blueprint = Blueprint("listing", __name__)

T = TypeVar("T")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_SCAN = 500
"""Index entries one ``GET /jobs`` examines at most: a rare status answers a short page
with a cursor instead of reading every job ever made."""
READS_AT_ONCE = 16
DEFAULT_DAYS = 30
DateState = Literal["committed", "queued", "running", "failed", "missing"]
_STATUSES: dict[str, JobStatus] = {
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
}


class JobsQuery(BaseModel):
    status: JobStatus | None = Field(None, description="only jobs in this status (now)")
    date: str | None = Field(None, description="only the jobs of this date, YYYY-MM-DD")
    limit: int = Field(
        DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="jobs per page (default 20, at most 100)"
    )
    cursor: str | None = Field(None, description="the previous page's next_cursor")


class JobsPage(BaseModel):
    """Jobs newest first (by creation), filtered; follow ``next_cursor`` for more."""

    jobs: list[JobView]
    next_cursor: str | None = Field(
        description="pass as cursor for the next page; null when the listing is complete. "
        "A page may hold fewer than limit jobs (even none) and still have a next_cursor: "
        f"one request examines at most {MAX_SCAN} jobs."
    )


class DatesQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(
        None,
        alias="from",
        description="first date, YYYY-MM-DD; with 'to', or neither: then the 30 days "
        "ending at the newest date with committed data (or today, UTC, if none has)",
    )
    to: str | None = Field(
        None,
        description="last date, YYYY-MM-DD (inclusive); the range spans at most "
        "BUSSTATS_MAX_RANGE_DAYS days (default 366; 400 beyond)",
    )


class CommittedView(BaseModel):
    job_id: str = Field(description="the job whose data is committed")
    committed_at: datetime = Field(
        description="when that job's data was committed (for dates committed before this "
        "was recorded: when the job started fetching)"
    )
    records: int
    bytes: int = Field(description="the date's JSON lines, uncompressed")
    stored_bytes: int = Field(description="what the date's city objects take in the bucket")
    ratio: float = Field(description="bytes / stored_bytes: 1 for an uncompressed date")
    codecs: list[str] = Field(description="the codecs of the date's objects (zstd, gzip, none)")
    cities: int


class DateJobView(BaseModel):
    job_id: str
    status: JobStatus
    cities_total: int | None
    cities_done: int
    error: str | None = Field(description="why the job failed (when it did)")
    partial: bool = Field(
        False, description="requested while its date was still running: its data is incomplete"
    )
    next_attempt_at: datetime | None = Field(
        None, description="when a job waiting after a failed attempt is tried again"
    )
    updated_at: datetime


class DateView(BaseModel):
    date: date
    state: DateState = Field(
        description="queued or running: the date's newest job is at work; otherwise "
        "committed (has data), failed (no data, newest job failed) or missing"
    )
    committed: CommittedView | None = Field(description="the data readers see, if any")
    job: DateJobView | None = Field(description="the date's newest job, if any")


class DatesView(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    dates: list[DateView] = Field(description="every date of the range, in order")


async def bounded(calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the calls, at most ``READS_AT_ONCE`` at a time, answers in order."""
    slots = asyncio.Semaphore(READS_AT_ONCE)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with slots:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


def _parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    message = f"query parameter 'limit' must be a whole number from 1 to {MAX_LIMIT}"
    if not (raw.isascii() and raw.isdigit() and int(raw[:12]) >= 1):
        raise ApiError(400, message)
    if len(raw) > len(str(MAX_LIMIT)) or int(raw) > MAX_LIMIT:
        raise RefusedError(400, message, reason=PAGE_TOO_LARGE)
    return int(raw)


def _parse_status(raw: str | None) -> JobStatus | None:
    if raw is None or raw == "":
        return None
    if raw in _STATUSES:
        return _STATUSES[raw]
    allowed = ", ".join(_STATUSES)
    raise ApiError(400, f"query parameter 'status' must be one of {allowed}, got {raw[:40]!r}")


def _parse_cursor(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not INDEX_ENTRY.fullmatch(raw):
        raise ApiError(400, "query parameter 'cursor' must be a next_cursor given by GET /jobs")
    return raw


@blueprint.get("/jobs")
@document_querystring(JobsQuery)
@document_response(JobsPage, 200)
@document_response(ErrorBody, 400)
async def list_jobs() -> Response:
    """Recent jobs, newest first, optionally of one status or date; paginated."""
    check_names(("status", "date", "limit", "cursor"))
    status = _parse_status(request.args.get("status"))
    raw_day = request.args.get("date")
    day = None if raw_day is None or raw_day == "" else parse_day(raw_day, "date")
    limit = _parse_limit(request.args.get("limit"))
    cursor = _parse_cursor(request.args.get("cursor"))
    services = get_services()
    jobs = JobStore(services.store, services.layout)
    found: list[JobState] = []
    scanned = 0
    exhausted = False
    while len(found) < limit and scanned < MAX_SCAN:
        wanted = min(max(limit - len(found), 10), MAX_SCAN - scanned)
        entries = await jobs.indexed(day, cursor, wanted)
        states = await bounded(
            [functools.partial(jobs.get, index_entry_job(entry)) for entry in entries]
        )
        for entry, state in zip(entries, states, strict=True):
            scanned += 1
            cursor = entry
            if state is not None and (status is None or state.status == status):
                found.append(state)
                if len(found) == limit:
                    break
        if len(entries) < wanted:  # the index ends within this batch
            exhausted = not entries or cursor == entries[-1]
            break
    page = JobsPage(
        jobs=[JobView.model_validate(job.model_dump()) for job in found],
        next_cursor=None if exhausted else cursor,
    )
    return json_response(page)


def _parse_dates_range(max_days: int) -> tuple[date, date] | None:
    if not request.args.get("from") and not request.args.get("to"):
        return None
    return parse_range(max_days)


def _day_folder_root(key_of: Callable[[date], str]) -> str:
    """``<prefix>manifests/date=`` from the layout's key of one date (keys stay in Layout)."""
    sample = key_of(date(2000, 1, 1))
    return sample[: sample.index("date=2000-01-01") + len("date=")]


async def _dates_with(
    store: ObjectStore, key_of: Callable[[date], str], start: date, end: date
) -> set[date]:
    """The dates of ``start..end`` whose ``key_of(date)`` object exists (one listing)."""
    root = _day_folder_root(key_of)
    found: set[date] = set()
    after = f"{root}{(start - timedelta(days=1)).isoformat()}/~" if start > date.min else ""
    async for item in store.list_objects(root, start_after=after):
        try:
            day = date.fromisoformat(item.key.removeprefix(root)[:10])
        except ValueError:
            continue
        if day > end:
            break
        if item.key == key_of(day):
            found.add(day)
    return found


async def _newest_committed(store: ObjectStore, layout: Layout) -> date | None:
    """The newest date with a committed version (a date state may hold only a claim)."""
    ledger = DateLedger(store, layout)
    for day in sorted(await _dates_with(store, layout.manifest, date.min, date.max), reverse=True):
        try:
            state, _ = await ledger.read(day)
        except NewerVersionError:
            continue
        if state.committed is not None:
            return day
    return None


async def _default_range(store: ObjectStore, layout: Layout) -> tuple[date, date]:
    newest = await _newest_committed(store, layout)
    end = newest or datetime.now(UTC).date()
    return max(date.min, end - timedelta(days=DEFAULT_DAYS - 1)), end


def _date_view(day: date, manifest: Manifest | None, job: JobState | None) -> DateView:
    committed = None
    if manifest is not None:
        lines = sum(city.bytes for city in manifest.cities)
        stored = sum(city.size_stored for city in manifest.cities)
        committed = CommittedView(
            job_id=manifest.job_id,
            committed_at=manifest.committed_at or manifest.fetched_at,
            records=manifest.records,
            bytes=lines,
            stored_bytes=stored,
            ratio=round(lines / stored, 2) if stored else 1.0,
            codecs=sorted({city.codec for city in manifest.cities}),
            cities=len(manifest.cities),
        )
    state: DateState = "missing"
    if job is not None and job.status == "queued":
        state = "queued"
    elif job is not None and job.status == "running":
        state = "running"
    elif committed is not None:
        state = "committed"
    elif job is not None and job.status == "failed":
        state = "failed"
    job_view = None
    if job is not None:
        job_view = DateJobView.model_validate(job.model_dump())
    return DateView(date=day, state=state, committed=committed, job=job_view)


@blueprint.get("/dates")
@document_querystring(DatesQuery)
@document_response(DatesView, 200)
@document_response(ErrorBody, 400)
async def list_dates() -> Response:
    """Each date of a range: committed (which job, when, how much), at work, failed, missing."""
    check_names(("from", "to"))
    services = get_services()
    store, layout = services.store, services.layout
    chosen = _parse_dates_range(services.settings.max_range_days)
    start, end = chosen or await _default_range(store, layout)
    with_manifest, with_job = await asyncio.gather(
        _dates_with(store, layout.manifest, start, end),
        _dates_with(store, layout.latest_job, start, end),
    )
    days = days_between(start, end)
    ledger, jobs = DateLedger(store, layout), JobStore(store, layout)

    async def read(day: date) -> DateView:
        if day not in with_manifest and day not in with_job:
            return _date_view(day, None, None)
        try:
            dated, _ = await ledger.read(day)
        except NewerVersionError:
            return _date_view(day, None, None)
        claim = dated.claim
        job = None if claim is None else await jobs.get(claim.job_id)
        return _date_view(day, dated.committed, job)

    views = await bounded([functools.partial(read, day) for day in days])
    return json_response(
        DatesView(from_=start, to=end, dates=views).model_dump(mode="json", by_alias=True)
    )
