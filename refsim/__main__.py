"""``python -m refsim``: serve the simulated reference server until SIGTERM or Ctrl-C."""

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence

from common.logs import configure_logging, get_logger
from common.startup import FatalStartupError, run_entry_point
from refsim.config import SimulatorConfig
from refsim.server import serve

log = get_logger("refsim")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m refsim",
        description="Simulate the reference server bus-stats gathers from.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind")
    add("--port", type=int, default=8080, help="port to bind; 0 picks a free one")
    add("--seed", type=int, default=defaults.seed, help="seeds cities, records and faults")
    add("--cities", type=int, default=defaults.cities, help="number of cities")
    add("--countries", type=int, default=defaults.countries, help="number of countries")
    add("--records-min", type=int, default=defaults.records_min, help="records per city, min")
    add("--records-max", type=int, default=defaults.records_max, help="records per city, max")
    add("--latency-min", type=float, default=defaults.latency_min, help="seconds per request")
    add("--latency-max", type=float, default=defaults.latency_max, help="seconds per request")
    add(
        "--date-param",
        choices=("datetime", "date"),
        default=defaults.date_param,
        help="accepted date form: RFC 3339 date-time or bare date",
    )
    add(
        "--nondeterministic",
        action="store_true",
        help="new data per call, identical for --cache-ttl seconds, like the real server",
    )
    add("--cache-ttl", type=float, default=defaults.cache_ttl_seconds, help="seconds")
    add("--fail-rate", type=float, default=defaults.fail_rate, help="fraction of pairs → 5xx")
    add(
        "--fail-attempts",
        type=int,
        default=defaults.fail_attempts,
        help="attempts of an affected (city, date) that fail before it succeeds",
    )
    add(
        "--fail-permanently",
        type=int,
        action="append",
        default=[],
        metavar="CITY_ID",
        help="city that always answers 500 (repeatable)",
    )
    add("--timeout-rate", type=float, default=defaults.timeout_rate, help="fraction that hang")
    add("--hang-seconds", type=float, default=defaults.hang_seconds, help="how long they hang")
    add("--truncate-rate", type=float, default=defaults.truncate_rate, help="fraction cut off")
    add("--malformed-rate", type=float, default=defaults.malformed_rate, help="fraction of records")
    add("--chunk-bytes", type=int, default=defaults.chunk_bytes, help="bytes written at a time")
    add(
        "--country-name",
        action="append",
        default=[],
        metavar="NAME",
        help="name of the next country instead of a generated one (repeatable)",
    )
    add("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add("--log-format", default="auto", choices=("auto", "json", "console"))
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        seed=args.seed,
        cities=args.cities,
        countries=args.countries,
        records_min=args.records_min,
        records_max=args.records_max,
        latency_min=args.latency_min,
        latency_max=args.latency_max,
        date_param=args.date_param,
        deterministic=not args.nondeterministic,
        cache_ttl_seconds=args.cache_ttl,
        fail_rate=args.fail_rate,
        fail_attempts=args.fail_attempts,
        fail_permanently=frozenset(args.fail_permanently),
        timeout_rate=args.timeout_rate,
        hang_seconds=args.hang_seconds,
        truncate_rate=args.truncate_rate,
        malformed_rate=args.malformed_rate,
        chunk_bytes=args.chunk_bytes,
        country_names=tuple(args.country_name),
    )


async def run(config: SimulatorConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        try:
            live = await stack.enter_async_context(serve(config, host, port))
        except OSError as error:
            raise FatalStartupError(
                f"refsim cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None
        log.info("refsim.started", url=live.url, port=live.port, seed=config.seed)
        await stop.wait()
        log.info("refsim.stopping")
    log.info("refsim.stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
    except ValueError as error:
        raise SystemExit(f"refsim: {error}") from None
    run_entry_point(run(config, args.host, args.port))


if __name__ == "__main__":
    main()
