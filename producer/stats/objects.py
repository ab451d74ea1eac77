"""The object path: one city object streamed from S3 in blocks and summed in threads.

The body is read in blocks of ``block_bytes``; each block takes a slot of the process's
block budget before it is read and gives it back once parsed, so the raw bytes held by
every query of the process together are at most ``slots x block_bytes`` (plus the block
being joined), whatever the objects' sizes or count. While one block is parsed in a
thread, the next is downloading: download and parsing overlap, and several objects'
blocks parse at once on several cores (pyarrow releases the GIL).

An object is read with ``If-Match`` on the ETag its manifest recorded: a replaced or
deleted object answers ``None`` (the date changed), never another version's bytes.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from producer.stats.blocks import Block, parse_block, stitch
from producer.stats.figures import Totals
from producer.stats.shared import Workers

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = object


class ByteStream(Protocol):
    async def read(self, size: int) -> bytes:
        """At most ``size`` bytes; ``b""`` at the end."""
        ...


class ObjectSource(Protocol):
    """Streams stored objects (tests may keep them in memory)."""

    def open(
        self, key: str, etag: str
    ) -> contextlib.AbstractAsyncContextManager[ByteStream | None]:
        """The object's body if it still has ``etag``; ``None`` if it is gone or replaced."""
        ...


def same_etag(left: str, right: str) -> bool:
    return left.strip().strip('"') == right.strip().strip('"')


_GONE = frozenset({"NoSuchKey", "404", "NotFound", "PreconditionFailed", "412"})


class S3ObjectSource:
    """:class:`ObjectSource` over one bucket, with the process's S3 client."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    @contextlib.asynccontextmanager
    async def open(self, key: str, etag: str) -> AsyncIterator[ByteStream | None]:
        try:
            response = await self._client.get_object(Bucket=self._bucket, Key=key, IfMatch=etag)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code", "")) not in _GONE:
                raise
            response = None
        if response is None:
            yield None
            return
        async with response["Body"] as body:
            yield body if same_etag(response["ETag"], etag) else None


@dataclass(frozen=True, slots=True)
class ObjectRead:
    totals: Totals
    bytes_read: int


class BlockBudget:
    """The raw bytes one process holds for the object path: ``slots`` blocks of a size,
    parsed by ``workers``."""

    def __init__(self, block_bytes: int, slots: int, workers: Workers) -> None:
        if block_bytes < 1 or slots < 1:
            raise ValueError("block_bytes and slots must be at least 1")
        self.block_bytes = block_bytes
        self.slots = asyncio.Semaphore(slots)
        self.workers = workers


async def read_block(stream: ByteStream, size: int) -> bytes:
    """Up to ``size`` bytes of the stream (fewer only at its end)."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        chunk = await stream.read(size - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def object_totals(
    source: ObjectSource, key: str, etag: str, budget: BlockBudget
) -> ObjectRead | None:
    """The sums of one object's records; ``None`` if the object is gone or was replaced."""
    slots = budget.slots
    await slots.acquire()
    held = True
    try:
        async with source.open(key, etag) as stream:
            if stream is None:
                return None
            blocks: list[asyncio.Task[Block]] = []
            size = 0
            async with asyncio.TaskGroup() as group:
                while True:
                    if not held:
                        await slots.acquire()
                        held = True
                    data = await read_block(stream, budget.block_bytes)
                    if not data:
                        break
                    size += len(data)
                    held = False  # the parse gives the slot back
                    blocks.append(group.create_task(_parse(data, budget)))
                    del data
        totals = await budget.workers.run(stitch, [task.result() for task in blocks])
        return ObjectRead(totals, size)
    finally:
        if held:
            slots.release()


async def _parse(data: bytes, budget: BlockBudget) -> Block:
    try:
        return await budget.workers.run(parse_block, data)
    finally:
        budget.slots.release()
