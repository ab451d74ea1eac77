"""Where everything lives in the bucket. Keys are built only from validated dates and ids.

::

    <prefix>jobs/<job_id>.json                                   job state
    <prefix>jobs-index/all/<inverted time>-<job_id>              every job, newest first
    <prefix>jobs-index/date=2024-01-01/<inverted time>-<job_id>  a date's jobs, newest first
    <prefix>dates/date=2024-01-01/latest-job.json                 the date's newest job
    <prefix>manifests/date=2024-01-01/manifest.json               the date's committed version
    <prefix>data/date=2024-01-01/gen=<g>/job=<job_id>/run=<run_id>/city=<id>.jsonl.zst  one city
    <prefix>data/date=2024-01-01/gen=<g>/job=<job_id>/run=<run_id>/city=<id>.json       its record
    <prefix>data/date=2024-01-01/gen=<g>/job=<job_id>/run=<run_id>/rejects.jsonl.zst    bad records
    <prefix>partials/date=2024-01-01/...   sums sidecars of earlier versions (swept)

Data objects live under the claim (``gen``, the date's generation) and job that made
them, so that ownership is read from the key: a run's objects can be deleted once a
manifest of the same or a later generation is committed, whatever any clock says. Dates
committed before generations existed keep their keys ``data/date=<d>/run=<run_id>/...``
(:func:`parse_data_key` reads them as generation ``None``).

A city object's and the rejects' suffix says their codec (:mod:`common.codec`):
``.jsonl.zst`` (zstd, the default), ``.jsonl.gz`` (gzip) or ``.jsonl`` (none, and every
object written before codecs). Every data object's name ends in ``.jsonl`` plus the
codec's suffix; a city's completion record, and nothing else, ends in ``.json``.

City and country names come from an outside server and never appear in a key.
"""

import re
from dataclasses import dataclass
from datetime import date
from typing import Final

from common.codec import SUFFIXES, Codec

_ID: Final = re.compile(r"^[0-9a-f]{32}$")
_DATA_KEY: Final = re.compile(
    r"date=(?P<date>\d{4}-\d{2}-\d{2})/"
    r"(?:gen=(?P<gen>\d+)/job=(?P<job>[0-9a-f]{32})/)?run=(?P<run>[0-9a-f]{32})/"
    r"(?P<name>[^/]+)"
)


@dataclass(frozen=True)
class DataKey:
    """What a data object's key says about who wrote it."""

    date: date
    generation: int | None  # None: written before generations existed
    job_id: str | None
    run_id: str
    name: str  # city=<id>.jsonl[.zst|.gz], city=<id>.json or rejects.jsonl[.zst|.gz]

    @property
    def is_record(self) -> bool:
        """A city's completion record (``city=<id>.json``), not a data object."""
        return self.name.endswith(".json")


def check_id(value: str, what: str) -> str:
    """A job or run id: 32 lowercase hex digits (a UUID4's hex), nothing else."""
    if not _ID.fullmatch(value):
        raise ValueError(f"{what} must be 32 hex digits, got {value[:40]!r}")
    return value


@dataclass(frozen=True)
class Layout:
    prefix: str = ""

    def job(self, job_id: str) -> str:
        return f"{self.prefix}jobs/{check_id(job_id, 'job id')}.json"

    def latest_job(self, day: date) -> str:
        return f"{self.prefix}dates/date={day.isoformat()}/latest-job.json"

    def manifest(self, day: date) -> str:
        return f"{self.prefix}manifests/date={day.isoformat()}/manifest.json"

    def job_index(self, day: date | None = None) -> str:
        """The folder listing jobs newest first: every job, or one date's (``jobs-index/``)."""
        return f"{self.prefix}jobs-index/" + ("all/" if day is None else f"date={day}/")

    @property
    def data_root(self) -> str:
        return f"{self.prefix}data/"

    def date_data(self, day: date) -> str:
        """The folder holding every run of a date (for cleanup)."""
        return f"{self.data_root}date={day.isoformat()}/"

    def job_data(self, day: date, generation: int, job_id: str) -> str:
        """The folder holding every run of one job of a date."""
        return f"{self.date_data(day)}gen={int(generation)}/job={check_id(job_id, 'job id')}/"

    def run_data(self, day: date, generation: int, job_id: str, run_id: str) -> str:
        return f"{self.job_data(day, generation, job_id)}run={check_id(run_id, 'run id')}/"

    def city_object(
        self, day: date, generation: int, job_id: str, run_id: str, city_id: int, *, codec: Codec
    ) -> str:
        """A city's records, the codec's suffix last (``city=3.jsonl.zst``)."""
        run = self.run_data(day, generation, job_id, run_id)
        return f"{run}city={int(city_id)}{SUFFIXES[codec]}"

    def city_record(
        self, day: date, generation: int, job_id: str, run_id: str, city_id: int
    ) -> str:
        """The small record written once a city's object is complete (for resuming)."""
        return f"{self.run_data(day, generation, job_id, run_id)}city={int(city_id)}.json"

    def rejects_object(
        self, day: date, generation: int, job_id: str, run_id: str, *, codec: Codec
    ) -> str:
        return f"{self.run_data(day, generation, job_id, run_id)}rejects{SUFFIXES[codec]}"

    def parse_data_key(self, key: str) -> DataKey | None:
        """Who wrote a data object, from its key; ``None`` for a key of no known form."""
        if not key.startswith(self.data_root):
            return None
        match = _DATA_KEY.fullmatch(key.removeprefix(self.data_root))
        if match is None:
            return None
        try:
            day = date.fromisoformat(match["date"])
        except ValueError:
            return None
        gen = match["gen"]
        return DataKey(
            date=day,
            generation=None if gen is None else int(gen),
            job_id=match["job"],
            run_id=match["run"],
            name=match["name"],
        )

    @property
    def partials_root(self) -> str:
        return f"{self.prefix}partials/"

    def partial_date(self, key: str) -> date | None:
        """The date of any key under ``partials/``."""
        match = re.match(r"date=(\d{4}-\d{2}-\d{2})/", key.removeprefix(self.partials_root))
        if match is None or not key.startswith(self.partials_root):
            return None
        try:
            return date.fromisoformat(match[1])
        except ValueError:
            return None

    def date_partials(self, day: date) -> str:
        """The folder holding every cached partial of a date (for cleanup)."""
        return f"{self.prefix}partials/date={day.isoformat()}/"
