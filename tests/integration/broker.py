"""Broker-side faults, done by the broker itself with ``rabbitmqctl``."""

import asyncio
import shutil
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractRobustConnection


async def _rabbitmqctl(*args: str) -> bytes:
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        raise RuntimeError("rabbitmqctl is not installed: it drops connections for the fault tests")
    process = await asyncio.create_subprocess_exec(
        executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {err.decode()[-500:]}")
    return out


async def close_connections(namespace: str) -> int:
    """Have the broker close every connection of one namespace (like a broker restart would).

    Only the test's own connections are closed (their name carries the namespace), so
    other users of the same broker are left alone.
    """
    listed = await _rabbitmqctl("list_connections", "pid", "client_properties", "--quiet")
    closed = 0
    for line in listed.decode().splitlines():
        pid, _, properties = line.partition("\t")
        if f' {namespace}"}}' in properties and '{"connection_name"' in properties:
            await _rabbitmqctl("close_connection", pid, "fault test: connection dropped")
            closed += 1
    return closed


async def queue_depths(namespace: str) -> dict[str, tuple[int, int]]:
    """Ready and unacknowledged messages of the namespace's queues, as the broker counts."""
    listed = await _rabbitmqctl(
        "list_queues", "name", "messages_ready", "messages_unacknowledged",
        "--quiet", "--no-table-headers",
    )  # fmt: skip
    depths: dict[str, tuple[int, int]] = {}
    for line in listed.decode().splitlines():
        name, ready, unacked = line.split("\t")
        if name.startswith(f"{namespace}."):
            depths[name] = (int(ready), int(unacked))
    return depths


@dataclass(frozen=True)
class Taken:
    """A message taken off a queue (and acked)."""

    message_id: str | None
    body: bytes
    headers: dict[str, Any]


async def drain(connection: AbstractRobustConnection, queue_name: str) -> list[Taken]:
    """Take every message off ``queue_name`` (acking each): what it held."""
    channel = await connection.channel()
    queue = await channel.get_queue(queue_name)
    taken: list[Taken] = []
    while (message := await queue.get(fail=False)) is not None:
        taken.append(Taken(message.message_id, message.body, dict(message.headers or {})))
        await message.ack()
    await channel.close()
    return taken
