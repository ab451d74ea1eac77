"""Which (city, date) pairs misbehave, and how: a pure function of the seed.

One uniform number per pair is split into consecutive bands, ``[0, fail_rate)`` fails,
the next ``timeout_rate`` hangs, the next ``truncate_rate`` is cut off, so each fault hits
its configured fraction of pairs and no pair has two faults. A test can therefore compute
exactly which pairs fail, and a failing run replays with the same seed.
"""

import enum
from datetime import date

from refsim.config import SimulatorConfig
from refsim.data import unit_hash


class Fault(enum.Enum):
    """How a stats request misbehaves."""

    PERMANENT = "permanent"
    """Always answers 500 (``fail_permanently``)."""
    ERROR = "error"
    """Answers 500 or 503 on the first ``fail_attempts`` attempts."""
    TIMEOUT = "timeout"
    """Hangs for ``hang_seconds`` on the first ``fail_attempts`` attempts."""
    TRUNCATE = "truncate"
    """Sends part of the body, then closes, on the first ``fail_attempts`` attempts."""


def fault_of(config: SimulatorConfig, city_id: int, day: date) -> Fault | None:
    """The fault a (city, date) pair is configured with, whatever the attempt."""
    if city_id in config.fail_permanently:
        return Fault.PERMANENT
    draw = unit_hash(config.seed, "fault", city_id, day.isoformat())
    bound = config.fail_rate
    if draw < bound:
        return Fault.ERROR
    bound += config.timeout_rate
    if draw < bound:
        return Fault.TIMEOUT
    bound += config.truncate_rate
    if draw < bound:
        return Fault.TRUNCATE
    return None


def fault_for_attempt(
    config: SimulatorConfig, city_id: int, day: date, attempt: int
) -> Fault | None:
    """The fault of the ``attempt``-th request (1 = first) of a (city, date)."""
    fault = fault_of(config, city_id, day)
    if fault is Fault.PERMANENT or (fault is not None and attempt <= config.fail_attempts):
        return fault
    return None


def error_status(config: SimulatorConfig, city_id: int, day: date) -> int:
    """500 or 503, chosen per pair, for :attr:`Fault.ERROR`."""
    return 503 if unit_hash(config.seed, "status", city_id, day.isoformat()) < 0.5 else 500  # noqa: PLR2004 - half and half
