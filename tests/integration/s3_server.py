"""A Moto S3 endpoint that tests can restart, hold requests on, and make fail.

Moto keeps its state in memory: killing a Moto *process* would lose the bucket, every
committed date and every job state, which no real S3 (nor a restarted MinIO with its
disk) does. So :class:`RestartableMoto` runs a Moto HTTP server in a thread of the test
process and restarts the *endpoint*: the listening socket is closed, every open
connection is cut (keep-alive ones included), the port refuses connections for a moment,
then a new server binds the same port. Moto's backend lives in the test process and
survives, exactly like a real object store's disks survive a restart of its front end.

Two hooks act on single requests, in Moto's request thread (so the client waits on them):

- :class:`Trap` holds one request until the test releases it (a window made wide);
- :class:`Failure` answers matching requests with an S3 error instead of Moto (an S3
  outage or a refused permission on one key, as a bucket policy would).

Every request can also be recorded (:attr:`RestartableMoto.requests`) to assert on what a
process asked of S3, e.g. that nobody aborted a given upload.
"""

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import unquote
from xml.sax.saxutils import escape

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from tests.integration.services import free_port

_HOLD_SECONDS = 60.0  # a trap never holds a request longer, whatever the test does


COMMIT_PUT: Final = 3  # a fresh date's state is written by its claim, lease, commit


class Trap:
    """Holds the first request ``method`` whose path and query contain every ``targets``.

    By default the trap arms itself after the third PUT of a date state (a fresh date's
    claim, lease and commit: to catch what a commit does next); ``armed=True`` arms it at
    once. ``skip``: let that many matching requests through first. ``arm_after``: the
    number of date-state PUTs to wait for (a date claimed before the trap was set: 2).
    The request is held in Moto's request thread, so the client waits on it, until
    :attr:`released` is set.
    """

    def __init__(
        self,
        method: str,
        *targets: str,
        armed: bool = False,
        skip: int = 0,
        arm_after: int = COMMIT_PUT,
    ) -> None:
        self.method = method
        self.targets = targets
        self.caught = threading.Event()
        self.released = threading.Event()
        self.held: str | None = None
        self._armed = armed
        self._skip = skip
        self._state_puts = 0
        self._arm_after = arm_after
        self._lock = threading.Lock()

    def before(self, method: str, target: str) -> None:
        with self._lock:
            hold = (
                self._armed
                and method == self.method
                and all(part in target for part in self.targets)
            )
            if hold and self._skip > 0:
                self._skip -= 1
                hold = False
            if hold:
                self._armed = False
                self.held = target
                self.caught.set()
        if hold:
            self.released.wait(timeout=_HOLD_SECONDS)

    def after(self, method: str, target: str) -> None:
        if method == "PUT" and "/manifests/" in target and not self.caught.is_set():
            with self._lock:
                self._state_puts += 1
                if self._state_puts >= self._arm_after:
                    self._armed = True


@dataclass
class Failure:
    """Answer requests ``method`` whose path and query contain every ``targets`` with an error.

    ``times``: how many requests to fail (``None``: all, until the failure is removed).
    ``only``: fail just these matching requests (1 for the first), let the others through.
    """

    method: str
    targets: tuple[str, ...]
    status: int = 500
    code: str = "InternalError"
    times: int | None = None
    failed: int = 0
    message: str = "injected by the test"
    """The error's text (real S3 ones may name the bucket, the key and the caller's ARN)."""
    only: frozenset[int] | None = None
    seen: int = 0

    def matches(self, method: str, target: str) -> bool:
        if method != self.method or not all(part in target for part in self.targets):
            return False
        self.seen += 1
        if self.only is not None and self.seen not in self.only:
            return False
        return self.times is None or self.failed < self.times


def _drain(environ: dict[str, Any]) -> None:
    """Read the request body, so the connection stays usable for the next request."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        while stream.read(64 * 1024):
            pass
        return
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    while remaining > 0:
        chunk = stream.read(min(remaining, 64 * 1024))
        if not chunk:
            return
        remaining -= len(chunk)


class RestartableMoto:
    """A Moto S3 endpoint on a fixed port whose front end can be restarted.

    Moto's backend (buckets, objects, uploads) is module state of this process, so it
    survives :meth:`restart`; only the HTTP server goes away and comes back.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.trap: Trap | None = None
        self.failures: list[Failure] = []
        self.requests: list[tuple[str, str]] | None = None
        """Every request as ``(method, decoded path?query)`` while it is a list."""
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._moto = DomainDispatcherApplication(create_backend_app)

    def record(self) -> list[tuple[str, str]]:
        """Start recording requests (from now on); returns the list that fills up."""
        self.requests = []
        return self.requests

    def requested(self, method: str, parts: Iterable[str]) -> list[str]:
        """The recorded requests ``method`` whose target contains every one of ``parts``."""
        wanted = tuple(parts)
        with self._lock:
            recorded = list(self.requests or [])
        return [t for m, t in recorded if m == method and all(p in t for p in wanted)]

    def _failure(self, method: str, target: str) -> Failure | None:
        with self._lock:
            for failure in self.failures:
                if failure.matches(method, target):
                    failure.failed += 1
                    return failure
        return None

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        trap, method = self.trap, environ["REQUEST_METHOD"]
        target = f"{environ['PATH_INFO']}?{unquote(environ.get('QUERY_STRING', ''))}"
        if self.requests is not None:
            with self._lock:
                self.requests.append((method, target))
        if trap is not None:
            trap.before(method, target)
        failure = self._failure(method, target)
        if failure is not None:
            _drain(environ)
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{failure.code}</Code><Message>{escape(failure.message)}</Message>"
                "<RequestId>test</RequestId></Error>"
            ).encode()
            start_response(
                f"{failure.status} {HTTPStatus(failure.status).phrase}",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        answer = self._moto(environ, start_response)
        if trap is not None:
            trap.after(method, target)
        return answer

    def start(self) -> None:
        tracked, lock = self._connections, self._lock

        class Handler(MotoRequestHandler):
            def setup(self) -> None:
                super().setup()
                with lock:
                    tracked.add(self.connection)

            def finish(self) -> None:
                with lock:
                    tracked.discard(self.connection)
                super().finish()

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                """Quiet: thousands of requests per test would bury a failure's output."""

        self._server = make_server("127.0.0.1", self.port, self._app, True, request_handler=Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection, mid-request or idle."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    async def restart(self, down_seconds: float) -> None:
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_seconds)  # the outage itself
        await asyncio.to_thread(self.start)
