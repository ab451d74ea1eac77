"""The waits of a failed job: growing, the last repeated, within the budget."""

from datetime import UTC, datetime, timedelta

from common.settings import Settings
from consumer.delays import RetrySchedule, parse_delays, schedule


def test_the_default_waits_outlast_ten_minutes() -> None:
    retries = RetrySchedule.from_settings(Settings())
    assert retries.waits == (5.0, 15.0, 45.0, 120.0, 300.0, 300.0)
    assert sum(retries.waits) >= 600
    assert retries.limit == 6
    assert retries.distinct == (5.0, 15.0, 45.0, 120.0, 300.0)


def test_the_last_wait_repeats_until_the_budget_is_spent() -> None:
    assert schedule(parse_delays("1,2,4"), 15) == (1.0, 2.0, 4.0, 4.0, 4.0)
    assert schedule(parse_delays("1,2,4"), 0.5) == ()


def test_the_delivery_limit_caps_the_retries() -> None:
    retries = RetrySchedule(waits=(1.0, 2.0, 4.0, 4.0), delivery_limit=2)
    assert retries.limit == 2
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert retries.next_attempt_at(now, 1) == now + timedelta(seconds=1)
    assert retries.next_attempt_at(now, 2) == now + timedelta(seconds=2)
    assert retries.next_attempt_at(now, 3) is None
    assert retries.retry_after(2) == 2
    assert retries.retry_after(3) is None
