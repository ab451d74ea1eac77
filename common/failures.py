"""What a failure is, told to users: the component, the error's class or code, never where.

A job's ``error`` (served to anyone who may read ``/jobs/<id>``) is built by
:func:`describe`: a short sentence naming the failing component, the error's code or
class and what bus-stats was doing, e.g. ``S3 503 SlowDown while storing city 12`` or
``reference server refused connections while listing cities``. It never carries an error's
own text, which may hold an endpoint, a bucket, a key, an account or a credential: that
text goes to the logs (with the job id), not to the job.

Errors of our own choose how they are shown by their base class:

- :class:`Explained`: the message is a whole sentence written for users; shown as is.
- :class:`DiagnosedError`: a dependency's failure that bus-stats put in words of its own
  (``city list repeats an id``), with the HTTP ``status`` the dependency answered, if any.
"""

import errno
from typing import Final

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

S3: Final = "S3"
REFERENCE: Final = "reference server"
BROKER: Final = "broker"
INTERNAL: Final = "bus-stats"


class Explained(Exception):  # noqa: N818 - a mixin of errors, named for what it promises
    """An error whose message is a sentence for users (no endpoint, key or credential)."""


class DiagnosedError(Exception):
    """A dependency's failure in bus-stats' own words (no endpoint, key or credential).

    ``status``: the HTTP status the dependency answered, if it answered. When the error was
    raised ``from`` a lower-level one (a refused connection, a timeout), that one is shown.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def component_of(error: BaseException, default: str = INTERNAL) -> str:
    """The component an error comes from, judged by its type (for catch-all handlers)."""
    leaf = _leaves(error)[0]
    if isinstance(leaf, BotoCoreError | ClientError):
        return S3
    if isinstance(leaf, aiohttp.ClientError | DiagnosedError):
        return REFERENCE
    if type(leaf).__module__.split(".")[0] in {"aio_pika", "aiormq", "pamqp"}:
        return BROKER
    return default


def _s3_what(error: BaseException, component: str) -> str | None:
    name = type(error).__name__
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code") or name)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{component} {status} {code}" if status else f"{component} {code}"
    if isinstance(error, ConnectTimeoutError | ReadTimeoutError):
        return f"{component} timed out ({name})"
    if isinstance(error, EndpointConnectionError):
        return f"{component} could not be reached ({name})"
    return None


def _network_what(error: BaseException, component: str) -> str | None:
    if isinstance(error, aiohttp.ClientResponseError):
        return f"{component} answered HTTP {error.status}"
    if isinstance(error, aiohttp.ClientConnectorError):
        if error.os_error.errno != errno.ECONNREFUSED:
            return f"{component} could not be reached ({type(error).__name__})"
        return f"{component} refused connections"
    if isinstance(error, ConnectionRefusedError):
        return f"{component} refused connections"
    if isinstance(error, TimeoutError):
        return f"{component} timed out"
    return None


def _what(error: BaseException, component: str) -> str:
    """``<component> <what went wrong>``, from the error's type, code and status only."""
    wrapped = getattr(error, "error", None)  # a give-up wrapper (retry.GaveUpError) carries it
    if isinstance(wrapped, BaseException) and wrapped is not error:
        return _what(wrapped, component)
    if isinstance(error, DiagnosedError):
        if error.__cause__ is not None:
            return _what(error.__cause__, component)
        if error.status is not None:
            return f"{component} answered HTTP {error.status}"
        return f"{component}: {error}"
    return (
        _s3_what(error, component)
        or _network_what(error, component)
        or f"{component} failed with {type(error).__name__}"
    )


def describe(error: BaseException, *, component: str, doing: str | None = None) -> str:
    """A short sentence for users about ``error``: component, class or code, activity.

    ``component``: what was being talked to (``"S3"``, ``"reference server"``; see
    :func:`component_of` for a catch-all); ``doing``: what for (``"storing city 12"``).
    An exception group is told by its first error (and how many more there were).
    """
    leaves = _leaves(error)
    first = leaves[0]
    if isinstance(first, Explained):
        sentence = str(first)
    else:
        sentence = _what(first, component)
        if doing:
            sentence += f" while {doing}"
    if len(leaves) > 1:
        sentence += f" (and {len(leaves) - 1} more failure{'s' if len(leaves) > 2 else ''})"  # noqa: PLR2004
    return sentence
