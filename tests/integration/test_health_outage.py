"""Health that means something: during a broker outage the API is not ready and a
consumer is not healthy; both recover by themselves when the broker is back.

The outage is made by a TCP proxy between the processes and the real broker: "down"
drops every proxied connection and refuses new ones, "up" accepts again. Other users of
the broker are not touched.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from common.settings import Settings
from tests.conftest import AMQP_URL
from tests.integration.services import environment, running, start

pytestmark = pytest.mark.integration

DEADLINE = 30.0  # an orchestrator notices within ~15 s (5 s interval, 3 retries)


class Proxy:
    """A TCP proxy on a loopback port to the broker, that can be cut and restored."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    async def up(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Refuse new connections and cut the open ones (like a broker going away)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        sink.transport.abort()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    target = urlsplit(AMQP_URL)
    opened = Proxy(target.hostname or "127.0.0.1", target.port or 5672)
    await opened.up()
    try:
        yield opened
    finally:
        await opened.down()


def through(proxy: Proxy) -> str:
    parts = urlsplit(AMQP_URL)
    credentials = f"{parts.username}:{parts.password}@" if parts.username else ""
    return f"amqp://{credentials}127.0.0.1:{proxy.port}{parts.path or '/'}"


async def wait_for_status(http: aiohttp.ClientSession, url: str, status: int) -> None:
    async with asyncio.timeout(DEADLINE):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == status:
                        return
            await asyncio.sleep(0.2)  # polling a health endpoint, as an orchestrator does


async def test_api_is_not_ready_while_the_broker_is_gone(
    settings: Settings, amqp: AbstractRobustConnection, proxy: Proxy
) -> None:
    env = environment(settings, BUSSTATS_AMQP_URL=through(proxy))
    api = await start("api", "producer", env, "--port", "0")
    async with running(api), aiohttp.ClientSession() as http:
        port = (await api.wait_for_event("api.listening"))["port"]
        await api.wait_for_event("api.started")
        readyz = f"http://127.0.0.1:{port}/readyz"
        await wait_for_status(http, readyz, 200)
        await proxy.down()
        await wait_for_status(http, readyz, 503)
        await proxy.up()
        await wait_for_status(http, readyz, 200)


async def test_consumer_is_unhealthy_while_the_broker_is_gone(
    settings: Settings, amqp: AbstractRobustConnection, proxy: Proxy
) -> None:
    env = environment(settings, BUSSTATS_AMQP_URL=through(proxy), BUSSTATS_METRICS_PORT="0")
    consumer = await start("consumer", "consumer", env)
    async with running(consumer), aiohttp.ClientSession() as http:
        port = (await consumer.wait_for_event("metrics.listening"))["port"]
        healthz = f"http://127.0.0.1:{port}/healthz"
        await consumer.wait_for_event("consumer.started")
        await wait_for_status(http, healthz, 200)
        await proxy.down()
        await wait_for_status(http, healthz, 503)
        await proxy.up()
        await wait_for_status(http, healthz, 200)
