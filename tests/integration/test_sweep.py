"""What the sweeps delete, decided from keys and the date's state: never from clocks.

Against a real Moto server: objects and unfinished uploads of several generations and jobs
of one date, then the commit's sweep and the final sweep, checked key by key.
"""

from datetime import date, timedelta

import pytest

from common.codec import CONTENT_TYPES, SUFFIXES, compress
from common.jobs import DateLedger, JobStore, ManifestStore
from common.layout import Layout
from common.lifecycle import Lifecycle
from common.models import CityObject, Claim, JobState, JobStatus, Manifest, RunLease, utc_now
from common.storage import S3Store
from consumer.sweep import Sweeper

pytestmark = pytest.mark.integration

DAY = date(2024, 2, 1)
OTHER_DAY = date(2024, 2, 2)
LAYOUT = Layout()
RUN = "1" * 32


def job_id(generation: int) -> str:
    return f"{generation:x}" * 32


async def write_job(store: S3Store, generation: int, status: JobStatus, day: date = DAY) -> None:
    state = JobState.queued(job_id(generation), day, force=True, generation=generation)
    await JobStore(store, LAYOUT).create(state.model_copy(update={"status": status}))


async def hold(store: S3Store, *, claim: int | None, lease: int | None, day: date = DAY) -> None:
    """The date's state names the job of generation ``claim`` and the lease of ``lease``."""
    ledger = DateLedger(store, LAYOUT)
    state, etag = await ledger.read(day)
    update = {
        "claim": None if claim is None else Claim(job_id=job_id(claim), generation=claim),
        "run": None
        if lease is None
        else RunLease(job_id=job_id(lease), generation=lease, run_id=RUN),
    }
    await ledger.swap(state.model_copy(update=update), etag)


def record_key(key: str) -> str:
    """The completion record beside a city object (``city=1.jsonl.zst``: ``city=1.json``)."""
    return key.removesuffix(SUFFIXES["zstd"]) + ".json"


async def write_city(
    store: S3Store, generation: int, city_id: int, day: date = DAY, *, job: str | None = None
) -> str:
    job = job or job_id(generation)
    key = LAYOUT.city_object(day, generation, job, RUN, city_id, codec="zstd")
    body = compress(b'{"city_id":1}\n', "zstd")
    await store.put(key, body, content_type=CONTENT_TYPES["zstd"])
    record = LAYOUT.city_record(day, generation, job, RUN, city_id)
    await store.put(record, b"{}")
    return key


async def start_upload(store: S3Store, generation: int, city_id: int, day: date = DAY) -> str:
    key = LAYOUT.city_object(day, generation, job_id(generation), RUN, city_id, codec="zstd")
    await store.client.create_multipart_upload(Bucket=store.bucket, Key=key)
    return key


async def commit(store: S3Store, generation: int, keys: list[str]) -> Manifest:
    manifest = Manifest(
        date=DAY,
        job_id=job_id(generation),
        run_id=RUN,
        generation=generation,
        fetched_at=utc_now(),
        cities=[
            CityObject(city_id=index, name="c", country="x", key=key, etag="e", records=1, bytes=14)
            for index, key in enumerate(keys)
        ],
    )
    manifests = ManifestStore(store, LAYOUT)
    _, etag = await manifests.get(DAY)
    await manifests.commit(manifest, etag)
    return manifest


async def keys(store: S3Store) -> set[str]:
    return {item.key async for item in store.list_objects(LAYOUT.data_root)}


async def uploads(store: S3Store) -> set[str]:
    return {upload.key for upload in await store.pending_uploads(LAYOUT.data_root)}


async def test_a_commit_sweeps_its_generation_and_older_but_never_a_newer_claim(
    store: S3Store,
) -> None:
    legacy = f"data/date={DAY}/run={'9' * 32}/city=1.jsonl"
    await store.put(legacy, b"old")
    older = await write_city(store, 1, 1)
    kept = await write_city(store, 2, 1)
    leftover = await write_city(store, 2, 2)  # the same job's other city, not committed
    newer = await write_city(store, 3, 1)  # a newer claim, still running
    other_date = await write_city(store, 1, 1, OTHER_DAY)
    older_upload = await start_upload(store, 1, 5)
    newer_upload = await start_upload(store, 3, 5)
    sidecar = f"partials/date={DAY}/run={'9' * 32}/city=1.e.json"  # an earlier version's sums
    await store.put(sidecar, b"{}")
    manifest = await commit(store, 2, [kept])

    counts = await Sweeper(store, LAYOUT).after_commit(manifest)

    record_of = {key: record_key(key) for key in (newer, other_date)}
    assert await keys(store) == {kept, newer, other_date, *record_of.values()}
    assert legacy not in await keys(store)
    assert older not in await keys(store)
    assert leftover not in await keys(store)
    assert await uploads(store) == {newer_upload}
    assert older_upload not in await uploads(store)
    assert counts.uploads == 1
    assert [item.key async for item in store.list_objects(LAYOUT.partials_root)] == []


async def test_the_final_sweep_keeps_active_jobs_whatever_their_age(store: S3Store) -> None:
    kept = await write_city(store, 2, 1)
    manifest = await commit(store, 2, [kept])
    await write_job(store, 2, "succeeded")
    await write_job(store, 3, "failed")
    await write_job(store, 4, "running")
    await write_job(store, 5, "queued")
    await hold(store, claim=5, lease=4)  # 4 runs on after 5 claimed the date
    failed = await write_city(store, 3, 1)
    running = await write_city(store, 4, 1)
    queued = await write_city(store, 5, 1)
    no_state = await write_city(store, 3, 3, job=job_id(7))  # a job never claimed
    newer = await write_city(store, 6, 1)  # above all the state names: a claim made since
    failed_upload = await start_upload(store, 3, 2)
    running_upload = await start_upload(store, 4, 2)
    assert manifest.generation == 2

    await Sweeper(store, LAYOUT).final(DAY)

    remaining = await keys(store)
    assert kept in remaining
    assert {running, queued} <= remaining
    assert {record_key(running), record_key(queued)} <= remaining
    assert failed not in remaining
    assert no_state not in remaining
    assert newer in remaining  # the sweep read the date before that claim: kept
    assert record_key(kept) not in remaining  # a committed city's record is done with
    assert await uploads(store) == {running_upload}
    assert failed_upload not in await uploads(store)


async def test_the_final_sweep_of_a_date_never_committed(store: S3Store) -> None:
    await write_job(store, 1, "failed")
    await write_job(store, 2, "running")
    await hold(store, claim=2, lease=2)
    failed = await write_city(store, 1, 1)
    running = await write_city(store, 2, 1)

    sweeper = Sweeper(store, LAYOUT)
    assert await sweeper.dates() == [DAY]
    await sweeper.final(DAY)

    remaining = await keys(store)
    assert failed not in remaining
    assert running in remaining


async def test_deleting_a_job_touches_no_other_job(store: S3Store) -> None:
    mine = await write_city(store, 1, 1)
    theirs = await write_city(store, 2, 1)
    upload = await start_upload(store, 1, 3)

    lifecycle = Lifecycle(store, LAYOUT, stale_after=timedelta(seconds=60))
    deleted = await lifecycle.delete_job_data(DAY, 1, job_id(1))

    assert await keys(store) == {theirs, record_key(theirs)}
    assert mine not in await keys(store)
    assert upload not in await uploads(store)
    assert deleted == 2
