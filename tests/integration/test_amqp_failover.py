"""The failover connection (common.amqp) against the real broker on this machine.

One broker stands in for a cluster: ``127.0.0.1`` and ``localhost`` are two addresses of
it, and a free port is a node that is down. The three-node cluster itself is exercised by
``tests/cluster`` (``make cluster-test``).
"""

import asyncio
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest

from common import amqp
from tests.integration.broker import close_connections
from tests.integration.services import free_port

pytestmark = pytest.mark.integration

NODE_A = "amqp://guest:guest@127.0.0.1:5672/"
NODE_B = "amqp://guest:guest@localhost:5672/"


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = f"test-amqp-{uuid.uuid4().hex[:12]}"
    yield name
    connection = await aio_pika.connect(NODE_A, timeout=5)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


async def connect(urls: list[str], namespace: str) -> aio_pika.abc.AbstractRobustConnection:
    return await amqp.connect(
        urls, app="bus-stats-test", namespace=namespace, connect_seconds=5, reconnect_interval=0.1
    )


async def test_the_first_node_that_answers_is_used(namespace: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    connection = await connect([dead, NODE_A], namespace)
    async with connection:
        assert isinstance(connection, amqp.FailoverConnection)
        assert connection.node == "amqp://127.0.0.1:5672/"
        assert "guest" not in str(connection.node)


async def test_no_node_answering_raises(namespace: str) -> None:
    dead = [f"amqp://guest:guest@127.0.0.1:{free_port()}/" for _ in range(2)]
    with pytest.raises(ConnectionError):
        await connect(dead, namespace)


async def dropped_and_restored(connection: amqp.FailoverConnection, namespace: str) -> None:
    """Have the broker close the connection; return once the connection is back."""
    restored = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: restored.set())
    assert await close_connections(namespace) == 1
    async with asyncio.timeout(30):
        await restored.wait()


@pytest.mark.timeout(90)
async def test_a_lost_node_is_replaced_by_the_next_and_the_consumer_restored(
    namespace: str, queue_name: str
) -> None:
    """Round-robin: after losing A the connection goes to B (not back to A), and the
    robust channel's queue and consumer come back on it."""
    connection = await connect([NODE_A, NODE_B], namespace)
    async with connection:
        assert isinstance(connection, amqp.FailoverConnection)
        channel = await connection.channel()
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        received: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            await received.put(message.body)

        await queue.consume(on_message)
        assert connection.node == "amqp://127.0.0.1:5672/"

        await dropped_and_restored(connection, namespace)
        assert connection.node == "amqp://localhost:5672/"

        await channel.ready()
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue_name)
        async with asyncio.timeout(30):
            assert await received.get() == b"after"

        await dropped_and_restored(connection, namespace)
        assert connection.node == "amqp://127.0.0.1:5672/"  # and back to A: round-robin


@pytest.mark.timeout(120)
async def test_a_publish_whose_connection_drops_is_published_again(
    namespace: str, queue_name: str
) -> None:
    """Connections dropped during a stream of publishes: every publish_confirmed returns
    (none raises), and every message is in the queue at least once."""
    connection = await connect([NODE_A, NODE_B], namespace)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
        count = 200
        republished = 0
        dropper_done = asyncio.Event()

        async def drop_connections() -> None:
            for _ in range(3):
                await close_connections(namespace)
            dropper_done.set()

        dropper = asyncio.create_task(drop_connections())
        sent = 0
        while sent < count or not dropper_done.is_set():
            attempts = await amqp.publish_confirmed(
                channel,
                channel.default_exchange,
                aio_pika.Message(
                    str(sent).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                ),
                routing_key=queue_name,
                within_seconds=30,
            )
            republished += attempts > 1
            sent += 1
        await dropper
        assert republished >= 1, "no publish lost its confirm: the test proved nothing"

        await channel.ready()
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        bodies: set[bytes] = set()
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            bodies.add(message.body)
        assert bodies == {str(number).encode() for number in range(sent)}
