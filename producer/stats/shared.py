"""Work shared by every stats query of one API process: in-flight reads and a cache.

:class:`SingleFlight` runs one load per key at a time: a query that needs a date (or an
object) already being read waits for that read instead of starting its own. The load
runs in a task of its own, so a waiter that goes away (a client that hangs up) never
cancels it for the others. Failures reach every waiter and are never kept.

The cache is ``cachetools.LRUCache`` with ``getsizeof``: bounded in (estimated) bytes,
not in entries, least recently used out. cachetools has no asyncio single-flight (its
decorators, and asyncache's, guard a call with a lock per cache, not per key, and
would make every query wait for every other), hence the few lines below.
"""

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Literal, ParamSpec, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")
P = ParamSpec("P")
Served = Literal["cached", "loaded", "shared"]


class SingleFlight(Generic[K, V]):
    """At most one running load per key; every caller for that key gets its result."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The load's value, and whether this call started it (``False``: it waited)."""
        task = self._running.get(key)
        started = task is None
        if task is None:
            task = asyncio.ensure_future(load())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # shield: a cancelled waiter leaves the load running for the others.
        return await asyncio.shield(task), started

    def _finished(self, key: K, task: "asyncio.Task[V]") -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: a load nobody waits for any more logs nothing


class SharedCache(Generic[K, V]):
    """A byte-bounded LRU cache in front of single-flight loads."""

    def __init__(self, max_bytes: int, sizeof: Callable[[V], int]) -> None:
        self._items: LRUCache[K, V] = LRUCache(maxsize=max_bytes, getsizeof=sizeof)
        self._sizeof = sizeof
        self._flights: SingleFlight[K, V] = SingleFlight()

    @property
    def bytes(self) -> float:
        return self._items.currsize

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: K) -> V | None:
        return self._items.get(key)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> tuple[V, Served]:
        """The value and how it was served: from the cache, loaded, or another's load."""
        found = self._items.get(key)
        if found is not None:
            return found, "cached"

        async def load_and_keep() -> V:
            value = await load()
            if self._sizeof(value) <= self._items.maxsize:
                self._items[key] = value
            return value

        value, started = await self._flights.run(key, load_and_keep)
        return value, "loaded" if started else "shared"


class Workers:
    """Threads for the CPU-heavy stats work (parsing, grouping, writing answers).

    As many as the machine has cores (more only queue for the same cores and the GIL),
    each at a lower OS scheduling priority (``nice`` 4: about 2.5 times less CPU share
    than the event loop's thread when both want a core), so ``/healthz`` and every other
    request keep answering while a large query computes; when the loop is idle, the
    workers take every core. (``nice`` 10 starved small queries on a loaded machine.)
    """

    def __init__(self, count: int | None = None, nice: int = 4) -> None:
        self._nice = nice
        self._pool = ThreadPoolExecutor(
            max_workers=count or os.cpu_count() or 2,
            thread_name_prefix="stats",
            initializer=self._lower_priority,
        )

    def _lower_priority(self) -> None:
        # Linux applies a thread's own id to that thread alone; elsewhere it may fail.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)

    async def run(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(work, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
