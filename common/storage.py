"""The object store: a small protocol and its S3 implementation on aiobotocore.

The writer streams an object as S3 multipart parts, completes it on success and aborts
it on any exception, cancellation included. Part buffers are counted against a shared
:class:`PartBudget`: a writer that needs a buffer waits for one, which pauses whatever
feeds it (the HTTP reads), so memory is bounded by the budget, not by how many objects
stream at once.
"""

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from common.logs import get_logger
from common.misconfig import s3_code, s3_refusal
from common.settings import Settings
from common.startup import Backoff, ConnectState, FatalStartupError, retry_until_up, where

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import (
        CompletedPartTypeDef,
        GetObjectOutputTypeDef,
        PutObjectRequestTypeDef,
    )
else:
    S3Client = object
    CompletedPartTypeDef = GetObjectOutputTypeDef = PutObjectRequestTypeDef = dict

log = get_logger(__name__)
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
_DELETE_TRIES = 4  # a DeleteObjects batch whose answer lists failed keys is retried for them


class WriteConflictError(Exception):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class DeleteError(Exception):
    """S3 reported keys it did not delete, after retries: they are still there."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"{len(keys)} object(s) could not be deleted")
        self.keys = keys


@dataclass(frozen=True)
class StoredObject:
    body: bytes
    etag: str
    age: timedelta | None = None
    """How long ago the object was written, by S3's clock alone: the response's ``Date``
    minus the object's ``LastModified`` (both the server's, one-second resolution).
    ``None`` when the server did not say. Never compared with a process's clock."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class PendingUpload:
    key: str
    upload_id: str


@dataclass(frozen=True)
class WrittenObject:
    key: str
    etag: str
    size: int


class PartBudget:
    """How many part buffers may be held at once across all writers of a process."""

    def __init__(self, slots: int) -> None:
        self._slots = asyncio.Semaphore(slots)
        self.size = slots

    async def acquire(self) -> None:
        await self._slots.acquire()

    def release(self) -> None:
        self._slots.release()


class KeyValueStore(Protocol):
    """Whole objects by key: all the stats reader needs (tests may keep it in memory)."""

    async def get(self, key: str) -> StoredObject | None: ...

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str: ...


class ObjectStore(KeyValueStore, Protocol):
    """What the service needs of S3: whole objects, listings, deletes and uploads."""

    async def delete(self, keys: Iterable[str]) -> None: ...

    def list_objects(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]: ...

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]: ...

    async def abort_upload(self, key: str, upload_id: str) -> None: ...

    def writer(self, key: str, content_type: str) -> "S3Writer": ...


def _server_age(response: "GetObjectOutputTypeDef") -> timedelta | None:
    """``Date`` - ``LastModified`` of a GET's answer: an age measured on S3's clock only."""
    date_header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    modified = response.get("LastModified")
    if not date_header or modified is None:
        return None
    try:
        now = parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    return max(timedelta(0), now - modified)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Store:
    """:class:`ObjectStore` over one bucket of S3 (or of a Moto server)."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        budget: PartBudget,
        part_size: int,
        *,
        create_bucket: bool = True,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.budget = budget
        self.part_size = part_size
        self.create_bucket = create_bucket

    async def ensure_bucket(self) -> None:
        """The bucket exists (created if allowed), or a :class:`FatalStartupError` says why.

        A listing, not a ``HEAD``: its answer has a body, so S3 says which error it is
        (``InvalidAccessKeyId``, ``NoSuchBucket``, ...). Answers that no retry will change
        are fatal (:mod:`common.misconfig`); anything else goes up to be retried.
        """
        endpoint = where(self.client.meta.endpoint_url)
        try:
            await self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError as error:
            refused = s3_refusal(error, endpoint, self.bucket, "ListObjectsV2")
            if refused is not None:
                raise FatalStartupError(refused) from None
            if s3_code(error)[1] != "NoSuchBucket":
                raise
        else:
            return
        if not self.create_bucket:
            raise FatalStartupError(
                f"bucket {self.bucket!r} does not exist at {endpoint} (NoSuchBucket) and "
                "BUSSTATS_S3_CREATE_BUCKET is false: create it, or set "
                "BUSSTATS_S3_CREATE_BUCKET=true"
            )
        try:
            await self.client.create_bucket(Bucket=self.bucket)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            return
        except self.client.exceptions.BucketAlreadyExists:
            raise FatalStartupError(
                f"bucket {self.bucket!r} belongs to another account (BucketAlreadyExists): "
                "choose another BUSSTATS_S3_BUCKET"
            ) from None
        except ClientError as error:
            refused = s3_refusal(error, endpoint, self.bucket, "CreateBucket")
            if refused is not None:
                raise FatalStartupError(refused) from None
            raise

    async def ping(self) -> None:
        await self.client.head_bucket(Bucket=self.bucket)

    async def get(self, key: str) -> StoredObject | None:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        async with response["Body"] as stream:
            body = await stream.read()
        return StoredObject(body=body, etag=response["ETag"], age=_server_age(response))

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": io.BytesIO(body),  # sent in chunks; BytesIO shares the bytes, no copy
            "ContentType": content_type,
        }
        if if_none_match:
            request["IfNoneMatch"] = "*"
        if if_match is not None:
            request["IfMatch"] = if_match
        try:
            response = await self.client.put_object(**request)
        except ClientError as error:
            code = _error_code(error)
            # 412: the precondition failed; 409: another conditional write raced this one;
            # 404 on If-Match: the object it names was deleted meanwhile (AWS answers so).
            if code in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"} or (
                if_match is not None and code in {"NoSuchKey", "404"}
            ):
                raise WriteConflictError(key) from error
            raise
        return response["ETag"]

    async def delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == _DELETE_BATCH:
                await self._delete_batch(batch)
                batch = []
        if batch:
            await self._delete_batch(batch)

    async def _delete_batch(self, keys: list[str]) -> None:
        """Delete ``keys``; the keys S3 reports it did not delete are tried again.

        ``DeleteObjects`` answers 200 even when some keys fail (``Errors``, e.g.
        ``InternalError`` or ``SlowDown`` per key): those are retried a few times, then
        reported by :class:`DeleteError`, never counted as deleted.
        """
        for _ in range(_DELETE_TRIES):
            answer = await self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
            failed = [error for error in answer.get("Errors", []) if error.get("Key")]
            if not failed:
                return
            keys = [str(error["Key"]) for error in failed]
            log.warning(
                "objects.delete_failed",
                keys=len(keys),
                codes=sorted({str(error.get("Code", "")) for error in failed}),
            )
        raise DeleteError(keys)

    async def list_objects(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        """Keys under ``prefix`` in lexicographic order, from after ``start_after`` if given."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, StartAfter=start_after)
        async for page in pages:
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    etag=item["ETag"],
                    size=item["Size"],
                )

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        uploads: list[PendingUpload] = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            uploads.extend(
                PendingUpload(key=item["Key"], upload_id=item["UploadId"])
                for item in page.get("Uploads", [])
            )
        return uploads

    async def abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(self.client.exceptions.NoSuchUpload):
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    def writer(self, key: str, content_type: str) -> "S3Writer":
        return S3Writer(self, key, content_type)


class S3Writer:
    """Streams one object: ``async with store.writer(key, type) as w: await w.write(b)``.

    Objects smaller than one part are sent with a single PUT; larger ones as a multipart
    upload, completed when the block ends normally and aborted when it raises.
    """

    def __init__(self, store: S3Store, key: str, content_type: str) -> None:
        self._store = store
        self.key = key
        self._content_type = content_type
        self._chunks: list[bytes] = []  # joined once per part: one copy, no reallocations
        self._buffered = 0
        self._holding_slot = False
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self.bytes_written = 0
        self.result: WrittenObject | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                try:
                    self.result = await self._complete()
                except BaseException:
                    # The last part or the completion failed (or was cancelled): the
                    # upload must not be left behind.
                    await asyncio.shield(self._abort())
                    raise
            else:
                await asyncio.shield(self._abort())
        finally:
            self._release()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._holding_slot:
            await self._store.budget.acquire()
            self._holding_slot = True
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_written += len(data)
        if self._buffered >= self._store.part_size:
            await self._send_part()

    async def _send_part(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            created = await client.create_multipart_upload(
                Bucket=bucket, Key=self.key, ContentType=self._content_type
            )
            self._upload_id = created["UploadId"]
        # A file object is sent in chunks (raw bytes would go to the socket in one write);
        # BytesIO shares the joined bytes' memory (no copy until written to).
        body = io.BytesIO(self._take())
        number = len(self._parts) + 1
        sent = await client.upload_part(
            Bucket=bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        del body
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        self._release()

    async def _complete(self) -> WrittenObject:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            etag = await self._store.put(self.key, self._take(), content_type=self._content_type)
            return WrittenObject(key=self.key, etag=etag, size=self.bytes_written)
        if self._buffered:
            await self._send_part()
        completed = await client.complete_multipart_upload(
            Bucket=bucket,
            Key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        return WrittenObject(key=self.key, etag=completed["ETag"], size=self.bytes_written)

    async def _abort(self) -> None:
        """Best effort: an upload left behind is found by the next sweep of its date."""
        self._chunks, self._buffered = [], 0
        if self._upload_id is not None:
            try:
                await self._store.abort_upload(self.key, self._upload_id)
            except Exception as error:  # noqa: BLE001 - must not hide the error that led here
                log.warning("upload.abort_failed", key=self.key, error=repr(error))

    def _take(self) -> bytes:
        """The buffered bytes, as one object; the buffer is empty afterwards."""
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return data

    def _release(self) -> None:
        if self._holding_slot:
            self._holding_slot = False
            self._store.budget.release()


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, max_connections: int = 32) -> AsyncIterator[S3Store]:
    """One S3 client for the process, with its bucket ensured; closed on exit."""
    async with connect_store(settings, max_connections=max_connections) as store:
        await store.ensure_bucket()
        yield store


async def require_credentials(session: AioSession) -> None:
    """Raise :class:`FatalStartupError` unless the AWS SDK finds credentials.

    It looks where every AWS tool does (environment, profile, container or instance role);
    the answer is cached in ``session``, so a client created from it does not look again.
    """
    try:
        credentials = await session.get_credentials()
    except BotoCoreError as error:  # e.g. only one of the two keys set, a broken profile
        raise FatalStartupError(f"AWS credentials unusable: {error}") from None
    if credentials is None:
        raise FatalStartupError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE, or run with an instance or container role)"
        )


@contextlib.asynccontextmanager
async def connect_store(settings: Settings, *, max_connections: int = 32) -> AsyncIterator[S3Store]:
    """Like :func:`open_store` without any request to S3: the bucket is not ensured.

    For a process that must serve while S3 is unreachable: it ensures the bucket later
    with :func:`ensure_bucket_until_up`. Missing AWS credentials raise
    :class:`FatalStartupError` at once.
    """
    config = AioConfig(
        max_pool_connections=max_connections,
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=60,
    )
    session = get_session()
    await require_credentials(session)
    async with session.create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.aws_default_region,
        config=config,
    ) as client:
        yield S3Store(
            client,
            settings.s3_bucket,
            PartBudget(settings.part_slots),
            settings.part_size_bytes,
            create_bucket=settings.s3_create_bucket,
        )


def s3_connect_state(settings: Settings) -> ConnectState:
    """What :func:`ensure_bucket_until_up` reports: the endpoint (or AWS) and the bucket."""
    endpoint = where(settings.s3_endpoint_url) if settings.s3_endpoint_url else "aws"
    return ConnectState("s3", endpoint, bucket=settings.s3_bucket)


class S3UnreachableError(Exception):
    """S3 did not answer an attempt to reach it in time."""


async def _reachable(url: str) -> None:
    """Open (and close) a TCP connection to the endpoint: ``ConnectionRefusedError`` if
    nothing listens there."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    _, writer = await asyncio.open_connection(parts.hostname, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def ensure_bucket_until_up(
    store: S3Store,
    state: ConnectState,
    backoff: Backoff | None = None,
    *,
    attempt_seconds: float = 5.0,
) -> None:
    """Ensure the bucket, retrying with capped backoff (one log line per failed attempt).

    An attempt lasts at most ``attempt_seconds``: the SDK's own retries of an unreachable
    endpoint would otherwise keep the first line back for up to 15 s.
    """

    async def attempt() -> None:
        try:
            async with asyncio.timeout(attempt_seconds):
                # A refused port is said at once: the SDK would retry it in silence.
                await _reachable(store.client.meta.endpoint_url)
                await store.ensure_bucket()
        except TimeoutError:
            raise S3UnreachableError(f"no answer within {attempt_seconds:g} s") from None

    await retry_until_up(
        state,
        attempt,
        retry_on=(BotoCoreError, ClientError, OSError, S3UnreachableError),
        backoff=backoff,
    )
