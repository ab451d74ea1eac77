"""The consumer process: broker connection, prefetch, the consume loop, acks, shutdown.

One place decides what to tell the broker (:meth:`Worker._settle`):

- the job committed, was already done, or stood down for a newer claim: ack;
- a retryable failure before the job's last delivery: retry later, growing waits
  (:mod:`consumer.delays`): a confirmed copy with the failures so far goes to the delay
  queue of its wait, which dead-letters it back to the job queue when it expires, and
  the original is acked (if the copy is not confirmed: reject with requeue);
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

from common import amqp
from common.jobs import NEWER_VERSION
from common.logs import get_logger
from common.messages import JobMessage, NewerMessageError, UndecodableMessageError, decode_job
from common.misconfig import broker_refusal
from common.settings import Settings
from common.startup import ConnectState, retry_until_up, where
from common.storage import connect_store, ensure_bucket_until_up, s3_connect_state
from common.store_probe import probe_conditional_writes
from common.topology import ROUTING_KEY, Topology, declare_topology
from consumer.delays import RetrySchedule
from consumer.fetcher import ReferenceClient
from consumer.handler import DeferredError, Handler, JobFailedError
from consumer.metrics import ConsumerMetrics, count_s3_errors

log = get_logger(__name__)
DELIVERY_COUNT_HEADER: Final = "x-delivery-count"
FAILURES_HEADER: Final = "x-bus-stats-failures"
RECONNECT_SECONDS: Final = 1.0  # how soon a lost broker connection is retried
APP_ID: Final = "bus-stats-consumer"
Decision = Literal["ack", "requeue", "dead-letter", "republish", "retry-later", "defer"]


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
        self.retries = RetrySchedule.from_settings(settings)
        # How start-up goes, for /healthz: which dependency a retry waits for, and why.
        self.s3_state = s3_connect_state(settings)
        self.broker_state = ConnectState("broker", ", ".join(map(where, settings.amqp_urls)))
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

    def health_detail(self) -> dict[str, str]:
        """Each dependency's start-up state in words (``connected``, or why not yet)."""
        return {"s3": self.s3_state.summary(), "broker": self.broker_state.summary()}

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
            count_s3_errors(store.client.meta.events, self.metrics.s3_errors)
            await ensure_bucket_until_up(store, self.s3_state)
            await probe_conditional_writes(store, settings.s3_prefix)  # or FatalStartupError
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
            broker = self.broker_state
            connection = await retry_until_up(
                broker,
                lambda: stack.enter_async_context(self._connect()),
                retry_on=(OSError, AMQPError, aio_pika.exceptions.AMQPException, TimeoutError),
                fatal=lambda error: broker_refusal(error, broker.url),
            )
            self._connection = connection
            channel = await connection.channel()
            # A channel the broker closes (consumer_timeout, a protocol error) takes its
            # deliveries with it: their runs stop at once, whatever the connection does.
            channel.close_callbacks.add(self._on_channel_lost)
            await channel.set_qos(prefetch_count=settings.job_concurrency)
            topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
            self._publisher = await declare_topology(
                await connection.channel(publisher_confirms=True),
                settings.namespace,
                settings.delivery_limit,
                self.retries.distinct,
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
        # Fails over across the nodes of BUSSTATS_AMQP_URL (common.amqp).
        connection = await amqp.connect(
            self.settings.amqp_urls,
            app=APP_ID,
            namespace=self.settings.namespace,
            connect_seconds=self.settings.connect_timeout_seconds,
            reconnect_interval=RECONNECT_SECONDS,
        )
        connection.close_callbacks.add(self._on_connection_lost)
        try:
            yield connection
        finally:
            connection.close_callbacks.discard(self._on_connection_lost)
            await connection.close()

    def _on_connection_lost(self, _sender: Any, error: BaseException | None) -> None:
        log.warning("broker.connection_lost", running=len(self._running), error=repr(error))
        self.metrics.broker_connection_losses.inc()
        for task in self._running:
            task.cancel("broker connection lost")

    def _on_channel_lost(self, _sender: Any, error: BaseException | None) -> None:
        if not self._running:
            return
        log.warning("broker.channel_lost", running=len(self._running), error=repr(error))
        for task in self._running:
            task.cancel("broker channel lost: its deliveries are back in the queue")

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
        except NewerMessageError as newer:
            # Written by a newer version: its job says so and the message is done with,
            # rather than looping until the broker dead-letters it.
            log.warning("message.newer_version", message_id=message.message_id, error=str(newer))
            if self._handler is not None and newer.job_id is not None:
                reason = f"the job's message was {NEWER_VERSION}: upgrade the consumers"
                with contextlib.suppress(Exception):
                    await self._handler.lifecycle.fail_only_state(newer.job_id, reason)
            await self._settle(message, "ack", failures)
            return
        except UndecodableMessageError as error:
            log.warning("message.undecodable", message_id=message.message_id, error=str(error))
            await self._settle(message, "dead-letter", failures)
            return
        with structlog.contextvars.bound_contextvars(
            job_id=job.job_id, date=job.date.isoformat(), delivery=failures + 1
        ):
            decision = await self._run_job(job, failures, redelivered=bool(message.redelivered))
            await self._settle(message, decision, failures)

    async def _run_job(self, job: JobMessage, failures: int, *, redelivered: bool) -> Decision:
        assert self._handler is not None  # noqa: S101 - set before consuming starts
        limit = self.retries.limit
        give_up = None
        if failures > limit:
            give_up = (
                f"gave up after {failures} failed deliveries (limit {limit}): the last "
                "allowed attempt was cut short (its consumer was killed or lost the broker)"
            )
        try:
            state = await self._handler.handle(
                job,
                last_delivery=failures >= limit,
                give_up=give_up,
                retry_after=self.retries.retry_after(failures + 1),
                redelivered=redelivered,
            )
        except asyncio.CancelledError:
            return "republish" if self._stopping else "requeue"
        except DeferredError:
            return "defer"
        except JobFailedError as error:
            return "retry-later" if error.retryable and failures < limit else "dead-letter"
        except Exception as error:  # S3 down or a bug: a later delivery decides
            log.exception("job.crashed", error=repr(error))
            return "retry-later"
        if (
            give_up is not None
            and state is not None
            and state.status == "failed"
            and state.error == give_up
        ):
            return "dead-letter"
        return "ack"

    async def _settle(
        self, message: AbstractIncomingMessage, decision: Decision, failures: int
    ) -> None:
        """The one place that tells the broker what became of a delivery."""
        try:
            if decision == "republish":
                decision = await self._republish(message, failures)
            elif decision == "retry-later":
                decision = await self._republish(message, failures + 1, later=True)
            elif decision == "defer":
                decision = await self._republish(message, failures, later=True, shortest=True)
            if decision == "ack":
                await message.ack()
            else:
                await message.reject(requeue=decision == "requeue")
        except Exception as error:  # noqa: BLE001 - channel gone: the broker redelivers anyway
            log.warning("message.settle_failed", decision=decision, error=repr(error))
        else:
            log.info("message.settled", decision=decision)

    async def _republish(
        self,
        message: AbstractIncomingMessage,
        failures: int,
        *,
        later: bool = False,
        shortest: bool = False,
    ) -> Decision:
        """A confirmed copy carrying the failures so far: then the original may be acked.

        ``later``: the copy goes to the delay queue of the wait after ``failures``, which
        hands it back to the job queue when the wait is over.
        """
        publisher = self._publisher
        if publisher is None:
            return "requeue"
        exchange, routing_key, wait = publisher.exchange, ROUTING_KEY, 0.0
        if later:
            if publisher.retry_exchange is None:  # no waits at all: retried at once
                # A deferred copy would come straight back, counted: drop it instead.
                return "ack" if shortest else "requeue"
            exchange = publisher.retry_exchange
            wait = self.retries.distinct[0] if shortest else self.retries.wait_after(failures)
            routing_key = publisher.names.delay_queue(wait)
        headers = {
            key: value
            for key, value in (message.headers or {}).items()
            if key != DELIVERY_COUNT_HEADER and "-death" not in key  # x-death, x-first-death-*
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
                await exchange.publish(copy, routing_key=routing_key, mandatory=True)
        except Exception as error:  # noqa: BLE001 - not confirmed: requeue the original instead
            log.warning("message.republish_failed", error=repr(error))
            return "requeue"
        if later:
            log.info("message.delayed", failures=failures, wait_seconds=wait)
        else:
            log.info("message.republished", failures=failures)
        return "ack"
