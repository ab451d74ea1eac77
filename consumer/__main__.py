"""``python -m consumer``: one worker process (run several to scale), and its commands.

``python -m consumer [run]`` consumes jobs. ``replay-dead-letters`` moves dead-lettered
jobs back to the queue. ``sweep [--dry-run]`` deletes what no committed date and no active
job needs. ``backfill-sums --from D --to D`` writes stats sums into older manifests.
``--help`` on each says what it does and what it touches.
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
from prometheus_client import disable_created_metrics

from common.logs import configure_logging, get_logger
from common.settings import Settings, load_settings
from common.startup import FatalStartupError, describe, run_entry_point, where
from common.storage import require_credentials, s3_connect_state
from consumer.metrics import ConsumerMetrics, MetricsServer
from consumer.replay import replay_dead_letters
from consumer.sweep import sweep_dates
from consumer.worker import Worker

T = TypeVar("T")


SETTINGS_EPILOG = (
    "Settings come from BUSSTATS_* variables and the AWS ones (see the README's "
    "configuration table): the same for every subcommand. From a checkout: "
    "`uv run python -m consumer ...`; in compose: `docker compose run --rm consumer ...`; "
    "`make demo` prints the variables that point at its stack."
)
COMMANDS = {
    "run": (
        "consume jobs until SIGTERM or Ctrl-C (the default)",
        "Take date jobs from the job queue (<namespace>.jobs) until SIGTERM or Ctrl-C: fetch "
        "every city's records of the date from the reference server "
        "(BUSSTATS_REFERENCE_URL), write them to the bucket (BUSSTATS_S3_BUCKET) and commit "
        "the date. A failed job waits in a delay queue before its next delivery "
        "(BUSSTATS_RETRY_DELAYS_SECONDS). Serves /metrics and /healthz on "
        "BUSSTATS_METRICS_PORT. Touches: the broker (declares the queues, takes, acks and "
        "re-publishes jobs), the reference server (reads) and S3 (writes data objects, "
        "manifests and job states).",
    ),
    "replay-dead-letters": (
        "move dead-lettered jobs back to the job queue",
        "Take each message of the dead-letter queue (<namespace>.jobs.dead-letter) and queue "
        "a new job for its date, as force=true would, unless a newer job has claimed the "
        "date since. Undecodable messages stay where they are. Touches: the broker (reads "
        "and acks dead letters, publishes jobs) and S3 (writes the new jobs' states and "
        "their dates' claims). Fix the cause first: a replayed job meets the same fate.",
    ),
    "sweep": (
        "delete what no committed date and no active job needs (--dry-run: only list it)",
        "Delete, for every date (or --from/--to), the data objects, unfinished multipart "
        "uploads and old sums sidecars that neither the date's committed version nor a "
        "queued or running job needs. Never touches an active job's objects, whatever their "
        "age. Touches: S3 only (lists; deletes unless --dry-run, which logs each key it "
        "would delete and prints the counts). Safe at any time; daily from cron is plenty.",
    ),
    "backfill-sums": (
        "write the stats sums into the manifests of dates committed without them",
        "For each date of --from..--to committed before sums existed: read its data objects "
        "once and add each city's sums to the date's manifest with a conditional PUT (a "
        "manifest that changed meanwhile is read again; nothing else changes). Can be "
        "re-run. Touches: S3 only (reads objects, rewrites manifests). Exits 1 if a date "
        "could not be done.",
    ),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consumer",
        description="bus-stats consumer: takes date jobs from RabbitMQ, gathers every city's "
        "data from the reference server into S3. Without a subcommand: run.",
        epilog=SETTINGS_EPILOG,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub = {
        name: commands.add_parser(
            name, help=summary, description=description, epilog=SETTINGS_EPILOG
        )
        for name, (summary, description) in COMMANDS.items()
    }
    sub["replay-dead-letters"].add_argument(
        "--limit", type=int, help="replay at most this many messages"
    )
    sweep = sub["sweep"]
    sweep.add_argument(
        "--from", dest="start", type=date.fromisoformat, help="first date, YYYY-MM-DD"
    )
    sweep.add_argument("--to", dest="end", type=date.fromisoformat, help="last date, YYYY-MM-DD")
    sweep.add_argument(
        "--dry-run", action="store_true", help="delete nothing: log and count what would go"
    )
    backfill = sub["backfill-sums"]
    backfill.add_argument(
        "--from", dest="start", type=date.fromisoformat, required=True, help="YYYY-MM-DD"
    )
    backfill.add_argument(
        "--to", dest="end", type=date.fromisoformat, required=True, help="YYYY-MM-DD"
    )
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
                metrics.registry,
                worker.is_connected,
                settings.api_host,
                settings.metrics_port,
                detail=worker.health_detail,
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
        s3 = s3_connect_state(settings).target
        raise FatalStartupError(f"S3 {s3} failed: {describe(error)}") from None
    except (OSError, AMQPException, AMQPError) as error:  # TimeoutError is an OSError
        url = where(settings.amqp_urls[0])  # never the whole list: it holds passwords
        raise FatalStartupError(f"broker {url} failed: {describe(error)}") from None


def main() -> None:
    args = parse_args()
    settings = load_settings()
    # No *_created series beside every counter (unannotated in prometheus_client).
    disable_created_metrics()  # type: ignore[no-untyped-call]
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
            one_shot(
                settings,
                lambda: sweep_dates(settings, args.start, args.end, dry_run=args.dry_run),
            )
        )
        get_logger("consumer").info("sweep.finished", dry_run=args.dry_run, **counts)
        sys.exit(0)
    run_entry_point(serve(settings))


if __name__ == "__main__":
    main()
