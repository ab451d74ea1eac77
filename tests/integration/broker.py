"""Broker-side faults, done by the broker itself with ``rabbitmqctl``."""

import asyncio
import shutil


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
