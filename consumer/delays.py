"""When a failed job is tried again: the waits between its deliveries, within a budget.

A job whose delivery failed for a reason that may heal (the reference server or S3 down,
a timeout) is not put straight back on the queue: a dependency outage would then burn all
its deliveries in seconds. It waits in a delay queue first (see :mod:`common.topology`),
for ``retry_delays_seconds[n]`` after its ``n + 1``-th failure; the last delay repeats.
The job is retried while the waits add up to at most ``retry_budget_seconds`` (and its
failed deliveries stay within ``delivery_limit``).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from common.settings import Settings


def parse_delays(text: str) -> tuple[float, ...]:
    """The delays of ``retry_delays_seconds`` (validated by the settings)."""
    return tuple(float(part) for part in text.split(","))


def schedule(delays: tuple[float, ...], budget: float) -> tuple[float, ...]:
    """Every wait a job may go through: ``delays`` (the last repeated) within ``budget``."""
    waits: list[float] = []
    total = 0.0
    index = 0
    while delays:
        wait = delays[min(index, len(delays) - 1)]
        if total + wait > budget:
            break
        waits.append(wait)
        total += wait
        index += 1
    return tuple(waits)


@dataclass(frozen=True)
class RetrySchedule:
    """A job's retries: how many failed deliveries it may have, and the wait after each."""

    waits: tuple[float, ...]
    delivery_limit: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetrySchedule":
        waits = schedule(parse_delays(settings.retry_delays_seconds), settings.retry_budget_seconds)
        return cls(waits=waits, delivery_limit=settings.delivery_limit)

    @property
    def limit(self) -> int:
        """How many failed deliveries a job may have and still be retried."""
        return min(self.delivery_limit, len(self.waits))

    @property
    def distinct(self) -> tuple[float, ...]:
        """The distinct waits: one delay queue each."""
        return tuple(sorted(set(self.waits)))

    def wait_after(self, failures: int) -> float:
        """The wait after the ``failures``-th failed delivery (1 = the first)."""
        return self.waits[min(failures, len(self.waits)) - 1]

    def next_attempt_at(self, now: datetime, failures: int) -> datetime | None:
        """When the job is tried again if this, its ``failures``-th failure, is retried."""
        if failures > self.limit:
            return None
        return now + timedelta(seconds=self.wait_after(failures))

    def retry_after(self, failures: int) -> float | None:
        """The wait before the next delivery if this, the ``failures``-th failure, is retried."""
        return self.wait_after(failures) if failures <= self.limit else None
