"""The figures the statistics are made of, from one object up to one answer row.

Integers are Python ``int``: exact at any size (a legacy object may hold a passengers
value above int64, and a year of sums may exceed it). Only the delay is a float.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from common.models import ObjectSums


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over some records: a block, an object, or what a manifest stores for a city."""

    departures: int = 0
    passengers: int = 0
    accident: bool = False
    delay_seconds: float = 0.0

    def __add__(self, other: "Totals") -> "Totals":
        return Totals(
            departures=self.departures + other.departures,
            passengers=self.passengers + other.passengers,
            accident=self.accident or other.accident,
            delay_seconds=self.delay_seconds + other.delay_seconds,
        )

    @classmethod
    def of(cls, sums: ObjectSums) -> "Totals":
        return cls(sums.departures, sums.passengers, sums.accident, sums.delay_seconds)


ZERO = Totals()


@dataclass(frozen=True, slots=True)
class CityFigures:
    """One city object's sums and the country they count for."""

    city_id: int
    country: str
    totals: Totals


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A stored figure of one city object that its records do not give."""

    date: date
    city_id: int
    key: str
    field: str
    stored: int | float | bool
    recomputed: int | float | bool


@dataclass(frozen=True, slots=True)
class DateFigures:
    """One committed date version (a manifest and its ETag), summed per country."""

    date: date
    manifest_etag: str
    cities: int
    """Cities of the manifest."""
    sums_cities: int
    """Cities answered from the manifest's stored sums (the rest from their objects)."""
    objects_read: int = 0
    bytes_read: int = 0
    mismatches: tuple[Mismatch, ...] = ()
    has_sums: bool = True
    """Whether every city of the manifest carries stored sums."""
    countries: tuple[tuple[str, Totals], ...] = ()
    """The cities' sums per country, sorted by country (:func:`by_country`). Only these are
    kept, not every city: fewer objects for the answer to walk and the collector to scan."""

    def size_estimate(self) -> int:
        """Roughly the bytes this holds in memory (the cache is bounded by it)."""
        return 400 + 250 * len(self.countries)


def by_country(cities: Iterable[CityFigures]) -> tuple[tuple[str, Totals], ...]:
    """Per-country sums of one date's cities, sorted by country (exact integers).

    Made once per date version, when it is read: a query over a year then groups a few
    rows a date instead of every city again.
    """
    totals: dict[str, Totals] = {}
    for city in cities:
        found = totals.get(city.country)
        totals[city.country] = city.totals if found is None else found + city.totals
    return tuple(sorted(totals.items()))


@dataclass(frozen=True, slots=True)
class CountryDay:
    """One row of the answer (a dataclass: orjson serialises it natively, and fast)."""

    date: date
    country: str
    buses_started: int
    passengers: int
    accident: bool
    average_delay_seconds: float


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A committed date whose figures cannot be made: left out of the rows, with why."""

    date: date
    reason: str
