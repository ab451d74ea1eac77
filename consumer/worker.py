"""The consumer process: broker connection, prefetch, the consume loop, acks, shutdown.

One place decides what to tell the broker (:meth:`Worker._settle`):

- the job committed, was already done, or stood down for a newer claim: ack;
- a failure before the job's last delivery: reject with requeue (the quorum queue
  counts it in ``x-delivery-count``);
- a permanent failure or the last delivery's failure (the job's state already says
  ``failed`` and why), or an undecodable message: reject without requeue, so it goes to
  the dead-letter queue;
- cancelled at shutdown: a copy is re-published (confirmed) and the original acked, so
  a rolling restart never uses up a delivery; the copy carries the failures counted so
  far in its ``x-bus-stats-failures`` header.

A job's failed deliveries are that header plus the broker's ``x-delivery-count``. A
delivery past ``delivery_limit`` means the last allowed attempt was cut short (a killed
consumer): the job is ended ``failed`` with that reason, then dead-lettered. The
queue's own ``x-delivery-limit`` is set higher (see :mod:`common.topology`), as a safety
net that should never be the one to dead-letter.

Shutdown is two-phase: stop consuming, give running jobs ``shutdown_grace_seconds``,
then cancel them (they are re-published). If the broker connection drops, running jobs
are cancelled at once: their deliveries can no longer be settled, and the broker has
already given them back to the queue. Start-up waits for S3 and the broker with capped
backoff, one log line per attempt, and gives up as soon as ``stop`` is set.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final, Literal

import aio_pika
import aiohttp
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiormq.exceptions import AMQPError

from common.logs import get_logger
from common.messages import JobMessage, UndecodableMessageError, decode_job
from common.settings import Settings
from common.startup import ConnectState, retry_until_up, where
from common.storage import connect_store, ensure_bucket_until_up, s3_connect_state
from common.topology import ROUTING_KEY, Topology, declare_topology
from consumer.fetcher import ReferenceClient
from consumer.handler import Handler, JobFailedError
from consumer.metrics import ConsumerMetrics

log = get_logger(__name__)
DELIVERY_COUNT_HEADER: Final = "x-delivery-count"
FAILURES_HEADER: Final = "x-bus-stats-failures"
RECONNECT_SECONDS: Final = 1.0  # how soon a lost broker connection is retried
APP_ID: Final = "bus-stats-consumer"
Decision = Literal["ack", "requeue", "dead-letter", "republish"]


def _header_int(message: AbstractIncomingMessage, name: str) -> int:
    value = (message.headers or {}).get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def failed_deliveries(message: AbstractIncomingMessage) -> int:
    """How many deliveries of this job failed before this one (0 on the first)."""
    return _header_int(message, FAILURES_HEADER) + _header_int(message, DELIVERY_COUNT_HEADER)


class Worker:
    def __init__(self, settings: Settings, metrics: ConsumerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ConsumerMetrics()
        self._running: dict[asyncio.Task[None], AbstractIncomingMessage] = {}
        self._handler: Handler | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Topology | None = None
        self._stopping = False
        self.ready = asyncio.Event()

    def is_connected(self) -> bool:
        """Whether the broker connection is open now (the consumer's health)."""
        connection = self._connection
        # A robust connection is ``is_closed`` only once closed on purpose; while the broker
        # is away it is not ``connected``.
        return (
            self.ready.is_set()
            and connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then shut down in two phases."""
        main = asyncio.create_task(self._serve(stop))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not self.ready.is_set() and not main.done():
                # Still starting (waiting for S3 or the broker): nothing to hand back.
                log.info("consumer.stopped", during="start-up")
                main.cancel()
            await asyncio.wait({main})
            if not main.cancelled():
                main.result()  # re-raise what stopped it
        finally:
            stopped.cancel()
            main.cancel()

    async def _serve(self, stop: asyncio.Event) -> None:
        settings = self.settings
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                connect_store(settings, max_connections=settings.city_concurrency + 8)
            )
            await ensure_bucket_until_up(store, s3_connect_state(settings))
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
            connection = await retry_until_up(
                ConnectState("broker", where(settings.amqp_url.get_secret_value())),
                lambda: stack.enter_async_context(self._connect()),
                retry_on=(OSError, AMQPError, aio_pika.exceptions.AMQPException, TimeoutError),
            )
            self._connection = connection
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=settings.job_concurrency)
            topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
            self._publisher = await declare_topology(
                await connection.channel(publisher_confirms=True),
                settings.namespace,
                settings.delivery_limit,
            )
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
            timeout=self.settings.connect_timeout_seconds,
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
            self._stopping = True
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
        failures = failed_deliveries(message)
        try:
            job = decode_job(message.body)
        except UndecodableMessageError as error:
            log.warning("message.undecodable", message_id=message.message_id, error=str(error))
            await self._settle(message, "dead-letter", failures)
            return
        with structlog.contextvars.bound_contextvars(
            job_id=job.job_id, date=job.date.isoformat(), delivery=failures + 1
        ):
            decision = await self._run_job(job, failures)
            await self._settle(message, decision, failures)

    async def _run_job(self, job: JobMessage, failures: int) -> Decision:
        assert self._handler is not None  # noqa: S101 - set before consuming starts
        limit = self.settings.delivery_limit
        give_up = None
        if failures > limit:
            give_up = (
                f"gave up after {failures} failed deliveries (limit {limit}): the last "
                "allowed attempt was cut short (its consumer was killed or lost the broker)"
            )
        try:
            state = await self._handler.handle(
                job, last_delivery=failures >= limit, give_up=give_up
            )
        except asyncio.CancelledError:
            return "republish" if self._stopping else "requeue"
        except JobFailedError as error:
            return "requeue" if error.retryable and failures < limit else "dead-letter"
        except Exception as error:  # S3 down or a bug: the next delivery decides
            log.exception("job.crashed", error=repr(error))
            return "requeue"
        if give_up is not None and state.status == "failed" and state.error == give_up:
            return "dead-letter"
        return "ack"

    async def _settle(
        self, message: AbstractIncomingMessage, decision: Decision, failures: int
    ) -> None:
        """The one place that tells the broker what became of a delivery."""
        try:
            if decision == "republish":
                decision = await self._republish(message, failures)
            if decision == "ack":
                await message.ack()
            else:
                await message.reject(requeue=decision == "requeue")
        except Exception as error:  # noqa: BLE001 - channel gone: the broker redelivers anyway
            log.warning("message.settle_failed", decision=decision, error=repr(error))
        else:
            log.info("message.settled", decision=decision)

    async def _republish(self, message: AbstractIncomingMessage, failures: int) -> Decision:
        """A confirmed copy carrying the failures so far: then the original may be acked."""
        publisher = self._publisher
        if publisher is None:
            return "requeue"
        headers = {
            key: value
            for key, value in (message.headers or {}).items()
            if key != DELIVERY_COUNT_HEADER and not key.startswith("x-death")
        }
        headers[FAILURES_HEADER] = failures
        copy = aio_pika.Message(
            body=message.body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            type=message.type,
            app_id=message.app_id,
            headers=headers,
        )
        try:
            async with asyncio.timeout(self.settings.publish_timeout_seconds):
                await publisher.exchange.publish(copy, routing_key=ROUTING_KEY, mandatory=True)
        except Exception as error:  # noqa: BLE001 - not confirmed: requeue the original instead
            log.warning("message.republish_failed", error=repr(error))
            return "requeue"
        log.info("message.republished", failures=failures)
        return "ack"
