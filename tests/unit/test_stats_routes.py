"""``GET /country-stats`` through ``app.test_app()``: validation, empty ranges, OpenAPI.

The app's lifecycle opens S3 (the Moto server) and the broker (the real RabbitMQ); the
``amqp`` fixture deletes the test namespace's queues afterwards.
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from quart.typing import TestClientProtocol as Client

from common.settings import Settings
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
    response = await client.get("/country-stats?from=2024-02-01&to=2024-03-02&extra=%ff")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["from"] == "2024-02-01"
    assert body["to"] == "2024-03-02"
    assert body["stats"] == []
    assert len(body["missing_dates"]) == 31
    assert body["missing_dates"][0] == "2024-02-01"
    assert body["missing_dates"][-1] == "2024-03-02"


async def test_one_day_at_the_calendar_edge(client: Client) -> None:
    response = await client.get("/country-stats?from=9999-12-31&to=9999-12-31")
    assert response.status_code == 200
    assert (await response.get_json())["missing_dates"] == ["9999-12-31"]


async def test_the_route_is_documented(client: Client) -> None:
    response = await client.get("/openapi.json")
    spec: dict[str, Any] = await response.get_json()
    operation = spec["paths"]["/country-stats"]["get"]
    parameters = {item["name"]: item for item in operation["parameters"]}
    assert {"from", "to"} <= set(parameters)
    assert parameters["from"]["in"] == "query"
    assert {"200", "400", "503"} <= set(operation["responses"])
