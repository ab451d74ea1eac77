"""``make compose-test``: the image and docker-compose.yml, proven end to end.

Needs Docker with Compose v2 or later (``docker compose``). Against the real compose file
(plus a small override: a seeded simulator slow enough that a job takes seconds, and a
short shutdown grace), under a project name of its own and free host ports on 127.0.0.1:

1. builds the image once (only the ``api`` service builds; the others run its tag);
2. brings the stack up and waits until every service is healthy;
3. POSTs dates, waits until they succeed, checks ``/country-stats`` against the
   simulator's oracle (``refsim.expected_stats``, same seed and configuration);
4. checks RabbitMQ's admin UI (``/api/overview``) and that the expected number of
   consumers is attached to the job queue (``/api/consumers``);
5. scales the consumers to 4 and back to 2;
6. stops every consumer gracefully while its jobs run, starts them again, and checks the
   jobs still succeed with exact figures;
7. SIGKILLs a consumer container while it runs jobs, and checks the same;
8. checks that every log line of our services is one JSON object;

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
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE = "bus-stats:compose-test"
NAMESPACE = "bus-stats"  # docker-compose.yml's BUSSTATS_NAMESPACE
JOB_QUEUE = f"{NAMESPACE}.jobs"
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
}
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
        self.override = workdir / "compose.test.yml"
        self.override.write_text(json.dumps(override_document(), indent=2))
        self.env = {
            **os.environ,
            "BUSSTATS_IMAGE": IMAGE,
            "BUSSTATS_BIND_ADDRESS": "127.0.0.1",
            **{PORT_VARIABLES[name]: str(port) for name, port in self.ports.items()},
        }
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.management = f"http://127.0.0.1:{self.ports['management']}"

    def compose(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``docker compose`` on the project; its output is kept, shown on failure."""
        command = [
            "docker",
            "compose",
            "--project-name",
            self.project,
            "--file",
            str(COMPOSE_FILE),
            "--file",
            str(self.override),
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

    # --- RabbitMQ's admin UI -----------------------------------------------------------
    def management_api(self, path: str) -> Any:
        status, body = http("GET", f"{self.management}/api/{path}", auth=GUEST)
        if status != 200:  # noqa: PLR2004
            raise CheckFailedError(f"GET /api/{path}: {status}")
        return body

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


def override_document() -> dict[str, Any]:
    """The compose override: the seeded simulator, and the consumers' test settings."""
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


def run(stack: Stack, report: Report) -> None:
    start_stack(stack, report)

    basic = days(0, 3)
    with report.step(f"POST {len(basic)} dates -> succeeded") as detail:
        detail.append(stack.wait_succeeded(stack.post_dates(basic)))
        detail.append(stack.check_stats(basic))

    with report.step("admin UI: overview and consumers") as detail:
        overview = stack.management_api("overview")
        detail.append(f"RabbitMQ {overview.get('rabbitmq_version', '?')}")
        detail.append(stack.wait_consumers(CONSUMERS))

    with report.step(f"scale consumers to {SCALED} and back") as detail:
        detail.append(scale(stack, SCALED))
        detail.append(scale(stack, CONSUMERS))

    graceful, killed = days(3, 4), days(7, 4)
    stop_mid_job(stack, report, graceful, killed)

    with report.step("all dates against the oracle") as detail:
        detail.append(stack.check_stats(basic + graceful + killed))

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
