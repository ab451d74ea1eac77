"""The CSV export never hands a spreadsheet a formula (OWASP "CSV injection")."""

import csv
import io
from datetime import date

import pytest

from producer.stats.figures import CountryDay
from producer.stats.render import csv_bytes, text_cell

HOSTILE = [
    '=HYPERLINK("x","y")',
    "+1+1",
    "-2+3",
    "@SUM(A1)",
    "\tTAB",
    "\rCR",
]
HARMLESS = ["Spain", "Côte d'Ivoire", "'s-Hertogenbosch", ".. Atlantis", "a=b", "", "日本"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_cell_a_spreadsheet_would_run_starts_with_a_quote(name: str) -> None:
    assert text_cell(name) == "'" + name


@pytest.mark.parametrize("name", HARMLESS)
def test_other_cells_are_left_alone(name: str) -> None:
    assert text_cell(name) == name


def test_the_export_quotes_country_names_and_leaves_numbers() -> None:
    rows = [CountryDay(date(2024, 1, 1), name, 3, 7, False, -1.5) for name in [*HOSTILE, "Spain"]]
    parsed = list(csv.reader(io.StringIO(csv_bytes(rows).decode(), newline="")))
    assert [row[1] for row in parsed[1:]] == ["'" + name for name in HOSTILE] + ["Spain"]
    assert {row[5] for row in parsed[1:]} == {"-1.5"}, "numbers stay numbers"
