"""``python -m producer``: the API on Hypercorn.

Start-up in order, each step fatal (one line on stderr, exit 1) when it fails: settings,
AWS credentials, the listening socket (so ``--port 0`` logs the port really bound, and a
port in use stops the process at once). Broker and S3 are then connected in the
background while the API serves (see :mod:`producer.connections`). SIGTERM or Ctrl-C
stops it at any moment; the shutdown takes at most ``BUSSTATS_SHUTDOWN_GRACE_SECONDS``.
"""

import argparse
import asyncio
import logging
import signal
import socket

from aiobotocore.session import get_session
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError
from prometheus_client import disable_created_metrics

from common.logs import HYPERCORN_LOGGER, configure_logging, get_logger
from common.settings import Settings, load_settings
from common.startup import FatalStartupError, run_entry_point
from common.storage import require_credentials
from producer.app import create_app

log = get_logger("producer")
MAX_PORT = 65535
GRACEFUL_SECONDS = 10.0  # open requests may finish this long (bounded by the shutdown grace)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m producer",
        description="bus-stats API: POST /process-request, GET /jobs/<id>, GET /country-stats. "
        "Configured by BUSSTATS_* environment variables (see the README).",
    )
    parser.add_argument("--host", help="listen address (default: BUSSTATS_API_HOST)")
    parser.add_argument(
        "--port",
        type=port_number,
        help="listen port; 0 picks a free one (default: BUSSTATS_API_PORT)",
    )
    return parser.parse_args()


def port_number(text: str) -> int:
    port = int(text)
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to {MAX_PORT})")
    return port


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or :class:`FatalStartupError` naming why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as error:
        sock.close()
        raise FatalStartupError(
            f"the API cannot listen on {host}:{port}: {error.strerror or error} "
            "(set BUSSTATS_API_PORT or --port; 0 picks a free port)"
        ) from None
    return sock


async def run(settings: Settings, host: str, port: int) -> None:
    await require_credentials(get_session())
    sock = listen(host, port)
    bound_port: int = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    log.info("api.listening", host=host, port=bound_port, url=f"http://{url_host}:{bound_port}")

    config = Config()
    # Hypercorn serves the socket bound above (it owns the descriptor from here on).
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(HYPERCORN_LOGGER)  # our handler: JSON in json mode
    grace = settings.shutdown_grace_seconds
    config.graceful_timeout = min(GRACEFUL_SECONDS, grace / 2)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    refused: list[FatalStartupError] = []  # the S3 probe forbids serving: stop, say why

    def refuse(error: FatalStartupError) -> None:
        refused.append(error)
        stop.set()

    app = create_app(settings, on_fatal=refuse)
    serving = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not serving.done():
        log.info("api.stopping", grace_seconds=grace)
        _, pending = await asyncio.wait({serving}, timeout=grace)
        if pending:
            log.warning("api.stop_timeout", grace_seconds=grace)
            serving.cancel()
            await asyncio.wait({serving})
            if refused:
                raise refused[0]
            return
    if refused:
        raise refused[0]
    try:
        serving.result()
    except LifespanFailureError as error:
        raise FatalStartupError(f"the API's start-up failed: {error}") from None
    log.info("api.stopped")


def main() -> None:
    args = parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    # No *_created series beside every counter (unannotated in prometheus_client).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    run_entry_point(run(settings, host, port))


if __name__ == "__main__":
    main()
