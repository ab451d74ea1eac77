"""``GET /country-stats``: per-country daily statistics, as JSON or CSV."""

import contextlib
import dataclasses
import time
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_response

from producer.http import ApiError, ErrorBody, parse_flag
from producer.limits import check_verify_dates
from producer.openapi import document_media_response
from producer.params import check_names, match_country, parse_range
from producer.services import get_services
from producer.stats import DateChangingError, S3ObjectSource, StatsReader
from producer.stats.render import CSV_COLUMNS, csv_bytes, json_bytes

blueprint = Blueprint("stats", __name__)
MAX_COUNTRY_CHARS = 200
CSV_TYPE = "text/csv; charset=utf-8"


class CountryStatsQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(
        alias="from",
        description="first date, YYYY-MM-DD (inclusive)",
        json_schema_extra={"required": True},
    )
    to: str = Field(
        description="last date, YYYY-MM-DD (inclusive)", json_schema_extra={"required": True}
    )
    country: str | None = Field(
        None,
        description="only this country's rows (any case; a name without data in the range: "
        "400 listing the known names)",
    )
    format: Literal["json", "csv"] | None = Field(
        None,
        description="answer as JSON or CSV; without it, the Accept header decides "
        "(text/csv gives CSV), JSON otherwise",
    )
    verify: bool = Field(
        False,
        description="recompute every date from its raw objects (slow: reads every byte) and "
        "report, under 'verify', any city whose sums stored at ingest disagree. At most "
        "BUSSTATS_VERIFY_MAX_DATES dates (default 31; 400 beyond), and one such request at a "
        "time per API process (another one meanwhile: 429 with Retry-After)",
    )


class CountryDayView(BaseModel):
    date: date
    country: str
    buses_started: int = Field(description="departures of the country's cities that day")
    passengers: int = Field(description="exact, whatever its size")
    accident: bool = Field(description="whether any departure had an accident")
    average_delay_seconds: float = Field(description="total delay / departures, unrounded")


class UnreadableDateView(BaseModel):
    date: date
    reason: str = Field(description="what is wrong with the committed data, and what to do")


class MismatchView(BaseModel):
    date: date
    city_id: int
    key: str = Field(description="the city object whose records disagree with its sums")
    field: Literal["departures", "passengers", "accident", "delay_seconds"]
    stored: int | float | bool = Field(description="as stored in the manifest at ingest")
    recomputed: int | float | bool = Field(description="from the object's records")


class VerifyView(BaseModel):
    """Only with ``verify=true``: stored sums against the objects' records."""

    status: Literal["ok", "mismatch"] = Field(
        description="ok: every stored sum equals its records' (integers exactly, the delay "
        "sum within float rounding); mismatch: see 'mismatches'"
    )
    dates_verified: int
    mismatched_dates: list[date]
    mismatches: list[MismatchView]
    dates_without_sums: list[date] = Field(
        description="dates committed without stored sums: answered from the objects, "
        "nothing to compare (python -m consumer backfill-sums writes them)"
    )
    objects_read: int
    bytes_read: int


class CountryStatsView(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    stats: list[CountryDayView] = Field(description="sorted by date, then country")
    missing_dates: list[date] = Field(description="dates in the range with no committed data")
    unreadable_dates: list[UnreadableDateView] = Field(
        description="committed dates whose data cannot be read: left out of 'stats'"
    )
    verify: VerifyView | None = None


CSV_DESCRIPTION = (
    "With format=csv or Accept: text/csv: the rows of 'stats' as RFC 4180 CSV with a header "
    f"line ({','.join(CSV_COLUMNS)}), sent with Content-Disposition: attachment; "
    'filename="country-stats_<from>_<to>.csv"'
)


def _wants_csv() -> bool:
    chosen = request.args.get("format")
    if chosen in {None, ""}:
        best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
        return best == "text/csv"
    if chosen in {"json", "csv"}:
        return chosen == "csv"
    raise ApiError(400, f"query parameter 'format' must be json or csv, got {chosen[:40]!r}")


def _country() -> str | None:
    name = request.args.get("country")
    if not name:
        return None
    if len(name) > MAX_COUNTRY_CHARS:
        raise ApiError(400, f"query parameter 'country' is longer than {MAX_COUNTRY_CHARS}")
    return name


@blueprint.get("/country-stats")
@document_querystring(CountryStatsQuery)
@document_response(CountryStatsView, 200)
@document_media_response(200, "text/csv", CSV_DESCRIPTION)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 429)
@document_response(ErrorBody, 503)
async def country_stats() -> Response:
    """Per (date, country): departures, passengers, any accident, weighted average delay.

    Dates committed with sums are answered from their manifests alone; older dates, and
    every date with verify=true, from their raw objects.
    """
    check_names(("from", "to", "country", "format", "verify"))
    services = get_services()
    start, end = parse_range(services.settings.max_range_days)
    as_csv = _wants_csv()
    country = _country()
    verify = parse_flag(request.args.get("verify"), "verify")
    if verify:
        check_verify_dates((end - start).days + 1, services.settings.verify_max_dates)
    store = services.store
    reader = StatsReader(
        store, S3ObjectSource(store.client, store.bucket), services.layout, services.stats
    )
    clock = time.monotonic()
    try:
        with services.verify_gate.hold() if verify else contextlib.nullcontext():
            result = await reader.country_stats(start, end, verify=verify)
    except DateChangingError as error:
        raise ApiError(
            503, f"dates changed while being read, try again: {', '.join(map(str, error.days))}"
        ) from error
    if country is not None and result.rows:
        # Matched against the countries with data in the range, whatever the case.
        name = match_country(country, (row.country for row in result.rows), start, end)
        result = dataclasses.replace(result, rows=[r for r in result.rows if r.country == name])
    services.metrics.stats_bytes.inc(result.counts.bytes_read)
    services.metrics.stats_partials.inc(result.counts.sums_used)
    # Serialising a year of rows takes a while: never on the event loop.
    if as_csv:
        body = await services.stats.workers.run(csv_bytes, result.rows)
        response = Response(body, content_type=CSV_TYPE)
        name = f"country-stats_{start.isoformat()}_{end.isoformat()}.csv"
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        if result.verification is not None:
            response.headers["X-Verify-Status"] = result.verification.status
    else:
        body = await services.stats.workers.run(json_bytes, result)
        response = Response(body, content_type="application/json")
    response.vary.add("Accept")
    services.metrics.stats_seconds.observe(time.monotonic() - clock)
    return response
