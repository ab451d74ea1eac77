"""Small HTTP helpers shared by the routes: orjson responses, JSON errors, query parsing."""

import re
from datetime import date
from typing import Any, Final

import orjson
from pydantic import BaseModel
from quart import Response

_ISO_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    error: str


class ApiError(Exception):
    """Raised by a route; answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps(
        payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    )
    return Response(body, status=status, headers=headers, content_type="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response(ErrorBody(error=message), status)


def parse_day(raw: str | None, name: str) -> date:
    """A calendar date given as ``YYYY-MM-DD`` in query parameter ``name``, or a 400."""
    if raw is None or raw == "":
        raise ApiError(400, f"query parameter '{name}' is required, as YYYY-MM-DD")
    if not _ISO_DATE.fullmatch(raw):
        raise ApiError(
            400, f"query parameter '{name}' must be a date as YYYY-MM-DD, got {raw[:40]!r}"
        )
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, f"query parameter '{name}' is not a real date: {raw!r}") from None


def parse_flag(raw: str | None, name: str) -> bool:
    """``true`` or ``false`` (any case); absent or empty: false; anything else: 400."""
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    raise ApiError(400, f"query parameter '{name}' must be true or false, got {raw[:40]!r}")
