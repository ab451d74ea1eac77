"""The job message: what the API publishes and the consumers take, versioned JSON.

It carries ids, never data: the job's state and the date's records live in S3.
"""

from datetime import date
from typing import Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTENT_TYPE: Final = "application/json"
MESSAGE_TYPE: Final = "bus-stats.job.v1"


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


def decode_job(body: bytes) -> JobMessage:
    """Strictly: the version must be stated and every field have its JSON type."""
    try:
        stated = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UndecodableMessageError(f"not a {MESSAGE_TYPE} message: not JSON") from None
    if not isinstance(stated, dict) or type(stated.get("version")) is not int:
        raise UndecodableMessageError(f"not a {MESSAGE_TYPE} message: no integer version")
    try:
        return JobMessage.model_validate_json(body, strict=True)
    except ValidationError as error:
        raise UndecodableMessageError(
            f"not a {MESSAGE_TYPE} message: {error.error_count()} errors"
        ) from None
