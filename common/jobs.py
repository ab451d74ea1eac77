"""Where job states and date states live in S3, and how they are written: conditionally.

Two kinds of mutable object exist, and neither is ever written blindly:

- a **job state** (``jobs/<id>.json``), what ``GET /jobs/<id>`` shows: created with
  ``If-None-Match: *``, then replaced only with ``If-Match`` on the ETag its writer read
  or wrote last;
- a **date state** (``manifests/date=D/manifest.json``, :class:`common.models.DateState`),
  the date's arbiter: claim, run lease and committed version, replaced the same way.

:func:`put_conditionally` makes each such write safe against S3 as it really behaves: a
``409 ConditionalRequestConflict`` is a lost race, and an answer that is lost after the
write took effect (or a retry that then meets its own write and answers ``412``) is told
apart from a real conflict by reading the object back: the write took effect exactly when
the stored bytes are the bytes written (every body carries a fresh ``updated_at`` or
``revision``, so no two writes have the same bytes).

What the writes *mean* (which transition may write what) is :mod:`common.lifecycle`.
"""

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import orjson
from botocore.exceptions import ClientError
from pydantic import ValidationError

from common.layout import Layout
from common.logs import get_logger
from common.models import (
    DATE_STATE_VERSION,
    Claim,
    DateState,
    JobState,
    LatestJob,
    Manifest,
)
from common.storage import ObjectStore, StoredObject, WriteConflictError

log = get_logger(__name__)
NEWER_VERSION: Final = "written by a newer version of bus-stats"
_LOST_ANSWER_TRIES: Final = 4  # re-sends of one conditional write whose answer was lost
_CLIENT_ERROR: Final = 400
_SERVER_ERROR: Final = 500
JOB_STATE_VERSION: Final = 1


class NewerVersionError(Exception):
    """An object of a format this version does not know: it must not be overwritten."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: {NEWER_VERSION}")
        self.what = what


class UnreadableError(Exception):
    """An object that is not JSON of any known form (damaged, or not ours)."""


async def put_conditionally(store: ObjectStore, key: str, body: bytes, etag: str | None) -> str:
    """Write ``body`` over the version ``etag`` of ``key`` (``None``: only if absent).

    Returns the new ETag. Raises :class:`WriteConflictError` when another write came
    first (``412``, or ``404`` for ``If-Match`` on a key deleted meanwhile); a ``409``
    that left the object as it was (a race nobody won) is tried again. A
    write whose answer was lost is resolved by reading the key back; if the store stays
    unreachable the error goes up, and the write may or may not have taken effect (the
    caller's next read tells).
    """
    last_error: Exception | None = None
    for _ in range(_LOST_ANSWER_TRIES):
        try:
            if etag is None:
                return await store.put(key, body, if_none_match=True)
            return await store.put(key, body, if_match=etag)
        except WriteConflictError as conflict:
            # A retry (botocore's or ours) may meet its own earlier write: look.
            stored = await store.get(key)
            if stored is not None and stored.body == body:
                return stored.etag
            if (None if stored is None else stored.etag) == etag:
                # Unchanged: a 409 ConditionalRequestConflict (another conditional write
                # raced this one and neither won), not a lost race: try again.
                last_error = conflict
                continue
            raise conflict from None
        except Exception as error:
            if _refused(error):
                raise  # a 4xx (403, 400...): not applied, and no retry will change that
            last_error = error
            try:
                stored = await store.get(key)
            except Exception:  # noqa: BLE001, S112 - still unreachable: try the write again
                continue
            if stored is not None and stored.body == body:
                return stored.etag
            current = None if stored is None else stored.etag
            if current != etag:
                raise WriteConflictError(key) from error
    assert last_error is not None  # noqa: S101 - the loop ran at least once and failed
    raise last_error


def _refused(error: Exception) -> bool:
    """An S3 answer that says the request was refused, not lost: a 4xx status."""
    if not isinstance(error, ClientError):
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return isinstance(status, int) and _CLIENT_ERROR <= status < _SERVER_ERROR


def _version_of(raw: object) -> int | None:
    if isinstance(raw, dict):
        version = raw.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            return version
    return None


def _stated_version(body: bytes, what: str, newest: int) -> int | None:
    """The version JSON ``body`` states; :class:`NewerVersionError` above ``newest``.

    Only to read the version: orjson turns integers beyond 64 bits (legacy sums may
    hold some) into floats, so the models are validated from the bytes by pydantic.
    """
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UnreadableError(f"{what}: not JSON") from None
    version = _version_of(raw)
    if version is not None and version > newest:
        raise NewerVersionError(what)
    return version


def parse_job_state(body: bytes, job_id: str) -> JobState:
    _stated_version(body, f"job state of {job_id}", JOB_STATE_VERSION)
    try:
        return JobState.model_validate_json(body)
    except ValidationError:
        raise UnreadableError(f"job {job_id}: not a job state") from None


class JobStore:
    """Job states, each written only with a condition (see the module's docstring)."""

    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self._store = store
        self._layout = layout

    async def read(self, job_id: str) -> tuple[JobState | None, str | None, timedelta | None]:
        """The job, the ETag of its state and how long ago it was written (S3's clock).

        A running job's state is rewritten at every heartbeat, so the age is its
        heartbeat's, whatever the clocks of the consumer and of this process say.
        Raises :class:`NewerVersionError` for a state of a newer format.
        """
        try:
            key = self._layout.job(job_id)
        except ValueError:
            return None, None, None
        stored = await self._store.get(key)
        if stored is None:
            return None, None, None
        return parse_job_state(stored.body, job_id), stored.etag, stored.age

    async def get(self, job_id: str) -> JobState | None:
        return (await self.read(job_id))[0]

    async def get_with_age(self, job_id: str) -> tuple[JobState | None, timedelta | None]:
        job, _, age = await self.read(job_id)
        return job, age

    async def create(self, job: JobState) -> str:
        """Write a new job's first state; raises :class:`WriteConflictError` if it exists."""
        return await put_conditionally(
            self._store, self._layout.job(job.job_id), job.model_dump_json().encode(), None
        )

    async def replace(self, job: JobState, etag: str) -> str:
        """Write over the version ``etag`` of the job's state, and only over it."""
        return await put_conditionally(
            self._store, self._layout.job(job.job_id), job.model_dump_json().encode(), etag
        )

    async def index(self, job: JobState) -> None:
        """List a new job in the index of every job and in its date's, newest first."""
        entry = index_entry(job)
        for day in (None, job.date):
            key = f"{self._layout.job_index(day)}{entry}"
            await self._store.put(key, b"", content_type="application/octet-stream")

    async def indexed(self, day: date | None, after: str | None, limit: int) -> list[str]:
        """Up to ``limit`` index entries, newest first, after the entry ``after`` if given.

        ``day`` selects one date's jobs; ``None`` every job. Entries name jobs
        (:func:`index_entry_job`); a job created before the index existed is not listed.
        """
        root = self._layout.job_index(day)
        entries: list[str] = []
        start = f"{root}{after}" if after else ""
        async for item in self._store.list_objects(root, start_after=start):
            entry = item.key.removeprefix(root)
            if INDEX_ENTRY.fullmatch(entry):
                entries.append(entry)
            if len(entries) >= limit:
                break
        return entries


# The job index: one empty object per job, named so that S3's lexicographic listing is
# newest first. The name is ``<inverted creation time>-<job_id>``: the creation time
# (API clock, microseconds) only orders the listing, it never decides anything.
_INDEX_SPAN: Final = 10**17  # microseconds: later than the year 5000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
INDEX_ENTRY: Final = re.compile(r"^[0-9]{17}-[0-9a-f]{32}$")


def index_entry(job: JobState) -> str:
    """The job's name in the index: sorts before every job created earlier."""
    micros = (job.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{_INDEX_SPAN - 1 - micros:017d}-{job.job_id}"


def index_entry_job(entry: str) -> str:
    """The job id an index entry names."""
    return entry.rpartition("-")[2]


def parse_date_state(day: date, body: bytes) -> DateState:
    """A date state, or a version-1 manifest read as a state with only ``committed``.

    Raises :class:`NewerVersionError` for a newer format, :class:`UnreadableError` for
    anything else that is not one of the two.
    """
    version = _stated_version(body, f"date state of {day}", DATE_STATE_VERSION)
    try:
        if version == DATE_STATE_VERSION:
            return DateState.model_validate_json(body)
        return DateState(date=day, committed=Manifest.model_validate_json(body))
    except ValidationError:
        raise UnreadableError(f"date {day}: not a date state") from None


def committed_of(day: date, stored: StoredObject) -> Manifest | None:
    """The committed version in a date state's object (what the statistics read)."""
    return parse_date_state(day, stored.body).committed


class DateLedger:
    """The date states: read (upgrading older forms) and replaced by compare-and-swap."""

    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self._store = store
        self._layout = layout

    async def read(self, day: date) -> tuple[DateState, str | None]:
        """The date's state and its ETag (``None``: no state object yet).

        A missing or damaged state is rebuilt from what else the bucket says of the date
        (the pointer of versions before the arbiter, the generations in the data keys),
        so that generations never go back; its next write replaces it.
        """
        stored = await self._store.get(self._layout.manifest(day))
        if stored is None:
            return await self._rebuilt(day, None), None
        try:
            state = parse_date_state(day, stored.body)
        except UnreadableError as error:
            log.warning("date.state_unreadable", date=day.isoformat(), error=str(error))
            return await self._rebuilt(day, None), stored.etag
        if state.revision is None:
            # A version-1 manifest: the claim was in the separate pointer then.
            return await self._rebuilt(day, state.committed), stored.etag
        return state, stored.etag

    async def _rebuilt(self, day: date, committed: Manifest | None) -> DateState:
        floor = committed.generation if committed is not None else 0
        claim: Claim | None = None
        pointer = await self._store.get(self._layout.latest_job(day))
        if pointer is not None:
            try:
                legacy = LatestJob.model_validate_json(pointer.body)
            except ValidationError:
                legacy = None
            if legacy is not None and legacy.generation > 0:
                floor = max(floor, legacy.generation)
                if committed is None or legacy.generation > committed.generation:
                    claim = Claim(job_id=legacy.job_id, generation=legacy.generation)
        async for item in self._store.list_objects(self._layout.date_data(day)):
            owner = self._layout.parse_data_key(item.key)
            if owner is not None and owner.generation is not None:
                floor = max(floor, owner.generation)
        return DateState(date=day, claim=claim, committed=committed, floor=floor)

    async def swap(self, state: DateState, etag: str | None) -> tuple[DateState, str]:
        """Replace the version ``etag`` by ``state`` (given a fresh revision); the new ETag.

        Raises :class:`WriteConflictError` if the state changed since it was read.
        """
        state = state.model_copy(update={"revision": uuid.uuid4().hex})
        body = state.model_dump_json().encode()
        new_etag = await put_conditionally(
            self._store, self._layout.manifest(state.date), body, etag
        )
        return state, new_etag


class ManifestStore:
    """The committed version of each date, as kept in its date state."""

    def __init__(self, store: ObjectStore, layout: Layout) -> None:
        self._ledger = DateLedger(store, layout)

    async def get(self, day: date) -> tuple[Manifest | None, str | None]:
        state, etag = await self._ledger.read(day)
        return state.committed, etag

    async def commit(self, manifest: Manifest, expected_etag: str | None) -> None:
        """Replace the committed version, keeping the claim and lease; for backfills and tests.

        ``expected_etag`` is the ETag :meth:`get` gave with the version being replaced;
        ``None``: the date has no committed version yet. Raises
        :class:`WriteConflictError` if that is no longer so.
        """
        state, etag = await self._ledger.read(manifest.date)
        if (state.committed is not None or expected_etag is not None) and etag != expected_etag:
            raise WriteConflictError(f"date {manifest.date}")
        await self._ledger.swap(state.model_copy(update={"committed": manifest}), etag)
