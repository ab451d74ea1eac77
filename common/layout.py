"""Where everything lives in the bucket. Keys are built only from validated dates and ids.

::

    <prefix>jobs/<job_id>.json                                   job state
    <prefix>dates/date=2024-01-01/latest-job.json                 the date's newest job
    <prefix>manifests/date=2024-01-01/manifest.json               the date's committed version
    <prefix>data/date=2024-01-01/run=<run_id>/city=<id>.jsonl     one city's records
    <prefix>data/date=2024-01-01/run=<run_id>/rejects.jsonl       records that failed validation
    <prefix>partials/date=2024-01-01/run=<run_id>/city=<id>.<etag>.json   cached partial sums
    <prefix>partials/date=2024-01-01/run=<run_id>/date.<manifest etag>.json   a date's sums

City and country names come from an outside server and never appear in a key.
"""

import re
from dataclasses import dataclass
from datetime import date
from typing import Final

_ID: Final = re.compile(r"^[0-9a-f]{32}$")


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

    @property
    def data_root(self) -> str:
        return f"{self.prefix}data/"

    def date_data(self, day: date) -> str:
        """The folder holding every run of a date (for cleanup)."""
        return f"{self.data_root}date={day.isoformat()}/"

    def run_data(self, day: date, run_id: str) -> str:
        return f"{self.date_data(day)}run={check_id(run_id, 'run id')}/"

    def city_object(self, day: date, run_id: str, city_id: int) -> str:
        return f"{self.run_data(day, run_id)}city={int(city_id)}.jsonl"

    def rejects_object(self, day: date, run_id: str) -> str:
        return f"{self.run_data(day, run_id)}rejects.jsonl"

    def date_partials(self, day: date) -> str:
        """The folder holding every cached partial of a date (for cleanup)."""
        return f"{self.prefix}partials/date={day.isoformat()}/"

    def date_summary(self, day: date, run_id: str, manifest_etag: str) -> str:
        """The cached sums of a whole committed date, tied to its manifest's ETag."""
        clean_etag = re.sub(r"[^0-9A-Za-z-]", "", manifest_etag)
        return f"{self.date_partials(day)}run={check_id(run_id, 'run id')}/date.{clean_etag}.json"

    def partial(self, data_key: str, etag: str) -> str:
        """The cached partial sums of one data object, tied to its ETag."""
        data_root = f"{self.prefix}data/"
        if not data_key.startswith(data_root) or not data_key.endswith(".jsonl"):
            raise ValueError(f"not a data object key: {data_key[:80]!r}")
        relative = data_key.removeprefix(data_root).removesuffix(".jsonl")
        clean_etag = re.sub(r"[^0-9A-Za-z-]", "", etag)
        return f"{self.prefix}partials/{relative}.{clean_etag}.json"
