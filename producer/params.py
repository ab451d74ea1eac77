"""Strict query parameters: every route says which names it takes, each given at most once.

One wording per kind of error (the README lists them), always naming the parameter:

- unknown name:    ``unknown query parameter 'dates'; this route takes: date, force``
- repeated name:   ``query parameter 'date' is given 2 times; give it once``
- not a boolean:   ``query parameter 'force' must be true or false, got 'yes'``
- a date too late: ``query parameter 'date' is after today (UTC, ...)`` and
  ``query parameter 'date' is today (UTC), ...: add allow_partial=true ...``
- a range:         ``query parameter 'from' (...) is after 'to' (...)`` and
  ``query parameters 'from'..'to' span N days; at most M are allowed``
- unknown country: ``query parameter 'country' names no country with data from ... to
  ...; known: 'A', 'B'``

Dates (missing, malformed, impossible) and booleans keep their wording in
:func:`producer.http.parse_day` and :func:`producer.http.parse_flag`.
"""

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final

from quart import request

from producer.http import ApiError, parse_day
from producer.limits import RANGE_TOO_LONG, RefusedError

_SHOWN_CHARS: Final = 40


def check_names(allowed: Collection[str]) -> None:
    """400 for a query parameter the route does not take, or one given more than once."""
    for name in request.args:
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no query parameters"
            raise ApiError(
                400,
                f"unknown query parameter {name[:_SHOWN_CHARS]!r}; this route takes: {takes}",
            )
        count = len(request.args.getlist(name))
        if count > 1:
            raise ApiError(400, f"query parameter '{name}' is given {count} times; give it once")


def today_utc() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class RequestedDay:
    day: date
    partial: bool  # the day is still running: its data is what there is so far


def requested_day(raw: str | None, name: str, *, allow_partial: bool) -> RequestedDay:
    """A date the reference server can have: before today (UTC), or today if allowed."""
    day = parse_day(raw, name)
    today = today_utc()
    if day > today:
        raise ApiError(
            400,
            f"query parameter '{name}' is after today (UTC, {today.isoformat()}): "
            "the reference server has no data for it yet",
        )
    if day == today and not allow_partial:
        raise ApiError(
            400,
            f"query parameter '{name}' is today (UTC, {today.isoformat()}), which is still "
            "running: add allow_partial=true to fetch what there is so far (marked partial)",
        )
    return RequestedDay(day, partial=day == today)


def parse_range(max_days: int) -> tuple[date, date]:
    """``from`` and ``to`` (both required, inclusive), at most ``max_days`` apart."""
    start = parse_day(request.args.get("from"), "from")
    end = parse_day(request.args.get("to"), "to")
    if end < start:
        raise ApiError(
            400, f"query parameter 'from' ({start.isoformat()}) is after 'to' ({end.isoformat()})"
        )
    days = (end - start).days + 1
    if days > max_days:
        raise RefusedError(
            400,
            f"query parameters 'from'..'to' span {days} days; at most {max_days} are allowed",
            reason=RANGE_TOO_LONG,
        )
    return start, end


def match_country(raw: str, known: Iterable[str], start: date, end: date) -> str:
    """The known country named ``raw``, whatever its case; 400 listing the known names."""
    names = sorted(set(known))
    wanted = raw.casefold()
    for name in names:
        if name.casefold() == wanted:
            return name
    listed = ", ".join(repr(name) for name in names)
    raise ApiError(
        400,
        f"query parameter 'country' names no country with data from {start.isoformat()} "
        f"to {end.isoformat()} ({raw[:_SHOWN_CHARS]!r}); known: {listed}",
    )
