"""An answer as JSON or CSV bytes (blocking for large answers: run in a thread).

orjson writes integers up to 64 bits; a sum beyond that (only legacy data can make one)
is written by the standard library's encoder instead, exactly, never rounded.

The CSV is meant to be opened in spreadsheets: a text cell that a spreadsheet would run as
a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return; OWASP's
"CSV injection") is written with a leading ``'``, which spreadsheets show as text. The
JSON answer keeps every name exactly as stored.
"""

import csv
import dataclasses
import io
import json
from datetime import date
from typing import Any, Final

import orjson

from producer.stats.figures import CountryDay
from producer.stats.reader import CountryStats

CSV_COLUMNS: Final = (
    "date",
    "country",
    "buses_started",
    "passengers",
    "accident",
    "average_delay_seconds",
)
FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: str) -> str:
    """``value`` as a CSV text cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def payload(stats: CountryStats) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": stats.start,
        "to": stats.end,
        "stats": stats.rows,
        "missing_dates": stats.missing_dates,
        "unreadable_dates": stats.unreadable,
    }
    check = stats.verification
    if check is not None:
        body["verify"] = {
            "status": check.status,
            "dates_verified": len(check.dates_verified),
            "mismatched_dates": check.mismatched_dates,
            "mismatches": check.mismatches,
            "dates_without_sums": check.dates_without_sums,
            "objects_read": stats.counts.objects_read,
            "bytes_read": stats.counts.bytes_read,
        }
    return body


def json_bytes(stats: CountryStats) -> bytes:
    body = payload(stats)
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return json.dumps(body, default=_plain, separators=(",", ":")).encode()


def _plain(value: object) -> object:
    if isinstance(value, date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: getattr(value, item.name) for item in dataclasses.fields(value)}
    raise TypeError(f"not serialisable: {type(value).__name__}")


def csv_bytes(rows: list[CountryDay]) -> bytes:
    """RFC 4180 CSV (CRLF line ends), a header line first, UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(
        (
            row.date.isoformat(),
            text_cell(row.country),
            row.buses_started,
            row.passengers,
            "true" if row.accident else "false",
            repr(row.average_delay_seconds),
        )
        for row in rows
    )
    return out.getvalue().encode()
