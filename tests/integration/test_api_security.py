"""What an anonymous caller may read and spend: the read token, the limits, their metrics.

The app runs through ``app.test_app()`` (its lifecycle opens the Moto server and the real
broker). A concurrent ``verify=true`` is made to overlap the first one by holding that
one's first S3 read in Moto (:class:`~tests.integration.s3_server.Trap`): no sleeps.
"""

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from openapi_spec_validator import validate
from pydantic import SecretStr
from quart.typing import TestClientProtocol as Client

from common.settings import Settings
from producer.app import create_app
from tests.conftest import make_settings
from tests.integration.s3_server import RestartableMoto, Trap

pytestmark = pytest.mark.integration

READ = "r3ad-token"
WRITE = "wr1te-token"
READ_ROUTES = (
    "/country-stats?from=2024-01-01&to=2024-01-02",
    "/country-stats?from=2024-01-01&to=2024-01-02&format=csv",
    "/jobs",
    "/jobs/0123456789abcdef0123456789abcdef",
    "/dates",
    "/dates?from=2024-01-01&to=2024-01-03",
    "/openapi.json",
    "/docs",
)
OPEN_ROUTES = ("/", "/static/app.js", "/favicon.ico", "/healthz", "/readyz", "/metrics")
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(
    settings: Settings, amqp: AbstractRobustConnection
) -> AsyncIterator[MakeClient]:
    """A test client of an app built with ``settings`` plus overrides; closed afterwards."""
    opened: list[Any] = []

    async def make(base: Settings | None = None, **overrides: Any) -> Client:
        app = create_app((base or settings).model_copy(update=overrides))
        test_app = app.test_app()
        await test_app.startup()
        opened.append(test_app)
        return test_app.test_client()

    yield make
    for test_app in opened:
        await test_app.shutdown()


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def refused(metrics: str, reason: str) -> float:
    """``busstats_api_requests_refused_total{reason=...}`` from a ``/metrics`` text."""
    pattern = rf'^busstats_api_requests_refused_total\{{reason="{reason}"\}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def metrics_text(client: Client) -> str:
    return await (await client.get("/metrics")).get_data(as_text=True)


# --- the read token ------------------------------------------------------------------------


async def test_every_read_route_needs_the_read_or_the_write_token(
    make_client: MakeClient,
) -> None:
    client = await make_client(api_read_token=SecretStr(READ), api_token=SecretStr(WRITE))
    for route in READ_ROUTES:
        for token in (None, "wrong", READ + "x", READ[:-1], WRITE[:-1]):
            answer = await client.get(route, headers=bearer(token))
            assert answer.status_code == 401, (route, token)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer"), route
            assert "Bearer <token>" in (await answer.get_json())["error"]
        for header in ("Basic " + READ, READ, "Bearer"):
            answer = await client.get(route, headers={"Authorization": header})
            assert answer.status_code == 401, (route, header)
        for token in (READ, WRITE):
            answer = await client.get(route, headers=bearer(token))
            expected = 404 if route.startswith("/jobs/") else 200
            assert answer.status_code == expected, (route, token, await answer.get_data())
        lower = await client.get(route, headers={"Authorization": f"bearer {READ}"})
        assert lower.status_code != 401, route
    text = await metrics_text(client)
    assert refused(text, "token_missing") == 4 * len(READ_ROUTES)  # none, Basic, bare, "Bearer"
    assert refused(text, "token_wrong") == 4 * len(READ_ROUTES)


async def test_the_page_health_and_metrics_stay_open(make_client: MakeClient) -> None:
    client = await make_client(api_read_token=SecretStr(READ), api_token=SecretStr(WRITE))
    for route in OPEN_ROUTES:
        answer = await client.get(route)
        assert answer.status_code == 200, route
    preflight = await client.options(
        "/country-stats",
        headers={"Origin": "https://a.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200


async def test_the_read_token_does_not_grant_writes(make_client: MakeClient) -> None:
    client = await make_client(api_read_token=SecretStr(READ), api_token=SecretStr(WRITE))
    for token in (None, READ):
        answer = await client.post("/process-request?date=2024-03-02", headers=bearer(token))
        assert answer.status_code == 401, token
    answer = await client.post("/process-request?date=2024-03-02", headers=bearer(WRITE))
    assert answer.status_code == 202


async def test_without_a_read_token_reads_stay_open(make_client: MakeClient) -> None:
    client = await make_client(api_token=SecretStr(WRITE))
    for route in READ_ROUTES:
        answer = await client.get(route)
        assert answer.status_code in {200, 404}, route
        assert "WWW-Authenticate" not in answer.headers


async def test_the_openapi_document_names_each_route_s_token(make_client: MakeClient) -> None:
    client = await make_client(api_read_token=SecretStr(READ))
    spec: dict[str, Any] = await (
        await client.get("/openapi.json", headers=bearer(READ))
    ).get_json()
    validate(spec)  # raises on an invalid document
    schemes = spec["components"]["securitySchemes"]
    assert set(schemes) == {"readToken", "writeToken"}
    assert "BUSSTATS_API_READ_TOKEN" in schemes["readToken"]["description"]
    assert "BUSSTATS_API_TOKEN" in schemes["writeToken"]["description"]
    either: list[dict[str, list[str]]] = [{"readToken": []}, {"writeToken": []}]
    for path, method in (
        ("/country-stats", "get"),
        ("/jobs", "get"),
        ("/jobs/{job_id}", "get"),
        ("/dates", "get"),
    ):
        operation = spec["paths"][path][method]
        assert operation["security"] == either, path
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], path
    assert spec["paths"]["/process-request"]["post"]["security"] == [{"writeToken": []}]
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "security" not in spec["paths"][path]["get"], path
        assert "401" not in spec["paths"][path]["get"]["responses"], path


# --- bounded costs -------------------------------------------------------------------------


async def test_verify_over_the_date_limit_is_400_naming_it(make_client: MakeClient) -> None:
    client = await make_client(verify_max_dates=3)
    three = await client.get("/country-stats?from=2024-01-01&to=2024-01-03&verify=true")
    assert three.status_code == 200
    four = await client.get("/country-stats?from=2024-01-01&to=2024-01-04&verify=true")
    assert four.status_code == 400
    message = (await four.get_json())["error"]
    assert "at most 3 dates" in message
    assert "BUSSTATS_VERIFY_MAX_DATES" in message
    plain = await client.get("/country-stats?from=2024-01-01&to=2024-01-04")
    assert plain.status_code == 200
    assert refused(await metrics_text(client), "verify_too_many_dates") == 1


async def test_a_second_verify_meanwhile_is_429_with_retry_after(
    moto: RestartableMoto, namespace: str, make_client: MakeClient
) -> None:
    client = await make_client(make_settings(moto.url, namespace))
    query = "/country-stats?from=2024-05-01&to=2024-05-02&verify=true"
    trap = Trap("GET", "manifests/date=2024-05-01", armed=True)
    moto.trap = trap
    first = asyncio.create_task(client.get(query))
    try:
        assert await asyncio.to_thread(trap.caught.wait, 30), "the first verify read nothing"
        second = await client.get(query)
        assert second.status_code == 429
        assert int(second.headers["Retry-After"]) > 0
        assert "another verify=true request" in (await second.get_json())["error"]
        plain = await client.get(query.removesuffix("&verify=true"))
        assert plain.status_code == 200, "only verify waits its turn"
    finally:
        trap.released.set()
    assert (await first).status_code == 200
    again = await client.get(query)
    assert again.status_code == 200, "the slot is free once the first verify ended"
    assert refused(await metrics_text(client), "verify_busy") == 1


async def test_pages_and_ranges_beyond_their_maxima_are_400(make_client: MakeClient) -> None:
    client = await make_client(max_range_days=10)
    assert (await client.get("/jobs?limit=100")).status_code == 200
    for limit in ("101", "1000000000000000000000"):
        answer = await client.get(f"/jobs?limit={limit}")
        assert answer.status_code == 400, limit
        assert "from 1 to 100" in (await answer.get_json())["error"]
    assert (await client.get("/dates?from=2024-01-01&to=2024-01-10")).status_code == 200
    long_dates = await client.get("/dates?from=2024-01-01&to=2024-01-11")
    assert long_dates.status_code == 400
    assert "at most 10 are allowed" in (await long_dates.get_json())["error"]
    long_stats = await client.get("/country-stats?from=2024-01-01&to=2024-01-11")
    assert long_stats.status_code == 400
    text = await metrics_text(client)
    assert refused(text, "page_too_large") == 2
    assert refused(text, "range_too_long") == 2
