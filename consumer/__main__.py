"""``python -m consumer``: one worker process (run several to scale).

``python -m consumer replay-dead-letters`` moves dead-lettered jobs back to the queue.
"""

import argparse
import asyncio
import signal
import sys

from prometheus_client import start_http_server

from common.logs import configure_logging, get_logger
from common.settings import Settings, load_settings
from consumer.metrics import ConsumerMetrics
from consumer.replay import replay_dead_letters
from consumer.worker import Worker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consumer",
        description="bus-stats consumer: takes date jobs from RabbitMQ, gathers every city's "
        "data from the reference server into S3. Configured by BUSSTATS_* variables.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="consume jobs until SIGTERM or Ctrl-C (the default)")
    replay = commands.add_parser(
        "replay-dead-letters", help="move dead-lettered jobs back to the job queue"
    )
    replay.add_argument("--limit", type=int, help="replay at most this many")
    return parser.parse_args()


async def serve(settings: Settings) -> None:
    metrics = ConsumerMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.api_host, registry=metrics.registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Worker(settings, metrics).run(stop)


def main() -> None:
    args = parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "replay-dead-letters":
        replayed = asyncio.run(replay_dead_letters(settings, limit=args.limit))
        get_logger("consumer").info("dead_letters.replayed", count=replayed)
        sys.exit(0)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
