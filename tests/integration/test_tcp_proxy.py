"""The silent-partition TCP proxy: forwards, goes silent without closing, heals."""

import asyncio
import time
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.conftest import AMQP_URL
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

QUIET = 0.5  # how long "nothing arrives" is watched for


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def echo_proxy() -> AsyncIterator[TcpProxy]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server, TcpProxy("127.0.0.1", server.sockets[0].getsockname()[1]) as proxy:
        yield proxy


async def test_a_partition_is_silent_both_ways_and_heals(echo_proxy: TcpProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    writer.write(b"one")
    assert await reader.readexactly(3) == b"one"
    echo_proxy.partition()
    writer.write(b"two")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), QUIET)
    assert not writer.is_closing()
    assert not reader.at_eof()
    echo_proxy.heal()
    assert await reader.readexactly(3) == b"two"
    writer.close()
    await writer.wait_closed()


async def test_a_connection_made_during_a_partition_waits_for_the_heal(
    echo_proxy: TcpProxy,
) -> None:
    echo_proxy.partition()
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), QUIET)
    echo_proxy.heal()
    assert await reader.readexactly(4) == b"held"
    writer.close()
    await writer.wait_closed()


async def test_an_amqp_client_with_a_short_heartbeat_notices_the_silence() -> None:
    """What the consumers meet: the broker link goes quiet, the heartbeat gives up on it."""
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        url = proxy.url_of(AMQP_URL).rstrip("/") + "/?heartbeat=1"
        connection = await aio_pika.connect(url, timeout=10)
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        try:
            started = time.monotonic()
            proxy.partition()
            async with asyncio.timeout(30):
                await closed.wait()
            assert time.monotonic() - started < 15
        finally:
            await connection.close()
