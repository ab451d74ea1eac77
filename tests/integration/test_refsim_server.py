"""The simulator over HTTP: the reference wire format, determinism and the oracle."""

import asyncio
import re
from datetime import date
from typing import Any

import aiohttp
import orjson
import pytest

from common.records import parse_duration_seconds
from refsim import SimulatorConfig, cities, expected_bad_records, expected_stats
from refsim.testing import running_simulator
from tests.figures import CountryDays

pytestmark = pytest.mark.integration

DAY = "2024-01-01T00:00:00"
RECORD_KEYS = ["departure-time", "bus-type", "passengers", "delay", "accident"]
NAIVE_TIME = re.compile(r"2024-01-01T(0\d|1[01]):[0-5]\d:00")


def quick(**knobs: Any) -> SimulatorConfig:
    """A simulator without latency and with small responses."""
    values: dict[str, Any] = {"latency_max": 0.0, "records_min": 20, "records_max": 60}
    values.update(knobs)
    return SimulatorConfig(**values)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes, str | None]:
    async with session.get(url) as response:
        body = await response.read()
        return response.status, response.content_type, body, response.headers.get("Content-Length")


async def test_cities_golden(session: aiohttp.ClientSession) -> None:
    config = quick()
    async with running_simulator(config) as url:
        status, content_type, body, length = await get(session, f"{url}/cities")
    assert (status, content_type) == (200, "application/json")
    assert length == str(len(body))
    assert body.startswith(b'[{"id":0,"name":"')
    listed = orjson.loads(body)
    assert [list(city) for city in listed] == [["id", "name", "country"]] * 30
    assert [tuple(city.values()) for city in listed] == [tuple(c) for c in cities(config)]
    assert "東京".encode() in body  # UTF-8 as is, not \u escapes


async def test_stats_golden(session: aiohttp.ClientSession) -> None:
    async with (
        running_simulator(quick(records_min=3000, records_max=3000)) as url,
        session.get(f"{url}/cities/0/stats", params={"date": DAY}) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert "Transfer-Encoding" not in response.headers
        body = await response.read()
        assert response.headers["Content-Length"] == str(len(body))
    assert body.startswith(b'[{"departure-time":"2024-01-01T')
    assert body.endswith(b"}]")
    assert b", " not in body
    records = orjson.loads(body)
    assert len(records) == 3000
    assert 100 < len(body) / len(records) < 125  # about 112 bytes a record, as published
    for record in records:
        assert list(record) == RECORD_KEYS
        assert NAIVE_TIME.fullmatch(record["departure-time"])
        assert re.fullmatch(r"BUS-1\d\d", record["bus-type"])
        assert type(record["passengers"]) is int
        assert re.fullmatch(r"P0D|PT[1-9]\d*S", record["delay"])
        assert type(record["accident"]) is bool
    assert any(record["delay"] == "P0D" for record in records)


@pytest.mark.parametrize("city_id", ["-1", "123456789012345678901234567890", "+7"])
async def test_any_integer_city_answers(session: aiohttp.ClientSession, city_id: str) -> None:
    async with running_simulator(quick()) as url:
        status, _, body, _ = await get(session, f"{url}/cities/{city_id}/stats?date={DAY}")
    assert status == 200
    assert len(orjson.loads(body)) >= 20


@pytest.mark.parametrize("path", ["/cities/abc/stats?date=" + DAY, "/cities/1.5/stats", "/nope"])
async def test_not_found_golden(session: aiohttp.ClientSession, path: str) -> None:
    async with running_simulator(quick()) as url:
        status, content_type, body, _ = await get(session, url + path)
    assert (status, content_type) == (404, "application/json")
    assert body == b'{"status_code":404,"detail":"Not Found"}'


@pytest.mark.parametrize(
    ("dialect", "query", "message"),
    [
        ("datetime", "?date=2024-01-01", "Invalid RFC3339 encoded datetime"),
        ("datetime", "?date=tomorrow", "Invalid RFC3339 encoded datetime"),
        ("datetime", "", "Invalid RFC3339 encoded datetime"),
        ("date", "?date=2024-01-01T00:00:00", "Invalid date"),
        ("date", "?date=2024-13-01", "Invalid date"),
        ("date", "", "Invalid date"),
    ],
)
async def test_bad_date_golden(
    session: aiohttp.ClientSession, dialect: str, query: str, message: str
) -> None:
    config = quick(date_param=dialect)
    async with running_simulator(config) as url:
        status, content_type, body, _ = await get(session, f"{url}/cities/0/stats{query}")
    assert (status, content_type) == (400, "application/json")
    assert body == (
        b'{"status_code":400,"detail":"Validation failed for GET /cities/0/stats'
        + query.encode()
        + b'","extra":[{"message":"'
        + message.encode()
        + b'","key":"date","source":"query"}]}'
    )


async def test_bad_date_body_matches_the_published_sample(
    session: aiohttp.ClientSession,
) -> None:
    async with running_simulator(quick()) as url:
        _, _, body, _ = await get(session, f"{url}/cities/0/stats?date=2024-01-01")
    assert body == (
        b'{"status_code":400,"detail":"Validation failed for GET /cities/0/stats?date=2024-01-01",'
        b'"extra":[{"message":"Invalid RFC3339 encoded datetime","key":"date","source":"query"}]}'
    )


@pytest.mark.parametrize(
    ("value", "suffix"),
    [("2024-01-01T00:00:00Z", "+00:00"), ("2024-01-01T00:00:00.5+02:00", "+02:00")],
)
async def test_zoned_dates_are_accepted(
    session: aiohttp.ClientSession, value: str, suffix: str
) -> None:
    async with (
        running_simulator(quick()) as url,
        session.get(f"{url}/cities/1/stats", params={"date": value}) as response,
    ):
        assert response.status == 200
        records = await response.json()
    assert all(record["departure-time"].endswith(suffix) for record in records)


async def test_date_dialect_serves_the_same_day(session: aiohttp.ClientSession) -> None:
    async with (
        running_simulator(quick()) as first,
        running_simulator(quick(date_param="date")) as second,
    ):
        _, _, by_datetime, _ = await get(session, f"{first}/cities/3/stats?date={DAY}")
        _, _, by_date, _ = await get(session, f"{second}/cities/3/stats?date=2024-01-01")
    assert by_date == by_datetime


async def test_same_seed_same_bytes(session: aiohttp.ClientSession) -> None:
    async with running_simulator(quick()) as first, running_simulator(quick()) as second:
        bodies = [
            (await get(session, f"{url}/cities/{city}/stats?date={day}"))[2]
            for url in (first, first, second)
            for city, day in ((1, DAY), (2, DAY), (1, "2024-01-02T00:00:00"))
        ]
    assert bodies[0:3] == bodies[3:6] == bodies[6:9]
    assert len(set(bodies[0:3])) == 3


async def test_other_seed_other_bytes(session: aiohttp.ClientSession) -> None:
    async with running_simulator(quick()) as first, running_simulator(quick(seed=1)) as second:
        one = (await get(session, f"{first}/cities/1/stats?date={DAY}"))[2]
        two = (await get(session, f"{second}/cities/1/stats?date={DAY}"))[2]
    assert one != two


async def test_nondeterministic_mode_caches_then_changes(session: aiohttp.ClientSession) -> None:
    config = quick(deterministic=False, cache_ttl_seconds=0.2)
    async with running_simulator(config) as url:
        stats = f"{url}/cities/1/stats?date={DAY}"
        first = (await get(session, stats))[2]
        assert (await get(session, stats))[2] == first  # well within the cache period
        other_city = (await get(session, f"{url}/cities/2/stats?date={DAY}"))[2]
        assert other_city != first
        for _ in range(500):  # the cache expires after 0.2 s; poll for the change
            if (await get(session, stats))[2] != first:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the data never changed after the cache period")


async def test_oracle_matches_fetched_data(session: aiohttp.ClientSession) -> None:
    config = quick(cities=12, countries=4, records_min=0, records_max=400, malformed_rate=0.02)
    days = ["2024-03-01", "2024-03-02"]
    figures = CountryDays()
    bad: dict[tuple[int, date], int] = {}
    async with running_simulator(config) as url:
        async with session.get(f"{url}/cities") as response:
            listed = await response.json()
        for day in days:
            for city in listed:
                stats = f"{url}/cities/{city['id']}/stats?date={day}T00:00:00"
                async with session.get(stats) as response:
                    assert response.status == 200
                    records = await response.json()
                valid = [record for record in records if is_valid(record)]
                bad[city["id"], date.fromisoformat(day)] = len(records) - len(valid)
                for record in valid:
                    delay = parse_duration_seconds(record["delay"])
                    figures.add(
                        day, city["country"], record["passengers"], delay, record["accident"]
                    )
    assert expected_stats(config, days) == figures.rows()
    assert expected_bad_records(config, days) == bad
    assert sum(bad.values()) > 0


def is_valid(record: dict[str, Any]) -> bool:
    if list(record) != RECORD_KEYS or type(record["passengers"]) is not int:
        return False
    try:
        parse_duration_seconds(record["delay"])
    except ValueError:
        return False
    return True
