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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


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


async def start_consumer(settings: Settings, name: str = "consumer") -> Service:
    service = await start(name, "consumer", environment(settings, BUSSTATS_METRICS_PORT="0"))
    await service.wait_for_event("consumer.started")
    return service


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
