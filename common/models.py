"""What bus-stats writes to S3 besides records: job states and date manifests."""

from datetime import UTC, date, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.codec import Codec
from common.records import BadRecord

JobStatus = Literal["queued", "running", "succeeded", "failed"]
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({"queued", "running"})
Day = date  # the models' field named ``date`` hides the type inside their classes


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobState(BaseModel):
    """A job as ``GET /jobs/<id>`` shows it; written by the API, then by the consumer.

    Every write of a job state is conditional (:mod:`common.lifecycle`): ``succeeded``
    and ``failed`` are final, and a run writes only over the state it wrote last.
    """

    model_config = ConfigDict(frozen=True)

    version: int = Field(1, description="format version; a newer one is never overwritten")
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
    generation: int = Field(
        0, description="the date's claim this job holds; a newer claim supersedes it"
    )
    run_id: str | None = Field(None, description="the run (attempt) that wrote this state last")
    superseded_by: str | None = Field(
        None, description="the newer job of the same date that made this one stand down"
    )
    next_attempt_at: datetime | None = Field(
        None, description="when a job waiting after a failed attempt is tried again"
    )
    partial: bool = Field(
        False, description="the date was still running when requested: its data is incomplete"
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime

    @classmethod
    def queued(cls, job_id: str, day: "Day", *, force: bool, generation: int = 0) -> "JobState":
        """A new job, as it stands before any consumer took it."""
        now = utc_now()
        return cls(
            job_id=job_id,
            date=day,
            status="queued",
            force=force,
            generation=generation,
            created_at=now,
            updated_at=now,
        )


class Claim(BaseModel):
    """The date's newest job: what a plain request reuses, and what may start runs.

    ``ended``: the job was given up (its deliveries spent, a permanent error, or its
    message never confirmed); it never runs again.
    """

    model_config = ConfigDict(frozen=True)

    job_id: str
    generation: int
    ended: bool = False


class RunLease(BaseModel):
    """The one run of the date that may commit: the fencing token of :class:`DateState`."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    generation: int
    run_id: str


class LatestJob(BaseModel):
    """The date's claim: its newest job, so a repeated request finds it.

    ``generation`` grows by one with every new claim (a compare-and-swap on this object):
    it orders the runs of a date, never a clock. Pointers written before generations
    existed read as generation 0.
    """

    job_id: str
    generation: int = 0


class ObjectSums(BaseModel):
    """The figures the statistics need of one city object, computed while it is written.

    ``departures`` counts the stored records; ``delay_seconds`` is their delays' sum.
    """

    model_config = ConfigDict(frozen=True)

    departures: int
    passengers: int
    accident: bool
    delay_seconds: float


class CityObject(BaseModel):
    """One city's records within a committed date."""

    city_id: int
    name: str
    country: str
    key: str
    etag: str
    records: int
    bytes: int = Field(description="the object's lines, uncompressed")
    codec: Codec = Field("none", description="how the object is compressed (its key says too)")
    stored_bytes: int | None = Field(
        None, description="the object's size as stored; absent (uncompressed) before codecs"
    )
    sums: ObjectSums | None = Field(
        None, description="made at ingest; absent for dates committed before sums existed"
    )

    @property
    def size_stored(self) -> int:
        """The bytes stored: ``stored_bytes``, or ``bytes`` for an object from before codecs."""
        return self.bytes if self.stored_bytes is None else self.stored_bytes


class CityRecord(BaseModel):
    """Written beside a city's object once it is complete, so a redelivered job resumes.

    It says everything the manifest needs of the city, plus its rejected records.
    """

    version: Literal[1] = 1
    city: CityObject
    bad_records: int
    kept_bad: list[BadRecord]
    retries: int = 0


class RejectsObject(BaseModel):
    key: str
    records: int
    codec: Codec = Field("none", description="how the object is compressed (its key says too)")


class Manifest(BaseModel):
    """A date's committed version: written last, in one PUT, so a date appears whole."""

    version: Literal[1] = 1
    date: date
    job_id: str
    run_id: str
    generation: int = 0
    fetched_at: datetime
    committed_at: datetime | None = Field(None, description="when the commit was made")
    cities: list[CityObject]
    rejects: RejectsObject | None = None

    @property
    def records(self) -> int:
        return sum(city.records for city in self.cities)


DATE_STATE_VERSION: Final = 2


class DateState(BaseModel):
    """The one mutable object of a date (its arbiter), at ``manifests/date=D/manifest.json``.

    Every change of a date's lifecycle is one conditional write of this object
    (:mod:`common.lifecycle`): a new claim, a run taking the lease, a commit, a give-up.
    Manifests of version 1 (before the arbiter) are read as a state with only
    ``committed``; they are upgraded by the date's next write.
    """

    model_config = ConfigDict(frozen=True)

    version: int = DATE_STATE_VERSION
    date: date
    claim: Claim | None = None
    run: RunLease | None = None
    committed: Manifest | None = None
    floor: int = Field(
        0, description="the highest generation seen when this state was rebuilt or upgraded"
    )
    revision: str | None = Field(None, description="unique per write: tells a lost answer")

    @property
    def top_generation(self) -> int:
        """The highest generation the date has seen: a new claim takes the next."""
        return max(
            self.floor,
            self.claim.generation if self.claim else 0,
            self.run.generation if self.run else 0,
            self.committed.generation if self.committed else 0,
        )
