"""The job message: what the API publishes and the consumers take, versioned JSON.

It carries ids, never data: the job's state and the date's records live in S3.
"""

import re
from datetime import date
from typing import Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTENT_TYPE: Final = "application/json"
MESSAGE_TYPE: Final = "bus-stats.job.v1"
_JOB_ID: Final = re.compile(r"^[0-9a-f]{32}$")


class JobMessage(BaseModel):
    """Version 1: gather every city's data for ``date`` into S3 as job ``job_id``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    date: date
    force: bool = False

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class UndecodableMessageError(ValueError):
    """A message body that is not a job message this version understands."""


class NewerMessageError(UndecodableMessageError):
    """A job message of a newer version: its job is ended with that reason, not looped on.

    ``job_id`` and ``date`` are read from the newer message when they have the meaning
    they have in version 1 (ids never change meaning); otherwise ``None``.
    """

    def __init__(self, version: int, job_id: str | None, day: date | None) -> None:
        super().__init__(f"a {MESSAGE_TYPE} message of newer version {version}")
        self.job_id = job_id
        self.date = day


def decode_job(body: bytes) -> JobMessage:
    """Strictly: the version must be stated and every field have its JSON type."""
    try:
        stated = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UndecodableMessageError(f"not a {MESSAGE_TYPE} message: not JSON") from None
    if not isinstance(stated, dict) or type(stated.get("version")) is not int:
        raise UndecodableMessageError(f"not a {MESSAGE_TYPE} message: no integer version")
    if stated["version"] > 1:
        job_id, day = stated.get("job_id"), stated.get("date")
        valid_id = isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None
        try:
            parsed = date.fromisoformat(day) if isinstance(day, str) else None
        except ValueError:
            parsed = None
        raise NewerMessageError(stated["version"], job_id if valid_id else None, parsed)
    try:
        return JobMessage.model_validate_json(body, strict=True)
    except ValidationError as error:
        raise UndecodableMessageError(
            f"not a {MESSAGE_TYPE} message: {error.error_count()} errors"
        ) from None
