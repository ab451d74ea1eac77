"""``GET /country-stats?from=YYYY-MM-DD&to=YYYY-MM-DD``: per-country daily statistics."""

import time
from datetime import date

from pydantic import BaseModel, ConfigDict, Field
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_response

from producer.http import ApiError, ErrorBody, json_response, parse_day
from producer.services import get_services
from producer.stats import DateChangingError, StatsReader

blueprint = Blueprint("stats", __name__)


class CountryStatsQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="first date, YYYY-MM-DD (inclusive)")
    to: str = Field(description="last date, YYYY-MM-DD (inclusive)")


class CountryDayView(BaseModel):
    date: date
    country: str
    buses_started: int = Field(description="departures of the country's cities that day")
    passengers: int
    accident: bool = Field(description="whether any departure had an accident")
    average_delay_seconds: float = Field(description="total delay / departures, unrounded")


class CountryStatsView(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    stats: list[CountryDayView] = Field(description="sorted by date, then country")
    missing_dates: list[date] = Field(description="dates in the range with no committed data")


def _parse_range(max_days: int) -> tuple[date, date]:
    start = parse_day(request.args.get("from"), "from")
    end = parse_day(request.args.get("to"), "to")
    if end < start:
        raise ApiError(
            400, f"query parameter 'from' ({start.isoformat()}) is after 'to' ({end.isoformat()})"
        )
    days = (end - start).days + 1
    if days > max_days:
        raise ApiError(
            400,
            f"query parameters 'from'..'to' span {days} days; at most {max_days} are allowed",
        )
    return start, end


@blueprint.get("/country-stats")
@document_querystring(CountryStatsQuery)
@document_response(CountryStatsView, 200)
@document_response(ErrorBody, 400)
@document_response(ErrorBody, 503)
async def country_stats() -> Response:
    """Per (date, country): departures, passengers, any accident, weighted average delay."""
    services = get_services()
    settings = services.settings
    start, end = _parse_range(settings.max_range_days)
    reader = StatsReader(
        services.store,
        services.layout,
        concurrency=settings.stats_concurrency,
        slots=services.stats_slots,
        cache=services.stats_cache,
    )
    clock = time.monotonic()
    try:
        result = await reader.country_stats(start, end)
    except DateChangingError as error:
        raise ApiError(
            503, f"dates changed while being read, try again: {', '.join(map(str, error.days))}"
        ) from error
    services.metrics.stats_seconds.observe(time.monotonic() - clock)
    services.metrics.stats_bytes.inc(result.counts.bytes_read)
    services.metrics.stats_partials.inc(result.counts.partials_used)
    # Rows are dataclasses and dates: orjson writes them natively, without a model pass.
    return json_response(
        {
            "from": result.start,
            "to": result.end,
            "stats": result.rows,
            "missing_dates": result.missing_dates,
        }
    )
