"""Faults over HTTP: each at its configured rate, on exactly the pairs the selector names."""

import asyncio
from datetime import date
from typing import Any

import aiohttp
import orjson
import pytest

from refsim import Fault, SimulatorConfig, fault_of
from refsim.server import serve

pytestmark = pytest.mark.integration

DAY = date(2024, 1, 1)
QUERY = "date=2024-01-01T00:00:00"


def quick(**knobs: Any) -> SimulatorConfig:
    values: dict[str, Any] = {"latency_max": 0.0, "records_min": 5, "records_max": 50}
    values.update(knobs)
    return SimulatorConfig(**values)


async def status_of(session: aiohttp.ClientSession, url: str, city_id: int) -> int:
    async with session.get(f"{url}/cities/{city_id}/stats?{QUERY}") as response:
        await response.read()
        return response.status


async def test_errors_hit_the_selected_pairs_then_recover(
    session: aiohttp.ClientSession,
) -> None:
    config = quick(cities=200, fail_rate=0.3, fail_attempts=2)
    selected = {city for city in range(200) if fault_of(config, city, DAY) is Fault.ERROR}
    assert 0.2 * 200 < len(selected) < 0.4 * 200
    async with serve(config) as live:
        for attempt in (1, 2):
            statuses = await asyncio.gather(
                *(status_of(session, live.url, city) for city in range(200))
            )
            failed = {city for city, status in enumerate(statuses) if status != 200}
            assert failed == selected, f"attempt {attempt}"
            assert {statuses[city] for city in failed} == {500, 503}
        statuses = await asyncio.gather(
            *(status_of(session, live.url, city) for city in range(200))
        )
        assert set(statuses) == {200}
        assert all(live.attempts(city, DAY) == 3 for city in range(200))


async def test_error_body_is_json(session: aiohttp.ClientSession) -> None:
    async with (
        serve(quick(fail_permanently=frozenset({4}))) as live,
        session.get(f"{live.url}/cities/4/stats?{QUERY}") as response,
    ):
        assert response.status == 500
        assert response.content_type == "application/json"
        assert await response.read() == b'{"status_code":500,"detail":"Internal Server Error"}'


async def test_permanent_failure_never_recovers(session: aiohttp.ClientSession) -> None:
    async with serve(quick(fail_permanently=frozenset({4, 7}))) as live:
        for _ in range(5):
            assert await status_of(session, live.url, 4) == 500
            assert await status_of(session, live.url, 7) == 500
            assert await status_of(session, live.url, 5) == 200
        assert live.attempts(4, DAY) == 5


async def test_timeouts_hang_then_recover(session: aiohttp.ClientSession) -> None:
    config = quick(cities=40, timeout_rate=0.25, fail_attempts=1)
    hanging = [city for city in range(40) if fault_of(config, city, DAY) is Fault.TIMEOUT]
    healthy = [city for city in range(40) if fault_of(config, city, DAY) is None]
    assert hanging
    short = aiohttp.ClientTimeout(total=0.3)
    async with serve(config) as live:

        async def times_out(city: int) -> None:
            with pytest.raises(TimeoutError):
                async with session.get(
                    f"{live.url}/cities/{city}/stats?{QUERY}", timeout=short
                ) as response:
                    await response.read()

        await asyncio.gather(*(times_out(city) for city in hanging))
        assert await status_of(session, live.url, healthy[0]) == 200
        statuses = await asyncio.gather(*(status_of(session, live.url, c) for c in hanging))
        assert set(statuses) == {200}


async def read_into(response: aiohttp.ClientResponse, received: bytearray) -> None:
    async for chunk in response.content.iter_any():
        received += chunk


async def test_truncated_bodies_fail_then_recover(session: aiohttp.ClientSession) -> None:
    config = quick(
        cities=60, truncate_rate=0.5, fail_attempts=2, records_min=2000, records_max=3000
    )
    cut = [city for city in range(60) if fault_of(config, city, DAY) is Fault.TRUNCATE]
    assert 15 < len(cut) < 45
    async with serve(config) as live:
        for city in cut[:5]:
            for _ in range(2):
                async with session.get(f"{live.url}/cities/{city}/stats?{QUERY}") as response:
                    assert response.status == 200
                    announced = response.content_length
                    assert announced is not None
                    received = bytearray()
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await read_into(response, received)
                assert len(received) < announced
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(bytes(received))
            async with session.get(f"{live.url}/cities/{city}/stats?{QUERY}") as response:
                assert len(orjson.loads(await response.read())) >= 2000


async def test_malformed_records_are_the_same_on_every_attempt(
    session: aiohttp.ClientSession,
) -> None:
    config = quick(records_min=2000, records_max=2000, malformed_rate=0.05)
    async with serve(config) as live:
        bodies = []
        for _ in range(2):
            async with session.get(f"{live.url}/cities/0/stats?{QUERY}") as response:
                bodies.append(await response.read())
    assert bodies[0] == bodies[1]
    records = orjson.loads(bodies[0])
    invalid = [
        record
        for record in records
        if "delay" not in record
        or record["delay"] == "soon"
        or not isinstance(record["passengers"], int)
    ]
    assert 0.02 * 2000 < len(invalid) < 0.08 * 2000
