"""``python -m producer``: the API on Hypercorn."""

import argparse
import asyncio
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from common.logs import configure_logging, get_logger
from common.settings import load_settings
from producer.app import create_app


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m producer",
        description="bus-stats API: POST /process-request, GET /jobs/<id>, GET /country-stats. "
        "Configured by BUSSTATS_* environment variables (see the README).",
    )
    parser.add_argument("--host", help="listen address (default: BUSSTATS_API_HOST)")
    parser.add_argument("--port", type=int, help="listen port (default: BUSSTATS_API_PORT)")
    return parser.parse_args()


async def run() -> None:
    args = parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 10
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    get_logger("producer").info("api.listening", host=host, port=port)
    await serve(create_app(settings), config, shutdown_trigger=stop.wait)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
