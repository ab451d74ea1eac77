"""A simulator of the reference server bus-stats gathers from, plus its test oracle.

``python -m refsim --help`` runs it; tests use :func:`refsim.testing.running_simulator`
and compare bus-stats' figures with :func:`expected_stats`.
"""

from refsim.config import SimulatorConfig
from refsim.data import City, cities
from refsim.faults import Fault, fault_for_attempt, fault_of
from refsim.oracle import expected_bad_records, expected_stats
from refsim.testing import running_simulator

__all__ = [
    "City",
    "Fault",
    "SimulatorConfig",
    "cities",
    "expected_bad_records",
    "expected_stats",
    "fault_for_attempt",
    "fault_of",
    "running_simulator",
]
