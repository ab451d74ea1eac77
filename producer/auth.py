"""Who may call which route: the one place that checks the API's bearer tokens.

Every endpoint needs one of three levels:

- ``open``: the page and its files, ``/healthz``, ``/readyz``, ``/metrics`` (and every CORS
  preflight, which browsers send without credentials);
- ``write``: ``POST /process-request`` needs ``BUSSTATS_API_TOKEN`` when it is set;
- ``read``: everything else (``/country-stats``, ``/jobs``, ``/jobs/<id>``, ``/dates``,
  ``/openapi.json``, ``/docs``, and any route added later) needs ``BUSSTATS_API_READ_TOKEN``
  when it is set; the write token is accepted as well.

A missing or wrong token is a ``401`` (the app adds ``WWW-Authenticate: Bearer``). Tokens
are compared in constant time, every configured token every time, so the answer's timing
does not tell which one came close.
"""

import hmac
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Final

from pydantic import SecretStr
from quart import request

from common.settings import Settings
from producer.limits import RefusedError


class Access(StrEnum):
    OPEN = "open"
    READ = "read"
    WRITE = "write"


OPEN_BLUEPRINTS: Final = frozenset({"page", "health"})
"""``/`` with its static files and icon; ``/healthz`` and ``/readyz``."""
OPEN_ENDPOINTS: Final = frozenset({"prometheus_metrics"})
WRITE_ENDPOINTS: Final = frozenset({"jobs.process_request"})

READ_SCHEME: Final = "readToken"
WRITE_SCHEME: Final = "writeToken"
SECURITY_SCHEMES: Final = {
    READ_SCHEME: {"type": "http", "scheme": "bearer"},
    WRITE_SCHEME: {"type": "http", "scheme": "bearer"},
}
"""The OpenAPI security schemes (their descriptions: :data:`SCHEME_DESCRIPTIONS`)."""
SCHEME_DESCRIPTIONS: Final = {
    READ_SCHEME: "BUSSTATS_API_READ_TOKEN, as 'Authorization: Bearer <token>': needed by "
    "every read route when it is set (the write token is accepted too)",
    WRITE_SCHEME: "BUSSTATS_API_TOKEN, as 'Authorization: Bearer <token>': needed by "
    "POST /process-request when it is set; also grants every read route",
}
MISSING: Final = "token_missing"
WRONG: Final = "token_wrong"


def access_of(endpoint: str | None, *, method: str = "GET") -> Access:
    """The level an endpoint needs. Unknown paths (``None``) answer 404 to anyone."""
    if endpoint is None or method == "OPTIONS":
        return Access.OPEN
    blueprint = endpoint.rpartition(".")[0]
    if blueprint in OPEN_BLUEPRINTS or endpoint in OPEN_ENDPOINTS:
        return Access.OPEN
    if endpoint in WRITE_ENDPOINTS:
        return Access.WRITE
    return Access.READ


def security_of(access: Access) -> list[dict[str, list[str]]] | None:
    """The OpenAPI security requirement of a level (alternatives: either token will do)."""
    if access is Access.WRITE:
        return [{WRITE_SCHEME: []}]
    if access is Access.READ:
        return [{READ_SCHEME: []}, {WRITE_SCHEME: []}]
    return None


REFUSED_MESSAGE: Final = "a valid 'Authorization: Bearer <token>' header is required"


def _secret(token: SecretStr | None) -> bytes | None:
    value = token.get_secret_value() if token is not None else ""
    return value.encode() if value else None


def _credentials(authorization: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (case-insensitive scheme)."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode()


def authorize(settings: Settings, access: Access, authorization: str | None) -> None:
    """Return if the ``Authorization`` header grants ``access``; else raise a 401."""
    if access is Access.OPEN:
        return
    read, write = _secret(settings.api_read_token), _secret(settings.api_token)
    required = read if access is Access.READ else write
    if required is None:
        return  # that level is open: its token is not set
    accepted = [required] if write is None or write == required else [required, write]
    given = _credentials(authorization)
    if given is None:
        raise RefusedError(401, REFUSED_MESSAGE, reason=MISSING)
    matched = False
    for token in accepted:  # every one, always: no early exit to time
        matched |= hmac.compare_digest(given, token)
    if not matched:
        raise RefusedError(401, REFUSED_MESSAGE, reason=WRONG)


def token_check(settings: Settings) -> Callable[[], Awaitable[None]]:
    """The app's ``before_request`` hook: the request's route needs its token."""

    async def check_token() -> None:
        access = access_of(request.endpoint, method=request.method)
        authorize(settings, access, request.headers.get("Authorization"))

    return check_token
