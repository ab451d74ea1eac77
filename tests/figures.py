"""Per-country daily figures computed in plain Python: the tests' independent reference."""

from typing import Any


class CountryDays:
    """Totals per (date, country); :meth:`rows` has the API's row shape and order."""

    def __init__(self) -> None:
        # (date, country) -> [departures, passengers, total delay seconds, any accident]
        self._totals: dict[tuple[str, str], list[Any]] = {}

    def add(self, day: str, country: str, passengers: int, delay: float, accident: bool) -> None:
        total = self._totals.setdefault((day, country), [0, 0, 0, False])
        total[0] += 1
        total[1] += passengers
        total[2] += delay
        total[3] = total[3] or accident

    def rows(self) -> list[dict[str, Any]]:
        """Sorted by date then country; a country-day without departures has no row."""
        return [
            {
                "date": day,
                "country": country,
                "buses_started": count,
                "passengers": passengers,
                "accident": accident,
                "average_delay_seconds": delay / count,
            }
            for (day, country), (count, passengers, delay, accident) in sorted(self._totals.items())
            if count
        ]
