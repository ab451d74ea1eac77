"""What bus-stats writes to S3 besides records: job states and date manifests."""

from datetime import UTC, date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

JobStatus = Literal["queued", "running", "succeeded", "failed"]
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({"queued", "running"})
Day = date  # the models' field named ``date`` hides the type inside their classes


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobState(BaseModel):
    """A job as ``GET /jobs/<id>`` shows it; written by the API, then by the consumer."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    date: date
    status: JobStatus
    force: bool = False
    cities_total: int | None = None
    cities_done: int = 0
    records: int = 0
    bytes: int = 0
    bad_records: int = 0
    retries: int = 0
    attempts: int = 0
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @classmethod
    def queued(cls, job_id: str, day: "Day", *, force: bool) -> "JobState":
        """A new job, as it stands before any consumer took it."""
        now = utc_now()
        return cls(
            job_id=job_id, date=day, status="queued", force=force, created_at=now, updated_at=now
        )


class LatestJob(BaseModel):
    """Pointer from a date to its newest job, so a repeated request finds it."""

    job_id: str


class CityObject(BaseModel):
    """One city's records within a committed date."""

    city_id: int
    name: str
    country: str
    key: str
    etag: str
    records: int
    bytes: int


class RejectsObject(BaseModel):
    key: str
    records: int


class Manifest(BaseModel):
    """A date's committed version: written last, in one PUT, so a date appears whole."""

    version: Literal[1] = 1
    date: date
    job_id: str
    run_id: str
    fetched_at: datetime
    cities: list[CityObject]
    rejects: RejectsObject | None = None

    @property
    def records(self) -> int:
        return sum(city.records for city in self.cities)
