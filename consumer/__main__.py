"""``python -m consumer``: one worker process (run several to scale).

``python -m consumer replay-dead-letters`` moves dead-lettered jobs back to the queue.
``python -m consumer sweep`` deletes what no committed date and no active job needs.
``python -m consumer backfill-sums --from D --to D`` writes stats sums into older manifests.
"""

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TypeVar

from aio_pika.exceptions import AMQPException
from aiobotocore.session import get_session
from aiormq.exceptions import AMQPError
from botocore.exceptions import BotoCoreError, ClientError

from common.logs import configure_logging, get_logger
from common.settings import Settings, load_settings
from common.startup import FatalStartupError, describe, run_entry_point, where
from common.storage import require_credentials, s3_connect_state
from consumer.metrics import ConsumerMetrics, MetricsServer
from consumer.replay import replay_dead_letters
from consumer.sweep import sweep_dates
from consumer.worker import Worker

T = TypeVar("T")


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
    sweep = commands.add_parser(
        "sweep",
        help="delete objects, partial sums and unfinished uploads that neither a committed "
        "date nor a queued or running job needs (every date, or --from/--to)",
    )
    sweep.add_argument("--from", dest="start", type=date.fromisoformat, help="YYYY-MM-DD")
    sweep.add_argument("--to", dest="end", type=date.fromisoformat, help="YYYY-MM-DD")
    backfill = commands.add_parser(
        "backfill-sums",
        help="write the stats sums into the manifests of dates committed without them",
    )
    backfill.add_argument("--from", dest="start", type=date.fromisoformat, required=True)
    backfill.add_argument("--to", dest="end", type=date.fromisoformat, required=True)
    return parser.parse_args()


async def serve(settings: Settings) -> None:
    """Consume until SIGTERM or Ctrl-C, with metrics and /healthz on the metrics port.

    The metrics server starts first, so that /healthz answers 503 while the broker is not
    (yet) connected; ``BUSSTATS_METRICS_PORT=off`` runs without it.
    """
    await require_credentials(get_session())  # none at all: fatal, before anything starts
    metrics = ConsumerMetrics()
    worker = Worker(settings, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        if settings.metrics_port is not None:
            server = MetricsServer(
                metrics.registry, worker.is_connected, settings.api_host, settings.metrics_port
            )
            await stack.enter_async_context(server)
        await worker.run(stop)


async def one_shot(settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    """A one-off command (replay, sweep, backfill): no credentials, or a broker or S3 it
    cannot reach, is one line naming what and where, and exit 1 (no retries: run it
    again)."""
    await require_credentials(get_session())
    try:
        return await work()
    except (BotoCoreError, ClientError) as error:
        s3 = s3_connect_state(settings).url
        raise FatalStartupError(f"S3 {s3} failed: {describe(error)}") from None
    except (OSError, AMQPException, AMQPError) as error:  # TimeoutError is an OSError
        url = where(settings.amqp_url.get_secret_value())
        raise FatalStartupError(f"broker {url} failed: {describe(error)}") from None


def main() -> None:
    args = parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "replay-dead-letters":
        replayed = run_entry_point(
            one_shot(settings, lambda: replay_dead_letters(settings, limit=args.limit))
        )
        get_logger("consumer").info("dead_letters.replayed", count=replayed)
        sys.exit(0)
    if args.command == "backfill-sums":
        # Imported here: it brings pandas and pyarrow, which a consumer never needs
        # (about 90 MiB of its resident memory).
        from consumer.backfill import backfill_sums  # noqa: PLC0415

        outcomes = run_entry_point(
            one_shot(settings, lambda: backfill_sums(settings, args.start, args.end))
        )
        sys.exit(1 if any(item.outcome in {"changed", "unreadable"} for item in outcomes) else 0)
    if args.command == "sweep":
        counts = run_entry_point(
            one_shot(settings, lambda: sweep_dates(settings, args.start, args.end))
        )
        get_logger("consumer").info("sweep.finished", **counts)
        sys.exit(0)
    run_entry_point(serve(settings))


if __name__ == "__main__":
    main()
