"""The departure record: how the reference server sends it and how bus-stats stores it.

The reference server answers one JSON array per city::

    [{"departure-time":"2024-01-01T03:00:00","bus-type":"BUS-107","passengers":44,
      "delay":"PT5340S","accident":false}, ...]

bus-stats stores one JSON object per line, normalised (snake_case names, the delay in
seconds as a number, the city id added)::

    {"city_id":0,"departure_time":"2024-01-01T03:00:00","bus_type":"BUS-107",
     "passengers":44,"delay_seconds":5340.0,"accident":false}

:class:`ArrayDecoder` takes the server's array in chunks as they arrive, so that neither
a whole city response nor a whole date is ever held in memory.
"""

import math
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final

import orjson

# Stored field names: the stats reader and the tests name columns through these.
CITY_ID: Final = "city_id"
DEPARTURE_TIME: Final = "departure_time"
BUS_TYPE: Final = "bus_type"
PASSENGERS: Final = "passengers"
DELAY_SECONDS: Final = "delay_seconds"
ACCIDENT: Final = "accident"

_NUMBER = r"[0-9]+(?:[.,][0-9]+)?"
_DURATION = re.compile(
    rf"P(?:(?P<weeks>{_NUMBER})W)?(?:(?P<days>{_NUMBER})D)?"
    rf"(?:T(?:(?P<hours>{_NUMBER})H)?(?:(?P<minutes>{_NUMBER})M)?(?:(?P<seconds>{_NUMBER})S)?)?"
)
_UNIT_SECONDS: Final = {"weeks": 604800.0, "days": 86400.0, "hours": 3600.0, "minutes": 60.0}
_UNIT_SECONDS["seconds"] = 1.0


class BadDurationError(ValueError):
    """A value that is not an ISO 8601 duration of fixed length."""


def parse_duration_seconds(text: str) -> float:
    """Seconds in an ISO 8601 duration: ``PT5340S``, ``P0D``, ``P1DT2H3M4.5S``, ``PT0S``.

    Years and months have no fixed length in seconds, so they are refused like any other
    unparseable value, as are negative durations and an empty ``P`` or ``PT``.
    """
    # Fast path for the form the server sends almost always: PT<digits>S.
    digits = text[2:-1]
    if text.startswith("PT") and text.endswith("S") and digits.isascii() and digits.isdigit():
        return _finite(float(digits), text)
    match = _DURATION.fullmatch(text)
    if match is None or text in {"P", "PT"} or text.endswith("T"):
        raise BadDurationError(f"not an ISO 8601 duration: {text[:40]!r}")
    total = 0.0
    for unit, value in match.groupdict().items():
        if value is not None:
            total += float(value.replace(",", ".")) * _UNIT_SECONDS[unit]
    return _finite(total, text)


def _finite(seconds: float, text: str) -> float:
    if not math.isfinite(seconds):
        raise BadDurationError(f"duration too large: {text[:40]!r}")
    return seconds


def format_duration(seconds: int) -> str:
    """The server's own spelling of a whole number of seconds: ``P0D`` or ``PT<n>S``."""
    return "P0D" if seconds == 0 else f"PT{seconds}S"


_KEPT_RAW_CHARS: Final = 2000


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not be normalised: why, and what it was (as JSON text)."""

    city_id: int
    reason: str
    raw: str


def normalise_record(city_id: int, item: Any) -> dict[str, Any] | BadRecord:
    """The stored form of one server record, or why it cannot be stored."""
    usual = _normalise_usual(city_id, item)
    return usual if usual is not None else _normalise_checked(city_id, item)


_CANONICAL_TIME_LENGTH: Final = len("2024-01-01T03:00:00")


def _normalise_usual(city_id: int, item: Any) -> dict[str, Any] | None:
    """The fast path for what the server sends almost always; ``None`` for anything else.

    Exact types, a canonical naive time and a ``PT<n>S`` or ``P0D`` delay: one pass with
    no helper calls, since it runs for every one of millions of records.
    """
    try:
        departure = item["departure-time"]
        bus_type = item["bus-type"]
        passengers = item["passengers"]
        delay = item["delay"]
        accident = item["accident"]
    except (KeyError, TypeError, IndexError):
        return None
    if not (
        type(departure) is str
        and len(departure) == _CANONICAL_TIME_LENGTH
        and departure[10] == "T"
        and type(bus_type) is str
        and type(passengers) is int
        and passengers >= 0
        and type(accident) is bool
        and type(delay) is str
    ):
        return None
    digits = delay[2:-1]
    if delay.startswith("PT") and delay.endswith("S") and digits.isascii() and digits.isdigit():
        seconds = float(digits)
    elif delay == "P0D":
        seconds = 0.0
    else:
        return None
    try:
        datetime.fromisoformat(departure)  # a real date and time, already in canonical form
    except ValueError:
        return None
    if not math.isfinite(seconds):
        return None
    return {
        CITY_ID: city_id,
        DEPARTURE_TIME: departure,
        BUS_TYPE: bus_type,
        PASSENGERS: passengers,
        DELAY_SECONDS: seconds,
        ACCIDENT: accident,
    }


def _normalise_checked(city_id: int, item: Any) -> dict[str, Any] | BadRecord:
    """Every other form, field by field, with the reason when one is wrong."""
    try:
        return {
            CITY_ID: city_id,
            DEPARTURE_TIME: _departure_time(item["departure-time"]),
            BUS_TYPE: _string(item["bus-type"], "bus-type"),
            PASSENGERS: _count(item["passengers"]),
            DELAY_SECONDS: parse_duration_seconds(_string(item["delay"], "delay")),
            ACCIDENT: _flag(item["accident"]),
        }
    except KeyError as missing:
        return _bad(city_id, f"missing field {missing.args[0]}", item)
    except (TypeError, ValueError) as error:
        return _bad(city_id, str(error), item)


def _bad(city_id: int, reason: str, item: Any) -> BadRecord:
    try:
        raw = orjson.dumps(item, default=repr).decode()
    except TypeError:  # nested deeper than orjson writes: keep a readable prefix instead
        raw = repr(item)
    return BadRecord(city_id=city_id, reason=reason, raw=raw[:_KEPT_RAW_CHARS])


def _departure_time(value: Any) -> str:
    text = _string(value, "departure-time")
    try:
        if "T" not in text:  # a bare date has no time of departure
            raise ValueError(text)  # noqa: TRY301 - one message for both refusals, below
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"departure-time is not an ISO date-time: {text[:40]!r}") from None


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError("passengers is not a non-negative integer")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("accident is not a boolean")
    return value


def encode_line(record: dict[str, Any]) -> bytes:
    """One stored line, newline included."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class MalformedBodyError(ValueError):
    """The response body is not a JSON array (or was cut off before its end)."""


_WHITESPACE: Final = b" \t\r\n"
_CUT_TRIES: Final = 3  # earlier "}" tried before falling back to item-by-item parsing


class _At(Enum):
    """Where the decoder stands in the array's grammar."""

    START = "before ["
    FIRST = "after [ (an item or ])"
    AFTER_ITEM = "after an item (, or ])"
    AFTER_COMMA = "after , (an item)"
    DONE = "after ]"


class ArrayDecoder:
    """Turns the chunks of one JSON array into its items, as soon as each is complete.

    Whole runs of complete items are parsed by orjson in one call; the cut between items
    is found at a ``}`` and proven by the parse itself (a cut inside a string or a nested
    value never parses), so the decoder never needs to scan byte by byte. Separators
    between runs are checked by a small state machine. Memory is bounded by the chunk
    size plus one item of at most ``max_item_bytes``.
    """

    def __init__(self, max_item_bytes: int = 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._at = _At.START
        self._max_item_bytes = max_item_bytes

    def feed(self, chunk: bytes) -> list[Any]:
        """The items completed by this chunk (possibly none)."""
        self._buffer += chunk
        self._advance()
        items: list[Any] = []
        if self._at in {_At.FIRST, _At.AFTER_COMMA} and self._buffer:
            items = self._take_batch()
        if len(self._buffer) > self._max_item_bytes:
            raise MalformedBodyError(f"an item is longer than {self._max_item_bytes} bytes")
        return items

    def finish(self) -> list[Any]:
        """The last items; raises :class:`MalformedBodyError` if the array never closed."""
        if self._at is _At.START:
            raise MalformedBodyError("empty response body")
        if self._at is _At.DONE:
            return []
        if self._at is _At.AFTER_ITEM or not self._buffer:
            raise MalformedBodyError("response body ends before its JSON array does")
        # Items that the "}" cuts cannot find (numbers, strings): the rest must close the array.
        try:
            items = orjson.loads(b"[" + bytes(self._buffer))
        except orjson.JSONDecodeError:
            raise MalformedBodyError("response body ends before its JSON array does") from None
        self._buffer.clear()
        self._at = _At.DONE
        return list(items)

    def _take_batch(self) -> list[Any]:
        cut = self._buffer.rfind(b"}")
        tries = 0
        while cut >= 0:
            try:
                items = orjson.loads(b"[" + bytes(self._buffer[: cut + 1]) + b"]")
            except orjson.JSONDecodeError:
                tries += 1
                # A "}" inside a string: try an earlier one, then go item by item.
                cut = self._buffer.rfind(b"}", 0, cut) if tries < _CUT_TRIES else -1
                continue
            del self._buffer[: cut + 1]
            self._at = _At.AFTER_ITEM
            self._advance()
            return list(items)
        return self._take_items_one_by_one()

    def _take_items_one_by_one(self) -> list[Any]:
        items: list[Any] = []
        end = self._buffer.find(b"}")
        while end >= 0:
            try:
                item = orjson.loads(bytes(self._buffer[: end + 1]))
            except orjson.JSONDecodeError:
                end = self._buffer.find(b"}", end + 1)
                continue
            items.append(item)
            del self._buffer[: end + 1]
            self._at = _At.AFTER_ITEM
            self._advance()
            if self._at is not _At.AFTER_COMMA:
                break
            end = self._buffer.find(b"}")
        return items

    def _advance(self) -> None:
        """Consume brackets, commas and whitespace up to the next item (or the end)."""
        while True:
            self._strip_whitespace()
            if not self._buffer:
                return
            head = self._buffer[0]
            if self._at is _At.START:
                if head != ord("["):
                    raise MalformedBodyError("response body is not a JSON array")
                self._at = _At.FIRST
            elif self._at is _At.AFTER_ITEM:
                if head == ord(","):
                    self._at = _At.AFTER_COMMA
                elif head == ord("]"):
                    self._at = _At.DONE
                else:
                    raise MalformedBodyError("expected ',' or ']' between the array's items")
            elif self._at is _At.FIRST and head == ord("]"):
                self._at = _At.DONE
            elif self._at is _At.AFTER_COMMA and head in b",]":
                raise MalformedBodyError("expected an item after ',' in the array")
            elif self._at is _At.DONE:
                raise MalformedBodyError("data after the end of the JSON array")
            else:
                return  # an item starts here
            del self._buffer[0]

    def _strip_whitespace(self) -> None:
        index = 0
        while index < len(self._buffer) and self._buffer[index] in _WHITESPACE:
            index += 1
        del self._buffer[:index]
