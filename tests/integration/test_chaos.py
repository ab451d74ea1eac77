"""Chaos: random interleavings of requests and faults, then invariants over the final state.

What runs: a few dates, the real API, three consumer processes on the real RabbitMQ, the
reference simulator (deterministic: every fetch of a date gives the same records) and a
Moto S3 endpoint that can be restarted (:class:`tests.integration.s3_server.RestartableMoto`:
its backend survives, like a real store's disks). The consumers' wall clocks differ: one
runs an hour ahead, one an hour behind (libfaketime), so nothing may rest on clocks.

A seed (``CHAOS_SEED``; the test runs the seeds of ``CHAOS_SEEDS=1,2,3`` or
``CHAOS_SEEDS=1-20``, or ``CHAOS_RUNS=N`` for seeds 1..N, else the fixed
:data:`DEFAULT_SEEDS`) draws a schedule of timed steps: plain POSTs and POSTs with
``force=true`` (some only once a job of the date runs), SIGKILL and SIGTERM of consumers
and restarts of their slots (each with its own clock), the broker closing every
connection of the namespace (``rabbitmqctl``), pauses (SIGSTOP, then SIGCONT seconds
later) of a busy consumer and of the API, silent partitions (:mod:`.tcp_proxy`: no FIN, no
RST) of a busy consumer's link to the broker or to S3, windows of S3 faults from the
proxy every process reaches S3 through (:mod:`.s3_proxy`: 409 ConditionalRequestConflict,
503 SlowDown, answers lost after the write took effect, delays), windows of simulator
faults (5xx, hanging requests cut by the 4 s read timeout, truncated bodies) and of a city
failing for good, a restart of the S3 endpoint mid-upload, and reads of
``/country-stats`` (each must answer 503 or the oracle's figures, never wrong ones, and
account for every date: none committed before the read may be called missing). The
consumers' broker heartbeat is 2 s, so a paused or cut-off consumer loses its deliveries
to another while it still believes it runs them. Two messages are published first: one no
consumer can decode (dead-lettered) and one of a newer version (its job ended, acked).
Faults wait (a few seconds at most) for work in flight, and a seed in which none hit a
running job fails: at least one job superseded, one run resumed, one consumer killed or
stopped mid-job.

While it runs, every job state is sampled: a ``succeeded`` or ``failed`` job never
changes. Then the system is brought to rest (every pause and partition over, every slot
running, a plain POST per date, and plain POSTs again for dates whose job failed; polled
with a deadline, never slept on) and the invariants of :mod:`tests.integration.invariants`
are checked: every job final (none ``queued`` or ``running`` without a message or a run),
failed ones with a reason, supersession pointing forward; every date committed (no
``force`` needed), by its newest succeeded job at the highest generation; the committed
version belongs to a succeeded job; every date answers 200 and equals the oracle, and
``verify=true`` is ok; every committed object exists with its manifest's ETag; after
``python -m consumer sweep`` nothing is left that no manifest references (objects,
completion records, partials, uploads); every dead letter is explained by a failed job
(the undecodable one aside); the job queue is empty; every consumer stops cleanly on
SIGTERM. No process is ever left SIGSTOPped, whatever fails.

A failing seed reports its schedule, what each step did, and the command that replays it.
The timing of the steps replays; what the processes do in between is up to the machine.
"""

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from common.settings import Settings
from common.storage import open_store
from common.topology import ROUTING_KEY, declare_topology
from refsim import SimulatorConfig, cities
from refsim.server import LiveSimulator, serve
from tests.conftest import AMQP_URL, make_settings
from tests.integration import invariants, s3_proxy
from tests.integration.broker import close_connections
from tests.integration.s3_proxy import ThreadedS3Proxy
from tests.integration.s3_server import RestartableMoto
from tests.integration.services import (
    Api,
    Service,
    clock_offset,
    running,
    start_api,
    start_consumer,
)
from tests.integration.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
log = logging.getLogger(__name__)

DEFAULT_SEEDS: Final = (1, 2)
MIB: Final = 1024 * 1024
SLOTS: Final = 3
CLOCKS: Final = ("", "+1h", "-1h")  # "" is the true clock
FIRST_DAY: Final = date(2024, 5, 1)
QUIET_DEADLINE: Final = 75.0
POISON: Final = {
    "future-version": b'{"version": 2, "job_id": "' + b"f" * 32 + b'", "date": "2024-05-01"}',
    "not-json": b"\x00\xff not json",
}
# Every kind of step appears once per seed; these are drawn for the rest, by weight.
MANDATORY: Final = (
    "post", "force", "force_running", "kill", "term", "restart", "drop", "s3", "faults", "read",
    "pause", "pause_api", "partition", "s3_faults",
)  # fmt: skip
EXTRA: Final = {
    "post": 3, "force": 2, "force_running": 3, "kill": 2, "term": 2, "restart": 2,
    "drop": 1, "read": 2, "outage": 1, "faults": 1, "pause": 2, "partition": 2, "s3_faults": 1,
}  # fmt: skip
EXTRA_STEPS: Final = 8
LIVENESS_ROUNDS: Final = 2  # plain POSTs, after the settle, for dates that ended failed
BROKER_HEARTBEAT: Final = 2  # seconds: a paused or cut-off consumer loses its deliveries soon
WORK_WAIT: Final = 8.0  # how long a fault waits for work in flight to hit


def seeds() -> list[int]:
    """``CHAOS_SEEDS=1,2,3`` or ``CHAOS_SEEDS=1-20`` (ranges and lists mix), ``CHAOS_SEED``."""
    if listed := os.environ.get("CHAOS_SEEDS"):
        chosen: list[int] = []
        for part in filter(None, (item.strip() for item in listed.split(","))):
            first, _, last = part.partition("-")
            chosen.extend(range(int(first), int(last or first) + 1))
        return chosen
    if one := os.environ.get("CHAOS_SEED"):
        return [int(one)]
    if runs := int(os.environ.get("CHAOS_RUNS", "0")):
        return list(range(1, runs + 1))
    return list(DEFAULT_SEEDS)


def simulator_config(seed: int) -> SimulatorConfig:
    """Deterministic data; cities of 3,000..70,000 records (about half exceed one 5 MiB part).

    With 0.5..2.5 s per request and three cities at a time (:func:`chaos_settings`), a
    job lasts several seconds: the schedule's faults meet work in flight.
    """
    return SimulatorConfig(
        seed=seed, cities=6, countries=3, records_min=3_000, records_max=70_000,
        latency_min=0.5, latency_max=2.5, hang_seconds=30,
    )  # fmt: skip


def faulty(config: SimulatorConfig) -> SimulatorConfig:
    """The same data, served with transient faults that heal within the retry budget."""
    return dataclasses.replace(
        config, fail_rate=0.3, timeout_rate=0.1, truncate_rate=0.2, fail_attempts=2
    )


@dataclass(frozen=True)
class Step:
    """One timed action of a schedule."""

    at: float
    kind: str
    day: date | None = None
    slot: int | None = None
    value: float | int | str | None = None

    def __str__(self) -> str:
        parts = [f"{self.at:5.1f}s {self.kind}"]
        if self.day is not None:
            parts.append(str(self.day))
        if self.slot is not None:
            parts.append(f"slot {self.slot}")
        if self.value is not None:
            parts.append(repr(self.value))
        return " ".join(parts)


@dataclass
class Plan:
    days: list[date]
    clocks: list[str]
    steps: list[Step]

    def describe(self) -> str:
        clocks = ", ".join(f"slot {n}: {c or 'true'}" for n, c in enumerate(self.clocks))
        steps = "\n".join(f"    {step}" for step in self.steps)
        return f"dates {self.days[0]}..{self.days[-1]}; clocks {clocks}\n{steps}"


def make_plan(seed: int, config: SimulatorConfig) -> Plan:
    """The seed's schedule: a pure function of the seed, so a failure replays."""
    rng = random.Random(seed)
    days = [FIRST_DAY + timedelta(days=n) for n in range(rng.randint(4, 6))]
    clocks = rng.sample(CLOCKS, SLOTS)
    kinds = list(MANDATORY) + rng.choices(list(EXTRA), weights=list(EXTRA.values()), k=EXTRA_STEPS)
    rng.shuffle(kinds)
    steps: list[Step] = []
    at = 0.0
    for day in rng.sample(days, len(days)):  # every date is asked for at the start
        steps.append(Step(at, rng.choice(["post", "post", "force"]), day=day))
        at += round(rng.uniform(0.0, 0.3), 2)
    up = set(range(SLOTS))
    heal_at = 0.0
    city_ids = [city.id for city in cities(config)]
    for kind in kinds:
        at += round(rng.uniform(0.3, 2.0), 2)
        step = _draw_step(rng, at, kind, days=days, up=up, cities=city_ids)
        steps.append(step)
        if step.kind in {"faults", "outage"}:
            heal_at = max(heal_at, at + round(rng.uniform(1.0, 5.0), 2))
        if heal_at and heal_at <= at:
            steps.append(Step(heal_at, "heal"))
            heal_at = 0.0
    if heal_at:
        steps.append(Step(heal_at, "heal"))
    steps.sort(key=lambda step: step.at)
    return Plan(days=days, clocks=clocks, steps=steps)


def _draw_step(
    rng: random.Random, at: float, kind: str, *, days: list[date], up: set[int], cities: list[int]
) -> Step:
    """One step of ``kind`` (or another if the slots' state rules it out); updates ``up``."""
    if kind in {"kill", "term"} and len(up) <= 1:  # one consumer keeps working
        kind = "restart"
    if kind == "restart" and len(up) == SLOTS:
        kind = "read"
    day = rng.choice(days) if kind in {"post", "force", "force_running", "read"} else None
    slot: int | None = None
    value: float | int | str | None = None
    if kind in {"kill", "term"}:
        slot = rng.choice(sorted(up))
        up.discard(slot)
    elif kind == "restart":
        slot = rng.choice(sorted(set(range(SLOTS)) - up))
        up.add(slot)
        value = rng.choice(CLOCKS)
    elif kind == "s3":
        value = round(rng.uniform(0.5, 2.0), 2)
    elif kind == "outage":
        value = rng.choice(cities)
    elif kind == "read":
        value = rng.randint(0, len(days) - 1)
    elif kind == "pause":  # shorter and longer than the broker's two missed heartbeats
        value = round(rng.uniform(2.0, 9.0), 2)
    elif kind == "pause_api":
        value = round(rng.uniform(1.0, 4.0), 2)
    elif kind == "partition":
        value = f"{rng.choice(['broker', 's3'])} {round(rng.uniform(2.0, 9.0), 2)}"
    elif kind == "s3_faults":
        value = round(rng.uniform(2.0, 6.0), 2)
    return Step(at, kind, day=day, slot=slot, value=value)


@dataclass
class Chaos:
    """Plays a plan against the running system and records what each step did."""

    seed: int
    plan: Plan
    settings: Settings
    moto: RestartableMoto
    simulator: LiveSimulator
    base: SimulatorConfig
    api: Api
    http: aiohttp.ClientSession
    world: invariants.World
    proxy: ThreadedS3Proxy
    """Every process reaches S3 through it: the schedule's S3 faults."""
    links: list[tuple[TcpProxy, TcpProxy]]
    """Each slot's (broker, S3) links: the schedule's silent partitions."""
    slots: list[Service | None] = field(default_factory=lambda: [None] * SLOTS)
    starting: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    retired: list[Service] = field(default_factory=list)
    stopping: list[asyncio.Task[int]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _started_consumers: int = 0
    history: invariants.History = field(default_factory=invariants.History)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    """Timed undoings (SIGCONT, heal): all awaited by :meth:`settle`."""
    frozen: dict[int, Service] = field(default_factory=dict)
    """SIGSTOPped processes by pid: always continued (settle, or the teardown on failure)."""
    hit: dict[str, int] = field(default_factory=dict)
    """Faults that met work in flight, by kind (a seed whose faults met none fails)."""

    # -- reporting -----------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.done.append(f"{time.monotonic() - self.started:6.1f}s {text}")
        log.info("chaos: %s", self.done[-1])

    def report(self) -> str:
        return (
            f"\nreplay: CHAOS_SEED={self.seed} uv run pytest -q tests/integration/test_chaos.py"
            f"\nschedule of seed {self.seed}: {self.plan.describe()}"
            "\nwhat it did:\n" + "\n".join(f"    {line}" for line in self.done)
        )

    def story(self, day: date) -> str:
        """What the consumers logged about one date, in order."""
        keys = ("event", "job_id", "run_id", "generation", "delivery", "decision", "reason")
        lines = sorted(
            (
                (str(line.get("timestamp", "")), service.name, line)
                for service in [*self.retired, *(s for s in self.slots if s is not None)]
                for line in service.lines
                if line.get("date") == day.isoformat()
            ),
            key=lambda item: item[0],
        )
        return f"{day}:\n" + "\n".join(
            f"    {stamp} {name} " + " ".join(f"{k}={line[k]}" for k in keys if k in line)
            for stamp, name, line in lines
        )

    # -- steps ---------------------------------------------------------------------------

    async def start_slot(self, slot: int, clock: str) -> None:
        self._started_consumers += 1
        name = f"consumer-{self._started_consumers}{clock}"
        extra = clock_offset(clock) if clock else {}
        broker, s3 = self.links[slot]
        extra["BUSSTATS_AMQP_URL"] = broker.url_of(consumer_amqp_url())
        extra["BUSSTATS_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{s3.port}"
        self.slots[slot] = await start_consumer(self.settings, name, extra_env=extra)

    async def _post(self, day: date, *, force: bool) -> str:
        query = f"date={day}" + ("&force=true" if force else "")
        async with self.http.post(f"{self.api.url}/process-request?{query}") as response:
            body = await response.json(content_type=None)
            if "job_id" in body:
                self.world.visible_jobs.add(body["job_id"])
            if response.status == 500:
                self.violations.append(f"POST {query} answered 500 {body}")
            return f"{response.status} {body.get('job_id', body)}"

    async def post(self, step: Step) -> str:
        assert step.day is not None
        return await self._post(step.day, force=False)

    async def force(self, step: Step) -> str:
        assert step.day is not None
        return await self._post(step.day, force=True)

    async def force_running(self, step: Step) -> str:
        """Force a date once its newest job runs: the step's date first, else any date
        whose job runs (waiting a few seconds at most), else the step's date anyway."""
        assert step.day is not None
        seen, day = "never running", step.day
        others = [other for other in self.world.days if other != step.day]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(8):
                while True:
                    for candidate in (step.day, *others):
                        latest = await self.world.lifecycle.latest(candidate)
                        if latest is not None and latest.status == "running":
                            seen, day = f"while {latest.job_id} ran", candidate
                            break
                    if day != step.day or seen != "never running":
                        self.hit["force_running"] = self.hit.get("force_running", 0) + 1
                        break
                    await asyncio.sleep(0.05)  # S3 cannot notify
        return f"{seen} ({day}): " + await self._post(day, force=True)

    async def _started(self, slot: int) -> None:
        """Until the slot's consumer (if one is starting) consumes."""
        task = self.starting.pop(slot, None)
        if task is not None:
            await task

    async def _reap(self) -> None:
        """Forget the slots whose consumer has started (re-raising a start that failed)."""
        for slot, task in list(self.starting.items()):
            if task.done():
                await self._started(slot)

    async def _victim(self, step: Step) -> Service:
        """The consumer to stop: the busiest running one, else the step's slot's.

        Faults are meant to hit work in flight; which slot holds it depends on how the run
        went, so the planned slot is only the fallback.
        """
        await self._reap()
        await self._await_work()
        up = {
            n: service
            for n, service in enumerate(self.slots)
            if service is not None and service.process.pid not in self.frozen
        }
        if not up:  # every consumer still starting: wait for them
            for slot in list(self.starting):
                await self._started(slot)
            up = {n: service for n, service in enumerate(self.slots) if service is not None}
        busiest = max(up, key=lambda n: running_jobs(up[n]))
        if running_jobs(up[busiest]) > 0:
            slot = busiest
        else:
            slot = step.slot if step.slot in up else min(up)
        self.slots[slot] = None
        return up[slot]

    async def kill(self, step: Step) -> str:
        victim = await self._victim(step)
        jobs = running_jobs(victim)
        self._count("kill", jobs)
        victim.kill()
        code = await victim.stop()
        self.retired.append(victim)
        return f"SIGKILL {victim.name} ({jobs} job(s) running), exit {code}"

    async def term(self, step: Step) -> str:
        victim = await self._victim(step)
        self.retired.append(victim)
        jobs = running_jobs(victim)
        self._count("term", jobs)
        self.stopping.append(asyncio.create_task(victim.stop(grace=60)))
        return f"SIGTERM {victim.name} ({jobs} job(s) running)"

    async def restart(self, step: Step) -> str:
        """Start a consumer in an empty slot; the schedule goes on while it starts."""
        assert isinstance(step.value, str)
        await self._reap()
        empty = [
            n for n, service in enumerate(self.slots) if service is None and n not in self.starting
        ]
        slot = step.slot if step.slot in empty else empty[0]
        self.starting[slot] = asyncio.create_task(self.start_slot(slot, step.value))
        return f"starting a consumer in slot {slot}, clock {step.value or 'true'}"

    async def drop(self, step: Step) -> str:
        return f"broker closed {await close_connections(self.settings.namespace)} connection(s)"

    async def s3(self, step: Step) -> str:
        assert isinstance(step.value, float)
        pending = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3):  # restart mid-upload if one comes soon
                while not (pending := len(await self.world.store.pending_uploads(""))):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # S3 cannot notify
        await self.moto.restart(step.value)
        return f"S3 endpoint down {step.value}s with {pending} upload(s) pending"

    async def faults(self, step: Step) -> str:
        self.simulator.state.config = faulty(self.base)
        self.simulator.state.attempts.clear()  # the faults hit the next attempts again
        return "simulator faults on"

    async def outage(self, step: Step) -> str:
        assert isinstance(step.value, int)
        self.simulator.state.config = dataclasses.replace(
            self.base, fail_permanently=frozenset({step.value})
        )
        return f"city {step.value} answers 500 until healed"

    async def heal(self, step: Step) -> str:
        self.simulator.state.config = self.base
        return "simulator healed"

    async def read(self, step: Step) -> str:
        """Any read answers 503 (a date changing) or the oracle's figures, never others."""
        assert step.day is not None
        assert isinstance(step.value, int)
        start = step.day
        end = max(start, min(self.plan.days[-1], start + timedelta(days=step.value)))
        query = f"from={start}&to={end}"
        committed_before = {
            day
            for day in self.plan.days
            if start <= day <= end and (await self.world.manifests.get(day))[0] is not None
        }
        async with self.http.get(f"{self.api.url}/country-stats?{query}") as response:
            status, body = response.status, await response.json(content_type=None)
        if status == 503:
            return f"{query}: 503 {body.get('error')}"
        if status != 200:
            self.violations.append(f"read {query} answered {status} {body}")
            return f"{query}: {status}"
        self.violations += invariants.check_read(start, end, body, committed_before)
        served = {date.fromisoformat(row["date"]) for row in body["stats"]}
        expected = await self.world.oracle.rows(served)
        if body["stats"] != expected:
            self.violations.append(f"read {query} served figures that differ from the oracle")
        unreadable = body.get("unreadable_dates") or []
        return f"{query}: 200, {len(served)} date(s) served, unreadable {unreadable}"

    def _count(self, kind: str, jobs: int) -> None:
        if jobs > 0:
            self.hit[kind] = self.hit.get(kind, 0) + 1

    async def _await_work(self) -> None:
        """Until some consumer runs a job (at most :data:`WORK_WAIT`): faults hit work."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WORK_WAIT):
                while not any(running_jobs(s) for s in self.slots if s is not None):  # noqa: ASYNC110 - logs of other processes: polled
                    await asyncio.sleep(0.05)

    def _busiest(self) -> int | None:
        """The slot whose (live, not paused) consumer runs the most jobs."""
        up = [
            n
            for n, s in enumerate(self.slots)
            if s is not None and s.process.pid not in self.frozen
        ]
        return max(up, key=lambda n: running_jobs(self.slots[n]), default=None)  # type: ignore[arg-type]  # not None: filtered

    def _later(self, seconds: float, undo: Callable[[], None]) -> None:
        async def wait_and_undo() -> None:
            try:
                await asyncio.sleep(seconds)  # the schedule's own pause, not synchronisation
            finally:
                undo()

        self.background.append(asyncio.create_task(wait_and_undo()))

    def _freeze(self, service: Service) -> None:
        service.process.send_signal(signal.SIGSTOP)
        self.frozen[service.process.pid] = service

    def _thaw(self, service: Service) -> None:
        self.frozen.pop(service.process.pid, None)
        if service.process.returncode is None:
            service.process.send_signal(signal.SIGCONT)

    def thaw_all(self) -> None:
        """SIGCONT every paused process (settle, and the teardown whatever happened)."""
        for service in list(self.frozen.values()):
            self._thaw(service)

    async def pause(self, step: Step) -> str:
        """SIGSTOP the busiest consumer for a while: it wakes up believing it still works."""
        assert isinstance(step.value, float)
        await self._reap()
        await self._await_work()
        slot = self._busiest()
        if slot is None:
            return "no consumer to pause"
        service = self.slots[slot]
        assert service is not None
        jobs = running_jobs(service)
        self._count("pause", jobs)
        self._freeze(service)
        self._later(step.value, lambda: self._thaw(service))
        return f"SIGSTOP {service.name} ({jobs} job(s) running) for {step.value}s"

    async def pause_api(self, step: Step) -> str:
        assert isinstance(step.value, float)
        self._freeze(self.api.service)
        self._later(step.value, lambda: self._thaw(self.api.service))
        return f"SIGSTOP the API for {step.value}s"

    async def partition(self, step: Step) -> str:
        """Cut a busy consumer's broker or S3 link silently (no FIN, no RST) for a while."""
        assert isinstance(step.value, str)
        which, seconds = step.value.split()
        await self._reap()
        await self._await_work()
        slot = self._busiest()
        if slot is None:
            return "no consumer to cut off"
        service = self.slots[slot]
        assert service is not None
        jobs = running_jobs(service)
        self._count("partition", jobs)
        link = self.links[slot][0 if which == "broker" else 1]
        link.partition()
        self._later(float(seconds), link.heal)
        return f"{which} link of {service.name} ({jobs} job(s) running) silent for {seconds}s"

    async def s3_faults(self, step: Step) -> str:
        """S3 misbehaving for a while: 409s, 503s, lost answers, delays (every process)."""
        assert isinstance(step.value, float)
        await self._await_work()
        faults = [
            s3_proxy.conflict(conditional=True, probability=0.2),
            s3_proxy.slow_down(probability=0.1),
            s3_proxy.lose(conditional=True, probability=0.15),
            s3_proxy.lose("500", conditional=False, method="PUT", probability=0.05),
            s3_proxy.delay(0.5, probability=0.1),
        ]
        for fault in faults:
            self.proxy.add(fault)

        def heal() -> None:
            for fault in faults:
                self.proxy.remove(fault)
                self.hit[f"s3 {fault.action}"] = self.hit.get(f"s3 {fault.action}", 0) + fault.hits

        self._later(step.value, heal)
        return f"S3 faults for {step.value}s"

    async def play(self) -> None:
        actions: dict[str, Callable[[Step], Coroutine[Any, Any, str]]] = {
            "post": self.post, "force": self.force, "force_running": self.force_running,
            "kill": self.kill, "term": self.term, "restart": self.restart, "drop": self.drop,
            "s3": self.s3, "faults": self.faults, "outage": self.outage, "heal": self.heal,
            "read": self.read, "pause": self.pause, "pause_api": self.pause_api,
            "partition": self.partition, "s3_faults": self.s3_faults,
        }  # fmt: skip
        begin = self.started = time.monotonic()
        log.info("chaos: seed %d, %s", self.seed, self.plan.describe())
        for step in self.plan.steps:
            delay = begin + step.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule's own pause, not synchronisation
            self.note(f"{step}: {await actions[step.kind](step)}")

    async def settle(self) -> None:
        """Heal, fill every slot, ask for every date once more (a plain POST)."""
        self.simulator.state.config = self.base
        for task in self.background:  # every pause and partition ends (as planned)
            await task
        self.thaw_all()
        self.proxy.clear()
        for broker, s3 in self.links:
            broker.heal()
            s3.heal()
        for slot in list(self.starting):
            await self._started(slot)
        await asyncio.gather(
            *(self.start_slot(slot, "") for slot, s in enumerate(self.slots) if s is None)
        )
        for day in self.plan.days:
            self.note(f"final POST {day}: {await self._post(day, force=False)}")

    async def ask_again(self) -> None:
        """Plain POSTs for dates whose last job failed, as a user would (never a force).

        A date may end failed (its job's deliveries all killed); asking again must then
        bring it to committed: no date needs ``force`` to make progress.
        """
        for round_ in range(1, LIVENESS_ROUNDS + 1):
            await invariants.quiesce(self.world, deadline=QUIET_DEADLINE)
            failed = [
                day for day in self.plan.days if (await self.world.manifests.get(day))[0] is None
            ]
            if not failed:
                return
            for day in failed:
                self.note(f"ask again ({round_}) {day}: {await self._post(day, force=False)}")
        codes = await asyncio.gather(*self.stopping)
        if any(code != 0 for code in codes):
            self.violations.append(f"SIGTERMed consumers exited {codes}, not all 0")

    async def stop_consumers(self) -> None:
        for slot, service in enumerate(self.slots):
            if service is not None:
                code = await service.stop()
                if code != 0:
                    self.violations.append(f"{service.name} exited {code} on SIGTERM")
                self.retired.append(service)
                self.slots[slot] = None


_RUN_ENDED: Final = frozenset(
    {"job.succeeded", "job.attempt_failed", "job.superseded", "job.interrupted", "run.fenced"}
)


def running_jobs(service: Service) -> int:
    """Jobs a consumer started and has not finished, as its own log tells.

    A run ends with one of :data:`_RUN_ENDED` or, whatever happened, with the settling of
    its delivery (``message.settle*``).
    """
    running: dict[str, bool] = {}
    for line in service.lines:
        job_id, event = line.get("job_id"), str(line.get("event", ""))
        if job_id is None:
            continue
        if event == "job.started":
            running[job_id] = True
        elif event in _RUN_ENDED or event.startswith("message.settle"):
            running[job_id] = False
    return sum(running.values())


def consumer_amqp_url() -> str:
    """The broker URL of the consumers: a short heartbeat, so a silent link is noticed."""
    return f"{AMQP_URL.rstrip('/')}/?heartbeat={BROKER_HEARTBEAT}"


async def publish_poison(amqp: AbstractRobustConnection, settings: Settings) -> int:
    """Publish :data:`POISON`; how many must reach the dead-letter queue.

    The message of a newer version is not one of them: its job is ended (it has no state
    here) and the message acked, never looped on (issue 17, item 6).
    """
    channel = await amqp.channel(publisher_confirms=True)
    topology = await declare_topology(channel, settings.namespace, settings.delivery_limit)
    for message_id, body in POISON.items():
        await topology.exchange.publish(
            aio_pika.Message(body, message_id=message_id), routing_key=ROUTING_KEY
        )
    await channel.close()
    return len(POISON) - 1


def chaos_settings(s3_url: str, namespace: str, reference_url: str) -> Settings:
    return make_settings(
        s3_url,
        namespace,
        reference_url=reference_url,
        read_timeout_seconds=4.0,  # above the latency (2.5 s): only hanging requests are cut
        city_concurrency=3,
        part_size_bytes=5 * MIB,
        memory_budget_bytes=20 * MIB,
        shutdown_grace_seconds=2.0,
        heartbeat_seconds=0.5,
        stale_job_seconds=10.0,
    )


@contextlib.asynccontextmanager
async def chaos_system(seed: int, moto: RestartableMoto, namespace: str) -> AsyncIterator[Chaos]:
    """The API, three consumers (one clock each) and a simulator; all stopped afterwards."""
    base = simulator_config(seed)
    plan = make_plan(seed, base)
    async with serve(base) as simulator, contextlib.AsyncExitStack() as stack:
        # Every process reaches S3 through the fault-injecting proxy, each consumer through
        # links of its slot (to the broker, to the proxy) that can go silent; the test
        # reads the bucket directly.
        proxy = await stack.enter_async_context(ThreadedS3Proxy(moto.url, seed=seed))
        proxy_port = int(proxy.url.rsplit(":", 1)[1])
        links = [
            (
                await stack.enter_async_context(TcpProxy("127.0.0.1", 5672)),
                await stack.enter_async_context(TcpProxy("127.0.0.1", proxy_port)),
            )
            for _ in range(SLOTS)
        ]
        settings = chaos_settings(proxy.url, namespace, simulator.url)
        direct = chaos_settings(moto.url, namespace, simulator.url)
        store = await stack.enter_async_context(open_store(direct))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        api = await start_api(settings)
        world = invariants.World(
            settings=settings,
            store=store,
            api_url=api.url,
            days=plan.days,
            oracle=invariants.Oracle(base),
        )
        chaos = Chaos(seed, plan, settings, moto, simulator, base, api, http, world, proxy, links)

        async def stop_everything() -> None:
            for undo in chaos.background:
                undo.cancel()
            chaos.thaw_all()  # never leave a stopped process behind, whatever failed
            for broker, s3 in links:
                broker.heal()
                s3.heal()
            for task in [*chaos.stopping, *chaos.starting.values()]:
                with contextlib.suppress(Exception):
                    await task
            alive = [s for s in [*chaos.slots, *chaos.retired] if s is not None]
            async with running(api.service, *alive):
                pass

        stack.push_async_callback(stop_everything)
        await asyncio.gather(*(chaos.start_slot(n, clock) for n, clock in enumerate(plan.clocks)))
        yield chaos


async def check(chaos: Chaos, amqp: AbstractRobustConnection) -> list[str]:
    """Every invariant over the quiet system; the violations found."""
    world, http = chaos.world, chaos.http
    await invariants.quiesce(world, deadline=QUIET_DEADLINE)
    chaos.note("quiet")
    jobs = await invariants.all_jobs(world)
    reached = await invariants.referenced_jobs(world, jobs)
    problems = list(chaos.violations)
    problems += invariants.check_history(chaos.history, jobs)
    problems += invariants.check_at_rest(jobs)
    problems += await invariants.check_committed(world, jobs)
    problems += invariants.check_job_states(world, jobs, reached)
    problems += await invariants.check_dates(world, jobs)
    problems += await invariants.check_served(http, world)
    problems += await invariants.check_served(http, world, verify=True)
    problems += await invariants.check_objects(world)
    for day in world.days:
        latest = await world.lifecycle.latest(day)
        if latest is not None and latest.status == "succeeded":
            again = await chaos._post(day, force=False)
            if not again.startswith(f"200 {latest.job_id}"):
                problems.append(f"{day}: a plain POST answered {again}, not {latest.job_id}")
    await chaos.stop_consumers()
    problems += await invariants.check_queue_empty(world)
    problems += await invariants.check_dead_letters(world, amqp, jobs)
    chaos.note(f"dead-lettered jobs: {world.dead_jobs}, undecodable: {world.poison}")
    chaos.note("sweep: " + (await invariants.sweep(world)).strip().replace("\n", " | ")[-300:])
    problems += await invariants.check_leftovers(world)
    problems += await invariants.check_objects(world)
    problems += check_faults_hit(chaos, jobs)
    return problems


def check_faults_hit(chaos: Chaos, jobs: dict[str, Any]) -> list[str]:
    """A seed whose faults met no work in flight proves nothing: it fails.

    At least one job superseded (or one force made while the date's job ran: a claim
    supersedes lazily, so the running job may finish first and the forced one re-fetch),
    one run resumed by another delivery, one consumer killed (or stopped) while it ran.
    """
    superseded = sum(1 for job in jobs.values() if job.superseded_by is not None)
    superseded += chaos.hit.get("force_running", 0)
    consumers = [*chaos.retired, *(s for s in chaos.slots if s is not None)]
    resumed = sum(
        1 for service in consumers for line in service.lines if line.get("event") == "job.resumed"
    )
    killed = chaos.hit.get("kill", 0) + chaos.hit.get("term", 0)
    chaos.note(
        f"faults that met work: {superseded} superseded, {resumed} resumed, {chaos.hit}; "
        f"{chaos.history.transitions()} transitions seen in {chaos.history.polls} polls"
    )
    missed = [
        what
        for what, count in (("supersede", superseded), ("resume", resumed), ("kill", killed))
        if count == 0
    ]
    if missed:
        return [f"seed {chaos.seed}: no {', no '.join(missed)} of a running job: it tested little"]
    return []


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", seeds())
async def test_chaos_invariants_hold(
    seed: int, moto: RestartableMoto, namespace: str, amqp: AbstractRobustConnection
) -> None:
    clock = time.monotonic()
    async with chaos_system(seed, moto, namespace) as chaos:
        try:
            chaos.world.poison = await publish_poison(amqp, chaos.settings)
            watcher = asyncio.create_task(invariants.watch_jobs(chaos.world, chaos.history))
            try:
                await chaos.play()
                await chaos.settle()
                await chaos.ask_again()
                await invariants.quiesce(chaos.world, deadline=QUIET_DEADLINE)
            finally:
                watcher.cancel()
                await asyncio.wait({watcher})
            problems = await check(chaos, amqp)
        except BaseException as error:
            error.add_note(chaos.report())
            error.add_note("consumer logs:\n" + "\n".join(map(chaos.story, chaos.plan.days)))
            raise
        if problems:
            days = [day for day in chaos.plan.days if any(str(day) in p for p in problems)]
            stories = "\n".join(chaos.story(day) for day in days)
            pytest.fail(
                f"seed {seed}: {len(problems)} invariant(s) violated:\n  - "
                + "\n  - ".join(problems)
                + chaos.report()
                + f"\nconsumer logs:\n{stories}",
                pytrace=False,
            )
        log.info("chaos seed %d passed in %.1fs", seed, time.monotonic() - clock)
