"""The consumer process: broker connection, prefetch, the consume loop, acks, shutdown.

One place decides what to tell the broker (:meth:`Worker._settle`):

- the job committed (or was already done): ack;
- a retryable failure before the last delivery: reject with requeue (the quorum queue
  counts deliveries and dead-letters past its limit);
- a permanent failure, the last delivery, or an undecodable message: reject without
  requeue, so it goes to the dead-letter queue;
- cancelled at shutdown: reject with requeue, so another consumer takes it.

Shutdown is two-phase: stop consuming, give running jobs ``shutdown_grace_seconds``,
then cancel them (they requeue). If the broker connection drops, running jobs are
cancelled at once: their deliveries can no longer be acked, and the broker has already
given them back to the queue.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import aio_pika
import aiohttp
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from common.logs import get_logger
from common.messages import JobMessage, UndecodableMessageError, decode_job
from common.settings import Settings
from common.storage import open_store
from common.topology import Topology, declare_topology
from consumer.fetcher import ReferenceClient
from consumer.handler import Handler, JobFailedError
from consumer.metrics import ConsumerMetrics

log = get_logger(__name__)
DELIVERY_COUNT_HEADER: Final = "x-delivery-count"
RECONNECT_SECONDS: Final = 1.0  # how soon a lost broker connection is retried
APP_ID: Final = "bus-stats-consumer"


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How often the broker delivered this message before (0 on the first delivery)."""
    value = (message.headers or {}).get(DELIVERY_COUNT_HEADER, 0)
    return value if isinstance(value, int) else 0


class Worker:
    def __init__(self, settings: Settings, metrics: ConsumerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ConsumerMetrics()
        self._running: dict[asyncio.Task[None], AbstractIncomingMessage] = {}
        self._handler: Handler | None = None
        self._connection: AbstractRobustConnection | None = None
        self.ready = asyncio.Event()

    def is_connected(self) -> bool:
        """Whether the broker connection is open now (the consumer's health)."""
        connection = self._connection
        return self.ready.is_set() and connection is not None and not connection.is_closed

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then shut down in two phases."""
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                open_store(settings, max_connections=settings.city_concurrency + 8)
            )
            session = await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=settings.city_concurrency * settings.job_concurrency
                    ),
                    headers={"User-Agent": APP_ID},
                )
            )
            self._handler = Handler(
                settings, store, ReferenceClient(session, settings), self.metrics
            )
            connection = await stack.enter_async_context(self._connect())
            self._connection = connection
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=settings.job_concurrency)
            topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
            consumer_tag = await topology.queue.consume(self._on_message)
            log.info(
                "consumer.started", queue=topology.names.queue, prefetch=settings.job_concurrency
            )
            self.ready.set()
            await stop.wait()
            await self._shutdown(topology, consumer_tag)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AbstractRobustConnection]:
        connection = await aio_pika.connect_robust(
            self.settings.amqp_url.get_secret_value(),
            reconnect_interval=RECONNECT_SECONDS,
            client_properties={"connection_name": f"{APP_ID} {self.settings.namespace}"},
        )
        connection.close_callbacks.add(self._on_connection_lost)
        try:
            yield connection
        finally:
            connection.close_callbacks.discard(self._on_connection_lost)
            await connection.close()

    def _on_connection_lost(self, _sender: Any, error: BaseException | None) -> None:
        log.warning("broker.connection_lost", running=len(self._running), error=repr(error))
        for task in self._running:
            task.cancel("broker connection lost")

    async def _shutdown(self, topology: Topology, consumer_tag: str) -> None:
        log.info("consumer.stopping", running=len(self._running))
        with contextlib.suppress(Exception):
            await topology.queue.cancel(consumer_tag)
        if self._running:
            _, pending = await asyncio.wait(
                set(self._running), timeout=self.settings.shutdown_grace_seconds
            )
            for task in pending:
                task.cancel("shutdown grace period over")
            if pending:
                await asyncio.wait(pending)
        log.info("consumer.stopped")

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._process(message))
        self._running[task] = message
        task.add_done_callback(self._running.pop)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        deliveries = delivery_count(message)
        last_delivery = deliveries >= self.settings.delivery_limit
        try:
            job = decode_job(message.body)
        except UndecodableMessageError as error:
            log.warning("message.undecodable", message_id=message.message_id, error=str(error))
            await self._settle(message, "dead-letter")
            return
        with structlog.contextvars.bound_contextvars(
            job_id=job.job_id, date=job.date.isoformat(), delivery=deliveries + 1
        ):
            await self._settle(message, await self._run_job(job, last_delivery=last_delivery))

    async def _run_job(self, job: JobMessage, *, last_delivery: bool) -> str:
        assert self._handler is not None  # noqa: S101 - set before consuming starts
        try:
            await self._handler.handle(job, last_delivery=last_delivery)
        except asyncio.CancelledError:
            return "requeue"
        except JobFailedError as error:
            return "requeue" if error.retryable and not last_delivery else "dead-letter"
        except Exception as error:  # S3 or a bug: retried within the delivery limit
            log.exception("job.crashed", error=repr(error))
            return "dead-letter" if last_delivery else "requeue"
        return "ack"

    async def _settle(self, message: AbstractIncomingMessage, decision: str) -> None:
        """The one place that tells the broker what became of a delivery."""
        try:
            if decision == "ack":
                await message.ack()
            else:
                await message.reject(requeue=decision == "requeue")
        except Exception as error:  # noqa: BLE001 - channel gone: the broker redelivers anyway
            log.warning("message.settle_failed", decision=decision, error=repr(error))
        else:
            log.info("message.settled", decision=decision)
