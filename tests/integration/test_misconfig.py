"""Wrong, not down: a bad password, bucket or endpoint stops a process with one line.

Real processes against the real broker, a Moto server (one started with credential checks
for the wrong-key case) and a plain HTTP server that does not speak S3. A dependency that
is merely down (a refused port) is still retried, and said to be refused at once.
"""

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from common.settings import Settings
from tests.integration import services
from tests.integration.services import ROOT, environment, free_port, running, start

pytestmark = pytest.mark.integration

EXIT_DEADLINE = 90.0  # a wrong configuration exits at once; generous for a loaded machine


def args_of(module: str) -> tuple[str, ...]:
    return ("--port", "0") if module == "producer" else ()


async def exits_with_one_line(module: str, env: dict[str, str], *fragments: str) -> str:
    exited = await services.run_to_exit(module, env, *args_of(module), deadline=EXIT_DEADLINE)
    err = exited.err
    assert exited.status == 1, (exited.out[-2000:], err)
    assert err.startswith("bus-stats: cannot start: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("module", ["producer", "consumer"])
async def test_a_wrong_broker_password_stops_naming_the_setting(
    settings: Settings, module: str
) -> None:
    env = environment(settings, BUSSTATS_AMQP_URL="amqp://guest:WRONG@127.0.0.1:5672/")
    err = await exits_with_one_line(module, env, "ACCESS_REFUSED", "BUSSTATS_AMQP_URL")
    assert "WRONG" not in err


@pytest.mark.parametrize("module", ["producer", "consumer"])
async def test_a_missing_bucket_stops_when_creation_is_off(settings: Settings, module: str) -> None:
    env = environment(settings, BUSSTATS_S3_CREATE_BUCKET="false")
    await exits_with_one_line(
        module, env, "NoSuchBucket", settings.s3_bucket, "BUSSTATS_S3_CREATE_BUCKET"
    )


@contextlib.asynccontextmanager
async def not_s3() -> AsyncIterator[str]:
    """A plain HTTP server: 404 to everything, HTML, like a web server at the wrong port."""

    async def anything(_request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>Not Found</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("module", ["producer", "consumer"])
async def test_an_endpoint_that_is_not_s3_stops_naming_the_setting(
    settings: Settings, module: str
) -> None:
    async with not_s3() as url:
        env = environment(settings, BUSSTATS_S3_ENDPOINT_URL=url)
        await exits_with_one_line(module, env, "does not speak S3", "BUSSTATS_S3_ENDPOINT_URL")


@contextlib.asynccontextmanager
async def moto_checking_credentials() -> AsyncIterator[str]:
    """A Moto server of its own that checks credentials (unknown keys: InvalidAccessKeyId)."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{url}/moto-api/") as response:
                        await response.read()
                        break
                await asyncio.sleep(0.1)  # the server's port opens within moments
        yield url
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize("module", ["producer", "consumer"])
async def test_wrong_s3_credentials_stop_naming_the_settings(
    settings: Settings, module: str
) -> None:
    async with moto_checking_credentials() as url:
        env = environment(settings, BUSSTATS_S3_ENDPOINT_URL=url)
        await exits_with_one_line(module, env, "InvalidAccessKeyId", "AWS_ACCESS_KEY_ID")


async def test_a_refused_s3_port_is_said_to_be_refused_at_once(settings: Settings) -> None:
    env = environment(
        settings,
        BUSSTATS_S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        BUSSTATS_METRICS_PORT="0",
    )
    consumer = await start("consumer", "consumer", env)
    async with running(consumer):
        failed = await consumer.wait_for_event("s3.connect_failed")
        port = (await consumer.wait_for_event("metrics.listening"))["port"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            health = await response.json()
    # /healthz says what the pending retry waits for, and why.
    assert response.status == 503
    assert "unreachable" in health["s3"], health
    assert "ConnectionRefusedError" in health["s3"], health
    assert health["broker"].startswith("connecting to"), health
    # Not the attempt's timeout ("no answer within 5 s", 5 s late): the refusal itself.
    assert "ConnectionRefusedError" in failed["error"], failed
    assert "no answer" not in failed["error"]
    assert consumer.process.returncode == 0  # retried (down, not wrong) until stopped
