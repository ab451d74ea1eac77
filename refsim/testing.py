"""Helpers for tests: a simulator served in-process on a free loopback port."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from refsim.config import SimulatorConfig
from refsim.server import LiveSimulator, serve

__all__ = ["LiveSimulator", "running_simulator", "serve"]


@asynccontextmanager
async def running_simulator(config: SimulatorConfig) -> AsyncIterator[str]:
    """Serve ``config`` on 127.0.0.1 and a free port; yields the base URL.

    Use :func:`refsim.server.serve` instead to reach the attempt counters as well.
    """
    async with serve(config) as live:
        yield live.url
