"""``python -m consumer replay-dead-letters``: move dead-lettered jobs back to the queue.

Each message is republished (persistent, confirmed) with its id and a fresh delivery
count, then acked on the dead-letter queue; a message that cannot be republished stays
where it is. Undecodable messages are left in the dead-letter queue for inspection.
"""

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.logs import get_logger
from common.messages import UndecodableMessageError, decode_job
from common.settings import Settings
from common.topology import ROUTING_KEY, declare_topology

log = get_logger(__name__)


async def replay_dead_letters(settings: Settings, *, limit: int | None = None) -> int:
    """Republish up to ``limit`` dead-lettered jobs; returns how many were replayed."""
    connection = await aio_pika.connect_robust(settings.amqp_url.get_secret_value())
    replayed = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
        skipped: list[AbstractIncomingMessage] = []
        while limit is None or replayed < limit:
            message = await topology.dead_letter_queue.get(no_ack=False, fail=False)
            if message is None:
                break
            try:
                job = decode_job(message.body)
            except UndecodableMessageError:
                skipped.append(message)
                continue
            replay = aio_pika.Message(
                body=job.encode(),
                content_type=message.content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=job.job_id,
                type=message.type,
                app_id="bus-stats-replay",
                headers={"date": job.date.isoformat(), "force": job.force, "replayed": True},
            )
            await topology.exchange.publish(replay, routing_key=ROUTING_KEY)
            await message.ack()
            replayed += 1
            log.info("job.replayed", job_id=job.job_id, date=job.date.isoformat())
        for message in skipped:
            await message.reject(requeue=True)
    return replayed
