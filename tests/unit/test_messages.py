"""The job message: versioned JSON on the wire, anything else undecodable."""

from datetime import date

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from common.messages import (
    CONTENT_TYPE,
    MESSAGE_TYPE,
    JobMessage,
    NewerMessageError,
    UndecodableMessageError,
    decode_job,
)

JOB = "0123456789abcdef0123456789abcdef"


def test_wire_format_is_versioned_json() -> None:
    message = JobMessage(job_id=JOB, date=date(2024, 1, 1))
    assert message.encode() == (
        b'{"version":1,"job_id":"0123456789abcdef0123456789abcdef",'
        b'"date":"2024-01-01","force":false}'
    )
    assert CONTENT_TYPE == "application/json"
    assert MESSAGE_TYPE == "bus-stats.job.v1"


@pytest.mark.parametrize("force", [False, True])
def test_encode_decode_round_trip(force: bool) -> None:
    message = JobMessage(job_id=JOB, date=date(2024, 2, 29), force=force)
    decoded = decode_job(message.encode())
    assert decoded == message
    assert decoded.version == 1
    assert decoded.force is force
    assert decoded.date == date(2024, 2, 29)


@given(
    job_id=st.from_regex(r"\A[0-9a-f]{32}\Z"),
    day=st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
    force=st.booleans(),
)
def test_round_trip_any_message(job_id: str, day: date, force: bool) -> None:
    message = JobMessage(job_id=job_id, date=day, force=force)
    assert decode_job(message.encode()) == message


def test_decode_hand_written_body() -> None:
    body = b'{"version": 1, "job_id": "%s", "date": "2024-03-05", "force": true}' % JOB.encode()
    assert decode_job(body) == JobMessage(job_id=JOB, date=date(2024, 3, 5), force=True)


def valid(**changes: object) -> bytes:
    fields: dict[str, object] = {"version": 1, "job_id": JOB, "date": "2024-01-01", "force": False}
    fields.update(changes)
    return orjson.dumps({key: value for key, value in fields.items() if value is not ...})


@pytest.mark.parametrize(
    "body",
    [
        valid(version=0),
        valid(version="v1"),
        valid(version=None),
        valid(version=...),
        valid(version=True),
        valid(date=0),
        valid(job_id="../x"),
        valid(job_id="A" * 32),
        valid(extra="field"),
        valid(payload=[1, 2, 3]),
        valid(date="2024-02-30"),
        valid(date="not-a-date"),
        valid(date="01/02/2024"),
        valid(date=None),
        valid(date=...),
        valid(job_id=...),
        valid(job_id=None),
        valid(job_id=42),
        valid(force="maybe"),
        b"not json",
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'"bus-stats.job.v1"',
        valid()[:-1],
        b"\x80\x04\x95",  # a pickle header
    ],
)
def test_undecodable_bodies(body: bytes) -> None:
    with pytest.raises(UndecodableMessageError, match=r"not a bus-stats\.job\.v1 message"):
        decode_job(body)


def test_undecodable_error_is_a_value_error_without_the_body() -> None:
    secret_body = valid(extra="do-not-echo-me")
    with pytest.raises(UndecodableMessageError) as caught:
        decode_job(secret_body)
    assert isinstance(caught.value, ValueError)
    assert "do-not-echo-me" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_message_is_frozen() -> None:
    message = JobMessage(job_id=JOB, date=date(2024, 1, 1))
    with pytest.raises(ValidationError, match="frozen"):
        message.force = True  # type: ignore[misc]  # assigning to a frozen model on purpose
    assert message.force is False


def test_a_newer_message_names_its_job_so_the_job_can_say_why_it_stopped() -> None:
    with pytest.raises(NewerMessageError, match="newer version 2") as raised:
        decode_job(valid(version=2, shape="whatever version 2 says"))
    assert (raised.value.job_id, raised.value.date) == (JOB, date(2024, 1, 1))
    assert isinstance(raised.value, UndecodableMessageError)


def test_a_newer_message_with_unknown_fields_names_no_job() -> None:
    with pytest.raises(NewerMessageError) as raised:
        decode_job(valid(version=3, job_id="../x", date="soon"))
    assert (raised.value.job_id, raised.value.date) == (None, None)
