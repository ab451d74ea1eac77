"""``make compose-test``: the image and the compose files, proven end to end.

Needs Docker with Compose v2 or later (``docker compose``). Against the real compose files
(docker-compose.yml with docker-compose.cluster.yml, its three-node RabbitMQ cluster, and
the ``monitoring`` profile's Prometheus; plus a small override: a seeded simulator slow
enough that a job takes seconds, a short shutdown grace, and the admin UI of every node
published so that the test can ask a node that is still up), under a project name of its
own and free host ports on 127.0.0.1:

1. builds the image once (only the ``api`` service builds; the others run its tag);
2. brings the stack up and waits until every service is healthy;
3. checks the cluster: three running nodes, the job queue a quorum queue on all three;
4. POSTs dates, waits until they succeed, checks ``/country-stats`` against the
   simulator's oracle (``refsim.expected_stats``, same seed and configuration);
5. checks RabbitMQ's admin UI (``/api/overview``) and that the expected number of
   consumers is attached to the job queue (``/api/consumers``);
6. checks that Prometheus scrapes every target (the API, each consumer replica, each
   broker node) and that each is up;
7. SIGKILLs the broker node the consumers are connected to while they run jobs: every
   accepted job is committed once (``/dates``: committed by the job the POST returned),
   none is dead-lettered, the figures are exact; the node is started again and rejoins
   (three running nodes, the queue on all three again, every Prometheus target up);
8. scales the consumers to 4 and back to 2;
9. stops every consumer gracefully while its jobs run, starts them again, and checks the
   jobs still succeed with exact figures;
10. SIGKILLs a consumer container while it runs jobs, and checks the same;
11. checks that every log line of our services is one JSON object;

and always tears the stack down (``down -v``). Prints a table of the steps and timings.
Exit status 0 when every check passed.

    uv run python -m scripts.compose_test [--timeout SECONDS]

The image (tag bus-stats:compose-test) is kept, so that the next run builds from cache.
"""

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

from refsim import SimulatorConfig, expected_stats

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.cluster.yml")
PROFILE = "monitoring"  # docker-compose.yml's Prometheus
IMAGE = "bus-stats:compose-test"
NAMESPACE = "bus-stats"  # docker-compose.yml's BUSSTATS_NAMESPACE
JOB_QUEUE = f"{NAMESPACE}.jobs"
DEAD_LETTER_QUEUE = f"{JOB_QUEUE}.dead-letter"
# docker-compose.cluster.yml's nodes: compose service -> the node's hostname.
BROKER_NODES = {"rabbitmq": "rabbitmq-1", "rabbitmq-2": "rabbitmq-2", "rabbitmq-3": "rabbitmq-3"}
CONSUMERS = 2  # docker-compose.yml's replicas
SCALED = 4
SHUTDOWN_GRACE_SECONDS = 5  # short, so that a graceful stop interrupts running jobs
CITY_CONCURRENCY = 4  # with the simulator's latency: a job takes several seconds
# The simulator of the stack, and the oracle's: the same object.
SIMULATOR = SimulatorConfig(
    seed=12,
    cities=40,
    countries=5,
    records_min=200,
    records_max=600,
    latency_min=0.4,
    latency_max=1.2,
)
MID_JOB = SIMULATOR.cities // 4  # cities stored before a job counts as "mid-job"
FIRST_DAY = date(2024, 3, 1)
PORT_VARIABLES = {
    "api": "BUSSTATS_API_PUBLISHED_PORT",
    "amqp": "BUSSTATS_AMQP_PUBLISHED_PORT",
    "management": "BUSSTATS_MANAGEMENT_PUBLISHED_PORT",
    "s3": "BUSSTATS_S3_PUBLISHED_PORT",
    "refsim": "BUSSTATS_REFSIM_PUBLISHED_PORT",
    "prometheus": "BUSSTATS_PROMETHEUS_PUBLISHED_PORT",
}
# Prometheus' scrape jobs (deploy/prometheus/prometheus.yml) -> targets expected up.
SCRAPE_JOBS = {"bus-stats-api": 1, "bus-stats-consumer": CONSUMERS, "rabbitmq": len(BROKER_NODES)}
GUEST = "Basic " + base64.b64encode(b"guest:guest").decode()
POLL_SECONDS = 0.5


class CheckFailedError(Exception):
    """A check of the stack failed; the message says which and how."""


@dataclass
class Step:
    name: str
    seconds: float
    detail: str
    ok: bool


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Time a step; the block appends its detail; an exception marks it failed."""
        detail: list[str] = []
        started = time.monotonic()
        print(f"compose-test: {name} ...", flush=True)
        try:
            yield detail
        except BaseException as error:
            detail.append(f"FAILED: {error}")
            self.steps.append(Step(name, time.monotonic() - started, "; ".join(detail), False))
            raise
        self.steps.append(Step(name, time.monotonic() - started, "; ".join(detail), True))

    def table(self) -> str:
        rows = [("step", "seconds", "result")]
        rows += [
            (s.name, f"{s.seconds:7.1f}", ("ok  " if s.ok else "FAIL") + " " + s.detail)
            for s in self.steps
        ]
        rows.append(("total", f"{sum(s.seconds for s in self.steps):7.1f}", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = [f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}" for row in rows]
        lines.insert(1, "-" * max(len(line) for line in lines))
        return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    """Poll ``probe`` until it returns something other than None (a status API: polling)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, ValueError, CheckFailedError) as error:
            last_error = error
        else:
            if result is not None:
                return result
        time.sleep(POLL_SECONDS)
    raise CheckFailedError(
        f"timed out after {timeout:.0f} s waiting for {what}"
        + (f" (last error: {last_error})" if last_error else "")
    )


def http(method: str, url: str, *, auth: str | None = None) -> tuple[int, Any]:
    """One request: (status, decoded JSON body or None)."""
    request = urllib.request.Request(url, method=method)  # noqa: S310 - http to our stack
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body) if body else None
    except json.JSONDecodeError:
        return status, None


class Stack:
    """The compose project under test: its commands, ports and URLs."""

    def __init__(self, workdir: Path, timeout: float) -> None:
        self.project = f"bus-stats-ct-{uuid.uuid4().hex[:8]}"
        self.timeout = timeout
        self.ports = {name: free_port() for name in PORT_VARIABLES}
        # The admin UI of rabbitmq-2 and -3 too (test only): asked while rabbitmq-1 is down.
        self.node_ports = {"rabbitmq": self.ports["management"]}
        self.node_ports |= {node: free_port() for node in BROKER_NODES if node != "rabbitmq"}
        self.override = workdir / "compose.test.yml"
        self.override.write_text(json.dumps(override_document(self.node_ports), indent=2))
        self.env = {
            **os.environ,
            "BUSSTATS_IMAGE": IMAGE,
            "BUSSTATS_BIND_ADDRESS": "127.0.0.1",
            "BUSSTATS_ERLANG_COOKIE": uuid.uuid4().hex,
            **{PORT_VARIABLES[name]: str(port) for name, port in self.ports.items()},
        }
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.prometheus = f"http://127.0.0.1:{self.ports['prometheus']}"
        self.down_nodes: set[str] = set()

    def compose(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``docker compose`` on the project; its output is kept, shown on failure."""
        command = [
            "docker",
            "compose",
            "--project-name",
            self.project,
            *(part for path in COMPOSE_FILES for part in ("--file", str(path))),
            "--file",
            str(self.override),
            "--profile",
            PROFILE,
            *args,
        ]
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout or self.timeout,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-3000:]
            raise CheckFailedError(
                f"docker compose {' '.join(args)} exited {result.returncode} {output}".strip()
            )
        return result

    def containers(self, service: str) -> list[str]:
        ids = self.compose("ps", "--quiet", service).stdout.split()
        return sorted(ids)

    def container_ips(self, service: str) -> dict[str, str]:
        """IP address -> container id, for the service's running containers."""
        ips: dict[str, str] = {}
        for container in self.containers(service):
            result = subprocess.run(
                [
                    "docker",
                    "inspect",
                    "--format",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                    container,
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            for ip in result.stdout.split():
                ips[ip] = container
        return ips

    # --- the API --------------------------------------------------------------------
    def post_dates(self, days: list[date]) -> dict[date, str]:
        jobs: dict[date, str] = {}
        for day in days:
            status, body = http("POST", f"{self.api}/process-request?date={day.isoformat()}")
            if status != 202:  # noqa: PLR2004 - Accepted: a new job
                raise CheckFailedError(f"POST {day}: {status} {body}")
            jobs[day] = body["job_id"]
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = http("GET", f"{self.api}/jobs/{job_id}")
        if status != 200:  # noqa: PLR2004
            raise CheckFailedError(f"GET /jobs/{job_id}: {status} {body}")
        job: dict[str, Any] = body
        return job

    def wait_succeeded(self, jobs: dict[date, str]) -> str:
        """Wait until every job is final; all must have succeeded. Says their attempts."""

        def all_final() -> list[dict[str, Any]] | None:
            states = [self.job(job_id) for job_id in jobs.values()]
            if all(state["status"] in {"succeeded", "failed"} for state in states):
                return states
            return None

        states = wait_for("the jobs to finish", all_final, self.timeout)
        failed = [
            f"{state['date']}: {state['status']} {state.get('error')}"
            for state in states
            if state["status"] != "succeeded"
        ]
        if failed:
            raise CheckFailedError("jobs did not succeed: " + "; ".join(failed))
        attempts = ",".join(str(state.get("attempts", "?")) for state in states)
        return f"{len(states)} jobs succeeded (attempts {attempts})"

    def wait_mid_job(self, jobs: dict[date, str]) -> dict[str, Any]:
        """A job of ``jobs`` that has stored some but not all of its cities."""

        def running() -> dict[str, Any] | None:
            for job_id in jobs.values():
                state = self.job(job_id)
                done = state["cities_done"]
                if state["status"] == "running" and MID_JOB <= done < SIMULATOR.cities:
                    return state
            return None

        return wait_for("a job half done", running, self.timeout)

    def check_stats(self, days: list[date]) -> str:
        first, last = min(days), max(days)
        url = f"{self.api}/country-stats?from={first}&to={last}"
        status, body = http("GET", url)
        if status != 200:  # noqa: PLR2004
            raise CheckFailedError(f"GET /country-stats: {status} {body}")
        expected = expected_stats(SIMULATOR, days)
        if body["stats"] != expected:
            got = {(row["date"], row["country"]): row for row in body["stats"]}
            want = {(row["date"], row["country"]): row for row in expected}
            wrong = sorted(key for key in got.keys() | want.keys() if got.get(key) != want.get(key))
            raise CheckFailedError(
                f"/country-stats differs from the oracle for {len(wrong)} rows, e.g. "
                f"{wrong[0]}: got {got.get(wrong[0])}, want {want.get(wrong[0])}"
            )
        return f"{len(days)} dates, {len(expected)} rows equal the oracle"

    def check_committed_once(self, jobs: dict[date, str]) -> str:
        """Each date committed by the one job its POST returned (``/dates``), and nothing
        in the dead-letter queue."""
        first, last = min(jobs), max(jobs)
        status, body = http("GET", f"{self.api}/dates?from={first}&to={last}")
        if status != 200:  # noqa: PLR2004
            raise CheckFailedError(f"GET /dates: {status} {body}")
        views = {view["date"]: view for view in body["dates"]}
        for day, job_id in jobs.items():
            view = views.get(day.isoformat(), {})
            committed = view.get("committed") or {}
            if view.get("state") != "committed" or committed.get("job_id") != job_id:
                raise CheckFailedError(f"{day}: not committed by job {job_id}: {view}")
        dead = self.management_api(f"queues/%2F/{DEAD_LETTER_QUEUE}").get("messages", 0)
        if dead:
            raise CheckFailedError(f"{dead} message(s) in {DEAD_LETTER_QUEUE}")
        return f"{len(jobs)} dates each committed by its job; {DEAD_LETTER_QUEUE} empty"

    # --- RabbitMQ's admin UI -----------------------------------------------------------
    def management_api(self, path: str) -> Any:
        """GET the admin API of the first node that is up (one may have been killed)."""
        error: OSError | None = None
        for node, port in self.node_ports.items():
            if node in self.down_nodes:
                continue
            try:
                status, body = http("GET", f"http://127.0.0.1:{port}/api/{path}", auth=GUEST)
            except OSError as failure:  # that node does not answer: ask the next
                error = failure
                continue
            if status != 200:  # noqa: PLR2004
                raise CheckFailedError(f"GET /api/{path} ({node}): {status}")
            return body
        raise CheckFailedError(f"no broker node answers GET /api/{path}: {error}")

    def wait_cluster(self) -> str:
        """Every node running, the job queues quorum queues with a member on each."""
        nodes = {f"rabbit@{hostname}" for hostname in BROKER_NODES.values()}

        def formed() -> str | None:
            running = {n["name"] for n in self.management_api("nodes") if n.get("running")}
            if running != nodes:
                return None
            for queue in (JOB_QUEUE, DEAD_LETTER_QUEUE):
                info = self.management_api(f"queues/%2F/{queue}")
                if info.get("type") != "quorum":
                    raise CheckFailedError(f"{queue} is {info.get('type')}, not quorum")
                online = set(info.get("online", info.get("members", [])))
                if set(info.get("members", [])) != nodes or online != nodes:
                    return None
            leader = self.management_api(f"queues/%2F/{JOB_QUEUE}").get("leader", "?")
            return f"{len(nodes)} nodes running; both queues on all of them (leader {leader})"

        return wait_for("the cluster with every queue on every node", formed, self.timeout)

    def consumer_node(self) -> str:
        """The compose service of the broker node most consumer connections are on."""
        ips = self.container_ips("consumer")
        on_node: dict[str, int] = {}
        for connection in self.management_api("connections"):
            if connection.get("peer_host") in ips:
                node = connection["node"]
                on_node[node] = on_node.get(node, 0) + 1
        if not on_node:
            raise CheckFailedError("no consumer connection found in /api/connections")
        node = max(on_node, key=lambda name: on_node[name])
        hostname = node.split("@", 1)[1]
        return next(service for service, host in BROKER_NODES.items() if host == hostname)

    def wait_targets_up(self) -> str:
        """Prometheus scrapes the expected targets of every job, and each is up."""

        def all_up() -> str | None:
            status, body = http("GET", f"{self.prometheus}/api/v1/targets?state=active")
            if status != 200:  # noqa: PLR2004
                raise CheckFailedError(f"Prometheus /api/v1/targets: {status}")
            targets = body["data"]["activeTargets"]
            up: dict[str, int] = {}
            for target in targets:
                if target["health"] == "up":
                    job = target["labels"]["job"]
                    up[job] = up.get(job, 0) + 1
            if up != SCRAPE_JOBS or len(targets) != sum(SCRAPE_JOBS.values()):
                return None
            return ", ".join(f"{job} {count}/{count} up" for job, count in up.items())

        return wait_for(f"Prometheus targets {SCRAPE_JOBS} all up", all_up, self.timeout)

    def consumers_attached(self) -> int:
        consumers = self.management_api("consumers")
        return sum(1 for c in consumers if c.get("queue", {}).get("name") == JOB_QUEUE)

    def wait_consumers(self, expected: int) -> str:
        wait_for(
            f"{expected} consumers on {JOB_QUEUE}",
            lambda: True if self.consumers_attached() == expected else None,
            self.timeout,
        )
        return f"{expected} consumers attached to {JOB_QUEUE}"

    def wait_consumers_moved(self, expected: int, gone: str) -> str:
        """``expected`` consumers on the job queue, none on the node ``gone`` (hostname)."""

        def moved() -> str | None:
            nodes = [
                c.get("channel_details", {}).get("node", "?")
                for c in self.management_api("consumers")
                if c.get("queue", {}).get("name") == JOB_QUEUE
            ]
            if len(nodes) != expected or f"rabbit@{gone}" in nodes:
                return None
            return f"{expected} consumers attached again, on {', '.join(sorted(set(nodes)))}"

        return wait_for(f"{expected} consumers off rabbit@{gone}", moved, self.timeout)

    def busy_consumer(self) -> str:
        """The container of a consumer whose channel holds unacked jobs (admin UI stats)."""
        ips = self.container_ips("consumer")

        def busy() -> str | None:
            for channel in self.management_api("channels"):
                peer = channel.get("connection_details", {}).get("peer_host")
                if channel.get("messages_unacknowledged", 0) > 0 and peer in ips:
                    return ips[peer]
            return None

        return wait_for("a consumer holding jobs", busy, self.timeout)


def override_document(node_ports: dict[str, int]) -> dict[str, Any]:
    """The compose override: the seeded simulator, the consumers' test settings, and the
    admin UI of the cluster's other nodes on host ports of their own."""
    s = SIMULATOR
    command = ["refsim", "--host", "0.0.0.0", "--port", "8080", "--log-format", "json"]  # noqa: S104 - inside its container
    command += ["--seed", str(s.seed), "--cities", str(s.cities), "--countries", str(s.countries)]
    command += ["--records-min", str(s.records_min), "--records-max", str(s.records_max)]
    command += ["--latency-min", str(s.latency_min), "--latency-max", str(s.latency_max)]
    return {
        "services": {
            "refsim": {"command": command},
            "consumer": {
                "environment": {
                    "BUSSTATS_SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_SECONDS),
                    "BUSSTATS_CITY_CONCURRENCY": str(CITY_CONCURRENCY),
                }
            },
            **{
                node: {"ports": [f"127.0.0.1:{port}:15672"]}
                for node, port in node_ports.items()
                if node != "rabbitmq"  # its port is the compose file's, from a variable
            },
        }
    }


def days(start: int, count: int) -> list[date]:
    return [FIRST_DAY + timedelta(days=start + offset) for offset in range(count)]


def check_json_logs(stack: Stack) -> str:
    lines = 0
    for service in ("api", "consumer", "refsim"):
        output = stack.compose("logs", "--no-log-prefix", "--no-color", service).stdout
        for line in output.splitlines():
            if not line.strip():
                continue
            lines += 1
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                raise CheckFailedError(
                    f"{service} logged a line that is not JSON: {line[:200]}"
                ) from None
            if not isinstance(parsed, dict) or "event" not in parsed:
                raise CheckFailedError(f"{service} logged JSON without an event: {line[:200]}")
    return f"{lines} lines from api, consumers and refsim, all JSON"


def scale(stack: Stack, consumers: int) -> str:
    stack.compose("up", "--detach", "--wait", "--no-recreate", "--scale", f"consumer={consumers}")
    return stack.wait_consumers(consumers)


def start_stack(stack: Stack, report: Report) -> None:
    with report.step("build the image once") as detail:
        stack.compose("build", timeout=1800)
        services = json.loads(stack.compose("config", "--format", "json").stdout)
        builders = [name for name, service in services["services"].items() if "build" in service]
        detail.append(f"{IMAGE}, built by {', '.join(builders)} only")

    with report.step("up --wait (all healthy)") as detail:
        stack.compose("up", "--detach", "--wait", "--wait-timeout", str(int(stack.timeout)))
        status, body = http("GET", f"{stack.api}/readyz")
        if status != 200:  # noqa: PLR2004
            raise CheckFailedError(f"/readyz: {status} {body}")
        ports = ", ".join(f"{name} {port}" for name, port in stack.ports.items())
        detail.append(f"project {stack.project}; 127.0.0.1 ports: {ports}")


def stop_mid_job(stack: Stack, report: Report, graceful: list[date], killed: list[date]) -> None:
    with report.step("graceful stop mid-job, restart") as detail:
        jobs = stack.post_dates(graceful)
        state = stack.wait_mid_job(jobs)
        detail.append(f"stopped at {state['date']} {state['cities_done']}/{SIMULATOR.cities}")
        started = time.monotonic()
        stack.compose("stop", "consumer")
        detail.append(f"stop took {time.monotonic() - started:.1f} s")
        stack.compose("start", "consumer")
        detail.append(stack.wait_succeeded(jobs))
        detail.append(stack.check_stats(graceful))

    with report.step("SIGKILL a consumer mid-job") as detail:
        jobs = stack.post_dates(killed)
        state = stack.wait_mid_job(jobs)
        victim = stack.busy_consumer()
        subprocess.run(
            ["docker", "kill", "--signal", "KILL", victim],
            check=True,
            capture_output=True,
            timeout=60,
        )
        detail.append(f"killed {victim[:12]} ({state['date']} at {state['cities_done']} cities)")
        detail.append(stack.wait_succeeded(jobs))
        detail.append(stack.check_stats(killed))
        stack.compose("up", "--detach", "--wait", "--scale", f"consumer={CONSUMERS}")
        detail.append(stack.wait_consumers(CONSUMERS))


def kill_broker_mid_job(stack: Stack, report: Report, dates: list[date]) -> None:
    with report.step("SIGKILL the consumers' broker node mid-job") as detail:
        jobs = stack.post_dates(dates)
        state = stack.wait_mid_job(jobs)
        node = stack.consumer_node()
        container = stack.containers(node)[0]
        killed = time.monotonic()
        subprocess.run(
            ["docker", "kill", "--signal", "KILL", container],
            check=True,
            capture_output=True,
            timeout=60,
        )
        stack.down_nodes.add(node)
        detail.append(f"killed {node} ({state['date']} at {state['cities_done']} cities)")
        detail.append(stack.wait_consumers_moved(CONSUMERS, BROKER_NODES[node]))
        detail.append(f"consumers back on the queue {time.monotonic() - killed:.1f} s after")
        detail.append(stack.wait_succeeded(jobs))
        detail.append(f"jobs done {time.monotonic() - killed:.1f} s after the kill")
        detail.append(stack.check_committed_once(jobs))
        detail.append(stack.check_stats(dates))
        # Docker may have restarted it already (restart: unless-stopped); start it if not.
        subprocess.run(["docker", "start", container], check=True, capture_output=True, timeout=60)
        stack.down_nodes.discard(node)
        detail.append("rejoined: " + stack.wait_cluster())
        detail.append(f"{time.monotonic() - killed:.1f} s from kill to a whole cluster")
        detail.append(stack.wait_targets_up())


def run(stack: Stack, report: Report) -> None:
    start_stack(stack, report)

    with report.step("cluster: 3 nodes, quorum queues on each") as detail:
        detail.append(stack.wait_cluster())

    basic = days(0, 3)
    with report.step(f"POST {len(basic)} dates -> succeeded") as detail:
        detail.append(stack.wait_succeeded(stack.post_dates(basic)))
        detail.append(stack.check_stats(basic))

    with report.step("admin UI: overview and consumers") as detail:
        overview = stack.management_api("overview")
        detail.append(f"RabbitMQ {overview.get('rabbitmq_version', '?')}")
        detail.append(stack.wait_consumers(CONSUMERS))

    with report.step("Prometheus: every target up") as detail:
        detail.append(stack.wait_targets_up())

    broker = days(3, 4)
    kill_broker_mid_job(stack, report, broker)

    with report.step(f"scale consumers to {SCALED} and back") as detail:
        detail.append(scale(stack, SCALED))
        detail.append(scale(stack, CONSUMERS))

    graceful, killed = days(7, 4), days(11, 4)
    stop_mid_job(stack, report, graceful, killed)

    with report.step("all dates against the oracle") as detail:
        detail.append(stack.check_stats(basic + broker + graceful + killed))

    with report.step("every log line is JSON") as detail:
        detail.append(check_json_logs(stack))


def diagnose(stack: Stack) -> None:
    """What a failing run leaves for its reader: the containers and their last lines."""
    for args in (("ps", "--all"), ("logs", "--no-color", "--tail", "40")):
        with contextlib.suppress(CheckFailedError, subprocess.TimeoutExpired):
            print(stack.compose(*args, timeout=120).stdout, flush=True)


def preflight() -> None:
    if shutil.which("docker") is None:
        raise CheckFailedError("docker is not installed")
    version = subprocess.run(
        ["docker", "compose", "version", "--short"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if version.returncode != 0:
        raise CheckFailedError("`docker compose` (Compose v2 or later) is not available")
    engine = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if engine.returncode != 0:
        raise CheckFailedError("no Docker engine answers (`docker info` failed)")
    print(
        f"compose-test: Docker engine {engine.stdout.strip()}, Compose {version.stdout.strip()}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.compose_test", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds any one wait may take"
    )
    args = parser.parse_args()
    report = Report()
    try:
        preflight()
    except CheckFailedError as error:
        print(f"compose-test: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="compose-test-") as workdir:
        stack = Stack(Path(workdir), args.timeout)
        failure: BaseException | None = None
        try:
            run(stack, report)
        except (CheckFailedError, subprocess.SubprocessError, OSError) as error:
            failure = error
            diagnose(stack)
        except KeyboardInterrupt as error:
            failure = error
        finally:
            with report.step("down -v") as detail:
                stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
                detail.append(f"project {stack.project} removed")
    print()
    print(report.table())
    if failure is not None:
        print(f"\ncompose-test: FAILED: {failure!r}", file=sys.stderr)
        return 1
    print("\ncompose-test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
