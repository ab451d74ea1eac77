"""``python -m consumer replay-dead-letters``: run dead-lettered jobs' dates again.

A job that ended never runs again (so that nothing it wrote can be needed once it is
swept). Replaying a dead letter therefore makes a **new job** for its date, under the
date's next claim, exactly as ``POST /process-request?date=D&force=true`` would, and
publishes it (persistent, confirmed) before the dead letter is acked. A dead letter whose
date has been claimed by a newer job since is acked without a replay: that newer job has
the date. Undecodable messages are left in the dead-letter queue for inspection.
"""

from datetime import timedelta

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from common.jobs import JobStore
from common.layout import Layout
from common.lifecycle import Lifecycle
from common.logs import get_logger
from common.messages import (
    JobMessage,
    UndecodableMessageError,
    decode_job,
)
from common.settings import Settings
from common.storage import open_store
from common.topology import ROUTING_KEY, declare_topology, job_message

log = get_logger(__name__)
APP_ID = "bus-stats-replay"


async def replay_dead_letters(settings: Settings, *, limit: int | None = None) -> int:
    """Replay up to ``limit`` dead-lettered jobs; returns how many new jobs were queued."""
    replayed = 0
    async with open_store(settings) as store:
        layout = Layout(settings.s3_prefix)
        jobs = JobStore(store, layout)
        lifecycle = Lifecycle(
            store, layout, stale_after=timedelta(seconds=settings.stale_job_seconds)
        )
        connection = await aio_pika.connect_robust(settings.amqp_urls[0])  # one node is enough
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
            skipped: list[AbstractIncomingMessage] = []
            while limit is None or replayed < limit:
                message = await topology.dead_letter_queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                try:
                    dead = decode_job(message.body)
                except UndecodableMessageError:
                    skipped.append(message)
                    continue
                state = await jobs.get(dead.job_id)
                dated, _ = await lifecycle.dates.read(dead.date)
                generation = 0 if state is None else state.generation
                claim = dated.claim
                if (
                    claim is not None
                    and claim.job_id != dead.job_id
                    and claim.generation > generation
                ):
                    log.info(
                        "job.replay_skipped",
                        job_id=dead.job_id,
                        date=dead.date.isoformat(),
                        newer_job_id=claim.job_id,
                    )
                    await message.ack()
                    continue
                claimed = await lifecycle.claim(dead.date, force=True, reuse=lambda *_: False)
                job = claimed.job
                replay = JobMessage(job_id=job.job_id, date=job.date, force=True)
                try:
                    await topology.exchange.publish(
                        job_message(replay, app_id=APP_ID, replay_of=dead.job_id),
                        routing_key=ROUTING_KEY,
                    )
                except BaseException:
                    # Not queued: undo the new claim; the dead letter stays for a later replay.
                    await lifecycle.withdraw(claimed, "the broker did not confirm the replay")
                    raise
                await lifecycle.retire(claimed)
                await message.ack()
                replayed += 1
                log.info(
                    "job.replayed",
                    job_id=job.job_id,
                    replay_of=dead.job_id,
                    date=job.date.isoformat(),
                    generation=job.generation,
                )
            for message in skipped:
                await message.reject(requeue=True)
    return replayed
