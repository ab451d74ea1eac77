"""The start-up probe: does this S3 store honour conditional writes?

Every guarantee of bus-stats rests on two conditional PUTs: ``If-None-Match: *`` (create
only if absent) and ``If-Match: <etag>`` (replace only what was read). Some S3-compatible
stores ignore these headers (the write just happens) or refuse them (``501``); there,
nothing would fail loudly, two runs would simply overwrite each other. So before a
process uses the store, :func:`probe_conditional_writes` tries both on a scratch key of
its own (``<prefix>probe/<uuid>``) and raises :class:`~common.startup.FatalStartupError`,
one line naming what the store did, unless:

1. a create of the new key succeeds (or a lost answer's retry finds our own body there);
2. a second create of the same key answers ``412``;
3. a replace with a wrong ETag answers ``412`` (an ``If-Match`` that is really checked);
4. a replace with the right ETag succeeds (an ``If-Match`` that can ever pass).

``409 ConditionalRequestConflict`` (AWS's "two conditional writes raced, retry"), ``5xx``
answers and transport errors are retried with capped backoff, like the wait for S3 at
start-up; the scratch key is deleted afterwards.
"""

import asyncio
import uuid
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

from common.logs import get_logger
from common.startup import Backoff, FatalStartupError, describe
from common.storage import ObjectStore, WriteConflictError

log = get_logger(__name__)

NEEDS: Final = (
    "bus-stats needs an S3 store that honours conditional writes "
    "(If-None-Match and If-Match on PUT: AWS S3, or a compatible store that checks them); "
    "refusing to run"
)
_RETRY: Final = Backoff(first=0.2, cap=5.0)
_NOT_IMPLEMENTED: Final = 501
_CONFLICT_CODES: Final = frozenset({"ConditionalRequestConflict", "409"})


class _RetryError(Exception):
    """A transient answer (409, 5xx, no answer): the step is tried again."""


def _status(error: ClientError) -> tuple[int, str]:
    meta = error.response.get("ResponseMetadata", {})
    code = str(error.response.get("Error", {}).get("Code", ""))
    return int(meta.get("HTTPStatusCode", 0) or 0), code


def _transient(error: ClientError) -> bool:
    status, code = _status(error)
    return status >= 500 and status != _NOT_IMPLEMENTED and code != "NotImplemented"  # noqa: PLR2004 - server errors


class _Outcome:
    """What one conditional PUT did: ``written`` (its ETag), ``refused`` (412)."""

    def __init__(self, etag: str | None) -> None:
        self.etag = etag

    @property
    def refused(self) -> bool:
        return self.etag is None


async def _put(
    store: ObjectStore,
    key: str,
    body: bytes,
    what: str,
    *,
    if_none_match: bool = False,
    if_match: str | None = None,
) -> _Outcome:
    """One conditional PUT: its ETag, or refused on 412; 501 is fatal; 409/5xx retry."""
    try:
        etag = await store.put(key, body, if_none_match=if_none_match, if_match=if_match)
        return _Outcome(etag)
    except WriteConflictError as error:
        cause = error.__cause__
        if isinstance(cause, ClientError) and _status(cause)[1] in _CONFLICT_CODES:
            raise _RetryError(describe(cause)) from None
        return _Outcome(None)
    except ClientError as error:
        status, code = _status(error)
        if code in _CONFLICT_CODES or status == 409:  # noqa: PLR2004 - the HTTP status
            raise _RetryError(describe(error)) from None
        if status == _NOT_IMPLEMENTED or code == "NotImplemented":
            raise FatalStartupError(
                f"the S3 store answered {status} {code} to a PUT with {what}: {NEEDS}"
            ) from None
        if _transient(error):
            raise _RetryError(describe(error)) from None
        raise FatalStartupError(
            f"the S3 store refused the start-up probe's PUT with {what} of {key} "
            f"({status} {code}): {NEEDS}"
        ) from None
    except (BotoCoreError, OSError) as error:
        raise _RetryError(describe(error)) from None


async def _steps(store: ObjectStore, key: str) -> None:
    token = uuid.uuid4().hex.encode()
    created = await _put(store, key, token, "If-None-Match: *", if_none_match=True)
    if created.refused:
        stored = await store.get(key)
        if stored is None or stored.body != token:  # not our own write whose answer was lost
            raise FatalStartupError(
                f"the S3 store refused to create the new key {key} with If-None-Match: * "
                f"(412 on an absent key): {NEEDS}"
            )
        etag = stored.etag
    else:
        etag = created.etag or ""
    again = await _put(store, key, b"second", "If-None-Match: *", if_none_match=True)
    if not again.refused:
        raise FatalStartupError(
            f"the S3 store ignored If-None-Match: * (a second create of one key succeeded): {NEEDS}"
        )
    wrong = await _put(store, key, b"wrong", "If-Match", if_match='"0-not-the-etag"')
    if not wrong.refused:
        raise FatalStartupError(
            f"the S3 store ignored If-Match (a PUT with a wrong ETag succeeded): {NEEDS}"
        )
    right = await _put(store, key, b"right", "If-Match", if_match=etag)
    if right.refused:
        stored = await store.get(key)
        if stored is None or stored.body != b"right":  # not a lost answer of our own
            raise FatalStartupError(
                f"the S3 store refused If-Match with the object's own ETag {etag}: {NEEDS}"
            )


async def probe_conditional_writes(store: ObjectStore, prefix: str = "") -> None:
    """Raise :class:`FatalStartupError` unless ``store`` honours conditional PUTs.

    Transient answers are retried (capped backoff, one ``store.probe_retry`` line each),
    until the probe passes or fails for good; cancel the task to give up.
    """
    attempt = 0
    while True:
        key = f"{prefix}probe/{uuid.uuid4().hex}"
        attempt += 1
        try:
            try:
                await _steps(store, key)
            except ClientError as error:  # a GET of the probe's own key
                if not _transient(error):
                    raise
                raise _RetryError(describe(error)) from None
            finally:
                await _remove(store, key)
        except (_RetryError, BotoCoreError, OSError) as error:
            delay = _RETRY.delay(attempt)
            log.warning("store.probe_retry", attempt=attempt, retry_in=delay, error=str(error))
            await asyncio.sleep(delay)
        else:
            log.info("store.probed", conditional_writes="ok", attempts=attempt)
            return


async def _remove(store: ObjectStore, key: str) -> None:
    """Delete the scratch key; a failure is logged, never fatal (it is tiny and inert)."""
    try:
        await asyncio.shield(store.delete([key]))
    except (BotoCoreError, ClientError, OSError) as error:
        log.warning("store.probe_cleanup_failed", key=key, error=describe(error))
