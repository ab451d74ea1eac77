"""The two dialects of the stats endpoint's ``date`` query parameter."""

import re
from datetime import date, datetime
from typing import Final, NamedTuple

from refsim.config import DateParam

_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))?"
)
_BARE_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_MAX_HOUR: Final = 23
_MAX_MINUTE: Final = 59

INVALID_MESSAGE: Final[dict[DateParam, str]] = {
    "datetime": "Invalid RFC3339 encoded datetime",
    "date": "Invalid date",
}


class RequestedDay(NamedTuple):
    day: date
    zone_suffix: str
    """``""`` for a naive request, else the offset departure times carry (``+02:00``)."""


def parse_date_param(text: str, dialect: DateParam) -> RequestedDay | None:
    """The day a ``date`` value asks for, or ``None`` when the dialect refuses it."""
    return _parse_bare_date(text) if dialect == "date" else _parse_datetime(text)


def _parse_bare_date(text: str) -> RequestedDay | None:
    if not _BARE_DATE.fullmatch(text):
        return None
    try:
        return RequestedDay(date.fromisoformat(text), "")
    except ValueError:
        return None


def _parse_datetime(text: str) -> RequestedDay | None:
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 - zone kept apart
    except ValueError:
        return None
    suffix = ""
    if match["utc"]:
        suffix = "+00:00"
    elif match["sign"]:
        if int(match["oh"]) > _MAX_HOUR or int(match["om"]) > _MAX_MINUTE:
            return None
        suffix = f"{match['sign']}{match['oh']}:{match['om']}"
    return RequestedDay(moment.date(), suffix)
