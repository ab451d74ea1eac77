"""The broker connection of every process: one robust connection that fails over.

``BUSSTATS_AMQP_URL`` may name several nodes of one RabbitMQ cluster (a comma-separated
list). aio-pika's ``connect_robust`` takes one URL and reconnects only to it; its
maintainers point to a custom ``connection_class`` for more (aio-pika issue #141, pull
request #680). :class:`FailoverConnection` is that class: a
:class:`~aio_pika.RobustConnection` whose every (re)connection attempt walks the list,

- at start-up from the first URL, stopping at the first node that answers (all down:
  the attempt fails, and the caller's start-up retry takes over);
- after losing its node, from the URL after that node's (round-robin), so a dead node
  is tried last, not first;

and logs one ``broker.switched`` line (``from``/``to`` as ``scheme://host:port/vhost``,
never a user name or password) when it lands on another node than before.

Why a subclass rather than a supervisor of our own around ``connect_robust``: the robust
connection already restores its channels, their QoS, the declared exchanges and queues
and the consumers on the new transport, so the API's confirming channel and the
consumer's subscription survive a switch without code of ours. The one thing it lacks
is the choice of the address, made in its private ``__connect_transport`` step; we wrap
that step (reached through its mangled name) and fail loudly at connection time if a
new aio-pika renamed it. ``tests/unit/test_amqp.py`` pins the behaviour: a dead first
URL, then a lost node, must land on the next URL.

What the callers must know after a switch:

- deliveries of the old channel can no longer be acked (their channel is gone): the
  broker has given them back to the queue and redelivers them; a settle that fails for
  that reason is not an error of the job;
- a publish whose confirm was lost may or may not be queued: :func:`publish_confirmed`
  publishes it again on the new connection (duplicates are expected and harmless); so
  is one the broker nacked (a quorum queue between two leaders).

Each connection is named ``<app> <hostname> pid <pid> <namespace>`` in the broker's
connection list: which process holds it, and (last) which deployment or test run.
"""

import asyncio
import os
import socket
from collections.abc import Sequence
from typing import Any, Final

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError
from yarl import URL

from common.logs import get_logger
from common.startup import where

log = get_logger(__name__)

RETRY_PAUSE_SECONDS: Final = 0.1
"""Pause between two publish attempts, so a channel that is still closing is not spun on."""
NACK_PAUSE_SECONDS: Final = 0.5
"""Pause after a negative confirm: a quorum queue electing a leader takes a few seconds."""

# The robust connection's private "open a transport to ``self.url``" step (name-mangled).
_CONNECT_TRANSPORT: Final = "_RobustConnection__connect_transport"


def connection_name(app: str, namespace: str) -> str:
    """``<app> <hostname> pid <pid> <namespace>``: who holds a connection (admin UI)."""
    return f"{app} {socket.gethostname()} pid {os.getpid()} {namespace}"


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection over the nodes of a cluster, round-robin (see the module)."""

    def __init__(self, url: URL, *, urls: Sequence[str], **kwargs: Any) -> None:
        if not urls:
            raise ValueError("no broker URL")
        base = getattr(aio_pika.RobustConnection, _CONNECT_TRANSPORT, None)
        if base is None:  # pragma: no cover - only with an aio-pika that renamed it
            raise RuntimeError(f"aio-pika's RobustConnection has no {_CONNECT_TRANSPORT}")
        super().__init__(url, **kwargs)
        self._base_connect_transport = base
        self._urls = tuple(URL(item) for item in urls)
        self._current: int | None = None  # the node of the last transport that opened

    @property
    def node(self) -> str | None:
        """``scheme://host:port/vhost`` of the node connected to now (no credentials)."""
        return where(str(self.url)) if self.connected.is_set() else None

    def _order(self) -> list[int]:
        """The URLs to try now: after the last node connected to, or from the first."""
        start = 0 if self._current is None else self._current + 1
        count = len(self._urls)
        return [(start + step) % count for step in range(count)]

    async def _connect_next(self) -> None:
        """One attempt: each URL in turn until a node answers; all failed: the last error."""
        failure: BaseException | None = None
        for index in self._order():
            self.url = self._urls[index]
            try:
                await self._base_connect_transport(self)
            except CONNECTION_EXCEPTIONS as error:
                failure = error
                log.debug("broker.unreachable", url=where(str(self.url)), error=repr(error))
                continue
            previous, self._current = self._current, index
            if previous is not None and previous != index:
                log.warning(
                    "broker.switched",
                    **{"from": where(str(self._urls[previous])), "to": where(str(self.url))},
                )
            return
        assert failure is not None  # noqa: S101 - the list is never empty
        raise failure

    # aio-pika's reconnect loop calls ``self.__connect_transport()``, mangled to this name.
    _RobustConnection__connect_transport = _connect_next


async def connect(
    urls: Sequence[str],
    *,
    app: str,
    namespace: str,
    connect_seconds: float,
    reconnect_interval: float,
) -> AbstractRobustConnection:
    """A :class:`FailoverConnection` to the first of ``urls`` that answers.

    Raises what the last URL raised when none answers (the caller retries). Options in
    the first URL's query string (``?heartbeat=30``) apply to every node.
    """
    connection = FailoverConnection(
        URL(urls[0]),
        urls=urls,
        reconnect_interval=reconnect_interval,
        client_properties={"connection_name": connection_name(app, namespace)},
    )
    try:
        await connection.connect(timeout=connect_seconds)
    except BaseException:
        await asyncio.shield(connection.close())
        raise
    return connection


class NotConfirmedError(Exception):
    """The broker did not confirm the message in time: it may or may not be queued."""


async def publish_confirmed(
    channel: AbstractRobustChannel,
    exchange: AbstractExchange,
    message: aio_pika.Message,
    *,
    routing_key: str,
    within_seconds: float,
) -> int:
    """Publish until the broker confirms, within ``within_seconds`` overall.

    A publish that fails because the connection or channel went (its confirm is lost) is
    published again once the robust channel is back, on whichever node that is; a copy
    may then be queued twice, which consumers must tolerate. A negative confirm
    (``Basic.Nack``) is published again too, after a longer pause: a quorum queue nacks
    what it cannot commit to a majority, as while it elects a new leader after losing a
    node (seen by ``make cluster-test``), and a nacked message is not queued. Returns how
    many attempts it took; raises :class:`NotConfirmedError` when the time is up.
    """
    attempts = 0
    last: BaseException | None = None
    task = asyncio.current_task()
    try:
        async with asyncio.timeout(within_seconds):
            while True:
                attempts += 1
                try:
                    await channel.ready()
                    await exchange.publish(message, routing_key=routing_key, mandatory=True)
                except DeliveryError as error:
                    last, pause = error, NACK_PAUSE_SECONDS
                except asyncio.CancelledError as error:
                    # aiormq cancels the confirm's future when its channel closes: that is
                    # a lost confirm, unless this task itself is being cancelled.
                    if task is None or task.cancelling():
                        raise
                    last, pause = error, RETRY_PAUSE_SECONDS
                except CONNECTION_EXCEPTIONS as error:
                    last, pause = error, RETRY_PAUSE_SECONDS
                else:
                    return attempts
                log.info(
                    "message.republishing",
                    message_id=message.message_id,
                    attempt=attempts,
                    error=repr(last),
                )
                await asyncio.sleep(pause)
    except TimeoutError:
        raise NotConfirmedError(
            f"no confirm after {attempts} attempt(s) in {within_seconds:g} s: {last!r}"
        ) from None
