"""The heartbeat of a run (consumer/handler.py) stops the run's work once its lease is gone.

The lease can go while the job's state is untouched: an ending writes the date state
first (lease cleared) and the job's state only after; if that second write fails or its
writer pauses, only the heartbeat's lease check notices. Over the in-memory store of
:mod:`tests.unit.memory_s3`.
"""

import asyncio
from datetime import date, timedelta
from typing import cast

import aiohttp

from common.layout import Layout
from common.lifecycle import FencedError, Lifecycle, Run
from common.models import JobState, Manifest
from common.settings import Settings
from common.storage import S3Store
from consumer.fetcher import ReferenceClient
from consumer.handler import Handler, _Run
from consumer.metrics import ConsumerMetrics
from tests.unit.memory_s3 import MemoryS3

DAY = date(2024, 1, 1)
HEARTBEAT = 0.02


async def test_a_run_whose_lease_is_cleared_stops_at_its_next_heartbeat() -> None:
    memory = MemoryS3()
    settings = Settings(heartbeat_seconds=HEARTBEAT)
    lifecycle = Lifecycle(memory, Layout(), stale_after=timedelta(seconds=60))

    def reuse(_job: JobState, _age: timedelta | None) -> bool:
        return False

    job = (await lifecycle.claim(DAY, force=False, reuse=reuse)).job
    run = await lifecycle.start(job.job_id, DAY)
    assert isinstance(run, Run)
    # An ending's first write: the lease is cleared; the job's state is not written yet.
    state, etag = await lifecycle.dates.read(DAY)
    await lifecycle.dates.swap(state.model_copy(update={"run": None}), etag)

    async with aiohttp.ClientSession() as session:
        handler = Handler(
            settings=settings,
            store=cast(S3Store, memory),  # the heartbeat uses the protocol's methods only
            reference=ReferenceClient(session, settings),
            metrics=ConsumerMetrics(),
        )
        attempt = _Run(handler, run)
        work: asyncio.Task[Manifest] = asyncio.create_task(asyncio.Event().wait())  # type: ignore[arg-type]  # the work never ends by itself
        stop = asyncio.Event()
        beat = asyncio.create_task(attempt._heartbeat(work, stop))
        try:
            async with asyncio.timeout(100 * HEARTBEAT):
                await asyncio.wait([work])
        finally:
            stop.set()
            await asyncio.wait([beat])
            work.cancel()
        assert work.cancelled()
        assert isinstance(attempt._fenced, FencedError)
