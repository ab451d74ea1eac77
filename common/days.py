"""Ranges of calendar dates, as the API, the stats and the consumer's commands take them."""

from datetime import date, timedelta


def days_between(start: date, end: date) -> list[date]:
    """Every date from ``start`` to ``end``, both included (none if ``end`` is earlier)."""
    return [start + timedelta(days=offset) for offset in range((end - start).days + 1)]
