"""Input the API refuses: dates the reference server cannot have, and loose query strings.

Through ``app.test_app()`` over the Moto server and the real broker (a request that is
accepted publishes a job into the test's namespace, deleted afterwards).
"""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aio_pika.abc import AbstractRobustConnection
from quart.typing import TestClientProtocol as Client

from common.settings import Settings
from common.storage import S3Store
from producer.app import create_app
from tests.unit.test_stats_routes import DAY, commit_with_sums

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(settings: Settings, amqp: AbstractRobustConnection) -> AsyncIterator[Client]:
    app = create_app(settings)
    async with app.test_app() as test_app:
        yield test_app.test_client()


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def tomorrow() -> str:
    return (datetime.now(UTC).date() + timedelta(days=1)).isoformat()


async def error_of(client: Client, method: str, path: str) -> str:
    response = await (client.post(path) if method == "POST" else client.get(path))
    assert response.status_code == 400, (path, await response.get_data())
    body = await response.get_json()
    assert set(body) == {"error"}
    message: str = body["error"]
    return message


REFUSED = [
    pytest.param("POST", "/process-request?date=2027-06-01x", "'date' must be", id="malformed"),
    pytest.param(
        "POST",
        "/process-request?date=2024-03-02&date=2024-03-03",
        "'date' is given 2 times",
        id="repeated-date",
    ),
    pytest.param(
        "POST",
        "/process-request?dates=2024-03-02",
        "unknown query parameter 'dates'",
        id="unknown-name",
    ),
    pytest.param(
        "POST",
        "/process-request?date=2024-03-02&force=yes",
        "'force' must be true or false",
        id="force-yes",
    ),
    pytest.param(
        "POST",
        "/process-request?date=2024-03-02&force=1",
        "'force' must be true or false",
        id="force-1",
    ),
    pytest.param(
        "POST",
        "/process-request?date=2024-03-02&allow_partial=maybe",
        "'allow_partial' must be true or false",
        id="allow-partial",
    ),
    pytest.param(
        "GET",
        "/country-stats?from=2024-03-01&to=2024-03-02&frm=x",
        "unknown query parameter 'frm'",
        id="stats-unknown",
    ),
    pytest.param(
        "GET",
        "/country-stats?from=2024-03-01&from=2024-03-02&to=2024-03-02",
        "'from' is given 2 times",
        id="stats-repeated",
    ),
    pytest.param(
        "GET",
        "/country-stats?from=2024-03-01&to=2024-03-02&verify=yes",
        "'verify' must be true or false",
        id="verify-yes",
    ),
    pytest.param(
        "GET",
        "/dates?from=2024-03-01&to=2024-03-02&country=x",
        "unknown query parameter 'country'",
        id="dates-unknown",
    ),
    pytest.param("GET", "/jobs?state=queued", "unknown query parameter 'state'", id="jobs-unknown"),
]


@pytest.mark.parametrize(("method", "path", "message"), REFUSED)
async def test_loose_queries_are_400_naming_the_parameter(
    client: Client, method: str, path: str, message: str
) -> None:
    assert message in await error_of(client, method, path)


async def test_the_two_range_errors_read_the_same_on_every_route(client: Client) -> None:
    for route in ("/country-stats", "/dates"):
        reversed_range = await error_of(client, "GET", f"{route}?from=2024-03-02&to=2024-03-01")
        assert reversed_range == "query parameter 'from' (2024-03-02) is after 'to' (2024-03-01)"
        too_long = await error_of(client, "GET", f"{route}?from=2020-01-01&to=2024-01-01")
        assert too_long == "query parameters 'from'..'to' span 1462 days; at most 366 are allowed"


async def test_a_date_after_today_is_refused(client: Client, store: S3Store) -> None:
    for day in (tomorrow(), "2027-06-01", "9999-12-31"):
        message = await error_of(client, "POST", f"/process-request?date={day}")
        assert f"'date' is after today (UTC, {today()})" in message
        message = await error_of(client, "POST", f"/process-request?date={day}&allow_partial=true")
        assert "after today" in message
    assert [item async for item in store.list_objects("")] == []


async def test_today_needs_allow_partial_and_its_job_is_marked_partial(client: Client) -> None:
    message = await error_of(client, "POST", f"/process-request?date={today()}")
    assert "'date' is today" in message
    assert "allow_partial=true" in message
    accepted = await client.post(f"/process-request?date={today()}&allow_partial=true")
    assert accepted.status_code == 202
    job_id = (await accepted.get_json())["job_id"]
    job = await (await client.get(f"/jobs/{job_id}")).get_json()
    assert job["partial"] is True
    dates = await (await client.get(f"/dates?from={today()}&to={today()}")).get_json()
    assert dates["dates"][0]["job"]["partial"] is True
    past = await client.post("/process-request?date=2024-03-02&allow_partial=true")
    assert past.status_code == 202
    job = await (await client.get(f"/jobs/{(await past.get_json())['job_id']}")).get_json()
    assert job["partial"] is False


async def test_country_matches_any_case_and_an_unknown_one_lists_the_known(
    client: Client, store: S3Store, settings: Settings
) -> None:
    await commit_with_sums(store, settings, DAY)
    query = f"/country-stats?from={DAY}&to={DAY}"
    for spelling in ("spain", "SPAIN", "Spain"):
        body = await (await client.get(f"{query}&country={spelling}")).get_json()
        assert [row["country"] for row in body["stats"]] == ["Spain"], spelling
    message = await error_of(client, "GET", f"{query}&country=chile")
    assert message == (
        f"query parameter 'country' names no country with data from {DAY} to {DAY} "
        "('chile'); known: 'Bosnia, \"Herz.\"', 'France', 'Spain'"
    )
