"""Fault selection and the date dialects: pure functions, so tests can predict failures."""

from collections import Counter
from datetime import date

import pytest

from refsim import Fault, SimulatorConfig, fault_for_attempt, fault_of
from refsim.__main__ import config_from_args, parse_args
from refsim.dates import RequestedDay, parse_date_param
from refsim.faults import error_status

DAY = date(2024, 1, 1)


def test_each_fault_hits_its_fraction_of_pairs() -> None:
    config = SimulatorConfig(fail_rate=0.2, timeout_rate=0.1, truncate_rate=0.3)
    pairs = [(city, date(2024, 1, day)) for city in range(100) for day in range(1, 31)]
    counts = Counter(fault_of(config, city, day) for city, day in pairs)
    total = len(pairs)
    assert abs(counts[Fault.ERROR] / total - 0.2) < 0.03
    assert abs(counts[Fault.TIMEOUT] / total - 0.1) < 0.03
    assert abs(counts[Fault.TRUNCATE] / total - 0.3) < 0.03
    assert Fault.PERMANENT not in counts


def test_fault_selection_depends_on_the_seed_only() -> None:
    first = SimulatorConfig(fail_rate=0.5)
    same = SimulatorConfig(fail_rate=0.5, records_min=0, records_max=0)
    other = SimulatorConfig(fail_rate=0.5, seed=7)
    pick = [fault_of(first, city, DAY) for city in range(100)]
    assert pick == [fault_of(same, city, DAY) for city in range(100)]
    assert pick != [fault_of(other, city, DAY) for city in range(100)]


def test_transient_faults_stop_after_the_configured_attempts() -> None:
    config = SimulatorConfig(fail_rate=1.0, fail_attempts=3)
    assert [fault_for_attempt(config, 4, DAY, attempt) for attempt in range(1, 6)] == [
        Fault.ERROR,
        Fault.ERROR,
        Fault.ERROR,
        None,
        None,
    ]


def test_permanent_failures_never_stop() -> None:
    config = SimulatorConfig(fail_permanently=frozenset({3}))
    assert all(fault_for_attempt(config, 3, DAY, n) is Fault.PERMANENT for n in range(1, 50))
    assert fault_of(config, 2, DAY) is None


def test_error_status_is_500_or_503() -> None:
    config = SimulatorConfig()
    assert {error_status(config, city, DAY) for city in range(100)} == {500, 503}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00", RequestedDay(DAY, "")),
        ("2024-01-01T23:59:59.123456789", RequestedDay(DAY, "")),
        ("2024-01-01t05:00:00", RequestedDay(DAY, "")),
        ("2024-01-01T00:00:00Z", RequestedDay(DAY, "+00:00")),
        ("2024-01-01T00:00:00+02:00", RequestedDay(DAY, "+02:00")),
        ("2024-01-01T00:00:00-05:30", RequestedDay(DAY, "-05:30")),
        ("2024-01-01", None),
        ("2024-01-01T00:00", None),
        ("2024-02-30T00:00:00", None),
        ("2024-01-01T24:00:00", None),
        ("2024-01-01T00:00:00+25:00", None),
        ("2024-01-01T00:00:00 02:00", None),
        ("yesterday", None),
        ("", None),
    ],
)
def test_datetime_dialect(text: str, expected: RequestedDay | None) -> None:
    assert parse_date_param(text, "datetime") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01", RequestedDay(DAY, "")),
        ("2024-02-29", RequestedDay(date(2024, 2, 29), "")),
        ("2023-02-29", None),
        ("2024-01-01T00:00:00", None),
        ("20240101", None),
        ("", None),
    ],
)
def test_date_dialect(text: str, expected: RequestedDay | None) -> None:
    assert parse_date_param(text, "date") == expected


def test_command_line_builds_the_config() -> None:
    args = parse_args(
        [
            "--port=0",
            "--seed=3",
            "--records-min=0",
            "--records-max=10",
            "--latency-max=0",
            "--date-param=date",
            "--nondeterministic",
            "--fail-permanently=4",
            "--fail-permanently=9",
            "--malformed-rate=0.01",
        ]
    )
    config = config_from_args(args)
    assert args.port == 0
    assert args.host == "127.0.0.1"
    assert config == SimulatorConfig(
        seed=3,
        records_min=0,
        records_max=10,
        latency_max=0,
        date_param="date",
        deterministic=False,
        fail_permanently=frozenset({4, 9}),
        malformed_rate=0.01,
    )
    assert config_from_args(parse_args([])) == SimulatorConfig()
