"""The reference server's two dialects for ``date``: learnt once, or pinned in settings."""

from datetime import date

import orjson
import pytest

from consumer.fetcher import DateDialect, _is_date_validation_error

DAY = date(2024, 1, 1)

# The server's bodies, byte for byte as REFERENCE_API.md shows them.
DATE_400_BODY = (
    b'{"status_code":400,"detail":"Validation failed for GET /cities/0/stats?date=2024-01-01",'
    b'"extra":[{"message":"Invalid RFC3339 encoded datetime","key":"date","source":"query"}]}'
)
NOT_FOUND_BODY = b'{"status_code":404,"detail":"Not Found"}'


def test_auto_starts_with_the_datetime_form() -> None:
    dialect = DateDialect("auto")
    assert dialect.current == "datetime"
    assert dialect.learnt is None
    assert dialect.format(DAY) == "2024-01-01T00:00:00"
    assert dialect.format(date(987, 3, 4)) == "0987-03-04T00:00:00"


def test_auto_learns_the_date_form_after_datetime_is_rejected() -> None:
    dialect = DateDialect("auto")
    assert dialect.switch("datetime") is True
    assert dialect.learnt == "date"
    assert dialect.current == "date"
    assert dialect.format(DAY) == "2024-01-01"


def test_auto_learns_once_when_requests_race() -> None:
    # Two requests sent in the datetime form both get the 400: the second switch is stale.
    dialect = DateDialect("auto")
    assert dialect.switch("datetime") is True
    assert dialect.switch("datetime") is True
    assert dialect.current == "date"
    assert dialect.format(DAY) == "2024-01-01"


def test_auto_has_no_form_left_after_both_are_rejected() -> None:
    dialect = DateDialect("auto")
    assert dialect.switch("datetime") is True
    assert dialect.switch("date") is False


@pytest.mark.parametrize(
    ("pinned", "formatted"), [("date", "2024-01-01"), ("datetime", "2024-01-01T00:00:00")]
)
def test_pinned_dialect_never_switches(pinned: str, formatted: str) -> None:
    dialect = DateDialect("date" if pinned == "date" else "datetime")
    assert dialect.current == pinned
    assert dialect.format(DAY) == formatted
    assert dialect.switch("datetime") is False
    assert dialect.switch("date") is False
    assert dialect.current == pinned
    assert dialect.learnt is None
    assert dialect.format(DAY) == formatted


def test_date_validation_error_on_the_servers_400_body() -> None:
    assert _is_date_validation_error(DATE_400_BODY) is True


@pytest.mark.parametrize(
    "body",
    [
        b'{"extra":[{"key":"date"}]}',
        b'{"status_code":400,"extra":[{"key":"city"},{"key":"date","source":"query"}]}',
    ],
)
def test_date_validation_error_on_other_bodies_naming_date(body: bytes) -> None:
    assert _is_date_validation_error(body) is True


@pytest.mark.parametrize(
    "body",
    [
        NOT_FOUND_BODY,
        b"",
        b"garbage",
        b"<html>Bad Request</html>",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'[{"key":"date"}]',
        b'"date"',
        b'{"extra":"date"}',
        b'{"extra":{"key":"date"}}',
        b'{"extra":["date"]}',
        b'{"extra":[]}',
        b'{"extra":[{"key":"city_id","source":"path"}]}',
        b'{"detail":"date"}',
        b'{"key":"date"}',
        DATE_400_BODY[:60],  # cut off
    ],
)
def test_not_a_date_validation_error(body: bytes) -> None:
    assert _is_date_validation_error(body) is False


def test_fixture_bodies_are_what_the_reference_describes() -> None:
    parsed = orjson.loads(DATE_400_BODY)
    assert parsed["status_code"] == 400
    assert parsed["extra"][0]["key"] == "date"
    assert orjson.loads(NOT_FOUND_BODY) == {"status_code": 404, "detail": "Not Found"}
