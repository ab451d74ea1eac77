"""What an operator reads: an access line per request (refusals too, no secrets), counters
without ``*_created`` series, S3's endpoint and bucket in separate fields, and ``/dates``'
``committed_at`` as the commit's time."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr
from quart.typing import TestClientProtocol as Client

from common.jobs import ManifestStore
from common.layout import Layout
from common.models import Manifest
from common.settings import Settings
from common.storage import S3Store
from producer.app import create_app
from tests.integration.services import Service, running, start_api

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-value"  # noqa: S105 - a test token, checked never to be logged


async def access_lines(service: Service, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        while True:
            lines = [line for line in service.lines if line.get("event") == "request.answered"]
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.05)  # polling the log of a running process


async def test_every_request_has_an_access_line_without_secrets(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    api = await start_api(settings.model_copy(update={"api_token": SecretStr(TOKEN)}))
    async with running(api.service), aiohttp.ClientSession() as http:
        calls = [
            ("GET", "/country-stats?from=2024-01-01&to=bad"),
            ("POST", "/process-request?date=2024-01-01"),
            ("GET", "/country-stats?from=2024-01-01&to=2024-01-01&api_key=hunter2"),
        ]
        for method, path in calls:
            async with http.request(method, api.url + path) as response:
                await response.read()
        async with http.get(
            f"{api.url}/jobs/{'0' * 32}", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status == 404
        async with http.get(f"{api.url}/metrics") as response:
            metrics = await response.text()
        lines = await access_lines(api.service, 4)
    answered = [(line["method"], line["path"], line["status"]) for line in lines]
    assert ("GET", "/country-stats", 400) in answered
    assert ("POST", "/process-request", 401) in answered
    assert ("GET", f"/jobs/{'0' * 32}", 404) in answered
    assert all(isinstance(line["duration_ms"], float) for line in lines)
    redacted = [line for line in lines if "api_key" in line["query"]]
    assert redacted[0]["query"] == "from=2024-01-01&to=2024-01-01&api_key=%2A%2A%2A"
    text = str(api.service.lines)
    assert "hunter2" not in text
    assert TOKEN not in text
    assert "busstats_api_requests_total" in metrics
    assert "_created" not in metrics
    started = next(line for line in api.service.lines if line.get("event") == "api.started")
    assert started["s3"] == f"{settings.s3_endpoint_url}/"
    assert started["s3_bucket"] == settings.s3_bucket


@pytest.fixture
async def client(settings: Settings, amqp: AbstractRobustConnection) -> AsyncIterator[Client]:
    app = create_app(settings)
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def test_dates_say_when_the_date_was_committed(
    client: Client, store: S3Store, settings: Settings
) -> None:
    fetched = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)
    committed = datetime(2024, 5, 2, 10, 57, 18, tzinfo=UTC)
    manifests = ManifestStore(store, Layout(settings.s3_prefix))
    for day, committed_at in ((1, committed), (2, None)):
        manifest = Manifest(
            date=datetime(2024, 5, day, tzinfo=UTC).date(),
            job_id="a" * 32,
            run_id="b" * 32,
            fetched_at=fetched,
            committed_at=committed_at,
            cities=[],
        )
        await manifests.commit(manifest, None)
    body = await (await client.get("/dates?from=2024-05-01&to=2024-05-02")).get_json()
    shown = [item["committed"]["committed_at"] for item in body["dates"]]
    assert shown == ["2024-05-02T10:57:18Z", "2024-05-02T10:00:00Z"]  # none: the fetch's
