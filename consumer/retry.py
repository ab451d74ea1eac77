"""Retries with capped exponential backoff and full jitter, for both kinds of request."""

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


class GaveUpError(Exception):
    """The call failed for good: a non-retryable error, or the budget was spent."""

    def __init__(self, error: Exception, attempts: int) -> None:
        super().__init__(f"failed after {attempts} attempt(s): {error}")
        self.error = error
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    base_seconds: float
    cap_seconds: float
    rng: random.Random = field(default_factory=random.Random, compare=False)

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        retry_on: tuple[type[Exception], ...],
        on_retry: Callable[[Exception], None] | None = None,
    ) -> tuple[T, int]:
        """``call()``'s result and how many attempts it took; :class:`GaveUpError` else.

        Before attempt ``n + 1`` it sleeps a random time up to
        ``min(cap, base * 2 ** (n - 1))``; ``on_retry`` hears of each error retried.
        """
        for attempt in range(1, self.attempts + 1):
            try:
                return await call(), attempt
            except retry_on as error:
                if attempt == self.attempts:
                    raise GaveUpError(error, attempt) from error
                if on_retry is not None:
                    on_retry(error)
            except Exception as error:
                raise GaveUpError(error, attempt) from error
            delay = min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1))
            await asyncio.sleep(self.rng.uniform(0, delay))
        raise AssertionError("unreachable: attempts is at least 1")  # pragma: no cover
