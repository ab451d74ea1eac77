"""The simulator's aiohttp application: ``GET /cities`` and ``GET /cities/{id}/stats``.

Stats bodies are generated and written in chunks of about ``chunk_bytes``: a first pass
over the (cheap, deterministic) generator measures the body so ``content-length`` can be
sent up front, a second pass sends it, and memory stays flat whatever the body size.
"""

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import orjson
from aiohttp import web

from common.logs import get_logger
from refsim.config import SimulatorConfig
from refsim.data import cities, data_seed, render_chunks
from refsim.dates import INVALID_MESSAGE, RequestedDay, parse_date_param
from refsim.faults import Fault, error_status, fault_for_attempt

log = get_logger(__name__)

_CITY_ID: Final = re.compile(r"[+-]?\d+")
_LENGTH_CACHE_SIZE: Final = 4096
_SEED_CACHE_SIZE: Final = 100_000
_REASONS: Final = {404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
_REASONS[503] = "Service Unavailable"
_SHUTDOWN_TIMEOUT_SECONDS: Final = 2.0

Key = tuple[int, date]


@dataclass
class SimulatorState:
    """What a running simulator remembers: attempts per (city, date), caches."""

    config: SimulatorConfig
    attempts: dict[Key, int] = field(default_factory=dict)
    _seeds: dict[Key, tuple[str, float]] = field(default_factory=dict)
    _lengths: dict[tuple[str, str], int] = field(default_factory=dict)
    _random: random.Random = field(default_factory=random.Random)

    def count_attempt(self, key: Key) -> int:
        """Record one more request of ``key``; returns its number (1 = first)."""
        attempt = self.attempts.get(key, 0) + 1
        self.attempts[key] = attempt
        return attempt

    def seed_for(self, key: Key) -> str:
        """The generator seed of ``key`` now; a fresh one per cache period if not deterministic."""
        city_id, day = key
        if self.config.deterministic:
            return data_seed(self.config, city_id, day)
        now = time.monotonic()
        cached = self._seeds.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        if len(self._seeds) >= _SEED_CACHE_SIZE:
            self._seeds = {k: v for k, v in self._seeds.items() if v[1] > now}
        seed = f"{self._random.getrandbits(64):016x}/{city_id}/{day.isoformat()}"
        self._seeds[key] = (seed, now + self.config.cache_ttl_seconds)
        return seed

    def latency(self) -> float:
        return self._random.uniform(self.config.latency_min, self.config.latency_max)

    async def body_length(self, seed: str, day: date, zone_suffix: str) -> int:
        """Bytes of the body of ``seed``, measured by generating it once without keeping it."""
        cache_key = (seed, zone_suffix)
        length = self._lengths.get(cache_key)
        if length is None:
            length = 0
            for text in render_chunks(self.config, seed, day, zone_suffix):
                length += len(text)  # the body is ASCII: one byte per character
                await asyncio.sleep(0)  # let other requests run between chunks
            if len(self._lengths) >= _LENGTH_CACHE_SIZE:
                self._lengths.pop(next(iter(self._lengths)))
            self._lengths[cache_key] = length
        return length


STATE: Final = web.AppKey("refsim_state", SimulatorState)


def _json(status: int, payload: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def _error(status: int) -> web.Response:
    return _json(status, {"status_code": status, "detail": _REASONS[status]})


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Routing errors answer with the reference server's JSON body."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status not in _REASONS:
            raise
        response = _error(error.status)
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response


async def _list_cities(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    listed = [{"id": c.id, "name": c.name, "country": c.country} for c in cities(config)]
    return _json(200, listed)


def _invalid_date(request: web.Request) -> web.Response:
    dialect = request.app[STATE].config.date_param
    return _json(
        400,
        {
            "status_code": 400,
            "detail": f"Validation failed for {request.method} {request.path_qs}",
            "extra": [{"message": INVALID_MESSAGE[dialect], "key": "date", "source": "query"}],
        },
    )


async def _stats(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    city_text = request.match_info["city_id"]
    if not _CITY_ID.fullmatch(city_text):
        raise web.HTTPNotFound
    raw_date = request.query.get("date")
    requested = None if raw_date is None else parse_date_param(raw_date, config.date_param)
    if requested is None:
        return _invalid_date(request)
    city_id = int(city_text)
    key = (city_id, requested.day)
    attempt = state.count_attempt(key)
    fault = fault_for_attempt(config, city_id, requested.day, attempt)
    bound = log.bind(city_id=city_id, date=requested.day.isoformat(), attempt=attempt)
    if fault is Fault.TIMEOUT:
        bound.info("stats.hanging", seconds=config.hang_seconds)
        await asyncio.sleep(config.hang_seconds)
    else:
        latency = state.latency()
        bound.info("stats.latency", seconds=latency)  # what a benchmark compares against
        await asyncio.sleep(latency)
    if fault in {Fault.PERMANENT, Fault.ERROR}:
        status = 500 if fault is Fault.PERMANENT else error_status(config, *key)
        bound.info("stats.failed", status=status, fault=fault.value)
        return _error(status)
    return await _send_body(request, state, key, requested, truncate=fault is Fault.TRUNCATE)


async def _send_body(
    request: web.Request,
    state: SimulatorState,
    key: Key,
    requested: RequestedDay,
    *,
    truncate: bool,
) -> web.StreamResponse:
    seed = state.seed_for(key)
    length = await state.body_length(seed, requested.day, requested.zone_suffix)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = length
    await response.prepare(request)
    limit = length // 2 if truncate else length
    sent = 0
    for text in render_chunks(state.config, seed, requested.day, requested.zone_suffix):
        data = text.encode("ascii")
        if sent + len(data) > limit:
            await response.write(data[: limit - sent])
            if request.transport is not None:
                request.transport.close()  # flushes what was written, then hangs up
            log.info("stats.truncated", city_id=key[0], date=key[1].isoformat(), sent=limit)
            return response
        await response.write(data)
        sent += len(data)
    await response.write_eof()
    log.info("stats.served", city_id=key[0], date=key[1].isoformat(), bytes=sent)
    return response


def create_app(config: SimulatorConfig) -> web.Application:
    """The simulator's application; its state is ``app[STATE]``."""
    app = web.Application(middlewares=[_json_errors])
    app[STATE] = SimulatorState(config)
    app.router.add_get("/cities", _list_cities)
    app.router.add_get("/cities/{city_id}/stats", _stats)
    return app


@dataclass(frozen=True)
class LiveSimulator:
    """A simulator serving on a socket: its base URL and its state."""

    url: str
    port: int
    state: SimulatorState

    def attempts(self, city_id: int, day: date) -> int:
        """How many stats requests ``(city_id, day)`` has received so far."""
        return self.state.attempts.get((city_id, day), 0)


@asynccontextmanager
async def serve(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[LiveSimulator]:
    """Serve ``config`` on ``host:port`` (0 picks a free port) until the block exits.

    Handlers are cancelled when their client disconnects (a hanging request does not
    outlive its client) and at shutdown, after a short grace period.
    """
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_SECONDS,
        access_log=None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port: int = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        yield LiveSimulator(f"http://{url_host}:{bound_port}", bound_port, app[STATE])
    finally:
        await runner.cleanup()
