"""Start the API and consumers as real processes, configured like an operator would.

Readiness is read from the processes themselves (their ``consumer.started`` log line,
the API's ``/healthz``), never waited for with a sleep.
"""

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0  # generous: a loaded 2-core machine starts processes slowly


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The BUSSTATS_* variables that reproduce ``settings`` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUSSTATS_")}
    for name, value in settings.model_dump().items():
        if name == "aws_default_region" or value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"BUSSTATS_{name.upper()}"] = str(raw)
    env["BUSSTATS_LOG_FORMAT"] = "json"
    env.update(extra)
    return env


@dataclass
class Service:
    """A running child process and the JSON log lines it has printed so far."""

    name: str
    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _seen: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line = {"event": "raw", "text": raw.decode(errors="replace")}
            async with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    async def wait_for_event(self, event: str, deadline: float = START_TIMEOUT) -> dict[str, Any]:
        try:
            async with asyncio.timeout(deadline), self._seen:
                while True:
                    for line in self.lines:
                        if line.get("event") == event:
                            return line
                    if self.process.returncode is not None:
                        raise RuntimeError(
                            f"{self.name} exited {self.process.returncode}: {self.lines[-5:]}"
                        )
                    await self._seen.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.name} logged no {event} in {deadline}s: {self.lines[-5:]}"
            ) from None

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self, grace: float = 30.0) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        if self._reader is not None:
            await self._reader
        return code


async def start(name: str, module: str, env: dict[str, str], *args: str) -> Service:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    service = Service(name=name, process=process)
    service._reader = asyncio.create_task(service._read())
    return service


async def start_consumer(
    settings: Settings, name: str = "consumer", *, extra_env: Mapping[str, str] | None = None
) -> Service:
    """A consumer process, once it consumes; ``extra_env`` e.g. :func:`clock_offset`."""
    env = environment(settings, BUSSTATS_METRICS_PORT="0", **(extra_env or {}))
    service = await start(name, "consumer", env)
    await service.wait_for_event("consumer.started")
    return service


FAKETIME_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)


def clock_offset(offset: str) -> dict[str, str]:
    """Environment that shifts a child's wall clock by ``offset`` (libfaketime, e.g. "+1h").

    Only the wall clock moves (``time.time``, ``datetime.now``): the monotonic clock that
    asyncio's timers use stays true, as on a host whose NTP is off.
    """
    for library in FAKETIME_LIBRARIES:
        if Path(library).is_file():
            return {
                "LD_PRELOAD": library,
                "FAKETIME": offset,
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            }
    raise RuntimeError(
        "libfaketime is not installed: the clock-skew tests need it "
        "(`apt-get install -y faketime`; .ci/run installs it)"
    )


@dataclass(frozen=True)
class Exited:
    """How a ``python -m`` command ended."""

    status: int
    out: str
    err: str
    seconds: float


async def run_to_exit(
    module: str, env: dict[str, str], *args: str, deadline: float = 60.0
) -> Exited:
    """Run ``python -m module args`` until it exits; an ``AssertionError`` past ``deadline``."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(deadline):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"python -m {module} still running after {deadline}s") from None
    assert process.returncode is not None
    return Exited(
        process.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - started,
    )


async def run_module(env: dict[str, str], module: str, *args: str, deadline: float = 60.0) -> str:
    """Run ``python -m module args`` to completion; its output, or an error if it failed."""
    exited = await run_to_exit(module, env, *args, deadline=deadline)
    text = exited.out + exited.err
    if exited.status != 0:
        raise RuntimeError(
            f"python -m {module} {' '.join(args)} exited {exited.status}: {text[-2000:]}"
        )
    return text


@dataclass
class Api:
    service: Service
    url: str


async def start_api(settings: Settings) -> Api:
    port = free_port()
    service = await start("api", "producer", environment(settings), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    await service.wait_for_event("api.started")
    # The lifecycle runs before Hypercorn accepts connections: wait until it does.
    async with asyncio.timeout(START_TIMEOUT), aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return Api(service=service, url=url)
            await asyncio.sleep(0.05)  # the port opens within moments of the lifecycle


@contextlib.asynccontextmanager
async def running(*services: Service) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for service in services:
            await service.stop()


async def wait_for_job(
    http: aiohttp.ClientSession, api_url: str, job_id: str, *, deadline: float = 60.0
) -> dict[str, Any]:
    """Poll the job's status until it is final (the API offers no push)."""
    async with asyncio.timeout(deadline):
        while True:
            async with http.get(f"{api_url}/jobs/{job_id}") as response:
                job: dict[str, Any] = await response.json()
            if job["status"] in {"succeeded", "failed"}:
                return job
            await asyncio.sleep(0.1)  # polling interval of a status API, not synchronisation
