"""Every knob of the reference-server simulator, in one frozen object.

The command line (``python -m refsim --help``) builds it; tests build it directly. The data
a simulator serves is a pure function of this object (unless ``deterministic`` is off),
so the oracle in :mod:`refsim.oracle` can compute from it what bus-stats must report.
"""

from dataclasses import dataclass, field
from typing import Literal

DateParam = Literal["datetime", "date"]


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """The simulator's configuration; every field has the published server's default."""

    seed: int = 0
    """Seeds the cities, the records of every (city, date) and which pairs fail."""
    cities: int = 30
    countries: int = 5
    records_min: int = 1000
    """Records per (city, date): uniform in ``records_min..records_max`` inclusive."""
    records_max: int = 3000
    latency_min: float = 0.0
    """Seconds each stats request waits before answering, uniform in min..max."""
    latency_max: float = 4.2
    date_param: DateParam = "datetime"
    """Which ``date`` form the stats endpoint accepts: RFC 3339 date-time or bare date."""
    deterministic: bool = True
    """Off: new data on every call, like the real server, cached per (city, date)."""
    cache_ttl_seconds: float = 60.0
    """How long the non-deterministic mode serves identical bytes for a (city, date)."""
    fail_rate: float = 0.0
    """Fraction of (city, date) pairs answering 500 or 503 on their first attempts."""
    fail_attempts: int = 2
    """How many attempts of an affected pair fail (fail, timeout and truncate faults)."""
    fail_permanently: frozenset[int] = field(default_factory=frozenset)
    """City ids that always answer 500."""
    timeout_rate: float = 0.0
    """Fraction of pairs that hang for ``hang_seconds`` on their first attempts."""
    hang_seconds: float = 3600.0
    truncate_rate: float = 0.0
    """Fraction of pairs whose body is cut mid-record on their first attempts."""
    malformed_rate: float = 0.0
    """Fraction of records that are invalid, the same on every attempt."""
    chunk_bytes: int = 256 * 1024
    """About how many bytes of a stats body are generated and written at a time."""
    country_names: tuple[str, ...] = ()
    """Names the first countries get instead of generated ones (tests of hostile names,
    e.g. a spreadsheet formula); at most ``countries`` of them, each unique."""

    def __post_init__(self) -> None:
        if self.cities < 0 or self.countries < 1:
            raise ValueError("cities must be >= 0 and countries >= 1")
        if not 0 <= self.records_min <= self.records_max:
            raise ValueError("records must satisfy 0 <= records_min <= records_max")
        if not 0 <= self.latency_min <= self.latency_max:
            raise ValueError("latency must satisfy 0 <= latency_min <= latency_max")
        rates = (self.fail_rate, self.timeout_rate, self.truncate_rate, self.malformed_rate)
        if any(not 0 <= rate <= 1 for rate in rates):
            raise ValueError("every rate must be between 0 and 1")
        if self.fail_rate + self.timeout_rate + self.truncate_rate > 1:
            raise ValueError("fail, timeout and truncate rates must add up to at most 1")
        if self.fail_attempts < 0 or self.hang_seconds < 0 or self.cache_ttl_seconds < 0:
            raise ValueError("fail_attempts, hang_seconds and cache_ttl_seconds must be >= 0")
        if self.chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        names = self.country_names
        if len(names) > self.countries or len(set(names)) != len(names) or "" in names:
            raise ValueError("country_names must be at most 'countries' distinct, non-empty names")
