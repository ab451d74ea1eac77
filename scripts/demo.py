"""``python -m scripts.demo`` (``make demo``): the whole of bus-stats on this machine.

Prints the page's address first, then starts a Moto S3 server, the reference-server
simulator, the API and two consumers, all in a fresh namespace (``demo-<random>``);
requests three dates, shows each job's progress (job ids included), then the per-country
statistics, sized to the terminal. With ``--once`` it stops everything and exits
(status 1 if a job failed); otherwise it keeps serving (the page, the API) until Ctrl-C,
which stops everything and exits 0.

The broker: the RabbitMQ at ``BUSSTATS_AMQP_URL`` (default ``127.0.0.1:5672``) when it
answers. When it does not (and the variable is not set), or with ``--private-broker``,
the demo starts a RabbitMQ node of its own if ``rabbitmq-server`` is installed: its own
node name, free ports (never 5672, 15672 or 25672), its own Erlang port mapper, cookie,
configuration and data under ``.demo/rabbitmq/``, no plugins; stopped with the demo. The
system's broker is never touched. Without ``rabbitmq-server`` it names the command that
installs it.

Every child logs to ``.demo/<namespace>/<name>.log``. Children run in their own sessions:
Ctrl-C reaches this script only, which stops them in order (consumers first, so running
jobs are requeued while the broker and S3 are still there): SIGTERM, a bounded wait, then
SIGKILL. The namespace's queues and exchanges are deleted at the end.
"""

import argparse
import asyncio
import contextlib
import functools
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import FrameType
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, ValidationError
from rich import box
from rich.console import Console, JustifyMethod
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATES = ("2024-03-01", "2024-03-02", "2024-03-03")
ADMIN_UI_PORT = 15672
RESERVED_PORTS = frozenset({5672, 15672, 25672})  # the system broker's: never bound here
INSTALL_BROKER = "apt-get install -y rabbitmq-server"
LOOPBACK = "127.0.0.1"
FINISHED = frozenset({"succeeded", "failed"})
POLL_SECONDS = 0.5
LOG_TAIL_LINES = 15
# Consumers get this grace for running jobs; the demo waits a little longer for them.
SHUTDOWN_GRACE_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = SHUTDOWN_GRACE_SECONDS + 10.0
BROKER_STAGE = -1  # stopped last, after everything that uses it

console = Console(highlight=False)


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
    retries: int = 0
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
        "dates; print the per-country statistics; serve the page until Ctrl-C. Uses the "
        "RabbitMQ at BUSSTATS_AMQP_URL, or a private node of its own (see --private-broker).",
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
        "--private-broker",
        action="store_true",
        help="start a RabbitMQ node of the demo's own (under .demo/rabbitmq) even when "
        "one answers at BUSSTATS_AMQP_URL",
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
    if args.api_port in RESERVED_PORTS:
        parser.error(f"--api-port {args.api_port} belongs to the system's RabbitMQ")
    return args


# --- Ctrl-C as a key ---------------------------------------------------------------------


class CtrlCKey:
    """On a terminal, Ctrl-C is read as a key instead of raising SIGINT.

    ``make demo`` runs in the terminal's foreground process group: a SIGINT from Ctrl-C
    would reach make too, and make always dies of it (``*** [demo] Interrupt``, status
    130) whatever the demo does. With the terminal's ISIG flag off no signal is sent; the
    demo reads the key, stops everything and exits 0, and so does make. The terminal's
    settings are restored as soon as the demo starts stopping (a second Ctrl-C then
    interrupts the stop as usual).
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        self.saved: list[Any] | None = None

    def take(self) -> None:
        if not sys.stdin.isatty():
            return  # SIGINT (and SIGTERM) still stop the demo the usual way
        fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG)
        termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
        self.fd = fd

    def give_back(self) -> None:
        if self.fd is not None and self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        self.fd = None

    def pause(self, seconds: float) -> None:
        """Sleep, or raise KeyboardInterrupt as soon as Ctrl-C is pressed."""
        if self.fd is None:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if ready and b"\x03" in os.read(self.fd, 64):
            raise KeyboardInterrupt


ctrl_c = CtrlCKey()
pause = ctrl_c.pause


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
    """A free loopback port, never one of the system broker's."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
        if port not in RESERVED_PORTS:
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
        pause(0.2)


def broker_address(amqp_url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(amqp_url)
    default_port = 5671 if parsed.scheme == "amqps" else 5672
    return parsed.hostname or LOOPBACK, parsed.port or default_port


# --- a private RabbitMQ node --------------------------------------------------------------


def rabbitmq_server() -> str | None:
    """The server script itself (Debian's /usr/sbin one would switch to the system's user)."""
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if direct.exists():
        return str(direct)
    return shutil.which("rabbitmq-server") or shutil.which("rabbitmq-server", path="/usr/sbin")


def epmd_binary() -> str | None:
    found = shutil.which("epmd")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    return str(candidates[-1]) if candidates else None


@dataclass(frozen=True)
class PrivateBroker:
    """A RabbitMQ node that belongs to the demo: its name, ports, cookie and files."""

    server: str
    folder: Path
    amqp_port: int
    dist_port: int
    epmd_port: int
    node: str = "bus-stats-demo@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}/"

    def environment(self) -> dict[str, str]:
        """Variables that keep the node apart from the system's (files, ports, cookie)."""
        folder = self.folder
        return {
            "HOME": str(folder),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "node.pid"),
            "RABBITMQ_LOGS": "-",  # to the child's log file
        }

    def prepare(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)  # a previous demo's node: data of no use
        (self.folder / "log").mkdir(parents=True)
        (self.folder / "rabbitmq-env.conf").write_text("")
        (self.folder / "enabled_plugins").write_text("[].\n")  # no management plugin
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {LOOPBACK}:{self.amqp_port}\n"
        )

    def start(self, children: Children, timeout: float) -> None:
        self.prepare()
        children.start("rabbitmq", BROKER_STAGE, [self.server], self.environment())
        wait_until(
            "the demo's RabbitMQ node",
            functools.partial(tcp_open, LOOPBACK, self.amqp_port),
            children,
            timeout,
        )

    def stop_port_mapper(self) -> None:
        """The node started an Erlang port mapper of its own on ``epmd_port``: end it."""
        epmd = epmd_binary()
        if epmd is None:
            return
        subprocess.run(  # noqa: PLW1510 - best effort: it may have ended already
            [epmd, "-port", str(self.epmd_port), "-kill"],
            env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )


def choose_broker(args: argparse.Namespace) -> tuple[str, PrivateBroker | None]:
    """The broker's URL, and the private node to start for it if any."""
    configured = os.environ.get("BUSSTATS_AMQP_URL")
    amqp_url = configured or DEFAULT_AMQP_URL
    if not args.private_broker and tcp_open(*broker_address(amqp_url)):
        return amqp_url, None
    host, port = broker_address(amqp_url)
    if configured and not args.private_broker:
        raise DemoError(
            f"RabbitMQ does not answer at BUSSTATS_AMQP_URL ({host}:{port}): start it, "
            "unset the variable (the demo then starts a node of its own), or pass "
            "--private-broker"
        )
    server = rabbitmq_server()
    if server is None:
        raise DemoError(
            f"RabbitMQ does not answer on {host}:{port} and rabbitmq-server is not "
            f"installed; install it with `{INSTALL_BROKER}` (the demo then starts a node "
            "of its own, apart from the system's)"
        )
    broker = PrivateBroker(
        server=server,
        folder=DEMO_DIR / "rabbitmq",
        amqp_port=free_port(),
        dist_port=free_port(),
        epmd_port=free_port(),
    )
    return broker.url, broker


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
        pause(1.0)


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


STATUS_STYLE = {"succeeded": "green", "failed": "bold red", "running": "cyan", "queued": "blue"}


def status_text(job: JobView) -> Text:
    text = Text(job.status, style=STATUS_STYLE.get(job.status, ""))
    if job.error:
        text.append(f": {job.error}", style="red")
    return text


WIDE_COLUMNS = 100  # narrower terminals get the bars without records, bytes and retries
PLAIN_STEPS = 4  # without a terminal, a job's line is printed at each quarter of its cities


def progress_line(job: JobView) -> Text:
    """One job as a line of text (when the output is not a terminal)."""
    total = "?" if job.cities_total is None else str(job.cities_total)
    line = Text(f"{job.date} {job.job_id[:8]} ")
    line.append(f"{job.cities_done}/{total} cities {job.records:,} records ")
    line.append(f"{human_bytes(job.bytes)} {job.retries} retries ")
    return line + status_text(job)


def progress_step(job: JobView) -> tuple[str, int]:
    """What must change for a job's line to be printed again (without a terminal)."""
    step = job.cities_done * PLAIN_STEPS // job.cities_total if job.cities_total else 0
    return job.status, step


class Board:
    """Every job's progress: live bars on a terminal (fitted to its width), else lines."""

    def __init__(self) -> None:
        self.live = console.is_terminal
        wide = console.width >= WIDE_COLUMNS
        columns = [
            TextColumn("{task.fields[date]}"),
            TextColumn("[dim]{task.fields[job]}"),
            BarColumn(bar_width=None if wide else 10),
            TextColumn("{task.fields[cities]}" + (" cities" if wide else "")),
        ]
        if wide:
            columns += [
                TextColumn("{task.fields[records]} records", justify="right"),
                TextColumn("{task.fields[size]}", justify="right"),
                TextColumn("{task.fields[retries]} retries"),
            ]
        columns.append(TextColumn("{task.fields[status]}"))
        self.progress = Progress(*columns, console=console, expand=wide)
        self.tasks: dict[str, TaskID] = {}
        self.previous: dict[str, tuple[str, int]] = {}

    @contextlib.contextmanager
    def shown(self) -> Iterator[None]:
        if not self.live:
            yield
            return
        with Live(self.progress, console=console, refresh_per_second=8, transient=False):
            yield

    def draw(self, jobs: Sequence[JobView]) -> None:
        for job in jobs:
            if self.live:
                self._update(job)
            elif self.previous.get(job.job_id) != progress_step(job):
                console.print(progress_line(job))
                self.previous[job.job_id] = progress_step(job)

    def _update(self, job: JobView) -> None:
        total = job.cities_total or 1
        done = job.cities_done if job.cities_total else (1 if job.status == "succeeded" else 0)
        fields: dict[str, Any] = {
            "date": str(job.date),
            "job": job.job_id[:8],
            "cities": f"{job.cities_done}/{'?' if job.cities_total is None else total}",
            "records": f"{job.records:,}",
            "size": human_bytes(job.bytes),
            "retries": str(job.retries),
            "status": status_text(job).markup,
        }
        if job.job_id not in self.tasks:
            self.tasks[job.job_id] = self.progress.add_task("", total=total, **fields)
        self.progress.update(self.tasks[job.job_id], total=total, completed=done, **fields)


def watch(
    api: str, accepted: list[JobAccepted], children: Children, timeout: float
) -> list[JobView]:
    """Show every job's progress until all have finished; their final states."""
    jobs = {job.job_id: fetch_job(api, job.job_id) for job in accepted}
    board = Board()
    deadline = time.monotonic() + timeout
    with board.shown():
        while True:
            board.draw(list(jobs.values()))
            if all(job.finished for job in jobs.values()):
                return list(jobs.values())
            if time.monotonic() > deadline:
                raise DemoError(f"the jobs did not finish within {timeout:.0f} s")
            pause(POLL_SECONDS)
            children.check_alive()
            for job_id, job in jobs.items():
                if not job.finished:
                    jobs[job_id] = fetch_job(api, job_id)


# --- tables -------------------------------------------------------------------------------


def jobs_table(jobs: Sequence[JobView]) -> Table:
    """Every job with its full id (folded on narrow terminals, which lose two columns)."""
    wide = console.width >= WIDE_COLUMNS
    table = Table(title="Jobs", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("date", no_wrap=True)
    table.add_column("job id", overflow="fold", min_width=16)
    table.add_column("status", min_width=9)
    table.add_column("cities", justify="right", no_wrap=True)
    table.add_column("records", justify="right", no_wrap=True)
    if wide:
        table.add_column("bytes", justify="right", no_wrap=True)
        table.add_column("retries", justify="right", no_wrap=True)
    for job in jobs:
        total = "?" if job.cities_total is None else str(job.cities_total)
        cells: list[str | Text] = [
            str(job.date),
            job.job_id,
            status_text(job),
            f"{job.cities_done}/{total}",
            f"{job.records:,}",
        ]
        if wide:
            cells += [human_bytes(job.bytes), str(job.retries)]
        table.add_row(*cells)
    return table


def stored_table(payload: object, title: str) -> Table | Text:
    """``GET /dates``' committed dates: their lines' bytes, the bytes stored, the ratio."""
    if not isinstance(payload, dict) or not isinstance(payload.get("dates"), list):
        return Text(json.dumps(payload, indent=2))
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("date", "records", "lines", "stored", "ratio", "codec"):
        table.add_column(name, justify="left" if name in {"date", "codec"} else "right")
    for item in payload["dates"]:
        committed = item.get("committed")
        if not isinstance(committed, dict):
            continue
        table.add_row(
            str(item["date"]),
            f"{committed['records']:,}",
            human_bytes(committed["bytes"]),
            human_bytes(committed.get("stored_bytes") or committed["bytes"]),
            f"{committed.get('ratio', 1.0):.1f}x",
            "+".join(committed.get("codecs", ["none"])),
        )
    return table


def stats_table(payload: object, title: str) -> Table | Text:
    """``GET /country-stats``'s rows as a table, missing dates in its caption."""
    if not isinstance(payload, dict) or not isinstance(payload.get("stats"), list):
        return Text(json.dumps(payload, indent=2))
    missing = payload.get("missing_dates") or []
    caption = f"missing dates (no data): {', '.join(map(str, missing))}" if missing else None
    table = Table(
        title=f"{title}; delay: the average, in seconds",
        title_justify="left",
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("date", "left"),
        ("country", "left"),
        ("buses", "right"),
        ("passengers", "right"),
        ("accident", "left"),
        ("delay (s)", "right"),
    )
    for name, justify in columns:
        table.add_column(
            name,
            justify=justify,
            no_wrap=name != "country",
            min_width=10 if name == "country" else None,
        )
    for row in payload["stats"]:
        table.add_row(
            str(row["date"]),
            str(row["country"]),
            f"{row['buses_started']:,}",
            f"{row['passengers']:,}",
            Text("yes", style="bold red") if row["accident"] else Text("no"),
            f"{row['average_delay_seconds']:,.2f}",
        )
    return table


# --- the demo -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    moto: str
    refsim: str
    api: str
    metrics: tuple[str, ...]


def plan_endpoints(args: argparse.Namespace) -> Endpoints:
    """Every address, chosen before anything starts (so the page's can be printed first)."""
    return Endpoints(
        moto=f"http://{LOOPBACK}:{free_port()}",
        refsim=f"http://{LOOPBACK}:{free_port()}",
        api=f"http://{LOOPBACK}:{args.api_port or free_port()}",
        metrics=tuple(f"http://{LOOPBACK}:{free_port()}/metrics" for _ in range(args.consumers)),
    )


def port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    if port is None:
        raise ValueError(f"no port in {url}")
    return port


def start_all(
    args: argparse.Namespace, children: Children, namespace: str, endpoints: Endpoints
) -> None:
    """Start every process, each once the ones it needs answer."""
    python = sys.executable
    moto_port, refsim_port = port_of(endpoints.moto), port_of(endpoints.refsim)
    api_port = port_of(endpoints.api)
    children.start("moto", 0, [python, "-m", "moto.server", "-H", LOOPBACK, "-p", str(moto_port)])
    refsim_argv = [python, "-m", "refsim", "--port", str(refsim_port)]
    children.start("refsim", 0, refsim_argv + shlex.split(args.refsim_args))
    wait_until(
        "Moto",
        functools.partial(http_ok, f"{endpoints.moto}/moto-api/data.json"),
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
            "BUSSTATS_S3_ENDPOINT_URL": endpoints.moto,
            "BUSSTATS_S3_BUCKET": namespace,
            "BUSSTATS_REFERENCE_URL": endpoints.refsim,
            "BUSSTATS_API_HOST": LOOPBACK,
            "BUSSTATS_API_PORT": str(api_port),
        }
    )
    children.start("api", 1, [python, "-m", "producer", "--port", str(api_port)])
    wait_until("the API", functools.partial(http_ok, f"{endpoints.api}/readyz"), children, 120.0)
    for number, url in enumerate(endpoints.metrics, start=1):
        children.start(
            f"consumer-{number}",
            2,
            [python, "-m", "consumer"],
            {"BUSSTATS_METRICS_PORT": str(port_of(url))},
        )
    for number, url in enumerate(endpoints.metrics, start=1):
        wait_until(
            f"consumer-{number}",
            functools.partial(tcp_open, LOOPBACK, port_of(url)),
            children,
            args.start_timeout,
        )


def addresses_table(
    endpoints: Endpoints, namespace: str, log_dir: Path, amqp_url: str, private: bool
) -> Table:
    amqp_host, amqp_port = broker_address(amqp_url)
    if private:
        broker = f"the demo's own node on {amqp_host}:{amqp_port} (no admin UI), .demo/rabbitmq"
    elif tcp_open(amqp_host, ADMIN_UI_PORT):
        broker = f"http://{amqp_host}:{ADMIN_UI_PORT} (guest/guest); queues named {namespace}.*"
    else:
        broker = f"{amqp_host}:{amqp_port}; admin UI: `rabbitmq-plugins enable rabbitmq_management`"
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in (
        ("The page", f"{endpoints.api}/"),
        ("API reference", f"{endpoints.api}/docs (OpenAPI: {endpoints.api}/openapi.json)"),
        ("API", f"{endpoints.api} (GET /jobs, /dates, /country-stats?from=&to=)"),
        ("RabbitMQ", broker),
        ("Consumer metrics", ", ".join(endpoints.metrics)),
        ("Simulator", endpoints.refsim),
        ("S3 (Moto)", f"{endpoints.moto} (dashboard: {endpoints.moto}/moto-api/)"),
        ("Namespace", namespace),
        ("Logs", str(log_dir)),
    ):
        table.add_row(name, value)
    return table


SETTINGS_SHOWN = (
    "BUSSTATS_AMQP_URL",
    "BUSSTATS_NAMESPACE",
    "BUSSTATS_S3_ENDPOINT_URL",
    "BUSSTATS_S3_BUCKET",
    "BUSSTATS_REFERENCE_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def settings_lines(env: Mapping[str, str]) -> list[str]:
    """``export NAME=value`` for each setting that points a command at the demo's stack."""
    return [f"export {name}={shlex.quote(env[name])}" for name in SETTINGS_SHOWN if name in env]


def print_settings(env: Mapping[str, str]) -> None:
    """The settings of the demo's stack, for a command run in another terminal."""
    console.print("To point a command at this stack (in another terminal, from the checkout):")
    for line in settings_lines(env):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(
        "uv run python -m consumer sweep --dry-run   # or replay-dead-letters, backfill-sums",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def run(
    args: argparse.Namespace,
    children: Children,
    namespace: str,
    endpoints: Endpoints,
    broker: tuple[str, PrivateBroker | None],
) -> int:
    amqp_url, private = broker
    if private is not None:
        console.print(
            f"Starting the demo's own RabbitMQ node ({private.node}, port "
            f"{private.amqp_port}, files in {private.folder.relative_to(ROOT)})."
        )
        private.start(children, args.start_timeout)
    console.print(
        f"Starting Moto, the simulator, the API and {args.consumers} consumer(s)"
        f" (logs in {children.log_dir.relative_to(ROOT)})..."
    )
    start_all(args, children, namespace, endpoints)
    console.print(f"All {len(children.children)} processes are ready (namespace {namespace}).\n")
    accepted = [submit(endpoints.api, day, children, args.start_timeout) for day in args.dates]
    jobs = watch(endpoints.api, accepted, children, args.job_timeout)
    failed = [job for job in jobs if job.status != "succeeded"]
    console.print()
    console.print(jobs_table(jobs))

    first, last = min(args.dates).isoformat(), max(args.dates).isoformat()
    dates_query = f"/dates?from={first}&to={last}"
    _, dates = request_json("GET", f"{endpoints.api}{dates_query}")
    console.print()
    console.print(stored_table(dates, f"Stored: GET {dates_query}"))
    query = f"/country-stats?from={first}&to={last}"
    status, body = request_json("GET", f"{endpoints.api}{query}")
    console.print()
    console.print(stats_table(body, f"GET {query}  ({status})"))
    console.print()
    console.print(addresses_table(endpoints, namespace, children.log_dir, amqp_url, bool(private)))
    console.print()
    print_settings(children.env)
    if failed:
        console.print(f"\n{len(failed)} job(s) failed: " + ", ".join(str(j.date) for j in failed))

    if not args.once:
        console.print(f"\nServing until Ctrl-C: the page is at [bold]{endpoints.api}/[/bold]")
        while True:
            children.check_alive()
            pause(1.0)
    return 1 if failed or status != 200 else 0  # noqa: PLR2004 - HTTP OK


async def delete_namespace(amqp_url: str, namespace: str) -> None:
    """Remove the demo's queues and exchanges from the shared broker."""
    import aio_pika  # noqa: PLC0415 - only needed at teardown

    from common.settings import Settings  # noqa: PLC0415 - idem
    from common.topology import delete_topology  # noqa: PLC0415 - idem
    from consumer.delays import parse_delays  # noqa: PLC0415 - idem

    # The consumers ran with the default waits: one delay queue each.
    delays = parse_delays(str(Settings.model_fields["retry_delays_seconds"].default))
    connection = await aio_pika.connect(amqp_url, timeout=5)
    async with connection:
        await delete_topology(await connection.channel(), namespace, delays)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C: the same orderly stop."""
    raise KeyboardInterrupt


def stop(children: Children, broker: tuple[str, PrivateBroker | None], namespace: str) -> None:
    amqp_url, private = broker
    try:
        children.stop()
    except KeyboardInterrupt:
        children.kill()
    if private is not None:
        private.stop_port_mapper()
        return  # the node and its queues are gone with it
    try:
        asyncio.run(delete_namespace(amqp_url, namespace))
    except Exception as error:  # noqa: BLE001 - cleanup is best effort, reported
        console.print(f"demo: could not delete namespace {namespace}: {error!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    endpoints = plan_endpoints(args)
    console.print(f"bus-stats demo: the page will be at [bold]{endpoints.api}/[/bold]")
    # Ctrl-C even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_interrupt)
    ctrl_c.take()
    try:
        broker = choose_broker(args)
    except DemoError as error:
        ctrl_c.give_back()
        console.print(f"demo: {error}", style="red")
        return 1
    except KeyboardInterrupt:
        ctrl_c.give_back()
        return 0

    namespace = f"demo-{secrets.token_hex(4)}"
    log_dir = DEMO_DIR / namespace
    log_dir.mkdir(parents=True)
    env = child_environment(
        os.environ,
        {
            "BUSSTATS_AMQP_URL": broker[0],
            "BUSSTATS_LOG_FORMAT": "json",
            "BUSSTATS_SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_SECONDS),
        },
    )
    children = Children(log_dir, env)
    code = 1
    try:
        code = run(args, children, namespace, endpoints, broker)
    except DemoError as error:
        console.print(f"\ndemo: {error}", style="red")
    except KeyboardInterrupt:
        code = 0  # Ctrl-C is how the demo is meant to end
        console.print("\nCtrl-C: stopping.")
    finally:
        ctrl_c.give_back()
        console.print("Stopping...")
        try:
            stop(children, broker, namespace)
        except KeyboardInterrupt:
            children.kill()
        console.print(f"Stopped. Logs: {log_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
