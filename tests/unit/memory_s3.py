"""An in-memory object store with S3's conditional semantics, for the lifecycle model test.

It implements :class:`common.storage.ObjectStore` the way S3 behaves: ETags are the quoted
MD5 of the body; ``If-None-Match: *`` on an existing key and ``If-Match`` with another
ETag (or on a missing key, AWS's ``404``) lose with :class:`WriteConflictError`; listings
are in key order, from after ``start_after``; a delete of a missing key succeeds.

Ages come from a logical clock that the owner advances (:meth:`MemoryS3.tick`), never from
a process's clock, like S3's ``Date`` minus ``LastModified``.
"""

import hashlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta

from common.storage import (
    ObjectInfo,
    PendingUpload,
    S3Writer,
    StoredObject,
    WriteConflictError,
)


def quoted_md5(body: bytes) -> str:
    """S3's ETag of an object written in one PUT."""
    return f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'


@dataclass(frozen=True)
class Entry:
    body: bytes
    etag: str
    written_at: int  # the logical clock when it was written


class MemoryS3:
    """One bucket in memory. Every method applies at once (no faults here: see the model)."""

    def __init__(self) -> None:
        self.objects: dict[str, Entry] = {}
        self.clock = 0

    def tick(self) -> None:
        """One second passes on the store's clock."""
        self.clock += 1

    async def get(self, key: str) -> StoredObject | None:
        entry = self.objects.get(key)
        if entry is None:
            return None
        age = timedelta(seconds=self.clock - entry.written_at)
        return StoredObject(body=entry.body, etag=entry.etag, age=age)

    def check(self, key: str, *, if_none_match: bool, if_match: str | None) -> None:
        """Raise :class:`WriteConflictError` if a PUT with these conditions would answer 412."""
        current = self.objects.get(key)
        if if_none_match and current is not None:
            raise WriteConflictError(key)
        if if_match is not None and (current is None or current.etag != if_match):
            raise WriteConflictError(key)

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        del content_type  # S3 keeps it; nothing here reads it
        self.check(key, if_none_match=if_none_match, if_match=if_match)
        etag = quoted_md5(body)
        self.objects[key] = Entry(body=body, etag=etag, written_at=self.clock)
        return etag

    async def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    async def list_objects(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        found = sorted(key for key in self.objects if key.startswith(prefix) and key > start_after)
        for key in found:
            entry = self.objects.get(key)
            if entry is not None:
                yield ObjectInfo(key=key, etag=entry.etag, size=len(entry.body))

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        del prefix  # every object is written in one PUT here: never an upload pending
        return []

    async def abort_upload(self, key: str, upload_id: str) -> None:
        del key, upload_id

    def writer(self, key: str, content_type: str) -> S3Writer:
        """Not used by the lifecycle: its objects are written with :meth:`put`."""
        raise NotImplementedError(f"no multipart uploads in memory ({key}, {content_type})")
