"""The processes one benchmark scenario runs against, and how to drive them.

A :class:`Stack` is a fresh namespace with its own Moto server, simulator
(``python -m refsim``, which logs each latency it draws) and API, plus as many
consumers as a scenario asks for.
Closing it stops every child (consumers first), deletes the namespace's queues and
exchanges, and stops Moto, which takes the bucket with it. Process handling comes from
:mod:`scripts.demo`.
"""

import asyncio
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aio_pika
import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from pydantic import BaseModel, ConfigDict
from types_aiobotocore_s3 import S3Client

from common.topology import Names
from refsim.config import SimulatorConfig
from scripts.demo import (
    LOOPBACK,
    Child,
    Children,
    child_environment,
    delete_namespace,
    free_port,
    http_ok,
    tcp_open,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
SHUTDOWN_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.05


class BenchError(Exception):
    """A scenario could not run or produced a wrong answer."""


class JobView(BaseModel):
    """``GET /jobs/<id>``, the parts the benchmark uses."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    date: date
    status: str
    records: int = 0
    bytes: int = 0
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class JobTiming:
    """One job: what it stored and how long it took, seen from the client and the server."""

    job: JobView
    wall_seconds: float
    """From just before the POST to the poll that saw it succeeded."""

    @property
    def run_seconds(self) -> float:
        """``finished_at - started_at``: the consumer's own time for the job."""
        if self.job.started_at is None or self.job.finished_at is None:
            raise BenchError(f"job {self.job.job_id} has no start or finish time")
        return (self.job.finished_at - self.job.started_at).total_seconds()


def vm_hwm_bytes(pid: int) -> int:
    """The peak resident set size of a live process, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def simulator_argv(config: SimulatorConfig) -> list[str]:
    """Command-line options giving the simulator ``config`` (the fields the bench sets)."""
    return [
        f"--seed={config.seed}",
        f"--cities={config.cities}",
        f"--countries={config.countries}",
        f"--records-min={config.records_min}",
        f"--records-max={config.records_max}",
        f"--latency-min={config.latency_min}",
        f"--latency-max={config.latency_max}",
    ]


def amqp_url() -> str:
    return os.environ.get("BUSSTATS_AMQP_URL", DEFAULT_AMQP_URL)


@dataclass
class Stack:
    """Moto, the simulator and the API in a fresh namespace; consumers on demand."""

    label: str
    simulator: SimulatorConfig
    namespace: str = field(default_factory=lambda: f"bench-{secrets.token_hex(4)}")
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_dir = BENCH_DIR / self.namespace
        self.children = Children(self.log_dir, {})
        self.consumers: list[Child] = []
        self.moto = self.refsim = self.api = ""
        self.api_child: Child | None = None
        self.http: aiohttp.ClientSession | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children.env = child_environment(
            os.environ,
            {
                "BUSSTATS_AMQP_URL": amqp_url(),
                "BUSSTATS_LOG_FORMAT": "json",
                "BUSSTATS_SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_SECONDS),
                **self.extra_env,
            },
        )
        try:
            self._start_servers()
        except BaseException:
            await self._close()
            raise
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=128),
            timeout=aiohttp.ClientTimeout(total=600),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        try:
            self.children.stop()
        finally:
            self.consumers.clear()
            try:
                await delete_namespace(amqp_url(), self.namespace)
            except Exception as error:  # noqa: BLE001 - best effort, reported
                print(f"bench: could not delete namespace {self.namespace}: {error!r}")

    def _start_servers(self) -> None:
        python = sys.executable
        moto_port = free_port()
        self.moto = f"http://{LOOPBACK}:{moto_port}"
        self.children.start(
            "moto", 0, [python, "-m", "moto.server", "-H", LOOPBACK, "-p", str(moto_port)]
        )
        refsim = self.children.start(
            "refsim",
            0,
            [
                python,
                "-m",
                "refsim",
                "--port=0",
                "--log-format=json",
                *simulator_argv(self.simulator),
            ],
        )
        wait_until(
            "Moto",
            functools.partial(http_ok, f"{self.moto}/moto-api/data.json"),
            self.children,
            START_TIMEOUT,
        )
        port: list[int] = []
        wait_until(
            "the simulator",
            functools.partial(_started_port, refsim.log_path, port),
            self.children,
            START_TIMEOUT,
        )
        self.refsim = f"http://{LOOPBACK}:{port[0]}"
        api_port = free_port()
        self.api = f"http://{LOOPBACK}:{api_port}"
        self.children.env.update(
            {
                "BUSSTATS_NAMESPACE": self.namespace,
                "BUSSTATS_S3_ENDPOINT_URL": self.moto,
                "BUSSTATS_S3_BUCKET": self.namespace,
                "BUSSTATS_REFERENCE_URL": self.refsim,
                "BUSSTATS_API_HOST": LOOPBACK,
                "BUSSTATS_API_PORT": str(api_port),
            }
        )
        self.api_child = self.children.start(
            "api", 1, [python, "-m", "producer", "--port", str(api_port)]
        )
        wait_until(
            "the API",
            functools.partial(http_ok, f"{self.api}/readyz"),
            self.children,
            START_TIMEOUT,
        )

    # --- consumers --------------------------------------------------------------------------

    async def start_consumers(self, count: int, env: dict[str, str] | None = None) -> None:
        """Start ``count`` more consumers (``env``: more variables for them); return once the
        broker lists them all consuming."""
        for _ in range(count):
            port = free_port()
            child = self.children.start(
                f"consumer-{len(self.children.children)}",
                2,
                [sys.executable, "-m", "consumer"],
                {"BUSSTATS_METRICS_PORT": str(port), **(env or {})},
            )
            self.consumers.append(child)
            wait_until(
                child.name,
                functools.partial(tcp_open, LOOPBACK, port),
                self.children,
                START_TIMEOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while await self.queue_consumers() < len(self.consumers):
            self.children.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{len(self.consumers)} consumers did not start consuming")
            await asyncio.sleep(0.2)

    def stop_consumers(self) -> list[int]:
        """SIGTERM every consumer, wait; their peak RSS (read just before the signal)."""
        peaks = [vm_hwm_bytes(child.process.pid) for child in self.consumers]
        for child in self.consumers:
            child.process.send_signal(signal.SIGTERM)
        for child in self.consumers:
            try:
                child.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            child.log_file.close()
            self.children.children.remove(child)
        self.consumers.clear()
        return peaks

    def cpu_by_child(self) -> dict[str, float]:
        """CPU seconds each running child has used so far."""
        return {
            child.name: cpu_seconds(child.process.pid)
            for child in self.children.children
            if child.process.poll() is None
        }

    def api_peak_rss(self) -> int:
        if self.api_child is None:
            raise BenchError("the API is not running")
        return vm_hwm_bytes(self.api_child.process.pid)

    async def queue_consumers(self) -> int:
        """How many consumers the broker lists on the namespace's job queue."""
        consumers, _ = await self._queue_counts()
        return consumers

    async def queue_messages(self) -> int:
        """How many messages wait in the namespace's job queue."""
        _, messages = await self._queue_counts()
        return messages

    async def _queue_counts(self) -> tuple[int, int]:
        connection = await aio_pika.connect(amqp_url(), timeout=5)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(Names(self.namespace).queue, passive=True)
            result = queue.declaration_result
            return int(result.consumer_count or 0), int(result.message_count or 0)

    # --- HTTP -----------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self.http is None:
            raise BenchError("the stack is not open")
        return self.http

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.api + path) as response:
            body = await response.read()
            if response.status != 200:  # noqa: PLR2004 - HTTP OK
                raise BenchError(f"GET {path} answered {response.status}: {body[:300]!r}")
        return json.loads(body)

    async def post_date(self, day: date) -> str:
        """POST the date; the job id."""
        path = f"/process-request?date={day.isoformat()}"
        async with self.session.post(self.api + path) as response:
            body = await response.read()
            if response.status != 202:  # noqa: PLR2004 - HTTP Accepted
                raise BenchError(f"POST {path} answered {response.status}: {body[:300]!r}")
        job_id: str = json.loads(body)["job_id"]
        return job_id

    async def job(self, job_id: str) -> JobView:
        return JobView.model_validate(await self.get_json(f"/jobs/{job_id}"))

    async def run_jobs(self, days: Sequence[date], limit_seconds: float) -> list[JobTiming]:
        """POST every date at once, poll until all succeeded; the timings in date order."""
        started = time.perf_counter()
        ids = [await self.post_date(day) for day in days]
        posted = dict.fromkeys(ids, started)
        done: dict[str, JobTiming] = {}
        deadline = started + limit_seconds
        while len(done) < len(ids):
            self.children.check_alive()
            if time.perf_counter() > deadline:
                raise BenchError(f"jobs did not finish within {limit_seconds:.0f} s")
            await asyncio.sleep(POLL_SECONDS)
            for job_id in ids:
                if job_id in done:
                    continue
                view = await self.job(job_id)
                if view.status == "failed":
                    raise BenchError(f"job for {view.date} failed: {view.error}")
                if view.status == "succeeded":
                    done[job_id] = JobTiming(view, time.perf_counter() - posted[job_id])
        return [done[job_id] for job_id in ids]

    async def country_stats(self, start: date, end: date) -> tuple[float, dict[str, Any]]:
        """Seconds and the body of one ``GET /country-stats`` (the JSON decode not timed)."""
        path = f"/country-stats?from={start.isoformat()}&to={end.isoformat()}"
        clock = time.perf_counter()
        async with self.session.get(self.api + path) as response:
            body = await response.read()
            seconds = time.perf_counter() - clock
            if response.status != 200:  # noqa: PLR2004 - HTTP OK
                raise BenchError(f"GET {path} answered {response.status}: {body[:300]!r}")
        decoded: dict[str, Any] = json.loads(body)
        return seconds, decoded

    # --- S3 -------------------------------------------------------------------------------

    def s3_client(self) -> Any:
        """An aiobotocore client context manager for this stack's Moto server."""
        return get_session().create_client(
            "s3",
            endpoint_url=self.moto,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - Moto's dummy credentials
            config=AioConfig(max_pool_connections=32, read_timeout=300),
        )

    def simulator_latencies(self) -> list[dict[str, Any]]:
        """Every ``stats.latency`` line the simulator logged so far."""
        path = self.log_dir / "refsim.log"
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines if '"stats.latency"' in line]


def _started_port(log_path: Path, found: list[int]) -> bool:
    """Whether the simulator logged ``refsim.started``; its port goes into ``found``."""
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        if '"refsim.started"' in line:
            found.append(int(json.loads(line)["port"]))
            return True
    return False


async def read_manifests(client: S3Client, bucket: str, days: Sequence[date]) -> list[Any]:
    """The committed manifests of ``days`` (decoded JSON), in order.

    The object is the date's state (its ``committed`` version inside), or a manifest of
    version 1 (before the arbiter): either way the committed manifest is returned.
    """
    manifests = []
    for day in days:
        response = await client.get_object(
            Bucket=bucket, Key=f"manifests/date={day.isoformat()}/manifest.json"
        )
        async with response["Body"] as body:
            stored = json.loads(await body.read())
        manifests.append(stored if "cities" in stored else stored["committed"])
    return manifests


def check_rows(
    what: str, got: Sequence[dict[str, Any]], expected: Sequence[dict[str, Any]]
) -> None:
    """Raise unless ``got`` equals the oracle's rows exactly."""
    if list(got) == list(expected):
        return
    for index, (left, right) in enumerate(zip(got, expected, strict=False)):
        if left != right:
            raise BenchError(f"{what}: row {index} is {left}, the oracle says {right}")
    raise BenchError(f"{what}: {len(got)} rows, the oracle has {len(expected)}")
