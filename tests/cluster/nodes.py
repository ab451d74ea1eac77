"""A three-node RabbitMQ cluster of the test's own, under a temporary folder.

Each node is started the way the demo starts its private node
(:class:`scripts.demo.PrivateBroker`: own node name, AMQP and distribution ports, files
and logs, no plugins), plus what a cluster needs: one Erlang cookie shared by the nodes
and the CLI (``HOME``), one private Erlang port mapper (``ERL_EPMD_PORT``, so the node
names ``bs1@localhost``... never meet the system's node), the CLI's own distribution
ports, and distribution bound to loopback. The system's node (5672/25672, its epmd) is
never touched.

Every node runs in a process group of its own: :meth:`Cluster.kill` SIGKILLs a node's
group (the beam and its helpers), :meth:`Cluster.close` every node's, then the port
mapper, then the folder. A run killed before its cleanup leaves its pid files behind:
the next run ends those processes first (:func:`end_stale_runs`), by pid, checking that
each still is one of our nodes.
"""

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from scripts.demo import PrivateBroker, epmd_binary, free_port, rabbitmq_server

FOLDER_PREFIX: Final = "bus-stats-cluster-"
EPMD_PORT_FILE: Final = "epmd.port"
CTL_TIMEOUT: Final = 90.0  # one rabbitmqctl command, on a loaded 2-core machine
BOOT_TIMEOUT: Final = 120.0
POLL_SECONDS: Final = 0.2  # the broker's state cannot notify: it is polled
# Fewer busy-waiting schedulers: three nodes share two cores with everything else.
ERL_ARGS: Final = (
    "-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
)


def _ctl_binary() -> str:
    """The CLI script itself (Debian's /usr/sbin wrapper would switch user and HOME)."""
    direct = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
    if direct.exists():
        return str(direct)
    found = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin")
    if found is None:
        raise RuntimeError("rabbitmqctl is not installed (apt-get install -y rabbitmq-server)")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_stale_runs() -> list[int]:
    """SIGKILL the nodes of earlier runs that died before their cleanup; their pids."""
    ended: list[int] = []
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*"):
        for pid_file in folder.glob("bs*/node.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(folder).encode() in command and _alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    ended.append(pid)
        with contextlib.suppress(OSError, ValueError):
            _stop_port_mapper(int((folder / EPMD_PORT_FILE).read_text()))
        shutil.rmtree(folder, ignore_errors=True)
    return ended


def _stop_port_mapper(port: int) -> None:
    """End our epmd. It refuses while it still lists a node (one just killed is listed
    until epmd sees its socket close): asked again a few times, then left (best effort)."""
    epmd = epmd_binary()
    if epmd is None:
        return
    for _ in range(25):
        done = subprocess.run(  # noqa: PLW1510 - the status is read below
            [epmd, "-port", str(port), "-kill"],
            env={**os.environ, "ERL_EPMD_PORT": str(port)},
            capture_output=True,
            timeout=10,
        )
        said = done.stdout + done.stderr
        if b"Killed" in said or b"Cannot connect" in said:
            return  # ended now, or no epmd answers on the port any more
        time.sleep(0.2)  # "living nodes": it still lists a node just killed


def processes_of(folder: Path) -> list[int]:
    """Pids of the live processes started for ``folder`` (its path in their environment)."""
    found = []
    marker = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes() and _alive(int(entry.name)):
                status = (entry / "status").read_text()
                if "State:\tZ" not in status:  # a zombie holds no port
                    found.append(int(entry.name))
    return found


@dataclass
class Node:
    broker: PrivateBroker
    env: dict[str, str] = field(repr=False)
    process: "subprocess.Popen[bytes] | None" = None
    log: IO[bytes] | None = None

    @property
    def name(self) -> str:
        return self.broker.node

    @property
    def url(self) -> str:
        return self.broker.url


@dataclass
class Cluster:
    folder: Path
    size: int = 3
    nodes: list[Node] = field(default_factory=list)
    epmd_port: int = 0

    def __post_init__(self) -> None:
        server = rabbitmq_server()
        if server is None:
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self.epmd_port = free_port()
        home = self.folder / "home"
        ctl_min = free_port()
        while ctl_min > 65000:
            ctl_min = free_port()
        for number in range(1, self.size + 1):
            broker = PrivateBroker(
                server=server,
                folder=self.folder / f"bs{number}",
                amqp_port=free_port(),
                dist_port=free_port(),
                epmd_port=self.epmd_port,
                node=f"bs{number}@localhost",
            )
            env = {
                **os.environ,
                **broker.environment(),
                "HOME": str(home),  # one cookie for the nodes and the CLI
                "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl_min),
                "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl_min + 10),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
            }
            self.nodes.append(Node(broker, env))

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def node_of_port(self, port: int) -> Node:
        return next(node for node in self.nodes if node.broker.amqp_port == port)

    # --- processes ------------------------------------------------------------------------

    def _spawn(self, node: Node) -> None:
        if node.log is None:
            node.log = (self.folder / f"{node.broker.folder.name}.log").open("ab")
        node.process = subprocess.Popen(
            [node.broker.server],
            env=node.env,
            stdin=subprocess.DEVNULL,
            stdout=node.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def ctl(self, node: str, *args: str, seconds: float = CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n node args``: its output, or an error with its stderr."""
        env = self.nodes[0].env
        process = await asyncio.create_subprocess_exec(
            _ctl_binary(),
            "-n",
            node,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(seconds):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"rabbitmqctl -n {node} {' '.join(args)}: no answer") from None
        if process.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node} {' '.join(args)} exited {process.returncode}: "
                f"{(out + err).decode(errors='replace')[-800:]}"
            )
        return out.decode()

    async def _await_startup(self, node: Node) -> None:
        """Until the node's app runs; a node that exits meanwhile fails at once."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            assert node.process is not None
            if node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited {node.process.returncode}: see its log")
            try:
                await self.ctl(node.name, "await_startup", "--timeout", "30", seconds=45)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)  # the node has not registered with epmd yet
            else:
                return

    async def start(self) -> None:
        """Start every node, then join the others to the first."""
        self.folder.mkdir(parents=True, exist_ok=True)
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.folder / EPMD_PORT_FILE).write_text(str(self.epmd_port))
        for node in self.nodes:
            node.broker.prepare()
            self._spawn(node)
        await asyncio.gather(*(self._await_startup(node) for node in self.nodes))
        first = self.nodes[0].name
        for node in self.nodes[1:]:
            await self.ctl(node.name, "stop_app")
            await self.ctl(node.name, "join_cluster", first)
            await self.ctl(node.name, "start_app")
        await self.wait_running(len(self.nodes))

    async def kill(self, node: Node) -> None:
        """SIGKILL the node (its whole process group) and reap it."""
        process = node.process
        assert process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)

    async def restart(self, node: Node) -> None:
        """Start a killed node again on its own data: it rejoins the cluster by itself."""
        self._spawn(node)
        await self._await_startup(node)
        await self.wait_running(len(self.nodes))

    async def running_nodes(self, via: str) -> set[str]:
        """The nodes running the broker, as the node ``via`` sees them."""
        status = json.loads(await self.ctl(via, "cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def nodes_named(self, text: str) -> set[str]:
        """Our node names mentioned in a line of the CLI's output."""
        return {node.name for node in self.nodes if node.name in text}

    def _up(self, node: Node) -> bool:
        return node.process is not None and node.process.poll() is None

    async def wait_running(self, count: int) -> None:
        """Until ``count`` nodes run the broker, as every running node sees it."""
        async with asyncio.timeout(BOOT_TIMEOUT):
            while True:
                views = [
                    await self.running_nodes(node.name) for node in self.nodes if self._up(node)
                ]
                if all(len(view) == count for view in views):
                    return
                await asyncio.sleep(POLL_SECONDS)

    # --- queues and connections -------------------------------------------------------------

    def any_up(self) -> str:
        return next(node.name for node in self.nodes if self._up(node))

    async def queue_info(self, *items: str) -> list[list[str]]:
        text = await self.ctl(self.any_up(), "list_queues", *items, "--quiet", "--no-table-headers")
        return [line.split("\t") for line in text.splitlines() if line.strip()]

    async def leader(self, queue: str) -> Node:
        """The node that leads the quorum queue ``queue`` now."""
        for name, leader in await self.queue_info("name", "leader"):
            if name == queue:
                return self.node(leader.strip())
        raise LookupError(f"no queue {queue}")

    async def members(self, queue: str) -> tuple[set[str], set[str]]:
        """The quorum queue's members, and those of them online."""
        for name, members, online in await self.queue_info("name", "members", "online"):
            if name == queue:
                return self.nodes_named(members), self.nodes_named(online)
        raise LookupError(f"no queue {queue}")

    async def depths(self, prefix: str) -> dict[str, tuple[int, int]]:
        """Ready and unacknowledged messages of the queues whose name starts with ``prefix``."""
        rows = await self.queue_info("name", "messages_ready", "messages_unacknowledged")
        return {
            name: (int(ready), int(unacked))
            for name, ready, unacked in rows
            if name.startswith(prefix)
        }

    async def connection_nodes(self, *markers: str) -> list[Node]:
        """The nodes holding the connections whose properties contain every marker."""
        text = await self.ctl(
            self.any_up(),
            "list_connections",
            "port",
            "client_properties",
            "--quiet",
            "--no-table-headers",
        )
        found = []
        for line in text.splitlines():
            port, _, properties = line.partition("\t")
            if all(marker in properties for marker in markers) and port.strip().isdigit():
                found.append(self.node_of_port(int(port)))
        return found

    # --- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        """End every node and the port mapper, then remove the folder (any exit path)."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=30)
            if node.log is not None:
                node.log.close()
        _stop_port_mapper(self.epmd_port)
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in sorted(self.folder.glob("bs*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


@contextlib.asynccontextmanager
async def cluster(size: int = 3) -> AsyncIterator[Cluster]:
    """A running cluster of ``size`` nodes, ended and removed however the block exits."""
    end_stale_runs()
    built = Cluster(Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX)), size)
    try:
        await built.start()
        yield built
    finally:
        await asyncio.to_thread(built.close)  # it waits for processes: off the event loop
