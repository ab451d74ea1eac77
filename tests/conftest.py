"""The test rig: a Moto S3 server over HTTP, the real RabbitMQ, unique names per test.

No mock stands in for RabbitMQ or S3. If the broker does not answer, the tests that need
it fail with a message saying how to start one; they never skip.
"""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from moto.server import ThreadedMotoServer

from common.settings import Settings
from common.storage import S3Store, open_store
from common.topology import delete_topology
from consumer.delays import parse_delays
from tests.integration.s3_server import RestartableMoto

AMQP_URL = os.environ.get("BUSSTATS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TEST_RETRY_DELAYS = "0.1"
BROKER_HELP = (
    "RabbitMQ does not answer at {url}: start it with `rabbitmq-server -detached` "
    "(install with `apt-get install -y rabbitmq-server`), or `docker compose up -d rabbitmq`, "
    "or point BUSSTATS_AMQP_URL at one."
)


def pytest_configure(config: pytest.Config) -> None:
    """Never read real AWS credentials or config: the tests talk to Moto only."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "BUSSTATS_")) and name != "BUSSTATS_AMQP_URL":
            del os.environ[name]
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"  # noqa: S105 - Moto's dummy credentials
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A Moto server in server mode, on loopback and a free port, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def moto_reset(moto_url: str) -> AsyncIterator[str]:
    """Moto's state is dropped after each test that uses S3."""
    yield moto_url
    async with aiohttp.ClientSession() as session, session.post(f"{moto_url}/moto-api/reset") as r:
        r.raise_for_status()


@pytest.fixture
async def moto() -> AsyncIterator[RestartableMoto]:
    """A Moto endpoint of the test's own that it may restart, hold requests on or make fail.

    It shares the session server's backend (Moto's state is module state), so it is reset
    the same way afterwards.
    """
    server = RestartableMoto()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.trap = None
        server.failures.clear()
        server.start()  # reset through the API, then stop for good
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{server.url}/moto-api/reset") as response,
        ):
            response.raise_for_status()
        server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed after the test."""
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def make_settings(moto_url: str, namespace: str, **overrides: Any) -> Settings:
    """Settings as an entry point would read them, pointed at the test services."""
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "namespace": namespace,
        "s3_endpoint_url": moto_url,
        "s3_bucket": f"bkt-{namespace}",
        "retry_backoff_seconds": 0.05,
        "retry_backoff_max_seconds": 0.2,
        "shutdown_grace_seconds": 5.0,
        # Failed jobs wait in a delay queue before their next delivery: briefly in tests.
        "retry_delays_seconds": TEST_RETRY_DELAYS,
        "delivery_limit": 3,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(moto_reset: str, namespace: str) -> Settings:
    return make_settings(moto_reset, namespace)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[S3Store]:
    async with open_store(settings) as opened:
        yield opened


@pytest.fixture
async def amqp(namespace: str) -> AsyncIterator[AbstractRobustConnection]:
    """A connection to the real broker; the test's namespace is deleted afterwards."""
    try:
        connection = await aio_pika.connect_robust(AMQP_URL, timeout=5)
    except (OSError, aio_pika.exceptions.AMQPConnectionError) as error:
        pytest.fail(BROKER_HELP.format(url=AMQP_URL) + f" ({error!r})", pytrace=False)
    try:
        yield connection
    finally:
        channel = await connection.channel()
        await delete_topology(channel, namespace, parse_delays(TEST_RETRY_DELAYS))
        await connection.close()
