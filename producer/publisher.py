"""Publishes job messages: persistent and confirmed, or an error the API turns into 503.

The broker connection is made by :meth:`JobPublisher.connect`, which the API runs as a
background task: a broker that is down at start-up is retried with capped backoff (one
log line per attempt) while the API serves, answering 503 to what needs the broker. Once
connected, the connection (:mod:`common.amqp`) restores itself after an outage, on another
node of the cluster when its node went.

:meth:`JobPublisher.publish` returns only once the broker confirmed the message (a quorum
queue confirms once a majority of its replicas hold it). A publish whose confirm was lost
with its connection is published again on the restored one, all within
``publish_timeout_seconds``; the consumers drop the second copy of a job's message.
"""

import asyncio
import time
from types import TracebackType
from typing import Final, Self

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError
from prometheus_client import Histogram

from common import amqp
from common.logs import get_logger
from common.messages import JobMessage
from common.misconfig import broker_refusal
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
        self._channel: AbstractRobustChannel | None = None
        self._topology: Topology | None = None
        self._connected = asyncio.Event()
        self.state = ConnectState("broker", ", ".join(map(where, settings.amqp_urls)))

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
            self.state,
            self._connect_once,
            retry_on=CONNECT_ERRORS,
            backoff=self._backoff,
            fatal=lambda error: broker_refusal(error, self.state.url),
        )

    async def _connect_once(self) -> None:
        settings = self._settings
        connection = await amqp.connect(
            settings.amqp_urls,
            app=APP_ID,
            namespace=settings.namespace,
            connect_seconds=settings.publish_timeout_seconds,
            reconnect_interval=RECONNECT_SECONDS,
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

    async def _ready(self, seconds: float) -> tuple[AbstractRobustChannel, Topology]:
        """The confirming channel and its topology, waiting ``seconds`` for the first connect.

        Once open, the connection restores the channel (and redeclares the topology) by
        itself after a broker outage; :func:`common.amqp.publish_confirmed` waits for that.
        """
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(seconds):
                    await self._connected.wait()
            except TimeoutError:
                raise PublishError(f"broker not connected: {self.state.summary()}") from None
        assert self._channel is not None  # noqa: S101 - set with the event
        assert self._topology is not None  # noqa: S101 - set with the event
        return self._channel, self._topology

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
        """Return only once the broker confirmed the persistent message.

        Within ``publish_timeout_seconds`` overall: the wait for the first connection, and
        publishing again on the restored connection when a confirm was lost with the old.
        """
        clock = time.monotonic()
        budget = self._settings.publish_timeout_seconds
        channel, topology = await self._ready(budget)
        message = job_message(job, app_id=APP_ID)
        try:
            attempts = await amqp.publish_confirmed(
                channel,
                topology.exchange,
                message,
                routing_key=ROUTING_KEY,
                within_seconds=max(0.0, budget - (time.monotonic() - clock)),
            )
        except amqp.NotConfirmedError as error:
            raise PublishError(f"broker did not confirm the message: {error}") from error
        if attempts > 1:
            log.info("job.publish_retried", job_id=job.job_id, attempts=attempts)
        if self._latency is not None:
            self._latency.observe(time.monotonic() - clock)
