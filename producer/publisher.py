"""Publishes job messages: persistent and confirmed, or an error the API turns into 503.

The broker connection is made by :meth:`JobPublisher.connect`, which the API runs as a
background task: a broker that is down at start-up is retried with capped backoff (one
log line per attempt) while the API serves, answering 503 to what needs the broker. Once
connected, the robust connection restores itself after an outage.
"""

import asyncio
import time
from types import TracebackType
from typing import Final, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError, DeliveryError
from prometheus_client import Histogram

from common.logs import get_logger
from common.messages import JobMessage
from common.settings import Settings
from common.startup import Backoff, ConnectState, retry_until_up, where
from common.topology import ROUTING_KEY, Topology, declare_topology, job_message

RECONNECT_SECONDS: Final = 1.0  # how soon a lost broker connection is retried
APP_ID: Final = "bus-stats-api"
PING_WAIT_SECONDS: Final = 2.0  # readiness waits this long at most for the first attempt
CONNECT_ERRORS: Final = (
    OSError,
    RuntimeError,
    AMQPError,
    aio_pika.exceptions.AMQPException,
    TimeoutError,
)
log = get_logger(__name__)


class PublishError(Exception):
    """The broker is unreachable or did not confirm the message: nothing was queued."""


class JobPublisher:
    """One robust connection and one confirming channel per API process."""

    def __init__(
        self,
        settings: Settings,
        latency: Histogram | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._settings = settings
        self._latency = latency
        self._backoff = backoff
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._topology: Topology | None = None
        self._connected = asyncio.Event()
        self.state = ConnectState("broker", where(settings.amqp_url.get_secret_value()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def connect(self) -> None:
        """Connect and declare the topology, retrying until the broker answers.

        Cancel the task to give up (shutdown during start-up).
        """
        await retry_until_up(
            self.state, self._connect_once, retry_on=CONNECT_ERRORS, backoff=self._backoff
        )

    async def _connect_once(self) -> None:
        settings = self._settings
        connection = await aio_pika.connect_robust(
            settings.amqp_url.get_secret_value(),
            reconnect_interval=RECONNECT_SECONDS,
            timeout=settings.publish_timeout_seconds,
            client_properties={"connection_name": f"{APP_ID} {settings.namespace}"},
        )
        try:
            async with asyncio.timeout(settings.publish_timeout_seconds):
                channel = await connection.channel(publisher_confirms=True)
                topology = await declare_topology(
                    channel, settings.namespace, settings.delivery_limit
                )
        except BaseException:
            await asyncio.shield(connection.close())
            raise
        self._connection, self._channel, self._topology = connection, channel, topology
        self._connected.set()

    async def _ready_topology(self) -> Topology:
        """The confirming channel's topology, waiting a bounded time for the first connect.

        Once open, the robust connection restores the channel (and redeclares the
        topology) by itself after a broker outage; until it has, publishing fails fast.
        """
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(self._settings.publish_timeout_seconds):
                    await self._connected.wait()
            except TimeoutError:
                raise PublishError(f"broker not connected: {self.state.summary()}") from None
        assert self._channel is not None  # noqa: S101 - set with the event
        assert self._topology is not None  # noqa: S101 - set with the event
        if self._channel.is_closed:
            raise PublishError("broker connection lost; reconnecting")
        return self._topology

    async def ping(self) -> None:
        """Raise :class:`PublishError` unless the broker connection is open.

        Waits only for the end of the first connection attempt (bounded), so that
        readiness right after start-up reports how it went rather than "not yet".
        """
        await self.state.wait_attempted(PING_WAIT_SECONDS)
        if not self._connected.is_set():
            raise PublishError(f"not connected: {self.state.summary()}")
        if self._connection is None or self._connection.is_closed:
            raise PublishError("broker connection is closed")
        # A robust connection is never "closed" by an outage: it reconnects, and says so
        # by clearing its `connected` event meanwhile.
        if not self._connection.connected.is_set() or (
            self._channel is None or self._channel.is_closed
        ):
            raise PublishError("broker connection lost; reconnecting")

    async def publish(self, job: JobMessage) -> None:
        """Return only once the broker confirmed the persistent message."""
        topology = await self._ready_topology()
        message = job_message(job, app_id=APP_ID)
        clock = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.publish_timeout_seconds):
                await topology.exchange.publish(message, routing_key=ROUTING_KEY, mandatory=True)
        except DeliveryError as error:
            raise PublishError(f"broker refused the message: {error!r}") from error
        except CONNECT_ERRORS as error:
            raise PublishError(f"broker did not confirm the message: {error!r}") from error
        if self._latency is not None:
            self._latency.observe(time.monotonic() - clock)
