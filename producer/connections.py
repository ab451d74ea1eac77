"""The API's start-up connections: made in the background, never blocking serving.

The API serves ``/healthz`` (and ``/readyz``, which answers 503 meanwhile) from its first
moment. Broker and S3 are connected by one background task that retries each with
capped backoff, one log line per failed attempt naming what and where. A request that
needs S3 before it was reached waits a bounded time, then gets 503 naming the cause;
publishing waits the same way for the broker (:class:`producer.publisher.JobPublisher`).
SIGTERM cancels the task like any other: shutdown never waits for a connection.
"""

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

from common.logs import get_logger
from common.settings import Settings
from common.startup import Backoff, ConnectState, FatalStartupError, describe
from common.storage import S3Store, ensure_bucket_until_up, s3_connect_state
from common.store_probe import probe_conditional_writes
from producer.publisher import PING_WAIT_SECONDS, JobPublisher

log = get_logger(__name__)
EXTENSION_KEY: Final = "bus_stats_connections"


class NotConnectedError(Exception):
    """A dependency the request needs has not been reached since start-up."""


class Connections:
    """Brings the broker and S3 up in the background and tells who is waiting how it goes."""

    def __init__(
        self,
        settings: Settings,
        store: S3Store,
        publisher: JobPublisher,
        backoff: Backoff | None = None,
        *,
        on_fatal: Callable[[FatalStartupError], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_fatal = on_fatal
        self._store = store
        self._publisher = publisher
        self._backoff = backoff
        self.s3 = s3_connect_state(settings)
        self._s3_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def broker(self) -> ConnectState:
        return self._publisher.state

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="api-connections")

    async def stop(self) -> None:
        """Give up connecting (shutdown): cancel the task and wait for it to end."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.wait({self._task})
        if not self._task.cancelled():
            self._task.exception()  # logged when it happened

    async def _connect(self) -> None:
        refused: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._connect_s3())
                group.create_task(self._publisher.connect())
        except* FatalStartupError as refusals:  # wrong, not down: stop, saying why
            refused = refusals.exceptions[0]
        except* Exception as errors:  # a bug, not an outage: say so, keep serving /healthz
            for error in errors.exceptions:
                log.exception("api.connect_crashed", error=describe(error), exc_info=error)
            raise
        if isinstance(refused, FatalStartupError):
            log.error("api.refused", error=str(refused))
            if self._on_fatal is not None:
                self._on_fatal(refused)
            return
        log.info(
            "api.started",
            namespace=self._settings.namespace,
            bucket=self._settings.s3_bucket,
            broker=self.broker.url,
            s3=self.s3.url,
            s3_bucket=self.s3.bucket,
        )

    async def _connect_s3(self) -> None:
        await ensure_bucket_until_up(self._store, self.s3, self._backoff)
        try:
            await probe_conditional_writes(self._store, self._settings.s3_prefix)
        except FatalStartupError as error:  # a store this API must not use: S3 stays unready
            refused = error
        else:
            self._s3_ready.set()
            return
        log.error("api.refused", error=str(refused))
        if self._on_fatal is not None:
            self._on_fatal(refused)

    async def ping_s3(self) -> None:
        """Raise unless S3 answers now; before it was first reached, say how that goes.

        Waits only for the end of the first attempt (bounded), like the broker's ping.
        """
        await self.s3.wait_attempted(PING_WAIT_SECONDS)
        if self.s3.connected and not self._s3_ready.is_set():
            # Reached, and its conditional writes are being probed: a moment more.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_WAIT_SECONDS):
                    await self._s3_ready.wait()
        if not self._s3_ready.is_set():
            raise NotConnectedError(self.s3.summary())
        await self._store.ping()

    async def wait_for_s3(self) -> None:
        """Return once S3 was reached, waiting at most the publish timeout for it."""
        if self._s3_ready.is_set():
            return
        try:
            async with asyncio.timeout(self._settings.publish_timeout_seconds):
                await self._s3_ready.wait()
        except TimeoutError:
            raise NotConnectedError(f"S3 not reached yet: {self.s3.summary()}") from None
