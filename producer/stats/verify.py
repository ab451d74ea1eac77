"""Stored sums against the sums recomputed from the object's records.

Integers (departures, passengers) and the accident flag must be equal exactly: they
are counted, never rounded. The delay is a float sum, and float addition depends on
order: the consumer adds record by record as a city streams, the object path adds per
block with numpy. Summing n non-negative terms in any order is off from the exact sum
by at most about n x 2^-53 of it (Higham's bound for recursive summation), so two sums
of the same records differ by at most about ``n x 2^-52 x sum``: that is the tolerance.
A real difference (a record changed, added or dropped) is far larger, and shows in the
exact fields too. The reference server's delays are whole seconds, which float64 adds
exactly in any order (below 2^53 s), so in practice the difference is zero.
"""

from datetime import date

from producer.stats.figures import Mismatch, Totals

DELAY_ULPS_PER_TERM = 2.0**-52


def delay_tolerance(departures: int, left: float, right: float) -> float:
    return max(departures, 1) * DELAY_ULPS_PER_TERM * max(abs(left), abs(right))


def compare(
    day: date, city_id: int, key: str, stored: Totals, recomputed: Totals
) -> list[Mismatch]:
    """Every field where ``stored`` disagrees with ``recomputed``."""
    found: list[Mismatch] = []

    def differs(field: str, left: int | float | bool, right: int | float | bool) -> None:
        found.append(Mismatch(day, city_id, key, field, left, right))

    if stored.departures != recomputed.departures:
        differs("departures", stored.departures, recomputed.departures)
    if stored.passengers != recomputed.passengers:
        differs("passengers", stored.passengers, recomputed.passengers)
    if stored.accident != recomputed.accident:
        differs("accident", stored.accident, recomputed.accident)
    gap = abs(stored.delay_seconds - recomputed.delay_seconds)
    tolerance = delay_tolerance(
        recomputed.departures, stored.delay_seconds, recomputed.delay_seconds
    )
    if not gap <= tolerance:  # written so that a NaN is a mismatch too
        differs("delay_seconds", stored.delay_seconds, recomputed.delay_seconds)
    return found
