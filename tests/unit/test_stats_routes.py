"""``GET /country-stats`` through ``app.test_app()``: validation, JSON and CSV, OpenAPI.

The app's lifecycle opens S3 (the Moto server) and the broker (the real RabbitMQ); the
``amqp`` fixture deletes the test namespace's queues afterwards. Dates are committed as
manifests with sums (no data objects): the sums path needs nothing else.
"""

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from quart.typing import TestClientProtocol as Client

from common.jobs import ManifestStore
from common.layout import Layout
from common.models import CityObject, Manifest, ObjectSums
from common.settings import Settings
from common.storage import S3Store
from producer.app import create_app


@pytest.fixture
async def client(settings: Settings, amqp: AbstractRobustConnection) -> AsyncIterator[Client]:
    app = create_app(settings.model_copy(update={"max_range_days": 31}))
    async with app.test_app() as test_app:
        yield test_app.test_client()


BAD_QUERIES = [
    pytest.param("", "'from' is required", id="nothing"),
    pytest.param("?to=2024-01-01", "'from' is required", id="no-from"),
    pytest.param("?from=2024-01-01", "'to' is required", id="no-to"),
    pytest.param("?from=&to=2024-01-01", "'from' is required", id="empty-from"),
    pytest.param("?from=2024-1-1&to=2024-01-01", "'from' must be a date", id="short"),
    pytest.param("?from=01/01/2024&to=2024-01-01", "'from' must be a date", id="slashes"),
    pytest.param("?from=2024-01-01&to=2024-02-30", "'to' is not a real date", id="feb-30"),
    pytest.param("?from=2023-02-29&to=2023-03-01", "'from' is not a real date", id="not-leap"),
    pytest.param("?from=0000-01-01&to=2024-01-01", "'from' is not a real date", id="year-0"),
    pytest.param("?from=2024-13-01&to=2024-13-02", "'from' is not a real date", id="month-13"),
    pytest.param("?from=2024-01-01T00:00&to=2024-01-02", "'from' must be a date", id="datetime"),
    pytest.param("?from=%00%ff&to=2024-01-02", "'from' must be a date", id="bytes"),
    pytest.param("?from=" + "9" * 5000 + "&to=2024-01-02", "'from' must be a date", id="long"),
    pytest.param("?from=2024-01-02&to=2024-01-01", "'from' (2024-01-02) is after 'to'", id="order"),
    pytest.param("?from=2024-01-01&to=2024-02-01", "span 32 days; at most 31", id="too-long"),
    pytest.param("?from=0001-01-01&to=9999-12-31", "at most 31", id="whole-calendar"),
    pytest.param("?from=2024-01-01&to=2024-01-01&format=xml", "'format' must be", id="format"),
    pytest.param("?from=2024-01-01&to=2024-01-01&verify=maybe", "'verify' must be", id="verify"),
    pytest.param(
        "?from=2024-01-01&to=2024-01-01&country=" + "x" * 201, "'country' is longer", id="country"
    ),
]


@pytest.mark.parametrize(("query", "message"), BAD_QUERIES)
async def test_bad_queries_are_400_naming_the_parameter(
    client: Client, query: str, message: str
) -> None:
    response = await client.get("/country-stats" + query)
    assert response.status_code == 400
    body = await response.get_json()
    assert set(body) == {"error"}
    assert message in body["error"]


async def test_the_longest_allowed_range_without_data_is_all_missing(
    client: Client,
) -> None:
    response = await client.get("/country-stats?from=2024-02-01&to=2024-03-02")
    assert response.status_code == 200
    body = await response.get_json()
    assert body == {
        "from": "2024-02-01",
        "to": "2024-03-02",
        "stats": [],
        "missing_dates": body["missing_dates"],
        "unreadable_dates": [],
    }
    assert len(body["missing_dates"]) == 31
    assert body["missing_dates"][0] == "2024-02-01"
    assert body["missing_dates"][-1] == "2024-03-02"


async def test_one_day_at_the_calendar_edge(client: Client) -> None:
    response = await client.get("/country-stats?from=9999-12-31&to=9999-12-31")
    assert response.status_code == 200
    assert (await response.get_json())["missing_dates"] == ["9999-12-31"]


DAY = date(2024, 3, 1)
CITIES = [  # city id, country, departures, passengers, accident, delay seconds
    (1, "Spain", 3, 100, False, 90.0),
    (2, "Spain", 1, 2**62, True, 30.0),
    (3, "France", 2, 7, False, 11.0),
    (4, 'Bosnia, "Herz."', 4, 1, False, 2.0),
]


async def commit_with_sums(store: S3Store, settings: Settings, day: date) -> None:
    cities = [
        CityObject(
            city_id=city_id,
            name=f"City {city_id}",
            country=country,
            key=f"data/date={day}/run=x/city={city_id}.jsonl",  # never read: sums answer
            etag='"0"',
            records=departures,
            bytes=0,
            sums=ObjectSums(
                departures=departures,
                passengers=passengers,
                accident=accident,
                delay_seconds=delay,
            ),
        )
        for city_id, country, departures, passengers, accident, delay in CITIES
    ]
    manifest = Manifest(
        date=day, job_id="a" * 32, run_id="b" * 32, fetched_at=datetime.now(UTC), cities=cities
    )
    await ManifestStore(store, Layout(settings.s3_prefix)).commit(manifest, None)


EXPECTED = [
    ["2024-03-01", 'Bosnia, "Herz."', "4", "1", "false", "0.5"],
    ["2024-03-01", "France", "2", "7", "false", "5.5"],
    ["2024-03-01", "Spain", "4", str(100 + 2**62), "true", "30.0"],
]


async def test_json_csv_and_a_country_filter_answer_the_same_rows(
    client: Client, store: S3Store, settings: Settings
) -> None:
    await commit_with_sums(store, settings, DAY)
    query = "/country-stats?from=2024-02-29&to=2024-03-01"

    answer = await client.get(query)
    assert answer.status_code == 200
    body: dict[str, Any] = await answer.get_json()
    assert body["missing_dates"] == ["2024-02-29"]
    assert [
        [
            row["date"],
            row["country"],
            str(row["buses_started"]),
            str(row["passengers"]),
            str(row["accident"]).lower(),
            repr(row["average_delay_seconds"]),
        ]
        for row in body["stats"]
    ] == EXPECTED
    assert "verify" not in body

    for request in (
        client.get(query + "&format=csv"),
        client.get(query, headers={"Accept": "text/csv"}),
        client.get(query + "&format=csv", headers={"Accept": "application/json"}),
    ):
        response = await request
        assert response.status_code == 200
        assert response.content_type == "text/csv; charset=utf-8"
        assert response.headers["Content-Disposition"] == (
            'attachment; filename="country-stats_2024-02-29_2024-03-01.csv"'
        )
        text = await response.get_data(as_text=True)
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == [
            "date",
            "country",
            "buses_started",
            "passengers",
            "accident",
            "average_delay_seconds",
        ]
        assert rows[1:] == EXPECTED

    as_json = await client.get(query + "&format=json", headers={"Accept": "text/csv"})
    assert as_json.content_type == "application/json"
    spain = await client.get(query + "&country=Spain")
    assert [row["country"] for row in (await spain.get_json())["stats"]] == ["Spain"]
    spain = await client.get(query + "&country=sPAIN&format=csv")
    assert [line.split(",")[1] for line in (await spain.get_data(as_text=True)).splitlines()] == [
        "country",
        "Spain",
    ]
    nobody = await client.get(query + "&country=Narnia&format=csv")
    assert nobody.status_code == 400
    assert "known: " in (await nobody.get_json())["error"]


async def test_the_route_is_documented(client: Client) -> None:
    response = await client.get("/openapi.json")
    spec: dict[str, Any] = await response.get_json()
    operation = spec["paths"]["/country-stats"]["get"]
    parameters = {item["name"]: item for item in operation["parameters"]}
    assert {"from", "to", "country", "format", "verify"} <= set(parameters)
    assert parameters["from"]["in"] == "query"
    assert parameters["from"].get("required") is True
    assert parameters["to"].get("required") is True
    assert not parameters["country"].get("required")
    assert {"200", "400", "503"} <= set(operation["responses"])
    content = operation["responses"]["200"]["content"]
    assert {"application/json", "text/csv"} <= set(content)
    answer = content["application/json"]["schema"]
    schema = spec["components"]["schemas"].get("CountryStatsView", answer)
    assert {"unreadable_dates", "verify"} <= set(schema["properties"])
