"""Every exchange and queue of bus-stats, named from the namespace, declared in one place.

::

    jobs exchange (direct) --job--> jobs queue (quorum, delivery limit)
                                         | rejected / over the limit
                                         v
    dead-letter exchange (fanout) --> dead-letter queue (quorum)

    a failed job to be retried later (consumer) --> retry exchange (direct)
        --<delay queue's name>--> delay queue (quorum, fixed x-message-ttl, one per wait)
        --expired, dead-lettered at least once--> jobs exchange --job--> jobs queue

The producer, the consumer and the tests all call :func:`declare_topology`.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from common.messages import CONTENT_TYPE, MESSAGE_TYPE, JobMessage

ROUTING_KEY: Final = "job"
# The queue's own delivery limit is the consumers' (``delivery_limit``) plus this margin:
# the consumers end a job whose deliveries are spent themselves (state saved, reason
# given) when it comes back once more, so the broker's limit is only a safety net.
DELIVERY_LIMIT_MARGIN: Final = 2


@dataclass(frozen=True)
class Names:
    """The broker names of one deployment (or one test run)."""

    namespace: str

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.jobs"

    @property
    def queue(self) -> str:
        return f"{self.namespace}.jobs"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.jobs.dead-letter"

    @property
    def retry_exchange(self) -> str:
        return f"{self.namespace}.jobs.retry"

    def delay_queue(self, seconds: float) -> str:
        """The queue where a job waits ``seconds`` before it goes back to the job queue."""
        return f"{self.namespace}.jobs.delay.{round(seconds * 1000)}ms"


@dataclass(frozen=True)
class Topology:
    names: Names
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_letter_queue: AbstractQueue
    retry_exchange: AbstractExchange | None = None  # declared when there are delays


async def declare_topology(
    channel: AbstractChannel,
    namespace: str,
    delivery_limit: int,
    retry_delays: Iterable[float] = (),
) -> Topology:
    """Declare (idempotently) the exchanges and queues and bind them.

    ``retry_delays``: the waits of failed jobs (the consumers'), one delay queue each.
    """
    names = Names(namespace)
    dead_letter_exchange = await channel.declare_exchange(
        names.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_letter_queue = await channel.declare_queue(
        names.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_letter_queue.bind(dead_letter_exchange)
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    arguments: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.dead_letter_exchange,
        "x-delivery-limit": delivery_limit + DELIVERY_LIMIT_MARGIN,
    }
    queue = await channel.declare_queue(names.queue, durable=True, arguments=arguments)
    await queue.bind(exchange, routing_key=ROUTING_KEY)
    retry_exchange = await _declare_delays(channel, names, sorted(set(retry_delays)))
    return Topology(
        names=names,
        exchange=exchange,
        queue=queue,
        dead_letter_queue=dead_letter_queue,
        retry_exchange=retry_exchange,
    )


async def _declare_delays(
    channel: AbstractChannel, names: Names, delays: list[float]
) -> AbstractExchange | None:
    """The retry exchange and a delay queue per wait, each routed by its own name.

    A delay queue has a fixed TTL (so messages expire in order, at its head) and no
    consumer: an expired message is dead-lettered to the jobs exchange, at least once
    (RabbitMQ 3.10+ quorum queues; ``reject-publish`` overflow is what that requires).
    """
    if not delays:
        return None
    retry_exchange = await channel.declare_exchange(
        names.retry_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for seconds in delays:
        name = names.delay_queue(seconds)
        delay_queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": round(seconds * 1000),
                "x-dead-letter-exchange": names.exchange,
                "x-dead-letter-routing-key": ROUTING_KEY,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        await delay_queue.bind(retry_exchange, routing_key=name)
    return retry_exchange


async def delete_topology(
    channel: AbstractChannel, namespace: str, retry_delays: Iterable[float] = ()
) -> None:
    """Remove every exchange and queue of a namespace (tests and teardown)."""
    names = Names(namespace)
    delay_queues = [names.delay_queue(seconds) for seconds in set(retry_delays)]
    for queue in (names.queue, names.dead_letter_queue, *delay_queues):
        await channel.queue_delete(queue)
    for exchange in (names.exchange, names.dead_letter_exchange, names.retry_exchange):
        await channel.exchange_delete(exchange)


def job_message(job: JobMessage, *, app_id: str, **headers: Any) -> aio_pika.Message:
    """The persistent AMQP message of a job: its id as ``message_id``, ``date`` and
    ``force`` as headers (shown by the admin UI), plus ``headers``."""
    return aio_pika.Message(
        body=job.encode(),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=job.job_id,
        type=MESSAGE_TYPE,
        app_id=app_id,
        headers={"date": job.date.isoformat(), "force": job.force, **headers},
    )
