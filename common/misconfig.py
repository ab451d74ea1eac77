"""Wrong, not down: the answers of a broker or S3 that no retry will change.

A dependency that does not answer, refuses connections or answers 5xx is *down*: the
process retries until it comes (:func:`common.startup.retry_until_up`). One that answers
"wrong password", "no such bucket" or does not speak its protocol at all is *wrong*: the
process stops at once with one line naming the setting to fix
(:class:`~common.startup.FatalStartupError`).
"""

from typing import Final
from urllib.parse import urlsplit

from aiormq.exceptions import ConnectionNotAllowed, ProbableAuthenticationError
from botocore.exceptions import ClientError

CREDENTIAL_CODES: Final = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "AccessDenied", "403"}
)
REGION_CODES: Final = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "301"})
NOT_S3_STATUSES: Final = frozenset({404, 405, 501})
_AMQP: Final = "BUSSTATS_AMQP_URL"
_KEYS: Final = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def broker_refusal(error: BaseException, url: str) -> str | None:
    """The one-line cause if the broker at ``url`` refused the configuration, else None."""
    if isinstance(error, ProbableAuthenticationError):
        return (
            f"the broker at {url} refused the user name or password (ACCESS_REFUSED): "
            f"check the credentials in {_AMQP}"
        )
    if isinstance(error, ConnectionNotAllowed):
        vhost = urlsplit(url).path or "/"
        return (
            f"the broker at {url} refused the virtual host {vhost!r} (NOT_ALLOWED): "
            f"check the path of {_AMQP} and the user's permissions"
        )
    return None


def s3_code(error: ClientError) -> tuple[int, str]:
    """The HTTP status and S3 error code of an answer."""
    meta = error.response.get("ResponseMetadata", {})
    code = str(error.response.get("Error", {}).get("Code", ""))
    return int(meta.get("HTTPStatusCode", 0) or 0), code


def s3_refusal(error: ClientError, where: str, bucket: str, operation: str) -> str | None:
    """The one-line cause if S3 at ``where`` answered a configuration error, else None.

    A missing bucket is the caller's to judge (``NoSuchBucket``); 5xx and throttling are
    an outage.
    """
    status, code = s3_code(error)
    if code in CREDENTIAL_CODES:
        return (
            f"S3 at {where} refused the credentials for bucket {bucket!r} ({code}): check "
            f"{_KEYS} and the bucket's permissions"
        )
    if code in REGION_CODES:
        return (
            f"S3 at {where}: bucket {bucket!r} is in another region ({code}): "
            "set AWS_DEFAULT_REGION to the bucket's region"
        )
    if status in NOT_S3_STATUSES and code != "NoSuchBucket":
        return (
            f"the endpoint {where} does not speak S3 ({operation} answered HTTP {status} "
            "without an S3 error): check BUSSTATS_S3_ENDPOINT_URL"
        )
    return None
