"""Start-up: what stops a process at once, and what it retries until it comes.

Two kinds of start-up trouble, handled in two ways:

- **Fatal**: the process cannot work as configured (bad settings, no AWS credentials, a
  port it cannot listen on). It raises :class:`FatalStartupError`; the entry point, run
  through :func:`run_entry_point`, prints one line naming the cause and exits non-zero,
  without a traceback.
- **Not yet**: a broker or S3 that is configured right but does not answer. The process
  keeps running and retries with :func:`retry_until_up` (capped exponential backoff, one
  log line per failed attempt naming what and where), and stops at once on SIGTERM or
  Ctrl-C, since the retrying task is cancelled like any other.
"""

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import urlsplit

from common.logs import get_logger

T = TypeVar("T")

log = get_logger(__name__)
EXIT_FATAL: Final = 1
EXIT_INTERRUPTED: Final = 130  # the shell's convention for "stopped by SIGINT"
_DEFAULT_PORTS: Final = {"amqp": 5672, "amqps": 5671, "http": 80, "https": 443}


class FatalStartupError(Exception):
    """The process cannot start as configured; the message names the cause on one line."""


def stop_with(cause: str) -> NoReturn:
    """Print ``bus-stats: cannot start: <cause>`` on stderr and exit non-zero."""
    line = " ".join(cause.split())  # one line, whatever the cause's text holds
    sys.stderr.write(f"bus-stats: cannot start: {line}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_FATAL)


def run_entry_point(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, with a fatal start-up failure as one line and a non-zero exit.

    A Ctrl-C that arrives before the process installed its own signal handlers (or after
    it removed them) exits quietly too, with the usual status 130.
    """
    try:
        return asyncio.run(main)
    except FatalStartupError as error:
        cause = str(error)
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None
    stop_with(cause)  # outside the handler: nothing chained to the exit


def where(url: str) -> str:
    """``scheme://host:port/path`` of an endpoint URL: never its user name or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path or '/'}"


@dataclass(frozen=True)
class Backoff:
    """Capped exponential delays between attempts: 1, 2, 4, ... ``cap`` seconds."""

    first: float = 1.0
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (counted from 1)."""
        return min(self.cap, self.first * 2.0 ** max(0, attempt - 1))


def describe(error: BaseException) -> str:
    """An exception as ``Type: message`` on one line, short enough for a log line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


@dataclass
class ConnectState:
    """How a dependency's start-up connection is going (what readiness reports)."""

    what: str
    url: str
    bucket: str | None = None  # S3's: logged in a field of its own
    attempts: int = 0
    last_error: str | None = None
    connected: bool = False
    attempted: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the first attempt has ended, either way: from then on the state says
    how it goes (readiness waits for it rather than guess during the first moments)."""

    async def wait_attempted(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the first attempt to end."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.attempted.wait()

    def event(self, verb: str) -> str:
        """The log event ``<what>.<verb>`` (``broker.connect_failed``)."""
        return f"{self.what}.{verb}"

    def fields(self) -> dict[str, str]:
        """Where, as log fields: ``url``, and ``bucket`` for S3."""
        return {"url": self.url} | ({} if self.bucket is None else {"bucket": self.bucket})

    @property
    def target(self) -> str:
        """Where, in words: the URL, and the bucket for S3."""
        return self.url if self.bucket is None else f"{self.url} (bucket {self.bucket})"

    def summary(self) -> str:
        if self.connected:
            return "connected"
        if self.last_error is None:
            return f"connecting to {self.target}"
        return f"{self.target} unreachable (attempt {self.attempts}: {self.last_error})"


async def retry_until_up(
    state: ConnectState,
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff | None = None,
    fatal: Callable[[BaseException], str | None] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, pausing with capped backoff between failures.

    Each failure in ``retry_on`` logs one ``<what>.connect_failed`` line (url, attempt,
    retry_in, error) and is retried; any other exception (e.g. :class:`FatalStartupError`)
    ends the retries and propagates. ``fatal`` tells a wrong configuration from an outage:
    when it names a cause for an error in ``retry_on`` (wrong password), that error is a
    :class:`FatalStartupError` with that cause instead. Cancel the task to give up (SIGTERM
    during start-up).
    """
    backoff = backoff or Backoff()
    while True:
        state.attempts += 1
        try:
            result = await attempt()
        except retry_on as error:
            state.last_error = describe(error)
            state.attempted.set()
            cause = None if fatal is None else fatal(error)
            if cause is not None:
                state.last_error = cause
                raise FatalStartupError(cause) from None
            delay = backoff.delay(state.attempts)
            log.warning(
                state.event("connect_failed"),
                **state.fields(),
                attempt=state.attempts,
                retry_in=delay,
                error=state.last_error,
            )
            await asyncio.sleep(delay)
        else:
            state.connected = True
            state.last_error = None
            state.attempted.set()
            log.info(state.event("connected"), **state.fields(), attempts=state.attempts)
            return result
