"""``python -m scripts.bench_refsim``: the simulator, plus one log line per latency it draws.

The published scenario compares a job's wall time with the slowest city's latency of
its date. The simulator draws latencies from an unseeded generator and does not log
them, so this wrapper serves the very same application with a state that logs every
draw as ``stats.latency`` (``city_id``, ``date``, ``attempt``, ``seconds``). It takes
the simulator's options (``python -m refsim --help``); refsim itself is unchanged.
"""

import asyncio
import signal
from collections.abc import Sequence
from datetime import date

from aiohttp import web

from common.logs import configure_logging, get_logger
from refsim.__main__ import config_from_args, parse_args
from refsim.config import SimulatorConfig
from refsim.server import STATE, SimulatorState, create_app

log = get_logger("refsim")
_SHUTDOWN_TIMEOUT_SECONDS = 2.0


class LatencyLoggingState(SimulatorState):
    """A simulator state that logs each latency with the request it was drawn for.

    The server counts the attempt of a (city, date) and draws its latency with no
    ``await`` in between, so the key remembered by :meth:`count_attempt` is the one the
    next :meth:`latency` belongs to.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        super().__init__(config)
        self._last: tuple[tuple[int, date], int] | None = None

    def count_attempt(self, key: tuple[int, date]) -> int:
        attempt = super().count_attempt(key)
        self._last = (key, attempt)
        return attempt

    def latency(self) -> float:
        seconds = super().latency()
        if self._last is not None:
            (city_id, day), attempt = self._last
            log.info(
                "stats.latency",
                city_id=city_id,
                date=day.isoformat(),
                attempt=attempt,
                seconds=seconds,
            )
        return seconds


async def run(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(config)
    app[STATE] = LatencyLoggingState(config)
    # The same runner options as refsim.server.serve.
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT_SECONDS, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port: int = runner.addresses[0][1]
        log.info("refsim.started", url=f"http://{host}:{bound_port}", port=bound_port)
        await stop.wait()
    finally:
        await runner.cleanup()
    log.info("refsim.stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
    except ValueError as error:
        raise SystemExit(f"bench_refsim: {error}") from None
    asyncio.run(run(config, args.host, args.port))


if __name__ == "__main__":
    main()
