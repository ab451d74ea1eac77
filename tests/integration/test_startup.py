"""Start-up as an operator meets it, with real processes.

- A bad setting, missing AWS credentials or a port the API cannot listen on: one line
  naming the cause on stderr, a non-zero exit at once, no traceback.
- A broker or S3 that is configured right but down: the API serves ``/healthz`` and a 503
  ``/readyz``, retries with one log line per attempt (no password in it), comes up when
  they do, and stops on SIGTERM at any moment.
- Logs in json mode are JSON, Hypercorn's and the AMQP libraries' lines included; the
  port really bound is logged.
- Two consumers with the default metrics port start side by side on one host.
"""

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from moto.server import ThreadedMotoServer

from common.settings import Settings
from tests.integration import services
from tests.integration.services import (
    Service,
    environment,
    free_port,
    running,
    start,
)

pytestmark = pytest.mark.integration

EXIT_DEADLINE = 30.0  # a fatal start-up exits at once; generous for a loaded machine
GRACE = 5.0


async def run_to_exit(module: str, env: dict[str, str], *args: str) -> tuple[int, str, str, float]:
    """Run ``python -m module``: (exit status, stdout, stderr, seconds it took)."""
    exited = await services.run_to_exit(module, env, *args, deadline=EXIT_DEADLINE)
    return exited.status, exited.out, exited.err, exited.seconds


def assert_one_line(err: str, *fragments: str) -> None:
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, f"not one line: {err!r}"
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    return free_port()


def unreachable(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of ``settings`` with broker and S3 on ports nobody listens on."""
    return environment(
        settings,
        BUSSTATS_AMQP_URL=f"amqp://app:hunter2@127.0.0.1:{closed_port()}/",
        BUSSTATS_S3_ENDPOINT_URL=f"http://127.0.0.1:{closed_port()}",
        BUSSTATS_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        **extra,
    )


def without_aws_credentials(env: dict[str, str]) -> dict[str, str]:
    clean = {name: value for name, value in env.items() if not name.startswith("AWS_")}
    clean["AWS_CONFIG_FILE"] = os.devnull
    clean["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    clean["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance-role lookup on this machine
    return clean


@pytest.mark.parametrize("module", ["producer", "consumer"])
async def test_a_bad_broker_url_stops_at_once_naming_the_variable(
    settings: Settings, module: str
) -> None:
    env = environment(settings, BUSSTATS_AMQP_URL="notaurl")
    status, out, err, _ = await run_to_exit(module, env)
    assert status != 0
    assert out == ""
    assert_one_line(err, "BUSSTATS_AMQP_URL")


@pytest.mark.parametrize("module", ["producer", "consumer"])
async def test_missing_aws_credentials_are_fatal(settings: Settings, module: str) -> None:
    env = without_aws_credentials(environment(settings))
    status, _, err, _ = await run_to_exit(module, env, *(["--port", "0"] * (module == "producer")))
    assert status == 1
    assert_one_line(err, "bus-stats: cannot start: no AWS credentials", "AWS_ACCESS_KEY_ID")


async def test_an_api_port_in_use_is_fatal(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, _, err, _ = await run_to_exit(
            "producer", environment(settings), "--port", str(port)
        )
    assert status == 1
    assert_one_line(err, f"cannot listen on 127.0.0.1:{port}", "in use")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


async def start_api_service(env: dict[str, str]) -> tuple[Service, str]:
    """The API on a free port (``--port 0``): the service and its URL, from its own log."""
    service = await start("api", "producer", env, "--port", "0")
    listening = await service.wait_for_event("api.listening")
    assert listening["port"] != 0
    return service, f"http://127.0.0.1:{listening['port']}"


async def wait_for_lines(service: Service, event: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(60):
        while True:
            lines = [line for line in service.lines if line.get("event") == event]
            if len(lines) >= count:
                return lines
            assert service.process.returncode is None, service.lines[-5:]
            await asyncio.sleep(0.1)  # polling the log of a running process


async def stop_within(service: Service, seconds: float) -> float:
    """SIGTERM, then the time it took to exit 0 (it must be within ``seconds``)."""
    started = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(seconds):
        code = await service.process.wait()
    assert code == 0, service.lines[-5:]
    return time.monotonic() - started


async def test_api_serves_while_broker_and_s3_are_down_and_stops_on_sigterm(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    api, url = await start_api_service(unreachable(settings))
    async with running(api):
        assert await get(http, f"{url}/healthz") == (200, {"status": "ok"})
        failures = await wait_for_lines(api, "broker.connect_failed", 3)
        assert [line["attempt"] for line in failures[:3]] == [1, 2, 3]
        assert [line["retry_in"] for line in failures[:3]] == [1.0, 2.0, 4.0]
        assert failures[0]["url"].startswith("amqp://127.0.0.1:")
        await wait_for_lines(api, "s3.connect_failed", 1)
        status, body = await get(http, f"{url}/readyz")
        assert status == 503
        assert body["checks"]["broker"].startswith("failed:")
        assert body["checks"]["s3"].startswith("failed:")
        status, body = await get(http, f"{url}/jobs/abc")
        assert status == 503
        assert "S3 not reached yet" in body["error"]
        assert await stop_within(api, GRACE) < GRACE
    assert all("hunter2" not in str(line) for line in api.lines)
    assert [line for line in api.lines if line.get("event") == "raw"] == []


async def test_api_comes_up_when_s3_does(
    settings: Settings, amqp: AbstractRobustConnection, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    env = environment(settings, BUSSTATS_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    api, url = await start_api_service(env)
    async with running(api):
        await wait_for_lines(api, "s3.connect_failed", 1)
        assert (await get(http, f"{url}/readyz"))[0] == 503
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        try:
            await api.wait_for_event("api.started", deadline=60)
            status, body = await get(http, f"{url}/readyz")
            assert (status, body["checks"]) == (200, {"broker": "ok", "s3": "ok"})
        finally:
            moto.stop()


async def test_every_api_line_is_json_with_the_port_bound(
    settings: Settings, amqp: AbstractRobustConnection
) -> None:
    api, url = await start_api_service(environment(settings))
    async with running(api):
        await api.wait_for_event("api.started")
    port = url.rsplit(":", 1)[1]
    hypercorn = [line for line in api.lines if line.get("logger") == "hypercorn.error"]
    running_on = [line["event"] for line in hypercorn if "Running on" in line["event"]]
    assert len(running_on) == 1, api.lines  # once, not also through a second handler
    assert f"127.0.0.1:{port}" in running_on[0]
    assert [line for line in api.lines if line.get("event") == "raw"] == []


async def test_consumer_stops_on_sigterm_while_the_broker_is_down(settings: Settings) -> None:
    consumer = await start("consumer", "consumer", unreachable(settings))
    async with running(consumer):
        await consumer.wait_for_event("metrics.listening")
        await wait_for_lines(consumer, "s3.connect_failed", 1)
        await stop_within(consumer, GRACE)
    assert [line for line in consumer.lines if line.get("event") == "raw"] == []


async def test_two_consumers_with_the_default_metrics_port_start_side_by_side(
    settings: Settings, amqp: AbstractRobustConnection, http: aiohttp.ClientSession
) -> None:
    """The README's way to scale without containers: just start another one."""
    env = environment(settings)
    default_port = Settings.model_fields["metrics_port"].default
    assert env["BUSSTATS_METRICS_PORT"] == str(default_port)
    consumers = [await start(f"consumer-{n}", "consumer", env) for n in range(2)]
    async with running(*consumers):
        for consumer in consumers:
            await consumer.wait_for_event("consumer.started")
        ports = [(await c.wait_for_event("metrics.listening"))["port"] for c in consumers]
        assert len(set(ports)) == 2
        taken = [
            c
            for c in consumers
            if any(line.get("event") == "metrics.port_taken" for line in c.lines)
        ]
        # One of the two found the default port taken by the other (unless something
        # else on this machine holds it: then both did).
        assert len(taken) == (1 if default_port in ports else 2)
        for port in ports:
            status, health = await get(http, f"http://127.0.0.1:{port}/healthz")
            assert (status, health["status"]) == (200, "ok"), health
    for consumer in consumers:
        assert [line for line in consumer.lines if line.get("event") == "raw"] == []


async def test_a_one_off_command_without_its_broker_is_one_line(settings: Settings) -> None:
    env = environment(settings, BUSSTATS_AMQP_URL=f"amqp://app:hunter2@127.0.0.1:{closed_port()}/")
    status, _, err, _ = await run_to_exit("consumer", env, "replay-dead-letters")
    assert status == 1
    assert_one_line(err, "bus-stats: cannot start: broker amqp://127.0.0.1:")
    assert "hunter2" not in err
