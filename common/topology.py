"""Every exchange and queue of bus-stats, named from the namespace, declared in one place.

::

    jobs exchange (direct) --job--> jobs queue (quorum, delivery limit)
                                         | rejected / over the limit
                                         v
    dead-letter exchange (fanout) --> dead-letter queue (quorum)

The producer, the consumer and the tests all call :func:`declare_topology`.
"""

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


@dataclass(frozen=True)
class Topology:
    names: Names
    exchange: AbstractExchange
    queue: AbstractQueue
    dead_letter_queue: AbstractQueue


async def declare_topology(
    channel: AbstractChannel, namespace: str, delivery_limit: int
) -> Topology:
    """Declare (idempotently) the exchanges and queues and bind them."""
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
    return Topology(
        names=names, exchange=exchange, queue=queue, dead_letter_queue=dead_letter_queue
    )


async def delete_topology(channel: AbstractChannel, namespace: str) -> None:
    """Remove every exchange and queue of a namespace (tests and teardown)."""
    names = Names(namespace)
    for queue in (names.queue, names.dead_letter_queue):
        await channel.queue_delete(queue)
    for exchange in (names.exchange, names.dead_letter_exchange):
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
