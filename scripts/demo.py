"""``python -m scripts.demo`` (``make demo``): the whole of bus-stats on this machine.

Starts a Moto S3 server, the reference-server simulator, the API and two consumers, all in
a fresh namespace (``demo-<random>``) against the RabbitMQ at ``BUSSTATS_AMQP_URL``
(default ``amqp://guest:guest@127.0.0.1:5672/``); requests three dates, shows each job's
progress, then prints the per-country statistics. With ``--once`` it stops everything and
exits (status 1 if a job failed); otherwise it keeps serving until Ctrl-C.

Every child logs to ``.demo/<namespace>/<name>.log``. Children run in their own sessions:
Ctrl-C reaches this script only, which stops them in order (consumers first, so running
jobs are requeued while the broker and S3 are still there): SIGTERM, a bounded wait, then
SIGKILL. The namespace's queues and exchanges are deleted at the end.
"""

import argparse
import asyncio
import functools
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import FrameType
from typing import IO, TextIO

from pydantic import BaseModel, ConfigDict, ValidationError

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATES = ("2024-03-01", "2024-03-02", "2024-03-03")
ADMIN_UI_PORT = 15672
LOOPBACK = "127.0.0.1"
FINISHED = frozenset({"succeeded", "failed"})
POLL_SECONDS = 0.5
BAR_WIDTH = 30
LOG_TAIL_LINES = 15
# Consumers get this grace for running jobs; the demo waits a little longer for them.
SHUTDOWN_GRACE_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = SHUTDOWN_GRACE_SECONDS + 10.0


class DemoError(Exception):
    """Something the user has to look at: printed in one paragraph, exit status 1."""


class JobAccepted(BaseModel):
    """The answer to ``POST /process-request``."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    date: date
    status: str
    status_url: str


class JobView(BaseModel):
    """The part of ``GET /jobs/<id>`` the demo shows."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    date: date
    status: str
    cities_total: int | None = None
    cities_done: int = 0
    records: int = 0
    bytes: int = 0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


# --- arguments ----------------------------------------------------------------------------


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.demo",
        description="Run Moto, the simulator, the API and consumers locally; process three "
        "dates; print the per-country statistics. Needs RabbitMQ (BUSSTATS_AMQP_URL).",
    )
    parser.add_argument(
        "--once", action="store_true", help="stop everything and exit after printing"
    )
    parser.add_argument(
        "--dates",
        nargs="+",
        type=parse_day,
        default=[date.fromisoformat(day) for day in DEFAULT_DATES],
        metavar="YYYY-MM-DD",
        help="dates to process (default: %(default)s)",
    )
    parser.add_argument(
        "--consumers", type=int, default=2, help="consumer processes (default: %(default)s)"
    )
    parser.add_argument(
        "--api-port", type=int, default=0, help="the API's port (default: a free one)"
    )
    parser.add_argument(
        "--refsim-args",
        default="--seed 1",
        help="simulator options, one string (default: %(default)r; e.g. "
        "'--seed 1 --latency-max 0.5 --fail-rate 0.1')",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds for every process to become ready (default: %(default)s)",
    )
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=600.0,
        help="seconds for all jobs to finish (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.consumers < 1:
        parser.error("--consumers must be at least 1")
    return args


# --- child processes ----------------------------------------------------------------------


@dataclass
class Child:
    name: str
    stage: int
    """Stopped in descending order: consumers, then the API, then the servers they use."""
    process: "subprocess.Popen[bytes]"
    log_path: Path
    log_file: IO[bytes]


class Children:
    """The processes the demo started, their logs, and how to stop them."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.env = dict(env)
        self.children: list[Child] = []

    def start(
        self, name: str, stage: int, argv: Sequence[str], extra_env: Mapping[str, str] | None = None
    ) -> Child:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, stage, process, log_path, log_file)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        """Raise, naming the process and showing its log's tail, if a child has exited."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise DemoError(
                    f"{child.name} exited with status {code}; the end of {child.log_path}:\n"
                    + tail(child.log_path)
                )

    def stop(self) -> None:
        """SIGTERM stage by stage, wait a bounded time for each, SIGKILL what is left."""
        for stage in sorted({child.stage for child in self.children}, reverse=True):
            group = [child for child in self.children if child.stage == stage]
            for child in group:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            for child in group:
                try:
                    child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"{child.name} did not stop within {STOP_TIMEOUT_SECONDS:.0f} s: killed")
                    child.process.kill()
                    child.process.wait()
        for child in self.children:
            child.log_file.close()
        self.children.clear()

    def kill(self) -> None:
        """Last resort (a second Ctrl-C while stopping): SIGKILL everything at once."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.kill()
        for child in self.children:
            child.process.wait()
            child.log_file.close()
        self.children.clear()


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"    (cannot read the log: {error})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def child_environment(base: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """The demo's environment without any BUSSTATS_* or AWS_* it ran with, plus ``values``."""
    kept = {k: v for k, v in base.items() if not k.startswith(("BUSSTATS_", "AWS_"))}
    return {
        **kept,
        "PYTHONUNBUFFERED": "1",
        # Moto's dummy credentials; never read the user's real AWS configuration.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **values,
    }


# --- HTTP and readiness -------------------------------------------------------------------


def request_json(method: str, url: str, timeout: float = 10.0) -> tuple[int, object]:
    """One request to a server this script started; the status and the decoded body."""
    if not url.startswith("http://"):
        raise ValueError(f"not an http:// URL: {url}")
    # S310: checked just above, and always http://127.0.0.1:<port> built by this script.
    request = urllib.request.Request(url, method=method, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            body: bytes = response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
        error.close()
    try:
        decoded: object = json.loads(body) if body else None
    except ValueError:
        decoded = body.decode(errors="replace")
    return status, decoded


def http_ok(url: str) -> bool:
    try:
        status, _ = request_json("GET", url, timeout=3.0)
    except OSError:
        return False
    return status == 200  # noqa: PLR2004 - HTTP OK


def tcp_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def wait_until(what: str, ready: Callable[[], bool], children: Children, timeout: float) -> None:
    """Poll ``ready`` until it holds; fail early if a child exits, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise DemoError(
                f"{what} was not ready after {timeout:.0f} s; logs in {children.log_dir}"
            )
        time.sleep(0.2)


def broker_address(amqp_url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(amqp_url)
    default_port = 5671 if parsed.scheme == "amqps" else 5672
    return parsed.hostname or LOOPBACK, parsed.port or default_port


# --- jobs and their progress --------------------------------------------------------------


def submit(api: str, day: date, children: Children, timeout: float) -> JobAccepted:
    """POST the date; a 503 (the publish was not confirmed) is retried until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        children.check_alive()
        status, body = request_json("POST", f"{api}/process-request?date={day.isoformat()}")
        if status in {200, 202}:
            try:
                return JobAccepted.model_validate(body)
            except ValidationError as error:
                raise DemoError(f"unexpected answer to POST /process-request: {error}") from None
        if status != 503 or time.monotonic() > deadline:  # noqa: PLR2004 - HTTP 503
            raise DemoError(f"POST /process-request?date={day} answered {status}: {body}")
        time.sleep(1.0)


def fetch_job(api: str, job_id: str) -> JobView:
    status, body = request_json("GET", f"{api}/jobs/{urllib.parse.quote(job_id)}")
    if status != 200:  # noqa: PLR2004 - HTTP OK
        raise DemoError(f"GET /jobs/{job_id} answered {status}: {body}")
    try:
        return JobView.model_validate(body)
    except ValidationError as error:
        raise DemoError(f"unexpected answer to GET /jobs/{job_id}: {error}") from None


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":  # noqa: PLR2004 - bytes in a KiB
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def progress_line(job: JobView) -> str:
    total = job.cities_total
    if total:
        fraction = min(1.0, job.cities_done / total)
    else:
        fraction = 1.0 if job.status == "succeeded" else 0.0
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    cities = f"{job.cities_done}/{'?' if total is None else total}"
    line = (
        f"{job.date}  [{bar}] {cities:>9} cities {job.records:>11,} records "
        f"{human_bytes(job.bytes):>10}  {job.status}"
    )
    if job.error:
        line += f"  ({job.error[:100]})"
    return line


class Board:
    """Job lines redrawn in place on a terminal; printed when they change otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.previous: list[str] = []

    def draw(self, lines: list[str]) -> None:
        if self.live:
            # One screen line per job, or moving the cursor up would miss wrapped lines.
            width = shutil.get_terminal_size().columns - 1
            lines = [line[:width] for line in lines]
            if self.previous:
                self.stream.write(f"\x1b[{len(self.previous)}F")  # to the first line drawn
            self.stream.writelines(f"\x1b[2K{line}\n" for line in lines)
        else:
            changed = [
                line
                for index, line in enumerate(lines)
                if index >= len(self.previous) or self.previous[index] != line
            ]
            self.stream.writelines(f"{line}\n" for line in changed)
        self.stream.flush()
        self.previous = lines


def watch(
    api: str, accepted: list[JobAccepted], children: Children, timeout: float
) -> list[JobView]:
    """Show every job's progress until all have finished; their final states."""
    jobs = {job.job_id: fetch_job(api, job.job_id) for job in accepted}
    board = Board(sys.stdout)
    deadline = time.monotonic() + timeout
    while True:
        board.draw([progress_line(job) for job in jobs.values()])
        if all(job.finished for job in jobs.values()):
            return list(jobs.values())
        if time.monotonic() > deadline:
            raise DemoError(f"the jobs did not finish within {timeout:.0f} s")
        time.sleep(POLL_SECONDS)
        children.check_alive()
        for job_id, job in jobs.items():
            if not job.finished:
                jobs[job_id] = fetch_job(api, job_id)


# --- the statistics table -----------------------------------------------------------------


def cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def table(rows: Sequence[Mapping[str, object]]) -> str:
    """Rows as an aligned text table: a column per key, numbers right-aligned."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    numeric = [
        all(
            isinstance(row.get(column), int | float) and not isinstance(row.get(column), bool)
            for row in rows
            if row.get(column) is not None
        )
        for column in columns
    ]
    widths = [
        max([len(column), *(len(line[index]) for line in cells)])
        for index, column in enumerate(columns)
    ]

    def render(values: Sequence[str]) -> str:
        parts = (
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(parts).rstrip()

    lines = [render(columns), render(["-" * width for width in widths])]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)


def is_rows(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def stats_report(payload: object) -> str:
    """``GET /country-stats``'s answer: its scalar fields, then its rows as a table."""
    if is_rows(payload):
        assert isinstance(payload, list)  # noqa: S101 - narrowing for mypy; is_rows checked
        return table(payload)
    if not isinstance(payload, dict):
        return json.dumps(payload, indent=2)
    header = [f"{key}: {cell(value)}" for key, value in payload.items() if not is_rows(value)]
    bodies = [table(value) for value in payload.values() if is_rows(value)]
    return "\n".join(header + ([""] if bodies else []) + bodies) or "(no statistics)"


# --- the demo -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    moto: str
    refsim: str
    api: str
    metrics: tuple[str, ...]


def start_all(args: argparse.Namespace, children: Children, namespace: str) -> Endpoints:
    """Start every process, each once the ones it needs answer."""
    python = sys.executable
    moto_port, refsim_port = free_port(), free_port()
    api_port = args.api_port or free_port()
    moto = f"http://{LOOPBACK}:{moto_port}"
    refsim = f"http://{LOOPBACK}:{refsim_port}"
    api = f"http://{LOOPBACK}:{api_port}"

    children.start("moto", 0, [python, "-m", "moto.server", "-H", LOOPBACK, "-p", str(moto_port)])
    refsim_argv = [python, "-m", "refsim", "--port", str(refsim_port)]
    children.start("refsim", 0, refsim_argv + shlex.split(args.refsim_args))
    wait_until(
        "Moto",
        functools.partial(http_ok, f"{moto}/moto-api/data.json"),
        children,
        args.start_timeout,
    )
    wait_until(
        "the simulator",
        functools.partial(tcp_open, LOOPBACK, refsim_port),
        children,
        args.start_timeout,
    )

    children.env.update(
        {
            "BUSSTATS_NAMESPACE": namespace,
            "BUSSTATS_S3_ENDPOINT_URL": moto,
            "BUSSTATS_S3_BUCKET": namespace,
            "BUSSTATS_REFERENCE_URL": refsim,
            "BUSSTATS_API_HOST": LOOPBACK,
            "BUSSTATS_API_PORT": str(api_port),
        }
    )
    children.start("api", 1, [python, "-m", "producer", "--port", str(api_port)])
    wait_until("the API", functools.partial(http_ok, f"{api}/readyz"), children, args.start_timeout)

    metrics_ports = [free_port() for _ in range(args.consumers)]
    for number, port in enumerate(metrics_ports, start=1):
        children.start(
            f"consumer-{number}",
            2,
            [python, "-m", "consumer"],
            {"BUSSTATS_METRICS_PORT": str(port)},
        )
    for number, port in enumerate(metrics_ports, start=1):
        wait_until(
            f"consumer-{number}",
            functools.partial(tcp_open, LOOPBACK, port),
            children,
            args.start_timeout,
        )
    return Endpoints(
        moto, refsim, api, tuple(f"http://{LOOPBACK}:{p}/metrics" for p in metrics_ports)
    )


def print_addresses(endpoints: Endpoints, namespace: str, log_dir: Path, amqp_host: str) -> None:
    if tcp_open(amqp_host, ADMIN_UI_PORT):
        admin = f"http://{amqp_host}:{ADMIN_UI_PORT} (guest/guest); queues named {namespace}.*"
    else:
        admin = "not enabled; enable it with `rabbitmq-plugins enable rabbitmq_management`, "
        admin += f"then http://{amqp_host}:{ADMIN_UI_PORT}"
    rows = [
        ("API", f"{endpoints.api} (try GET /jobs/<id>, GET /country-stats?from=&to=)"),
        ("API docs", f"{endpoints.api}/docs (OpenAPI: {endpoints.api}/openapi.json)"),
        ("RabbitMQ admin UI", admin),
        ("Consumer metrics", ", ".join(endpoints.metrics)),
        ("Simulator", endpoints.refsim),
        ("S3 (Moto)", f"{endpoints.moto} (dashboard: {endpoints.moto}/moto-api/)"),
        ("Namespace", namespace),
        ("Logs", str(log_dir)),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


def run(args: argparse.Namespace, children: Children, namespace: str, amqp_host: str) -> int:
    endpoints = start_all(args, children, namespace)
    print(f"All {len(children.children)} processes are ready (namespace {namespace}).\n")
    accepted = [submit(endpoints.api, day, children, args.start_timeout) for day in args.dates]
    jobs = watch(endpoints.api, accepted, children, args.job_timeout)
    failed = [job for job in jobs if job.status != "succeeded"]

    first, last = min(args.dates).isoformat(), max(args.dates).isoformat()
    status, body = request_json("GET", f"{endpoints.api}/country-stats?from={first}&to={last}")
    print(f"\nGET /country-stats?from={first}&to={last}  ({status})\n")
    print(stats_report(body))
    print_addresses(endpoints, namespace, children.log_dir, amqp_host)
    if failed:
        print(f"\n{len(failed)} job(s) failed: " + ", ".join(str(job.date) for job in failed))

    if not args.once:
        print("\nServing until Ctrl-C.")
        while True:
            children.check_alive()
            time.sleep(1.0)
    return 1 if failed or status != 200 else 0  # noqa: PLR2004 - HTTP OK


async def delete_namespace(amqp_url: str, namespace: str) -> None:
    """Remove the demo's queues and exchanges from the shared broker."""
    import aio_pika  # noqa: PLC0415 - only needed at teardown

    from common.topology import delete_topology  # noqa: PLC0415 - idem

    connection = await aio_pika.connect(amqp_url, timeout=5)
    async with connection:
        await delete_topology(await connection.channel(), namespace)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C: the same orderly stop."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    amqp_url = os.environ.get("BUSSTATS_AMQP_URL", DEFAULT_AMQP_URL)
    amqp_host, amqp_port = broker_address(amqp_url)
    if not tcp_open(amqp_host, amqp_port):
        print(
            f"RabbitMQ does not answer on {amqp_host}:{amqp_port}: start it "
            "(`rabbitmq-server -detached`) or set BUSSTATS_AMQP_URL.",
            file=sys.stderr,
        )
        return 1

    namespace = f"demo-{secrets.token_hex(4)}"
    log_dir = DEMO_DIR / namespace
    log_dir.mkdir(parents=True)
    env = child_environment(
        os.environ,
        {
            "BUSSTATS_AMQP_URL": amqp_url,
            "BUSSTATS_LOG_FORMAT": "json",
            "BUSSTATS_SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_SECONDS),
        },
    )
    children = Children(log_dir, env)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_interrupt)
    code = 1
    try:
        code = run(args, children, namespace, amqp_host)
    except DemoError as error:
        print(f"\ndemo: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    finally:
        print("\nStopping...", file=sys.stderr)
        try:
            children.stop()
        except KeyboardInterrupt:
            children.kill()
        try:
            asyncio.run(delete_namespace(amqp_url, namespace))
        except Exception as error:  # noqa: BLE001 - cleanup is best effort, reported
            print(f"demo: could not delete namespace {namespace}: {error!r}", file=sys.stderr)
        print(f"Stopped. Logs: {log_dir}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
