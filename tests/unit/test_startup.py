"""Start-up helpers: one-line fatal exits, retries with capped backoff, endpoint names
without passwords, and the consumer's metrics and health server."""

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from common.startup import (
    Backoff,
    ConnectState,
    FatalStartupError,
    describe,
    retry_until_up,
    run_entry_point,
    where,
)
from consumer.metrics import ConsumerMetrics, MetricsServer


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff().delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert Backoff(first=0.5, cap=3).delay(4) == 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:hunter2@rabbit:5672/", "amqp://rabbit:5672/"),
        ("amqps://user:pw@mq.example/prod", "amqps://mq.example:5671/prod"),
        ("amqp://rabbit", "amqp://rabbit:5672/"),
        ("http://s3:5000", "http://s3:5000/"),
        ("https://u:p@[::1]/", "https://[::1]:443/"),
    ],
)
def test_where_names_an_endpoint_without_its_credentials(url: str, shown: str) -> None:
    assert where(url) == shown


def test_describe_is_one_short_line() -> None:
    assert describe(OSError("connection\nrefused")) == "OSError: connection refused"
    assert describe(TimeoutError()) == "TimeoutError"
    assert len(describe(ValueError("x" * 1000))) < 320


def test_a_fatal_start_up_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        raise FatalStartupError("no AWS credentials:\nset them")

    with pytest.raises(SystemExit) as stopped:
        run_entry_point(main())
    assert stopped.value.code == 1
    assert stopped.value.__context__ is None or stopped.value.__suppress_context__
    assert capsys.readouterr().err == "bus-stats: cannot start: no AWS credentials: set them\n"


def test_the_entry_point_returns_what_main_returns() -> None:
    async def main() -> int:
        return 7

    assert run_entry_point(main()) == 7


async def test_retry_until_up_logs_each_failure_and_returns_the_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError(111, "refused")
        return "connected"

    state = ConnectState("broker", "amqp://rabbit:5672/")
    result = await retry_until_up(
        state, attempt, retry_on=(OSError,), backoff=Backoff(first=0.001, cap=0.002)
    )
    assert result == "connected"
    assert (state.attempts, state.connected, state.last_error) == (3, True, None)
    assert state.summary() == "connected"


async def test_retry_until_up_stops_at_an_error_it_does_not_retry() -> None:
    async def attempt() -> None:
        raise FatalStartupError("bad")

    state = ConnectState("s3", "http://s3:5000/ bucket=b")
    with pytest.raises(FatalStartupError):
        await retry_until_up(state, attempt, retry_on=(OSError,))
    assert state.attempts == 1
    assert not state.connected


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_metrics_server_health_follows_the_broker_connection(
    http: aiohttp.ClientSession,
) -> None:
    connected = False
    metrics = ConsumerMetrics()
    async with MetricsServer(metrics.registry, lambda: connected, "127.0.0.1", 0) as server:
        assert server.port
        url = f"http://127.0.0.1:{server.port}"
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 503
        connected = True
        async with http.get(f"{url}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with http.get(f"{url}/metrics") as response:
            assert response.status == 200
            assert "busstats_consumer_jobs_in_flight" in await response.text()


async def test_a_taken_metrics_port_is_a_warning_and_another_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with MetricsServer(CollectorRegistry(), lambda: True, "127.0.0.1", port) as server:
            assert server.port not in {None, 0, port}
