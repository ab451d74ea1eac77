"""One access-log line per request: ``request.answered`` with method, path, status, duration.

Refusals (400, 401, 429) appear like any answer. The path is logged without its query
string's secrets: the value of any parameter whose name looks like a credential is
replaced by ``***`` (the API takes its tokens in a header, but a client may still send
one in the query). Liveness, readiness and metrics polls log at debug unless they fail.
"""

import time
from typing import Final
from urllib.parse import parse_qsl, urlencode

from quart import g, request

from common.logs import get_logger

log = get_logger("producer.access")
SECRET_WORDS: Final = ("token", "key", "secret", "password", "passwd", "auth", "signature")
REDACTED: Final = "***"
MAX_QUERY_CHARS: Final = 300
POLLED: Final = frozenset({"/healthz", "/readyz", "/metrics"})
_FAILED: Final = 400


def redacted_query(raw: bytes) -> str:
    """The query string with credential-like values replaced, at most 300 characters."""
    if not raw:
        return ""
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    shown = [
        (name, REDACTED if any(word in name.lower() for word in SECRET_WORDS) else value)
        for name, value in pairs
    ]
    return urlencode(shown)[:MAX_QUERY_CHARS]


async def start() -> None:
    """``before_request``: note when the request began."""
    g.access_started = time.perf_counter()


def answered(status: int) -> None:
    """``after_request``: log the request's line."""
    started: float | None = g.get("access_started")
    duration = None if started is None else round((time.perf_counter() - started) * 1000, 1)
    quiet = request.path in POLLED and status < _FAILED
    (log.debug if quiet else log.info)(
        "request.answered",
        method=request.method,
        path=request.path,
        query=redacted_query(request.query_string),
        status=status,
        duration_ms=duration,
    )
