"""``busstats_consumer_s3_errors_total`` counts S3 requests that failed after the SDK's
retries (5xx answers and no answer at all), by operation, and nothing else: a 404 or a
lost compare-and-swap (412) is an outcome the code expects. A real aiobotocore client
talks to a small HTTP server of the test's own (status chosen per test) or to a closed
port."""

import socket
from collections.abc import AsyncIterator

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web
from botocore.exceptions import ClientError, EndpointConnectionError
from types_aiobotocore_s3 import S3Client

from consumer.metrics import ConsumerMetrics, count_s3_errors


async def s3_answering(status: int) -> AsyncIterator[str]:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(status=status, body=b"", content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def requests_to(endpoint: str, metrics: ConsumerMetrics, *, counted: bool) -> None:
    config = AioConfig(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2)
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    ) as client:
        s3: S3Client = client
        if counted:
            count_s3_errors(s3.meta.events, metrics.s3_errors)
        with pytest.raises((ClientError, EndpointConnectionError)):
            await s3.get_object(Bucket="b", Key="k")
        with pytest.raises((ClientError, EndpointConnectionError)):
            await s3.put_object(Bucket="b", Key="k", Body=b"x")


def errors(metrics: ConsumerMetrics, operation: str) -> float:
    value = metrics.registry.get_sample_value(
        "busstats_consumer_s3_errors_total", {"operation": operation}
    )
    return value or 0.0


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_counted_by_operation(status: int) -> None:
    metrics = ConsumerMetrics()
    async for endpoint in s3_answering(status):
        await requests_to(endpoint, metrics, counted=True)
    assert errors(metrics, "GetObject") == 1
    assert errors(metrics, "PutObject") == 1


async def test_no_answer_is_counted() -> None:
    metrics = ConsumerMetrics()
    await requests_to(f"http://127.0.0.1:{closed_port()}", metrics, counted=True)
    assert errors(metrics, "GetObject") == 1
    assert errors(metrics, "PutObject") == 1


@pytest.mark.parametrize("status", [404, 412])
async def test_expected_answers_are_not_errors(status: int) -> None:
    metrics = ConsumerMetrics()
    async for endpoint in s3_answering(status):
        await requests_to(endpoint, metrics, counted=True)
    assert errors(metrics, "GetObject") == 0
    assert errors(metrics, "PutObject") == 0


async def test_nothing_is_counted_without_the_hooks() -> None:
    """The counter moves only through count_s3_errors (the guard the tests above prove)."""
    metrics = ConsumerMetrics()
    async for endpoint in s3_answering(500):
        await requests_to(endpoint, metrics, counted=False)
    assert errors(metrics, "GetObject") == 0
