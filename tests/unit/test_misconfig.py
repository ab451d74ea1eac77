"""Wrong or down: which answers stop a process, and what the access log hides."""

from typing import Any

import pytest
from aiormq.exceptions import AMQPConnectionError, ProbableAuthenticationError
from botocore.exceptions import ClientError

from common.misconfig import broker_refusal, s3_refusal
from producer.access_log import redacted_query


def answer(status: int, code: str) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "ListObjectsV2")


@pytest.mark.parametrize(
    ("status", "code", "fragment"),
    [
        (403, "InvalidAccessKeyId", "AWS_ACCESS_KEY_ID"),
        (403, "SignatureDoesNotMatch", "AWS_SECRET_ACCESS_KEY"),
        (403, "AccessDenied", "permissions"),
        (301, "PermanentRedirect", "AWS_DEFAULT_REGION"),
        (404, "404", "does not speak S3"),
        (405, "405", "BUSSTATS_S3_ENDPOINT_URL"),
    ],
)
def test_answers_no_retry_changes_are_fatal(status: int, code: str, fragment: str) -> None:
    cause = s3_refusal(answer(status, code), "http://s3:5000/", "bkt", "ListObjectsV2")
    assert cause is not None
    assert fragment in cause
    assert "\n" not in cause


@pytest.mark.parametrize(
    ("status", "code"), [(404, "NoSuchBucket"), (500, "InternalError"), (503, "SlowDown")]
)
def test_outages_and_a_missing_bucket_are_not_refusals(status: int, code: str) -> None:
    assert s3_refusal(answer(status, code), "http://s3:5000/", "bkt", "ListObjectsV2") is None


def test_a_refused_password_names_the_setting_not_the_password() -> None:
    cause = broker_refusal(ProbableAuthenticationError("ACCESS_REFUSED"), "amqp://mq:5672/")
    assert cause is not None
    assert "ACCESS_REFUSED" in cause
    assert "BUSSTATS_AMQP_URL" in cause
    assert broker_refusal(AMQPConnectionError("refused"), "amqp://mq:5672/") is None


def test_the_access_log_hides_credential_like_values() -> None:
    query = b"from=2024-01-01&api_key=hunter2&token=x&Password=y&country=Spain"
    shown = redacted_query(query)
    assert (
        shown
        == "from=2024-01-01&api_key=%2A%2A%2A&token=%2A%2A%2A&Password=%2A%2A%2A&country=Spain"
    )
    assert redacted_query(b"") == ""
    assert len(redacted_query(b"x=" + b"a" * 1000)) == 300
