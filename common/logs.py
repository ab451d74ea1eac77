"""Logging: JSON lines on stdout when not on a terminal, readable lines on a terminal.

Events are named ``noun.verb`` (``job.published``, ``city.fetched``); context such as the
job id and date is bound with :func:`structlog.contextvars.bound_contextvars` so that
every line of a job carries it. Message bodies and secrets are never logged.
"""

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    use_json = log_format == "json" or (log_format == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: keep their warnings, in the same stream.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s"
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
