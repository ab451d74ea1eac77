"""A 100 MB city response streams from a separate simulator process with flat memory."""

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 900_000  # about 112 bytes each: just over 100 MB
MAX_PEAK_RSS = 80 * 1024 * 1024
MAX_GROWTH = 16 * 1024 * 1024  # a few chunks and buffers, not the body


def memory_bytes(pid: int, field: str) -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc status")


async def read_started_port(stdout: asyncio.StreamReader) -> int:
    while line := await asyncio.wait_for(stdout.readline(), timeout=30):
        if b"refsim.started" in line:
            port: int = json.loads(line)["port"]
            return port
    raise AssertionError("the simulator exited before it started")


@pytest.mark.timeout(300)
async def test_hundred_megabytes_stream_with_flat_memory() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "refsim",
        "--port=0",
        f"--records-min={RECORDS}",
        f"--records-max={RECORDS}",
        "--latency-max=0",
        "--log-format=json",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        port = await read_started_port(process.stdout)
        before = memory_bytes(process.pid, "VmHWM")
        received = 0
        started = time.monotonic()
        tail = b""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/cities/3/stats?date=2024-01-01T00:00:00") as r,
        ):
            assert r.status == 200
            announced = r.content_length
            async for chunk in r.content.iter_chunked(1024 * 1024):
                received += len(chunk)
                tail = (tail + chunk)[-2:]
        elapsed = time.monotonic() - started
        peak = memory_bytes(process.pid, "VmHWM")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert announced == received > 100_000_000
    assert tail == b"}]"
    assert peak < MAX_PEAK_RSS, f"peak RSS {peak / 2**20:.1f} MiB for {received / 2**20:.0f} MiB"
    assert process.returncode == 0
    assert b"refsim.stopped" in output
    assert peak - before < MAX_GROWTH, f"peak RSS grew {(peak - before) / 2**20:.1f} MiB"
    figures = (
        f"streamed {received / 2**20:.0f} MiB in {elapsed:.1f} s; simulator peak RSS"
        f" {peak / 2**20:.1f} MiB, {before / 2**20:.1f} MiB before the request"
    )
    print(figures)  # noqa: T201 - the figure the report quotes
