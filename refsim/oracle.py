"""What bus-stats must report for a deterministic simulator, computed without HTTP.

The figures come from the same record generator the server renders, so they are exact.
Malformed records are not departures: they are counted by :func:`expected_bad_records`.
"""

from collections.abc import Iterable
from datetime import date
from typing import Any

from refsim.config import SimulatorConfig
from refsim.data import VALID, cities, data_seed, iter_records


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _require_deterministic(config: SimulatorConfig) -> None:
    if not config.deterministic:
        raise ValueError("a non-deterministic simulator has no expected figures")


def expected_stats(config: SimulatorConfig, dates: Iterable[date | str]) -> list[dict[str, Any]]:
    """Per-country figures of each date, sorted by date then country.

    Each row is ``{"date", "country", "buses_started", "passengers", "accident",
    "average_delay_seconds"}``; countries without a valid record on a date are omitted.
    """
    _require_deterministic(config)
    rows: list[dict[str, Any]] = []
    for day in sorted({_as_date(value) for value in dates}):
        totals: dict[str, list[int]] = {}  # country -> [departures, passengers, delay, accident]
        for city in cities(config):
            total = totals.setdefault(city.country, [0, 0, 0, 0])
            for record in iter_records(config, data_seed(config, city.id, day)):
                if record.malformed == VALID:
                    total[0] += 1
                    total[1] += record.passengers
                    total[2] += record.delay_seconds
                    total[3] |= record.accident
        rows.extend(
            {
                "date": day.isoformat(),
                "country": country,
                "buses_started": departures,
                "passengers": passengers,
                "accident": bool(accident),
                "average_delay_seconds": delay / departures,
            }
            for country, (departures, passengers, delay, accident) in sorted(totals.items())
            if departures
        )
    return rows


def expected_bad_records(
    config: SimulatorConfig, dates: Iterable[date | str]
) -> dict[tuple[int, date], int]:
    """How many malformed records each listed (city, date) serves (zero included)."""
    _require_deterministic(config)
    counts: dict[tuple[int, date], int] = {}
    for day in sorted({_as_date(value) for value in dates}):
        for city in cities(config):
            records = iter_records(config, data_seed(config, city.id, day))
            counts[city.id, day] = sum(record.malformed != VALID for record in records)
    return counts
