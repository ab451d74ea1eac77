"""The object path: one city object streamed from S3 in blocks and summed in threads.

The body is read in blocks of ``block_bytes``; each block takes a slot of the process's
block budget before it is read and gives it back once parsed, so the raw bytes held by
every query of the process together are at most ``slots x block_bytes`` (plus the block
being joined), whatever the objects' sizes or count. While one block is parsed in a
thread, the next is downloading: download and parsing overlap, and several objects'
blocks parse at once on several cores (pyarrow releases the GIL).

An object is read with ``If-Match`` on the ETag its manifest recorded: a replaced or
deleted object answers ``None`` (the date changed), never another version's bytes.

A compressed object (its key ends in ``.zst`` or ``.gz``: :func:`common.codec.codec_of_key`)
is decompressed as it streams, in a worker thread (zstd and zlib release the GIL), by
:class:`Inflating`: the blocks parsed are blocks of its lines, of the same bounded size,
so memory does not grow with the compression ratio; what is held besides is at most
``INFLATE_READ_BYTES`` of compressed bytes per object. Decompressing one object is
sequential, but it overlaps the parsing of its earlier blocks and every other object's
work. Objects written before codecs (``.jsonl``) are read as they are.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from botocore.exceptions import ClientError

from common.codec import Codec, Decompressor, TruncatedError, codec_of_key
from producer.stats.blocks import BadObjectError, Block, parse_block, stitch
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
    bytes_read: int  # as stored (compressed, for a compressed object)


INFLATE_READ_BYTES: Final = 1024 * 1024  # compressed bytes read at a time (about 14 MB of lines)


class Inflating:
    """A :class:`ByteStream` of an object's lines, from a stream of its compressed bytes.

    ``read(size)`` answers at most ``size`` bytes of lines, decompressing in ``workers``
    only what it needs; ``b""`` at the end, after checking that the last frame was whole
    (a truncated object raises :class:`~producer.stats.blocks.BadObjectError`).
    """

    def __init__(self, stream: ByteStream, codec: Codec, workers: Workers) -> None:
        self._stream = stream
        self._decompressor = Decompressor(codec)
        self._workers = workers
        self._ended = False
        self.bytes_read = 0  # compressed, from the stream

    async def read(self, size: int) -> bytes:
        decompressor = self._decompressor
        while True:
            if decompressor.buffered:
                lines = await self._workers.run(self._inflate, size)
                if lines:
                    return lines
            if self._ended:
                return b""
            raw = await self._stream.read(INFLATE_READ_BYTES)
            if raw:
                self.bytes_read += len(raw)
                decompressor.feed(raw)
            else:
                self._ended = True
                self._finish()

    def _inflate(self, size: int) -> bytes:
        try:
            return self._decompressor.read(size)
        except TruncatedError as error:
            raise BadObjectError(str(error)) from None

    def _finish(self) -> None:
        try:
            self._decompressor.finish()
        except TruncatedError as error:
            raise BadObjectError(str(error)) from None


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
        async with source.open(key, etag) as stored:
            if stored is None:
                return None
            codec = codec_of_key(key)
            inflating = None if codec == "none" else Inflating(stored, codec, budget.workers)
            stream: ByteStream = stored if inflating is None else inflating
            blocks: list[asyncio.Task[Block]] = []
            size = 0
            try:
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
            except ExceptionGroup as failures:
                # A bad block or a truncated frame: the object's own error, not a group.
                bad = _first_bad(failures)
                if bad is None:
                    raise
                raise bad from None
        totals = await budget.workers.run(stitch, [task.result() for task in blocks])
        return ObjectRead(totals, size if inflating is None else inflating.bytes_read)
    finally:
        if held:
            slots.release()


def _first_bad(group: BaseExceptionGroup[BaseException]) -> BadObjectError | None:
    for error in group.exceptions:
        found = _first_bad(error) if isinstance(error, BaseExceptionGroup) else error
        if isinstance(found, BadObjectError):
            return found
    return None


async def _parse(data: bytes, budget: BlockBudget) -> Block:
    try:
        return await budget.workers.run(parse_block, data)
    finally:
        budget.slots.release()
