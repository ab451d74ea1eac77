"""What the API refuses to spend, and the refusals it counts.

A :class:`RefusedError` is an :class:`~producer.http.ApiError` with a ``reason`` (the
``reason`` label of ``busstats_api_requests_refused_total``) and headers of its own
(``Retry-After``). The limits:

- ``verify=true`` covers at most ``BUSSTATS_VERIFY_MAX_DATES`` dates (400 beyond);
- one ``verify=true`` request runs at a time per API process: a second one is answered
  ``429`` at once, with ``Retry-After`` (it does not wait: a verify can take minutes);
- a range (``/country-stats``, ``/dates``) spans at most ``BUSSTATS_MAX_RANGE_DAYS``, and a
  ``/jobs`` page holds at most 100 jobs (400 beyond).
"""

import contextlib
from collections.abc import Iterator
from typing import Final

from producer.http import ApiError

VERIFY_RETRY_AFTER_SECONDS: Final = 10
TOO_MANY_VERIFY_DATES: Final = "verify_too_many_dates"
VERIFY_BUSY: Final = "verify_busy"
RANGE_TOO_LONG: Final = "range_too_long"
PAGE_TOO_LARGE: Final = "page_too_large"


class RefusedError(ApiError):
    """A request refused by a limit (or a token): counted by ``reason``."""

    def __init__(
        self, status: int, message: str, *, reason: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, message)
        self.reason = reason
        self.headers = headers or {}


def check_verify_dates(days: int, max_dates: int) -> None:
    """A 400 naming the limit when a verify covers more than ``max_dates`` dates."""
    if days > max_dates:
        raise RefusedError(
            400,
            f"verify=true covers at most {max_dates} dates (BUSSTATS_VERIFY_MAX_DATES); "
            f"this range has {days}: verify a shorter range",
            reason=TOO_MANY_VERIFY_DATES,
        )


class VerifyGate:
    """At most one ``verify=true`` request at a time in this process; others get a 429.

    The check and the claim happen with no ``await`` between them, so one event loop
    cannot let two requests through.
    """

    def __init__(self) -> None:
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self._busy:
            raise RefusedError(
                429,
                "another verify=true request is running in this API process; "
                f"try again in {VERIFY_RETRY_AFTER_SECONDS} s",
                reason=VERIFY_BUSY,
                headers={"Retry-After": str(VERIFY_RETRY_AFTER_SECONDS)},
            )
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
