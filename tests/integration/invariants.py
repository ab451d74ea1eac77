"""What must hold once the system is quiet, whatever happened before: checked, not scripted.

The checks read the final state (job states, date pointers, manifests, objects, uploads,
queues) and the API's answers, and return every violation found as a line of text
(rather than stopping at the first), so one failing run explains itself. They assume a
deterministic simulator: every fetch of a date gives the same records, so every committed
version of a date must equal the oracle (:func:`refsim.expected_stats`).
"""

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import aiohttp
from aio_pika.abc import AbstractRobustConnection
from pydantic import ValidationError

from common.jobs import JobStore, ManifestStore
from common.layout import Layout
from common.lifecycle import Lifecycle
from common.messages import UndecodableMessageError, decode_job
from common.models import JobState, Manifest
from common.settings import Settings
from common.storage import S3Store
from common.topology import Names
from refsim import SimulatorConfig, expected_stats
from tests.integration.broker import drain, queue_depths
from tests.integration.services import environment, run_module
from tests.integration.test_ingest_e2e import stored_stats

FINAL = frozenset({"succeeded", "failed"})
_POLL_SECONDS = 0.25  # S3 and the broker's counters cannot notify: they are polled
_WATCH_SECONDS = 0.5  # how often every job state is sampled while the system runs


def _clean(etag: str) -> str:
    return etag.strip('"')


class Oracle:
    """The expected rows of each date, computed once (off the event loop: it is CPU work)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._rows: dict[date, list[dict[str, Any]]] = {}

    async def rows(self, days: Iterable[date]) -> list[dict[str, Any]]:
        wanted = sorted(set(days))
        missing = [day for day in wanted if day not in self._rows]
        if missing:
            computed = await asyncio.to_thread(expected_stats, self.config, missing)
            for day in missing:
                self._rows[day] = [row for row in computed if row["date"] == day.isoformat()]
        return [row for day in wanted for row in self._rows[day]]


@dataclass
class World:
    """Where the system under test keeps its state, and what the test knows of it."""

    settings: Settings
    store: S3Store
    api_url: str
    days: list[date]
    oracle: Oracle
    visible_jobs: set[str] = field(default_factory=set)
    """Every job id the API ever answered with."""
    poison: int = 0
    """Messages published that no consumer can decode (they have no job)."""
    dead_jobs: list[str] = field(default_factory=list)
    """The jobs found dead-lettered (filled by :func:`check_dead_letters`)."""

    @property
    def layout(self) -> Layout:
        return Layout(self.settings.s3_prefix)

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.store, self.layout)

    @property
    def manifests(self) -> ManifestStore:
        return ManifestStore(self.store, self.layout)

    @property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.store, self.layout, stale_after=timedelta(seconds=60))


async def all_jobs(world: World) -> dict[str, JobState]:
    """Every job state in the bucket."""
    found: dict[str, JobState] = {}
    async for item in world.store.list_objects(f"{world.layout.prefix}jobs/"):
        stored = await world.store.get(item.key)
        if stored is not None:
            job = JobState.model_validate_json(stored.body)
            found[job.job_id] = job
    return found


async def referenced_jobs(world: World, jobs: dict[str, JobState]) -> set[str]:
    """Jobs someone can reach: returned by the API, pointed to, committed, or superseding."""
    reached = set(world.visible_jobs)
    for day in world.days:
        latest = await world.lifecycle.latest(day)
        if latest is not None:
            reached.add(latest.job_id)
        manifest, _ = await world.manifests.get(day)
        if manifest is not None:
            reached.add(manifest.job_id)
    reached |= {job.superseded_by for job in jobs.values() if job.superseded_by}
    return reached


async def quiesce(world: World, *, deadline: float) -> None:
    """Until every reachable job is final and the job queue is empty with nothing unacked."""
    queue = Names(world.settings.namespace).queue
    try:
        async with asyncio.timeout(deadline):
            while True:
                jobs = await all_jobs(world)
                reached = await referenced_jobs(world, jobs)
                active = [j for j in reached if j not in jobs or jobs[j].status not in FINAL]
                depths = (await queue_depths(world.settings.namespace)).get(queue)
                if not active and depths == (0, 0):
                    return
                await asyncio.sleep(_POLL_SECONDS)
    except TimeoutError:
        jobs = await all_jobs(world)
        reached = await referenced_jobs(world, jobs)
        stuck = [
            jobs[j].model_dump(mode="json") if j in jobs else f"{j}: no state"
            for j in sorted(reached)
            if j not in jobs or jobs[j].status not in FINAL
        ]
        queues = await queue_depths(world.settings.namespace)
        raise AssertionError(
            f"not quiet after {deadline}s: jobs not final {stuck}; queues {queues}"
        ) from None


def check_job_states(world: World, jobs: dict[str, JobState], reached: set[str]) -> list[str]:
    """Every reachable job final; failed ones explained; supersession points forward."""
    problems = [f"job {job_id} is referenced but has no state" for job_id in reached - jobs.keys()]
    for job in jobs.values():
        where = f"job {job.job_id} ({job.date}, gen {job.generation})"
        if job.status not in FINAL:
            if job.job_id in reached:
                problems.append(
                    f"{where} is {job.status}, not final: {job.model_dump(mode='json')}"
                )
            continue
        if job.finished_at is None:
            problems.append(f"{where} is {job.status} without finished_at")
        if job.status == "failed" and not job.error:
            problems.append(f"{where} failed without a reason")
        if job.superseded_by is not None:
            newer = jobs.get(job.superseded_by)
            if job.status != "failed":
                problems.append(f"{where} is {job.status} but superseded_by is set")
            if newer is None or newer.date != job.date or newer.generation <= job.generation:
                problems.append(
                    f"{where} superseded by {job.superseded_by}, which is not a newer job "
                    f"of the date: {None if newer is None else newer.model_dump(mode='json')}"
                )
    return problems


async def check_dates(world: World, jobs: dict[str, JobState]) -> list[str]:
    """Per date: the newest claim wins, and what is committed belongs to a succeeded job."""
    problems: list[str] = []
    for day in world.days:
        latest = await world.lifecycle.latest(day)
        manifest, _ = await world.manifests.get(day)
        of_day = [job for job in jobs.values() if job.date == day]
        succeeded = [job for job in of_day if job.status == "succeeded"]
        if latest is not None:
            newer = [
                job.job_id
                for job in of_day
                if job.generation > latest.generation and job.job_id in world.visible_jobs
            ]
            if newer:
                problems.append(f"{day}: jobs {newer} are newer than the date's pointer")
            if latest.status == "succeeded" and (
                manifest is None or manifest.job_id != latest.job_id
            ):
                problems.append(
                    f"{day}: the newest job {latest.job_id} (gen {latest.generation}) succeeded "
                    f"but the committed version is "
                    f"{None if manifest is None else (manifest.job_id, manifest.generation)}"
                )
        if manifest is not None:
            owner = jobs.get(manifest.job_id)
            if owner is None or owner.status != "succeeded":
                problems.append(
                    f"{day}: committed by job {manifest.job_id} (gen {manifest.generation}), "
                    f"which is {None if owner is None else owner.status}"
                )
            elif owner.generation != manifest.generation:
                problems.append(
                    f"{day}: manifest gen {manifest.generation} but its job has gen "
                    f"{owner.generation}"
                )
            if latest is not None and manifest.generation > latest.generation:
                problems.append(f"{day}: manifest gen {manifest.generation} beyond the pointer")
        elif succeeded:
            problems.append(f"{day}: jobs {[j.job_id for j in succeeded]} succeeded, no manifest")
    return problems


async def _stats(
    http: aiohttp.ClientSession, world: World, start: date, end: date, *, verify: bool = False
) -> tuple[int, Any]:
    query = f"from={start}&to={end}" + ("&verify=true" if verify else "")
    async with http.get(f"{world.api_url}/country-stats?{query}") as response:
        body = await response.json(content_type=None)
        return response.status, body


async def check_served(
    http: aiohttp.ClientSession, world: World, *, verify: bool = False
) -> list[str]:
    """Every committed date answers 200 and equals the oracle, alone and in the whole range."""
    problems: list[str] = []
    committed = [day for day in world.days if (await world.manifests.get(day))[0] is not None]
    ranges = [(day, day) for day in world.days] + [(min(world.days), max(world.days))]
    for start, end in ranges:
        status, body = await _stats(http, world, start, end, verify=verify)
        inside = [day for day in committed if start <= day <= end]
        if status != 200:
            problems.append(f"/country-stats {start}..{end}: {status} {body}")
            continue
        expected = await world.oracle.rows(inside)
        if body["stats"] != expected:
            problems.append(f"/country-stats {start}..{end}: figures differ from the oracle")
        missing = [d.isoformat() for d in world.days if start <= d <= end and d not in committed]
        if body["missing_dates"] != missing:
            problems.append(
                f"/country-stats {start}..{end}: missing_dates {body['missing_dates']} != {missing}"
            )
        if body.get("unreadable_dates"):
            problems.append(f"/country-stats {start}..{end}: unreadable {body['unreadable_dates']}")
        if verify:
            problems += _verified(body.get("verify"), f"{start}..{end}", len(inside))
    return problems


def _verified(found: Any, where: str, dates: int) -> list[str]:
    """``verify=true``: every committed date's stored sums equal its objects' records."""
    if not isinstance(found, dict):
        return [f"/country-stats {where} verify=true answered no verification: {found}"]
    if (
        found.get("status") != "ok"
        or found.get("mismatches")
        or found.get("dates_without_sums")
        or found.get("dates_verified") != dates
    ):
        return [f"/country-stats {where} verify=true: {found}"]
    return []


async def check_objects(world: World) -> list[str]:
    """Every committed manifest's objects exist with its ETags, and hold the oracle's records."""
    problems: list[str] = []
    stored = {item.key: item async for item in world.store.list_objects(world.layout.data_root)}
    committed: list[date] = []
    for day in world.days:
        manifest, _ = await world.manifests.get(day)
        if manifest is None:
            continue
        committed.append(day)
        for city in manifest.cities:
            item = stored.get(city.key)
            if item is None:
                problems.append(f"{day}: manifest object {city.key} does not exist")
            elif _clean(item.etag) != _clean(city.etag) or item.size != city.size_stored:
                problems.append(
                    f"{day}: {city.key} is {item.etag}/{item.size} bytes, the manifest says "
                    f"{city.etag}/{city.size_stored}"
                )
        if manifest.rejects is not None and manifest.rejects.key not in stored:
            problems.append(f"{day}: rejects object {manifest.rejects.key} does not exist")
    if not problems and committed:
        figures = await stored_stats(world.store, world.settings, committed)
        if figures != await world.oracle.rows(committed):
            problems.append(f"the stored records of {committed} differ from the oracle")
    return problems


async def sweep(world: World) -> str:
    """``python -m consumer sweep`` over the test's dates, as an operator would run it."""
    env = environment(world.settings)
    return await run_module(
        env,
        "consumer",
        "sweep",
        "--from",
        min(world.days).isoformat(),
        "--to",
        max(world.days).isoformat(),
    )


async def check_leftovers(world: World) -> list[str]:
    """Nothing is stored that no committed manifest references; no upload is pending.

    A committed city's completion record is spent once the date is committed, and sums
    sidecars (``partials/``) are written by no version that reads them: none may be left.
    """
    layout = world.layout
    keep_data: set[str] = set()
    for day in world.days:
        manifest, _ = await world.manifests.get(day)
        if manifest is None:
            continue
        keep_data |= {city.key for city in manifest.cities}
        if manifest.rejects is not None:
            keep_data.add(manifest.rejects.key)
    problems: list[str] = []
    left = [
        item.key
        async for item in world.store.list_objects(layout.data_root)
        if item.key not in keep_data
    ]
    if left:
        problems.append(f"{len(left)} data object(s) referenced by no manifest: {left[:10]}")
    partials = [item.key async for item in world.store.list_objects(layout.partials_root)]
    if partials:
        problems.append(f"{len(partials)} sums sidecar(s) left: {partials[:10]}")
    uploads = await world.store.pending_uploads(layout.prefix)
    if uploads:
        problems.append(f"{len(uploads)} multipart upload(s) pending: {[u.key for u in uploads]}")
    return problems


async def check_dead_letters(
    world: World, amqp: AbstractRobustConnection, jobs: dict[str, JobState]
) -> list[str]:
    """Every dead letter is explained by a failed job, except the undecodable ones."""
    problems: list[str] = []
    taken = await drain(amqp, Names(world.settings.namespace).dead_letter_queue)
    poison = 0
    for message in taken:
        try:
            job_id = decode_job(message.body).job_id
        except (UndecodableMessageError, ValidationError):
            poison += 1
            continue
        world.dead_jobs.append(job_id)
        job = jobs.get(job_id)
        if job is None or job.status != "failed" or not job.error:
            problems.append(
                f"dead letter {message.message_id} (headers {message.headers}) has job "
                f"{None if job is None else job.model_dump(mode='json')}"
            )
    if poison != world.poison:
        problems.append(f"{poison} undecodable dead letter(s), {world.poison} published")
    return problems


async def check_queue_empty(world: World) -> list[str]:
    depths = await queue_depths(world.settings.namespace)
    queue = Names(world.settings.namespace).queue
    if depths.get(queue) != (0, 0):
        return [f"job queue (ready, unacked) is {depths.get(queue)}, not empty"]
    return []


def manifest_summary(manifest: Manifest | None) -> str:
    if manifest is None:
        return "none"
    return f"job {manifest.job_id} gen {manifest.generation} run {manifest.run_id}"


# -- while the system runs: every transition of every job ---------------------------------


@dataclass
class History:
    """Every state each job was seen in while the system ran (polled, so a sample)."""

    seen: dict[str, list[tuple[str, str | None, str | None]]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    polls: int = 0

    def record(self, job: JobState) -> None:
        now = (job.status, job.error, job.superseded_by)
        states = self.seen.setdefault(job.job_id, [])
        if states and states[-1] == now:
            return
        if states and states[-1][0] in FINAL:
            self.violations.append(
                f"job {job.job_id} ({job.date}) changed after it ended: {states[-1]} -> {now}"
            )
        states.append(now)

    def transitions(self) -> int:
        return sum(len(states) - 1 for states in self.seen.values())


async def watch_jobs(world: World, history: History) -> None:
    """Record every job's state every moment until cancelled (S3 outages are sat out)."""
    while True:
        try:
            jobs = await all_jobs(world)
        except Exception:  # noqa: BLE001 - S3 restarting, a state half-written: next poll
            jobs = {}
        for job in jobs.values():
            history.record(job)
        history.polls += 1
        await asyncio.sleep(_WATCH_SECONDS)


def check_history(history: History, jobs: dict[str, JobState]) -> list[str]:
    """A ``succeeded`` or ``failed`` job never changed, while running or at rest."""
    for job in jobs.values():
        history.record(job)
    return list(history.violations)


# -- at rest: liveness and which job owns each date ---------------------------------------


def check_at_rest(jobs: dict[str, JobState]) -> list[str]:
    """No job is queued or running once the queue is empty: none waits for a lost message."""
    return [
        f"job {job.job_id} ({job.date}, gen {job.generation}) is {job.status} at rest: "
        f"no message and no run will ever end it"
        for job in jobs.values()
        if job.status not in FINAL
    ]


async def check_committed(world: World, jobs: dict[str, JobState]) -> list[str]:
    """Every date is committed (no ``force`` needed), by its newest succeeded job."""
    problems: list[str] = []
    for day in world.days:
        manifest, _ = await world.manifests.get(day)
        succeeded = sorted(
            (job for job in jobs.values() if job.date == day and job.status == "succeeded"),
            key=lambda job: job.generation,
        )
        if manifest is None:
            problems.append(f"{day}: not committed after the settle (liveness)")
            continue
        if not succeeded:
            continue  # reported by check_dates
        newest = succeeded[-1]
        if manifest.generation != newest.generation or manifest.job_id != newest.job_id:
            problems.append(
                f"{day}: committed {manifest_summary(manifest)}, but the newest succeeded job "
                f"is {newest.job_id} gen {newest.generation}"
            )
    return problems


def check_read(
    start: date, end: date, body: dict[str, Any], committed_before: set[date]
) -> list[str]:
    """A read accounts for every date of its range, and never calls committed data missing."""
    where = f"/country-stats {start}..{end}"
    served = {date.fromisoformat(row["date"]) for row in body["stats"]}
    missing = {date.fromisoformat(day) for day in body["missing_dates"]}
    unreadable = {date.fromisoformat(item["date"]) for item in body.get("unreadable_dates") or []}
    days = {start + timedelta(days=n) for n in range((end - start).days + 1)}
    problems: list[str] = []
    if served | missing | unreadable != days or served & missing:
        problems.append(
            f"{where}: served {sorted(map(str, served))}, missing {sorted(map(str, missing))}, "
            f"unreadable {sorted(map(str, unreadable))}: not each date once"
        )
    if gone := sorted(str(day) for day in missing & committed_before):
        problems.append(f"{where}: {gone} missing, though committed before the read")
    return problems
