"""Per-city sums into per-(date, country) rows, with pandas (blocking: run in a thread).

One frame holds a row per (date, country) of every date in the range, each the sum of
that date's cities (:func:`producer.stats.figures.by_country`, made once per date
version); one group-by on (date, country) adds them up and orders them. Integer columns
are int64 only when the sum of their absolute values fits in int64 (then no group's sum
can overflow); otherwise they stay Python integers (object dtype), slower but exact. The
average delay is weighted: total delay over total departures of the country-day. A
country-day without departures has no average and gives no row.
"""

from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from producer.stats.blocks import INT64_MAX
from producer.stats.figures import CountryDay, DateFigures

_DAY = "day"
_COUNTRY = "country"


def country_days(dates: Sequence[DateFigures], country: str | None = None) -> list[CountryDay]:
    """Rows sorted by date then country; only ``country``'s when given."""
    days: list[int] = []
    countries: list[str] = []
    departures: list[int] = []
    passengers: list[int] = []
    accidents: list[bool] = []
    delays: list[float] = []
    for figures in dates:
        ordinal = figures.date.toordinal()
        for name, totals in figures.countries:
            if country is not None and name != country:
                continue
            days.append(ordinal)
            countries.append(name)
            departures.append(totals.departures)
            passengers.append(totals.passengers)
            accidents.append(totals.accident)
            delays.append(totals.delay_seconds)
    if not days:
        return []
    frame = pd.DataFrame(
        {
            _DAY: np.asarray(days, dtype=np.int64),
            _COUNTRY: countries,
            "departures": _exact_ints(departures),
            "passengers": _exact_ints(passengers),
            "accident": np.asarray(accidents, dtype=bool),
            "delay": np.asarray(delays, dtype=np.float64),
        }
    )
    sums = frame.groupby([_DAY, _COUNTRY], sort=True).agg(
        departures=("departures", "sum"),
        passengers=("passengers", "sum"),
        accident=("accident", "any"),
        delay=("delay", "sum"),
    )
    return [
        CountryDay(
            date=date.fromordinal(int(day)),
            country=str(name),
            buses_started=int(count),
            passengers=int(carried),
            accident=bool(accident),
            average_delay_seconds=float(delay) / int(count),
        )
        for (day, name), count, carried, accident, delay in zip(
            sums.index,
            sums["departures"],
            sums["passengers"],
            sums["accident"],
            sums["delay"],
            strict=True,
        )
        if int(count) > 0
    ]


def _exact_ints(values: list[int]) -> Any:
    """int64 when no sum of them can overflow it, Python integers otherwise."""
    if sum(map(abs, values)) <= INT64_MAX:
        return np.asarray(values, dtype=np.int64)
    return pd.array(values, dtype=object)
