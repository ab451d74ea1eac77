"""The reference server's client: the city list, and each city's records streamed in chunks.

One :class:`aiohttp.ClientSession` per process. Every request has connect and read
timeouts; what can heal (5xx, 429, timeouts, resets, truncated or garbled bodies) is a
:class:`RetryableFetchError`, anything else a :class:`PermanentFetchError`. The retry loop
itself lives with the job (:mod:`consumer.handler`), because a retried city must also
restart its upload.

The server comes in two dialects for ``date`` (a full date-time or a bare date). Unless
pinned in the settings, the client starts with the date-time form and switches for good
the first time the server answers ``400`` about the ``date`` parameter.
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import aiohttp
import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from common.failures import DiagnosedError
from common.logs import get_logger
from common.settings import DateParam, Settings

CHUNK_BYTES: Final = 256 * 1024
_ERROR_BODY_BYTES: Final = 4096
log = get_logger(__name__)


class FetchError(DiagnosedError):
    """A request to the reference server failed (``status``: the HTTP status, if any)."""


class RetryableFetchError(FetchError):
    """Worth another try: 5xx, 429, a timeout, a reset or a cut-off body."""


class PermanentFetchError(FetchError):
    """Will not heal by retrying: another 4xx, or a city list that makes no sense."""


class City(BaseModel):
    id: int
    name: str
    country: str


_CITY_LIST = TypeAdapter(list[City])


@dataclass
class DateDialect:
    """Which form of ``date`` the server takes: fixed by settings, or learnt."""

    setting: DateParam
    learnt: DateParam | None = None
    rejected: set[DateParam] = field(default_factory=set)

    @property
    def current(self) -> DateParam:
        if self.setting != "auto":
            return self.setting
        return self.learnt or "datetime"

    def format(self, day: date) -> str:
        return f"{day.isoformat()}T00:00:00" if self.current == "datetime" else day.isoformat()

    def switch(self, rejected: DateParam) -> bool:
        """After a 400 about ``date`` in form ``rejected``: whether another form is left."""
        if self.setting != "auto":
            return False
        self.rejected.add(rejected)
        if len(self.rejected) == len(_FORMS):
            return False
        if self.current == rejected:
            self.learnt = "date" if rejected == "datetime" else "datetime"
            log.info("reference.date_form_learnt", form=self.learnt)
        return True

    def accepted(self, form: DateParam) -> None:
        """A request in ``form`` succeeded: forget rejections (the server may have changed)."""
        self.rejected.discard(form)


_FORMS: Final = ("datetime", "date")


def _is_date_validation_error(body: bytes) -> bool:
    """The server's 400 names the parameter: ``"extra":[{"key":"date",...}]``."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    extra = parsed.get("extra") if isinstance(parsed, dict) else None
    return isinstance(extra, list) and any(
        isinstance(item, dict) and item.get("key") == "date" for item in extra
    )


class ReferenceClient:
    def __init__(self, session: aiohttp.ClientSession, settings: Settings) -> None:
        self._session = session
        self._base = settings.reference_url.rstrip("/")
        self.dialect = DateDialect(settings.date_param)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout_seconds,
            sock_read=settings.read_timeout_seconds,
        )

    async def cities(self) -> list[City]:
        async with self._request(f"{self._base}/cities", {}) as response:
            body = await response.read()
        try:
            cities = _CITY_LIST.validate_json(body)
        except ValidationError as error:
            raise RetryableFetchError(
                f"city list is not valid: {error.error_count()} errors"
            ) from None
        if len({city.id for city in cities}) != len(cities):
            raise PermanentFetchError("city list repeats an id")
        return cities

    @contextlib.asynccontextmanager
    async def city_stats(self, city_id: int, day: date) -> AsyncIterator[AsyncIterator[bytes]]:
        """The body of one city's records for ``day``, as chunks (the date form is learnt)."""
        url = f"{self._base}/cities/{int(city_id)}/stats"
        while True:
            form = self.dialect.current
            try:
                async with self._request(url, {"date": self.dialect.format(day)}) as response:
                    self.dialect.accepted(form)
                    yield response.content.iter_chunked(CHUNK_BYTES)
                    return
            except _DateRejectedError:
                if not self.dialect.switch(form):
                    raise PermanentFetchError(
                        f"server rejects the date form {form!r} (setting: {self.dialect.setting})"
                    ) from None

    @contextlib.asynccontextmanager
    async def _request(
        self, url: str, params: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self._session.get(url, params=params, timeout=self._timeout) as response:
                if response.status != 200:  # noqa: PLR2004 - the one success status
                    await self._raise_for(response, params)
                yield response
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
            raise RetryableFetchError(f"{type(error).__name__}: {error}") from error
        except TimeoutError as error:
            raise RetryableFetchError("timed out waiting for the reference server") from error

    @staticmethod
    async def _raise_for(response: aiohttp.ClientResponse, params: dict[str, Any]) -> None:
        body = await response.content.read(_ERROR_BODY_BYTES)
        status = response.status
        if status == 400 and "date" in params and _is_date_validation_error(body):  # noqa: PLR2004
            raise _DateRejectedError
        message = f"HTTP {status} from {response.url.path}"
        if status >= 500 or status in {408, 429}:  # noqa: PLR2004 - server-side, may heal
            raise RetryableFetchError(message, status=status)
        raise PermanentFetchError(message, status=status)


class _DateRejectedError(Exception):
    """The server answered 400 about the ``date`` parameter's form."""
