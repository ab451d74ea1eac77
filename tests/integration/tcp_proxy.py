"""A TCP forwarder whose link the test can make silent: a partition nobody is told about.

:meth:`TcpProxy.partition` stops forwarding in both directions *without closing either
socket*: bytes already sent stay in the kernel's buffers, nothing arrives, no FIN, no RST,
exactly like a switch that drops packets. The peers find out only through their own
timeouts (an AMQP heartbeat, a read timeout). :meth:`TcpProxy.heal` resumes forwarding
of whatever was held (a connection one side closed meanwhile is closed on the other side
then). Connections accepted during a partition wait, unconnected, until it heals.

It runs in the test's event loop: ``async with TcpProxy("127.0.0.1", 5672) as proxy``,
then point the service at ``proxy.port``.
"""

import asyncio
import contextlib
from types import TracebackType
from typing import Final, Self

_CHUNK: Final = 64 * 1024


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self.connections = 0
        """Connections accepted so far (a reconnecting client shows up here)."""
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def partitioned(self) -> bool:
        return not self._flowing.is_set()

    def partition(self) -> None:
        """Stop forwarding both ways; every socket stays open."""
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def url_of(self, url: str) -> str:
        """``url`` with its ``host:port`` replaced by this proxy's (user, path, query kept)."""
        scheme, _, rest = url.partition("://")
        netloc, slash, tail = rest.partition("/")
        user, at, _ = netloc.rpartition("@")
        return f"{scheme}://{user}{at}127.0.0.1:{self.port}{slash}{tail}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection (healing first: nothing stays held)."""
        self.heal()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        # Not cancelled: asyncio (3.11) logs an error for a cancelled client_connected_cb
        # task. Aborted sockets end every pump at once.
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        """Reset every open connection at once (a link that fails loudly)."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._track(task)
        try:
            await self._flowing.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.transport.abort()
                return
            self._writers.add(up_writer)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._pump(reader, up_writer))
                    group.create_task(self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy ``source`` to ``sink`` while flowing; hold (read nothing more) while not."""
        with contextlib.suppress(OSError):
            while True:
                await self._flowing.wait()
                data = await source.read(_CHUNK)
                await self._flowing.wait()  # a partition that began during the read
                if not data:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()
