"""Logging: JSON lines on stdout when not on a terminal, readable lines on a terminal.

Events are named ``noun.verb`` (``job.published``, ``city.fetched``); context such as the
job id and date is bound with :func:`structlog.contextvars.bound_contextvars` so that
every line of a job carries it. Message bodies and secrets are never logged.

The libraries' standard-library loggers (Hypercorn's "Running on ...", aio-pika's and
aiormq's connection messages, botocore's warnings) go through the same renderer: in JSON
mode every line on stdout is one JSON object, with the library's message as ``event``
and its logger's name as ``logger``.
"""

import logging
import sys
from typing import Final

import structlog

LIBRARY_LEVEL: Final = logging.WARNING
"""The libraries log warnings and errors; Hypercorn's start-up lines are kept too."""
HYPERCORN_LOGGER: Final = "hypercorn.error"
QUIET_LOGGERS: Final = {
    # Logs every failed connect at ERROR, then raises it to aio-pika, whose caller (our
    # `broker.connect_failed`) or robust reconnect loop logs it: one line per attempt.
    "aiormq.connection": logging.CRITICAL,
}
_HANDLER_MARK: Final = "_bus_stats_handler"


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    # Replace only a handler of ours (configured twice in one process), never another's
    # (pytest's capture handler, say).
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(LIBRARY_LEVEL, logging.getLevelName(level)))
    logging.getLogger(HYPERCORN_LOGGER).setLevel(logging.getLevelName(level))
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
