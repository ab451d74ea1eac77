"""A model check of the job and date lifecycle (issue 17): random schedules of real code.

The actors are the real :mod:`common.lifecycle`, :mod:`common.jobs`,
:func:`producer.submission.submit` and :class:`consumer.sweep.Sweeper`, each an asyncio
task over an in-memory store with S3's conditional semantics (:mod:`tests.unit.memory_s3`).
Every store request (and every publish) of an actor waits at its own gate; the state
machine's rules choose whose next request goes through, and how it fares:

- ``ok``: applied and answered;
- ``conflict``: ``409 ConditionalRequestConflict`` (a conditional PUT; not applied);
- ``lost``: applied, but the answer never arrives (a connection reset);
- ``unavailable``: ``503 SlowDown`` (not applied);
- ``crash``: the actor's process is gone; none of its requests ever arrive again.

An actor not chosen is paused between any two requests for any number of steps (a run
presumed dead by the broker, a stalled API), then resumed. The actors: a request
(``POST /process-request``, plain or ``force``: claim, then publish), a delivery of a
published job (start, one or two city objects and their completion records, progress,
a lease check, commit, succeed, the commit's sweep; a failure releases the job, or on the
last delivery gives it up), a give-up (deliveries spent), and a final sweep.

After every step: a ``succeeded`` or ``failed`` job never changes; a date's committed
version changes only to a higher generation and never two versions at one generation;
every object it names exists; its job is never ``failed``; each new claim takes a higher
generation. At the end every actor runs out without faults, every job that is not final
is delivered again, and a plain request is made for each date (as a user would): then
every date is committed, by its newest ``succeeded`` job, and no job with a message (nor
any date's claim) is left ``queued`` or ``running``.

Below the machine, schedules it found replayed step by step (each a protocol bug it found,
fixed since), and scenarios for guards the random schedules reach too rarely.
"""

import asyncio
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final, Literal

import orjson
import structlog
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.jobs import parse_date_state
from common.layout import Layout
from common.lifecycle import Committed, FencedError, Lifecycle, Run
from common.messages import JobMessage
from common.models import (
    CityObject,
    CityRecord,
    DateState,
    JobState,
    Manifest,
    utc_now,
)
from common.storage import ObjectInfo, PendingUpload, S3Writer, StoredObject, WriteConflictError
from consumer.sweep import Sweeper
from producer.submission import submit
from tests.unit.memory_s3 import MemoryS3

Fault = Literal["ok", "conflict", "lost", "unavailable", "crash"]
# Shrinks towards "ok"; faults are rarer than answers.
FAULTS: Final[tuple[Fault, ...]] = (
    "ok",
    "ok",
    "ok",
    "ok",
    "conflict",
    "lost",
    "unavailable",
    "crash",
)
DAYS: Final = (date(2024, 1, 1), date(2024, 1, 2))
STALE: Final = timedelta(seconds=20)  # the store's clock ticks once per request
LAYOUT: Final = Layout("")
MAX_ACTORS: Final = 5  # live at once
MAX_SETTLE: Final = 10_000  # loop turns for the actors to reach their gates
MAX_DRAIN_STEPS: Final = 500  # requests of one actor run out at the end
FINAL_STATUSES: Final = frozenset({"succeeded", "failed"})


class Crash(BaseException):
    """The actor's process is gone: none of its requests reach the store any more."""


class StoreUnavailableError(Exception):
    """``503 SlowDown``: the request was not applied."""


class AnswerLostError(ConnectionError):
    """The request was applied but its answer never arrived."""


class PublishRefusedError(ConnectionError):
    """The broker did not confirm the message (it was not queued): the API answers 503."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the broker did not confirm job {job_id}")
        self.job_id = job_id


EXPECTED: Final = (FencedError, WriteConflictError, StoreUnavailableError, ConnectionError)


class Gate:
    """Where an actor waits before each request until the model lets it through."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.op = ""
        self.waiter: asyncio.Future[Fault] | None = None
        self.crashed = False

    async def enter(self, op: str) -> Fault:
        if self.crashed:
            raise Crash
        self.op = op
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            fault = await self.waiter
        finally:
            self.waiter = None
        if fault == "crash":
            self.crashed = True
            raise Crash
        return fault


class GatedStore:
    """The :class:`ObjectStore` one actor sees: each request passes its gate first."""

    def __init__(self, memory: MemoryS3, gate: Gate, trace: list[str]) -> None:
        self._memory = memory
        self._gate = gate
        self._trace = trace

    async def _enter(self, op: str) -> Fault:
        fault = await self._gate.enter(op)
        self._memory.tick()
        self._trace.append(f"{self._gate.name}: {op} [{fault}]")
        if fault == "unavailable":
            raise StoreUnavailableError(op)
        return fault

    async def get(self, key: str) -> StoredObject | None:
        fault = await self._enter(f"GET {key}")
        if fault == "conflict":  # a GET never answers 409: take it as a 503
            raise StoreUnavailableError(key)
        found = await self._memory.get(key)
        if fault == "lost":
            raise AnswerLostError(key)
        return found

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        condition = (
            " If-None-Match" if if_none_match else f" If-Match {if_match}" if if_match else ""
        )
        fault = await self._enter(f"PUT {key}{condition}")
        if fault == "conflict":
            if if_none_match or if_match is not None:
                raise WriteConflictError(f"{key}: 409 ConditionalRequestConflict")
            raise StoreUnavailableError(key)
        try:
            etag = await self._memory.put(
                key,
                body,
                content_type=content_type,
                if_none_match=if_none_match,
                if_match=if_match,
            )
        except WriteConflictError:
            if fault == "lost":
                raise AnswerLostError(key) from None
            self._trace.append(f"{self._gate.name}:   -> 412")
            raise
        if fault == "lost":
            raise AnswerLostError(key)
        return etag

    async def delete(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        if not batch:
            return  # no request is sent
        fault = await self._enter(f"DELETE {' '.join(batch)}")
        if fault == "conflict":
            raise StoreUnavailableError("delete")
        await self._memory.delete(batch)
        if fault == "lost":
            raise AnswerLostError("delete")

    async def list_objects(self, prefix: str, start_after: str = "") -> AsyncIterator[ObjectInfo]:
        fault = await self._enter(f"LIST {prefix}")
        if fault != "ok":
            raise StoreUnavailableError(prefix)
        found = [item async for item in self._memory.list_objects(prefix, start_after)]
        for item in found:
            yield item

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        return await self._memory.pending_uploads(prefix)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        await self._memory.abort_upload(key, upload_id)

    def writer(self, key: str, content_type: str) -> S3Writer:
        return self._memory.writer(key, content_type)


@dataclass
class Broker:
    """The published messages (a job may be delivered any number of times)."""

    messages: dict[str, date] = field(default_factory=dict)


class GatedPublisher:
    """The API's publisher: a publish is one more request through the actor's gate."""

    def __init__(self, broker: Broker, gate: Gate, trace: list[str]) -> None:
        self._broker = broker
        self._gate = gate
        self._trace = trace

    async def publish(self, job: JobMessage) -> None:
        fault = await self._gate.enter(f"publish {job.job_id}")
        self._trace.append(f"{self._gate.name}: publish {job.job_id} [{fault}]")
        if fault in {"unavailable", "conflict"}:
            raise PublishRefusedError(job.job_id)
        self._broker.messages[job.job_id] = job.date
        if fault == "lost":
            raise AnswerLostError("the confirm was lost")


@dataclass
class Actor:
    name: str
    gate: Gate
    task: "asyncio.Task[None]"

    @property
    def waiting(self) -> bool:
        return not self.task.done() and self.gate.waiter is not None


def _job_id(key: str) -> str | None:
    if key.startswith("jobs/") and key.endswith(".json"):
        return key.removeprefix("jobs/").removesuffix(".json")
    return None


class LifecycleMachine(RuleBasedStateMachine):
    # A job never ends superseded by a job whose request was refused (issue 17 (2)).
    check_refused = True

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.logs = structlog.testing.capture_logs()  # thousands of lines otherwise
        self.logs.__enter__()
        self.memory = MemoryS3()
        self.broker = Broker()
        self.trace: list[str] = []
        self.actors: list[Actor] = []
        self.count = 0
        self.unexpected: list[str] = []
        self.failed = False
        # What the invariants remember from earlier steps.
        self.finals: dict[str, bytes] = {}
        self.committed: dict[date, Manifest] = {}
        self.generations: dict[tuple[date, int], str] = {}
        self.claimed_of: dict[date, set[str]] = {}
        self.top_of: dict[date, int] = {}
        self.requested: set[date] = set()
        self.refused: set[str] = set()  # jobs whose request answered 503
        self.accepted: set[str] = set()  # jobs whose request answered 202, a new job
        self.claims: set[str] = set()  # every job seen as its date's claim

    # -- actors ---------------------------------------------------------------------------

    def _spawn(
        self, kind: str, body: Callable[[GatedStore, Gate], Coroutine[Any, Any, None]]
    ) -> None:
        self.count += 1
        gate = Gate(f"{kind}#{self.count}")
        store = GatedStore(self.memory, gate, self.trace)
        self.trace.append(f"{gate.name}: spawned")
        task = self.loop.create_task(self._guard(gate.name, body(store, gate)))
        self.actors.append(Actor(gate.name, gate, task))
        self._settle()

    async def _guard(self, name: str, body: Coroutine[Any, Any, None]) -> None:
        try:
            await body
        except Crash:
            self.trace.append(f"{name}: crashed")
        except EXPECTED as error:
            self.trace.append(f"{name}: stopped by {error!r}")
        except Exception as error:  # noqa: BLE001 - reported by the invariant
            self.unexpected.append(f"{name}: {''.join(traceback.format_exception(error))}")
        else:
            self.trace.append(f"{name}: done")

    def _settle(self) -> None:
        """Run the loop until every actor waits at its gate or is done."""

        async def settle() -> None:
            for _ in range(MAX_SETTLE):
                if all(actor.task.done() or actor.waiting for actor in self.actors):
                    return
                await asyncio.sleep(0)
            self._fail("an actor neither finished nor reached the store")

        self.loop.run_until_complete(settle())
        self.actors = [actor for actor in self.actors if not actor.task.done()]

    def _waiting(self) -> list[Actor]:
        return [actor for actor in self.actors if actor.waiting]

    def _let(self, actor: Actor, fault: Fault) -> None:
        waiter = actor.gate.waiter
        assert waiter is not None
        waiter.set_result(fault)
        self._settle()

    def _lifecycle(self, store: GatedStore) -> Lifecycle:
        return Lifecycle(store, LAYOUT, stale_after=STALE)

    def _request(
        self, day: date, force: bool
    ) -> Callable[[GatedStore, Gate], Coroutine[Any, Any, None]]:
        async def body(store: GatedStore, gate: Gate) -> None:
            publisher = GatedPublisher(self.broker, gate, self.trace)
            try:
                done = await submit(
                    self._lifecycle(store), publisher, day, force=force, stale_after=STALE
                )
            except PublishRefusedError as refused:
                self.refused.add(refused.job_id)
                raise
            self.trace.append(f"{gate.name}: job {done.job.job_id} created={done.created}")
            if done.created:
                self.accepted.add(done.job.job_id)

        return body

    def _delivery(
        self, job_id: str, day: date, *, redelivered: bool, last: bool, cities: int
    ) -> Callable[[GatedStore, Gate], Coroutine[Any, Any, None]]:
        async def body(store: GatedStore, gate: Gate) -> None:
            lifecycle = self._lifecycle(store)
            sweeper = Sweeper(store, LAYOUT)
            start = await lifecycle.start(job_id, day, redelivered=redelivered)
            self.trace.append(f"{gate.name}: start -> {type(start).__name__}")
            if isinstance(start, Committed):
                await sweeper.after_commit(start.manifest)
                return
            if not isinstance(start, Run):
                return
            await self._run(start, store, sweeper, last=last, cities=cities)

        return body

    async def _run(
        self, run: Run, store: GatedStore, sweeper: Sweeper, *, last: bool, cities: int
    ) -> None:
        """What :class:`consumer.handler._Run` does, with one or two fake cities."""
        lease = run.lease
        names = (run.state.date, lease.generation, lease.job_id, lease.run_id)
        try:
            objects: list[CityObject] = []
            for city_id in range(1, cities + 1):
                key = LAYOUT.city_object(*names, city_id, codec="none")
                body = orjson.dumps({"run": lease.run_id, "city": city_id})
                etag = await store.put(key, body, content_type="application/x-ndjson")
                city = CityObject(
                    city_id=city_id,
                    name=f"city {city_id}",
                    country="XX",
                    key=key,
                    etag=etag,
                    records=1,
                    bytes=len(body),
                )
                record = CityRecord(city=city, bad_records=0, kept_bad=[])
                await store.put(
                    LAYOUT.city_record(*names, city_id), record.model_dump_json().encode()
                )
                objects.append(city)
                progress = {
                    "cities_done": len(objects),
                    "records": len(objects),
                    "updated_at": utc_now(),
                }
                await run.save(run.state.model_copy(update=progress))
                await run.check()  # the heartbeat's lease check
            manifest = Manifest(
                date=run.state.date,
                job_id=lease.job_id,
                run_id=lease.run_id,
                generation=lease.generation,
                fetched_at=utc_now(),
                cities=objects,
            )
            manifest = await run.commit(manifest)
        except FencedError:
            return
        except (WriteConflictError, StoreUnavailableError, ConnectionError) as error:
            if run.committed:
                return
            try:
                if last:
                    await run.give_up(f"the last attempt failed: {error!r}")
                else:
                    await run.release(f"retried: {error!r}")
            except FencedError:
                return
            return
        await run.succeed(manifest)
        await sweeper.after_commit(manifest)

    def _give_up(
        self, job_id: str, day: date
    ) -> Callable[[GatedStore, Gate], Coroutine[Any, Any, None]]:
        async def body(store: GatedStore, gate: Gate) -> None:
            ended = await self._lifecycle(store).end(job_id, day, "its deliveries are spent")
            self.trace.append(f"{gate.name}: ended {None if ended is None else ended.status}")

        return body

    def _final_sweep(self, day: date) -> Callable[[GatedStore, Gate], Coroutine[Any, Any, None]]:
        async def body(store: GatedStore, gate: Gate) -> None:
            counts = await Sweeper(store, LAYOUT).final(day)
            self.trace.append(f"{gate.name}: swept {counts}")

        return body

    # -- rules ----------------------------------------------------------------------------

    def _room(self) -> bool:
        return len(self.actors) < MAX_ACTORS

    def _message(self, pick: int) -> tuple[str, date]:
        messages = list(self.broker.messages.items())  # in publishing order: ids are random
        return messages[pick % len(messages)]

    @precondition(_room)
    @rule(day=st.sampled_from(DAYS), force=st.booleans())
    def request(self, day: date, force: bool) -> None:
        self.requested.add(day)
        self._spawn("request-force" if force else "request", self._request(day, force))

    @precondition(lambda self: self._room() and self.broker.messages)
    @rule(
        pick=st.integers(0, 15),
        redelivered=st.booleans(),
        last=st.booleans(),
        cities=st.integers(1, 2),
    )
    def deliver(self, pick: int, redelivered: bool, last: bool, cities: int) -> None:
        job_id, day = self._message(pick)
        kind = "redelivery" if redelivered else "copy"
        self._spawn(
            f"{kind}-{job_id[:6]}",
            self._delivery(job_id, day, redelivered=redelivered, last=last, cities=cities),
        )

    @precondition(lambda self: self._room() and self.broker.messages)
    @rule(pick=st.integers(0, 15))
    def give_up(self, pick: int) -> None:
        job_id, day = self._message(pick)
        self._spawn(f"give-up-{job_id[:6]}", self._give_up(job_id, day))

    @precondition(_room)
    @rule(day=st.sampled_from(DAYS))
    def final_sweep(self, day: date) -> None:
        self._spawn("final-sweep", self._final_sweep(day))

    @precondition(lambda self: bool(self._waiting()))
    @rule(pick=st.integers(0, 7), fault=st.sampled_from(FAULTS))
    def step(self, pick: int, fault: Fault) -> None:
        """One actor's next request goes through (or fails as ``fault`` says)."""
        waiting = self._waiting()
        self._let(waiting[pick % len(waiting)], fault)

    @precondition(lambda self: bool(self._waiting()))
    @rule(pick=st.integers(0, 7), steps=st.integers(1, 8))
    def advance(self, pick: int, steps: int) -> None:
        """One actor's next few requests go through, answered."""
        actor = self._waiting()[pick % len(self._waiting())]
        for _ in range(steps):
            if not actor.waiting:
                break
            self._let(actor, "ok")

    # -- invariants -----------------------------------------------------------------------

    def _fail(self, message: str, about: str | None = None) -> None:
        """Fail with the requests of the schedule (those naming ``about``, or the last 80)."""
        self.failed = True
        if about is None:
            lines = self.trace[-80:]
        else:
            actors = {line.split(":")[0] for line in self.trace if about in line}
            lines = [line for line in self.trace if line.split(":")[0] in actors]
        schedule = "\n".join(lines)
        raise AssertionError(f"{message}\n-- the requests, oldest first:\n{schedule}")

    def _jobs(self) -> dict[str, JobState]:
        jobs: dict[str, JobState] = {}
        for key, entry in self.memory.objects.items():
            job_id = _job_id(key)
            if job_id is not None:
                jobs[job_id] = JobState.model_validate_json(entry.body)
        return jobs

    def _date_state(self, day: date) -> DateState | None:
        entry = self.memory.objects.get(LAYOUT.manifest(day))
        return None if entry is None else parse_date_state(day, entry.body)

    @invariant()
    def lifecycle_holds(self) -> None:
        if self.unexpected:
            self._fail(f"an actor raised: {self.unexpected[0]}")
        jobs = self._jobs()
        for key, body in self.finals.items():
            entry = self.memory.objects.get(key)
            if entry is None or entry.body != body:
                now = "deleted" if entry is None else entry.body.decode()
                self._fail(f"the final state {body.decode()} of {key} changed: now {now}")
        for key, entry in self.memory.objects.items():
            job_id = _job_id(key)
            if job_id is not None and jobs[job_id].status in FINAL_STATUSES:
                self.finals.setdefault(key, entry.body)
        for day in DAYS:
            self._check_date(day, jobs)

    def _check_date(self, day: date, jobs: dict[str, JobState]) -> None:
        state = self._date_state(day)
        before = self.committed.get(day)
        committed = None if state is None else state.committed
        if before is not None:
            if committed is None:
                self._fail(f"{day}: the committed generation {before.generation} disappeared")
            elif committed.run_id != before.run_id and committed.generation <= before.generation:
                self._fail(
                    f"{day}: committed generation {before.generation} (run {before.run_id}) "
                    f"replaced by generation {committed.generation} (run {committed.run_id})"
                )
        if committed is not None:
            self._check_committed(day, committed, jobs)
        if state is not None:
            self._check_claim(day, state)

    def _check_committed(self, day: date, committed: Manifest, jobs: dict[str, JobState]) -> None:
        self.committed[day] = committed
        first = self.generations.setdefault((day, committed.generation), committed.run_id)
        if first != committed.run_id:
            self._fail(f"{day}: two committed versions at generation {committed.generation}")
        for city in committed.cities:
            if city.key not in self.memory.objects:
                self._fail(f"{day}: the committed version names {city.key}, which is gone")
        job = jobs.get(committed.job_id)
        if job is None or job.status == "failed":
            self._fail(f"{day}: the committed job {committed.job_id} is {job and job.status}")

    def _check_claim(self, day: date, state: DateState) -> None:
        top = self.top_of.get(day, 0)
        if state.claim is not None:
            claim = state.claim
            self.claims.add(claim.job_id)
            # A new claim takes a generation above everything the date has seen; a
            # withdrawn claim may give the date back to the claim it replaced (seen before).
            seen = self.claimed_of.setdefault(day, set())
            if claim.job_id not in seen and claim.generation <= top:
                self._fail(f"{day}: a new claim of generation {claim.generation} after {top}")
            seen.add(claim.job_id)
        if state.top_generation < top:
            self._fail(f"{day}: the date's generations went back to {state.top_generation}")
        self.top_of[day] = state.top_generation

    # -- the end: every actor runs out, then a user's plain request per date --------------

    def teardown(self) -> None:
        try:
            if not self.failed:
                self._finish()
        finally:
            # Whatever still runs crashes: it finishes at its next request.
            for actor in self.actors:
                actor.gate.crashed = True
                if actor.gate.waiter is not None:
                    actor.gate.waiter.set_result("crash")
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()
            self.logs.__exit__(None, None, None)

    def _run_out(self) -> None:
        """Every actor's requests go through, answered, until it is done."""
        for _ in range(MAX_DRAIN_STEPS):
            waiting = self._waiting()
            if not waiting:
                return
            self._let(waiting[0], "ok")
            self.lifecycle_holds()
        self._fail("actors still running after the run-out")

    def _redeliver(self) -> None:
        """The broker delivers every job that is not final again, one at a time."""
        for _ in range(4):
            jobs = self._jobs()
            open_jobs = [
                (job_id, day)
                for job_id, day in self.broker.messages.items()
                if job_id in jobs and jobs[job_id].status not in FINAL_STATUSES
            ]
            if not open_jobs:
                return
            for job_id, day in open_jobs:
                self._spawn(
                    "last-redelivery",
                    self._delivery(job_id, day, redelivered=True, last=False, cities=1),
                )
                self._run_out()

    def _finish(self) -> None:
        self._run_out()
        self._redeliver()
        self.memory.clock += int(STALE.total_seconds()) + 1  # the user comes back later
        for day in sorted(self.requested):
            self._spawn("user-request", self._request(day, force=False))
            self._run_out()
        self._redeliver()
        self.lifecycle_holds()
        jobs = self._jobs()
        for day in sorted(self.requested):
            state = self._date_state(day)
            if state is None or state.committed is None:
                self._fail(f"{day}: not committed after the run-out and a plain request")
                return
            succeeded = [
                job for job in jobs.values() if job.date == day and job.status == "succeeded"
            ]
            newest = max(succeeded, key=lambda job: job.generation)
            if state.committed.job_id != newest.job_id:
                self._fail(
                    f"{day}: committed job {state.committed.job_id} (generation "
                    f"{state.committed.generation}) is not the newest succeeded job "
                    f"{newest.job_id} (generation {newest.generation})"
                )
        # A job with a message, or its date's claim, is finished. (A claim whose publish
        # never happened and that a newer claim replaced stays queued: see
        # test_a_claim_replaced_before_its_publish_does_not_stay_queued.)
        current = {
            state.claim.job_id
            for day in DAYS
            if (state := self._date_state(day)) is not None and state.claim is not None
        }
        for job_id in sorted(current | set(self.broker.messages)):
            job = jobs.get(job_id)
            if job is not None and job.status not in FINAL_STATUSES:
                self._fail(f"job {job_id} was left {job.status} with nothing to run it", job_id)
        for job_id in sorted(self.accepted - self.claims):
            self._fail(f"job {job_id} was answered 202 but never was its date's claim", job_id)
        for job in jobs.values():
            if not self.check_refused:
                break
            if job.superseded_by is not None and job.superseded_by in self.refused:
                self._fail(
                    f"job {job.job_id} ended {job.status}, superseded by {job.superseded_by}, "
                    "whose request was refused (503)",
                    job.superseded_by,
                )


LifecycleMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLifecycle = LifecycleMachine.TestCase


# -- schedules found by the model, replayed step by step -----------------------------------


def _named(machine: LifecycleMachine, prefix: str) -> Actor:
    return next(actor for actor in machine.actors if actor.name.startswith(prefix))


def _until(machine: LifecycleMachine, prefix: str, op: str, nth: int = 1) -> None:
    """Let the actor's requests through until its next one is the ``nth`` ``op`` (a prefix)."""
    _actor_until(machine, _named(machine, prefix), op, nth)


def _through(machine: LifecycleMachine, prefix: str) -> None:
    _let_through(machine, _named(machine, prefix))


def test_a_final_sweep_never_deletes_what_a_newer_claim_wrote_after_it_read_the_date() -> None:
    """The final sweep reads the date, pauses; a new claim's run writes; the sweep lists."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.final_sweep(day)
        _until(machine, "final-sweep", "LIST")  # it has read the date state: nothing yet
        machine.request(day, force=False)
        _through(machine, "request")
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _until(machine, "redelivery", "PUT manifests", nth=2)  # its city written: the commit
        _through(machine, "final-sweep")
        _through(machine, "redelivery")
    finally:
        machine.teardown()


def _job(machine: LifecycleMachine, job_id: str) -> JobState:
    return machine._jobs()[job_id]


def test_a_refused_force_leaves_a_job_waiting_for_its_next_delivery_as_it_was() -> None:
    """Issue 17 (2): a 503'd force supersedes nothing, even a job between two attempts."""
    machine = LifecycleMachine()
    machine.check_refused = True
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _through(machine, "request")
        job_id = next(iter(machine.broker.messages))
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _until(machine, "redelivery", "PUT data")
        machine._let(_named(machine, "redelivery"), "unavailable")
        _through(machine, "redelivery")  # a retryable failure: back to queued
        assert _job(machine, job_id).status == "queued"
        machine.request(day, force=True)
        _until(machine, "request-force", "publish")
        machine._let(_named(machine, "request-force"), "unavailable")
        _through(machine, "request-force")
        machine.deliver(0, redelivered=True, last=False, cities=1)  # the job's next attempt
        _through(machine, "redelivery")
        job = _job(machine, job_id)
        assert job.status == "succeeded", (job.status, job.error, "\n".join(machine.trace))
    finally:
        machine.teardown()


def test_a_claim_replaced_before_its_publish_does_not_stay_queued() -> None:
    """The API dies between claim and publish; a force replaces the claim and commits."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _until(machine, "request", "publish")
        claimed = machine._date_state(day)
        assert claimed is not None
        assert claimed.claim is not None
        orphan = claimed.claim.job_id
        machine._let(_named(machine, "request"), "crash")
        machine.request(day, force=True)
        _through(machine, "request-force")
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _through(machine, "redelivery")
        machine.memory.clock += int(STALE.total_seconds()) + 1
        machine.request(day, force=False)  # a user asks again, later
        _through(machine, "request")
        assert _job(machine, orphan).status in FINAL_STATUSES
    finally:
        machine.teardown()


def test_a_copy_of_a_message_while_its_job_runs_is_dropped() -> None:
    """A second copy (not a redelivery) of a running job's message does not take over."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _through(machine, "request")
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _until(machine, "redelivery", "PUT data")  # running, its heartbeat fresh
        machine.deliver(0, redelivered=False, last=False, cities=1)
        _through(machine, "copy")
        assert any(line.endswith("start -> Duplicate") for line in machine.trace), machine.trace
        _through(machine, "redelivery")
        state = machine._date_state(day)
        assert state is not None
        assert state.committed is not None
    finally:
        machine.teardown()


def test_a_claim_over_a_version_1_manifest_takes_a_higher_generation_and_commits() -> None:
    """Issue 17 (3): a date committed before the arbiter (a bare manifest at generation 5,
    no pointer): the next claim is above it, so its run commits instead of standing down."""
    machine = LifecycleMachine()
    day = DAYS[0]
    old_job, old_run = "a" * 32, "b" * 32
    key = LAYOUT.city_object(day, 5, old_job, old_run, 1, codec="none")
    etag = machine.loop.run_until_complete(machine.memory.put(key, b"{}\n"))
    city = CityObject(city_id=1, name="c", country="XX", key=key, etag=etag, records=1, bytes=3)
    manifest = Manifest(
        date=day, job_id=old_job, run_id=old_run, generation=5, fetched_at=utc_now(), cities=[city]
    )
    done = JobState.queued(old_job, day, force=False, generation=5)
    done = done.model_copy(update={"status": "succeeded"})
    for where, body in ((LAYOUT.manifest(day), manifest), (LAYOUT.job(old_job), done)):
        machine.loop.run_until_complete(machine.memory.put(where, body.model_dump_json().encode()))
    try:
        machine.request(day, force=True)
        _through(machine, "request-force")
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _through(machine, "redelivery")
        state = machine._date_state(day)
        assert state is not None
        assert state.committed is not None
        assert state.committed.job_id != old_job, "\n".join(machine.trace)
        assert state.committed.generation > 5
    finally:
        machine.teardown()


def test_a_run_paused_before_its_commit_never_commits_after_a_newer_job_took_the_lease() -> None:
    """Job J's run pauses just before its commit reads the date; a forced job K takes the
    lease (ending J) and pauses too; J's run resumes: the lease is not its own, so no commit."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _through(machine, "request")
        first = next(iter(machine.broker.messages))
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _until(machine, f"redelivery-{first[:6]}", "GET manifests", nth=3)  # the commit's read
        machine.request(day, force=True)
        _through(machine, "request-force")
        second = list(machine.broker.messages)[1]
        machine.deliver(1, redelivered=True, last=False, cities=1)
        _until(machine, f"redelivery-{second[:6]}", "GET manifests", nth=3)
        _through(machine, f"redelivery-{first[:6]}")
        _through(machine, f"redelivery-{second[:6]}")
        state = machine._date_state(day)
        assert state is not None
        assert state.committed is not None
        assert state.committed.job_id == second
    finally:
        machine.teardown()


def _nth(machine: LifecycleMachine, prefix: str, nth: int) -> Actor:
    return [actor for actor in machine.actors if actor.name.startswith(prefix)][nth]


def _actor_until(machine: LifecycleMachine, actor: Actor, op: str, nth: int = 1) -> None:
    """Like :func:`_until`, for one actor among several of the same name."""
    for _ in range(50):
        if actor.gate.op.startswith(op):
            nth -= 1
            if not nth:
                return
        machine._let(actor, "ok")
    raise AssertionError(f"{actor.name} never reached {op}")


def _let_through(machine: LifecycleMachine, actor: Actor) -> None:
    while actor.waiting:
        machine._let(actor, "ok")
    machine.lifecycle_holds()


def test_a_give_up_clears_the_lease_so_a_paused_run_never_commits_after_the_deletes() -> None:
    """J's run pauses before its commit; J's last delivery gives it up (its objects go);
    the run resumes: its lease is gone, so it cannot commit what was deleted."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _through(machine, "request")
        job = next(iter(machine.broker.messages))
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _until(machine, f"redelivery-{job[:6]}", "GET manifests", nth=3)  # the commit's read
        machine.give_up(0)
        _through(machine, f"give-up-{job[:6]}")
        _through(machine, f"redelivery-{job[:6]}")
        state = machine._date_state(day)
        assert state is None or state.committed is None
        assert _job(machine, job).status == "failed"
    finally:
        machine.teardown()


def test_a_delivery_after_a_give_up_s_date_write_never_runs_the_job() -> None:
    """A give-up pauses between its date write (claim ended) and the job's final state; a
    redelivery of the job comes: it must end the job, not run it (the give-up then
    deletes the job's objects)."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _through(machine, "request")
        job = next(iter(machine.broker.messages))
        machine.give_up(0)
        _until(machine, f"give-up-{job[:6]}", "GET jobs")  # its date write is done
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _through(machine, f"redelivery-{job[:6]}")
        _through(machine, f"give-up-{job[:6]}")
        state = machine._date_state(day)
        assert state is None or state.committed is None
        assert _job(machine, job).status == "failed"
    finally:
        machine.teardown()


def test_a_paused_run_never_writes_over_the_state_a_newer_run_finished() -> None:
    """Run A pauses before a progress write; the broker redelivers, run B finishes the
    job; A resumes: its write is conditional on its own last version, so it fails."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _through(machine, "request")
        job = next(iter(machine.broker.messages))
        machine.deliver(0, redelivered=True, last=False, cities=1)
        first = _nth(machine, f"redelivery-{job[:6]}", 0)
        _until(machine, f"redelivery-{job[:6]}", "PUT jobs", nth=2)  # a progress write
        machine.deliver(0, redelivered=True, last=False, cities=1)
        _let_through(machine, _nth(machine, f"redelivery-{job[:6]}", 1))
        assert _job(machine, job).status == "succeeded"
        _let_through(machine, first)
        assert _job(machine, job).status == "succeeded"
    finally:
        machine.teardown()


def test_a_replaced_run_s_give_up_never_ends_the_run_that_replaced_it() -> None:
    """Run A's last attempt fails and pauses before giving the job up; a redelivery B takes
    the lease over and pauses before its commit; A's give-up must find its lease gone and
    do nothing, so B commits."""
    machine = LifecycleMachine()
    day = DAYS[0]
    try:
        machine.request(day, force=False)
        _through(machine, "request")
        job = next(iter(machine.broker.messages))
        machine.deliver(0, redelivered=True, last=True, cities=1)
        first = _nth(machine, f"redelivery-{job[:6]}", 0)
        _until(machine, f"redelivery-{job[:6]}", "PUT data")
        machine._let(first, "unavailable")  # the city fails: the last attempt gives up
        _until(machine, f"redelivery-{job[:6]}", "GET manifests")  # the give-up's read
        machine.deliver(0, redelivered=True, last=False, cities=1)
        second = _nth(machine, f"redelivery-{job[:6]}", 1)
        _actor_until(machine, second, "GET manifests", nth=3)  # B up to its commit's read
        _let_through(machine, first)
        _let_through(machine, second)
        state = machine._date_state(day)
        assert state is not None
        assert state.committed is not None
        assert state.committed.job_id == job
        assert _job(machine, job).status == "succeeded"
    finally:
        machine.teardown()
