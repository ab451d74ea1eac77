"""Publishes job messages: persistent and confirmed, or an error the API turns into 503."""

import asyncio
import time
from types import TracebackType
from typing import Final, Self

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError, DeliveryError
from prometheus_client import Histogram

from common.logs import get_logger
from common.messages import CONTENT_TYPE, MESSAGE_TYPE, JobMessage
from common.settings import Settings
from common.topology import ROUTING_KEY, Topology, declare_topology

RECONNECT_SECONDS: Final = 1.0  # how soon a lost broker connection is retried
APP_ID: Final = "bus-stats-api"
log = get_logger(__name__)


class PublishError(Exception):
    """The broker is unreachable or did not confirm the message: nothing was queued."""


class JobPublisher:
    """One robust connection and one confirming channel per API process."""

    def __init__(self, settings: Settings, latency: Histogram | None = None) -> None:
        self._settings = settings
        self._latency = latency
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._topology: Topology | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        # A broker that is down at start-up must not stop the API: it answers 503 until
        # the broker is back, and /readyz says which dependency is missing.
        try:
            await self._ensure_channel()
        except PublishError as error:
            log.warning("broker.unavailable", error=str(error))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _ensure_channel(self) -> Topology:
        """The confirming channel's topology, connecting on first use.

        Once open, the robust connection restores the channel (and redeclares the
        topology) by itself after a broker outage; until it has, publishing fails fast.
        """
        async with self._lock:
            try:
                if self._connection is None:
                    self._connection = await aio_pika.connect_robust(
                        self._settings.amqp_url.get_secret_value(),
                        reconnect_interval=RECONNECT_SECONDS,
                        timeout=self._settings.publish_timeout_seconds,
                        client_properties={
                            "connection_name": f"{APP_ID} {self._settings.namespace}"
                        },
                    )
                if self._channel is None or self._topology is None:
                    self._channel = await self._connection.channel(publisher_confirms=True)
                    self._topology = await declare_topology(
                        self._channel, self._settings.namespace, self._settings.delivery_limit
                    )
            except (
                OSError,
                RuntimeError,
                AMQPError,
                aio_pika.exceptions.AMQPException,
                TimeoutError,
            ) as error:
                raise PublishError(f"broker unreachable: {error!r}") from error
            if self._channel.is_closed:
                raise PublishError("broker connection lost; reconnecting")
            return self._topology

    async def ping(self) -> None:
        """Raise :class:`PublishError` unless the broker connection is open."""
        await self._ensure_channel()
        if self._connection is None or self._connection.is_closed:
            raise PublishError("broker connection is closed")

    async def publish(self, job: JobMessage) -> None:
        """Return only once the broker confirmed the persistent message."""
        topology = await self._ensure_channel()
        message = aio_pika.Message(
            body=job.encode(),
            content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=job.job_id,
            type=MESSAGE_TYPE,
            app_id=APP_ID,
            headers={"date": job.date.isoformat(), "force": job.force, "attempt": 0},
        )
        clock = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.publish_timeout_seconds):
                await topology.exchange.publish(message, routing_key=ROUTING_KEY, mandatory=True)
        except DeliveryError as error:
            raise PublishError(f"broker refused the message: {error!r}") from error
        except (
            OSError,
            RuntimeError,
            AMQPError,
            aio_pika.exceptions.AMQPException,
            TimeoutError,
        ) as error:
            raise PublishError(f"broker did not confirm the message: {error!r}") from error
        if self._latency is not None:
            self._latency.observe(time.monotonic() - clock)
