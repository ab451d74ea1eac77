"""The departure record: how the reference server sends it and how bus-stats stores it.

The reference server answers one JSON array per city::

    [{"departure-time":"2024-01-01T03:00:00","bus-type":"BUS-107","passengers":44,
      "delay":"PT5340S","accident":false}, ...]

bus-stats stores one JSON object per line, normalised (snake_case names, the delay in
seconds as a number, the city id added), exactly as ``orjson.dumps`` writes it::

    {"city_id":0,"departure_time":"2024-01-01T03:00:00","bus_type":"BUS-107",
     "passengers":44,"delay_seconds":5340.0,"accident":false}

A record is stored only if every field passes its check (:func:`normalise_record`);
otherwise it is a :class:`BadRecord`, counted and kept aside with the reason:

- ``departure-time``: a string holding an ISO 8601 date *and* time; stored as
  ``datetime.isoformat()`` writes it.
- ``bus-type``: a string.
- ``passengers``: an integer (not a boolean, not a float such as ``44.0``) from 0 to
  :data:`MAX_PASSENGERS` (100,000). The bound is far below what int64 holds, so no stored
  count, and no sum of a few billion of them, overflows an int64 column.
- ``delay``: an ISO 8601 duration of fixed length (no years or months), from 0 to
  :data:`MAX_DELAY_SECONDS` (7 days, 604,800 s); stored in seconds as a float.
- ``accident``: a boolean.

:class:`ArrayDecoder` takes the server's array in chunks as they arrive, so that neither
a whole city response nor a whole date is ever held in memory, and never examines a byte
more than a bounded number of times, whatever the chunks and the strings hold.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final, TypeAlias, TypeVar

import numpy as np
import orjson

from common.jsonscan import Delimiters, Positions, ScanState, scan

# Stored field names: the stats reader and the tests name columns through these.
CITY_ID: Final = "city_id"
DEPARTURE_TIME: Final = "departure_time"
BUS_TYPE: Final = "bus_type"
PASSENGERS: Final = "passengers"
DELAY_SECONDS: Final = "delay_seconds"
ACCIDENT: Final = "accident"

MAX_PASSENGERS: Final = 100_000
"""The most passengers one departure may report; more is a bad record."""
MAX_DELAY_SECONDS: Final = 7 * 86_400
"""The longest delay one departure may report (7 days); longer is a bad record."""

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


# --- records ---------------------------------------------------------------------------

_KEPT_RAW_CHARS: Final = 2000


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not be normalised: why, and what it was (as JSON text)."""

    city_id: int
    reason: str
    raw: str


def check_departure_time(value: Any) -> str:
    """The stored form of a ``departure-time``; raises ``TypeError``/``ValueError``."""
    text = _string(value, "departure-time")
    try:
        if "T" not in text:  # a bare date has no time of departure
            raise ValueError(text)  # noqa: TRY301 - one message for both refusals, below
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"departure-time is not an ISO date-time: {text[:40]!r}") from None


def check_bus_type(value: Any) -> str:
    return _string(value, "bus-type")


def check_passengers(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError("passengers is not a non-negative integer")
    if value > MAX_PASSENGERS:
        raise ValueError(f"passengers is over {MAX_PASSENGERS}: {value:.40}")
    return value


def check_delay(value: Any) -> float:
    """Seconds of a ``delay`` duration, within :data:`MAX_DELAY_SECONDS`."""
    seconds = parse_duration_seconds(_string(value, "delay"))
    if seconds > MAX_DELAY_SECONDS:
        raise ValueError(f"delay is over {MAX_DELAY_SECONDS} seconds: {value[:40]!r}")
    return seconds


def check_accident(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("accident is not a boolean")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} is not a string")
    return value


def normalise_record(city_id: int, item: Any) -> dict[str, Any] | BadRecord:
    """The stored form of one server record, or why it cannot be stored.

    The one definition of a valid record: the consumer's byte-level fast path
    (:mod:`consumer.canonical`) applies these same checks to each distinct field value.
    """
    if isinstance(item, OversizedItem):
        return BadRecord(city_id, f"item longer than {item.limit} bytes", item.text())
    if not isinstance(item, dict):
        return _bad(city_id, "not a JSON object", item)
    try:
        return {
            CITY_ID: city_id,
            DEPARTURE_TIME: check_departure_time(item["departure-time"]),
            BUS_TYPE: check_bus_type(item["bus-type"]),
            PASSENGERS: check_passengers(item["passengers"]),
            DELAY_SECONDS: check_delay(item["delay"]),
            ACCIDENT: check_accident(item["accident"]),
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


def encode_line(record: dict[str, Any]) -> bytes:
    """One stored line, newline included."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


# --- the array decoder ---------------------------------------------------------------------


class MalformedBodyError(ValueError):
    """The response body is not a JSON array (or was cut off before its end)."""


@dataclass(frozen=True, slots=True)
class Run:
    """Complete items of the array, as the server sent them (no separator at either end)."""

    text: bytes
    commas: Positions
    """Offsets in ``text`` of the commas between its items."""


@dataclass(frozen=True, slots=True)
class OversizedItem:
    """An item longer than the decoder's limit: passed over, never held whole."""

    size: int
    """Its bytes (at least; counted until its end or the body's)."""
    limit: int
    head: bytes
    """Its first bytes, kept for the rejected record."""

    def text(self) -> str:
        return self.head[:_KEPT_RAW_CHARS].decode(errors="replace")


def parse_items(text: bytes) -> list[Any]:
    """The items of a run (its text as :class:`Run` holds it)."""
    try:
        items: list[Any] = orjson.loads(b"[" + text + b"]")
    except orjson.JSONDecodeError as error:
        raise MalformedBodyError(f"response body is not valid JSON: {error}") from None
    return items


_T = TypeVar("_T")
Piece: TypeAlias = _T | Run | OversizedItem

_NOT_WHITESPACE: Final = re.compile(rb"[^ \t\r\n]")
_WHITESPACE: Final = b" \t\r\n"
_KEPT_HEAD_BYTES: Final = 4 * _KEPT_RAW_CHARS  # UTF-8: at most 4 bytes a character


class _At(Enum):
    """Where the decoder stands in the array's grammar."""

    START = "before ["
    FIRST = "after [ (an item or ])"
    AFTER_ITEM = "after an item (, or ])"
    AFTER_COMMA = "after , (an item)"
    DONE = "after ]"


_ITEM_NEXT: Final = frozenset({_At.FIRST, _At.AFTER_COMMA})


class ArrayDecoder:
    """Splits the chunks of one JSON array into runs of complete items, in linear time.

    Two ways to find where the complete items end, the cheaper one first:

    - **Guess**: the last ``}`` of the new bytes usually closes an item. The caller's
      ``fast`` function gets the text up to it and either takes it (its check proves the
      cut: a cut inside a string or a nested value never passes) or refuses it.
    - **Scan**: otherwise :func:`common.jsonscan.scan` finds the exact item boundaries,
      carrying its state from chunk to chunk, and the decoder hands out a :class:`Run`.
      After a cut it goes back to guessing.

    A guess is tried at most once per chunk, over the bytes since the last cut; a refused
    guess switches to scanning; the scanner examines each byte once. So the work
    (:attr:`bytes_examined`) stays within a small multiple of the body's size however the
    chunks fall and whatever the strings hold. An item longer than ``max_item_bytes``
    (from its first byte to its own closing bracket, or to the ``,`` or ``]`` after it if
    it is not an object or array) is passed over as it streams, never buffered whole, and
    handed out as an :class:`OversizedItem`.
    """

    def __init__(self, max_item_bytes: int = 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._at = _At.START
        self._max_item_bytes = max_item_bytes
        self._scan: ScanState | None = None
        """None while guessing; the scanner's state while scanning."""
        self._scanned = 0
        """How many bytes at the buffer's start the scanner has examined."""
        self._skipped: OversizedItem | None = None
        """The oversized item being passed over, as far as it has come."""
        self.bytes_examined = 0
        """Bytes given to the ``fast`` function or to the scanner: the decoder's work."""

    def feed(self, chunk: bytes) -> list[Any]:
        """The items completed by this chunk (possibly none), parsed by orjson."""
        return _parsed(self.split(chunk, _parse_guess))

    def finish(self) -> list[Any]:
        """The last items; raises :class:`MalformedBodyError` if the array never closed."""
        return _parsed(self.split(None, _parse_guess))

    def split(self, chunk: bytes | None, fast: Callable[[bytes], _T | None]) -> list[Piece[_T]]:
        """What the chunk completes (``None``: the body ended), in the body's order.

        ``fast(text)`` is offered a guessed run of items; what it returns is handed out
        as is, and ``None`` refuses the guess (the same items then come in a :class:`Run`).
        """
        pieces: list[Piece[_T]] = []
        if chunk is None:
            self._finish(pieces)
            return pieces
        self._buffer += chunk
        if self._scan is None:
            self._advance()
            if not self._guess(len(chunk), fast, pieces):
                return pieces
            self._scan = ScanState()
            self._scanned = 0
        self._scan_new(pieces)
        return pieces

    def _guess(self, new: int, fast: Callable[[bytes], _T | None], pieces: list[Piece[_T]]) -> bool:
        """Cut after the last ``}`` of the new bytes if ``fast`` takes the text before it.

        False when that is all there is to do; True when the buffer must be scanned.
        """
        if self._at not in _ITEM_NEXT or not self._buffer:
            return False
        cut = self._buffer.rfind(b"}", max(0, len(self._buffer) - new))
        if 0 <= cut < self._max_item_bytes:
            with memoryview(self._buffer) as view:
                text = bytes(view[: cut + 1])
            self.bytes_examined += len(text)
            taken = fast(text)
            if taken is None:
                return True
            pieces.append(taken)
            del self._buffer[: cut + 1]
            self._at = _At.AFTER_ITEM
            self._advance()
        return len(self._buffer) > self._max_item_bytes

    def _scan_new(self, pieces: list[Piece[_T]]) -> None:
        """Scan the bytes not scanned yet; hand out the items they complete."""
        assert self._scan is not None  # noqa: S101 - only called while scanning
        with memoryview(self._buffer) as view:
            segment = bytes(view[self._scanned :])
        if not segment:
            return
        self.bytes_examined += len(segment)
        found = scan(segment, self._scan)
        if found.mismatched:
            raise MalformedBodyError("expected ',' or ']' between the array's items")
        delimiters = found.moved(-self._scanned)
        self._scanned = len(self._buffer)
        cut_made = False
        if self._skipped is not None:
            rest = self._pass_over(delimiters, pieces)
            if rest is None:
                return
            delimiters, cut_made = rest, True
        cut = delimiters.last
        if cut > 0 and self._at in _ITEM_NEXT:
            self._take_run(cut, delimiters, pieces)
            cut_made = True
        if self._at in _ITEM_NEXT and len(self._buffer) > self._max_item_bytes:
            self._start_skipping()
        elif cut_made:
            self._scan = None  # back to guessing

    def _take_run(self, cut: int, delimiters: Delimiters, pieces: list[Piece[_T]]) -> None:
        text = bytes(self._buffer[:cut])
        commas = delimiters.commas[delimiters.commas < cut]
        del self._buffer[:cut]
        self._scanned -= cut
        self._at = _At.AFTER_ITEM
        self._consume_separators()
        if len(text) <= self._max_item_bytes:
            pieces.append(Run(text.rstrip(_WHITESPACE), commas))
        else:  # the whitespace after a last scalar item still counts in its size
            pieces.extend(self._without_oversized(text, commas))

    def _without_oversized(self, text: bytes, commas: Positions) -> list[Run | OversizedItem]:
        """The run, with any item over the limit taken out of it as an oversized item."""
        limit = self._max_item_bytes
        bounds = np.concatenate(([-1], commas, [len(text)]))
        found: list[Run | OversizedItem] = []
        start = 0
        for index in np.flatnonzero(np.diff(bounds) - 1 > limit).tolist():
            left, right = int(bounds[index]) + 1, int(bounds[index + 1])
            item = text[left:right].lstrip(_WHITESPACE)
            if item[:1] in {b"{", b"["}:
                item = item.rstrip(_WHITESPACE)  # it ends with its own bracket
            if len(item) <= limit:
                continue
            if left > start:
                found.append(_sub_run(text, commas, start, left - 1))
            found.append(OversizedItem(len(item), limit, item[:_KEPT_HEAD_BYTES]))
            start = right + 1
        if start < len(text):
            found.append(_sub_run(text, commas, start, len(text)))
        return found

    def _pass_over(self, delimiters: Delimiters, pieces: list[Piece[_T]]) -> Delimiters | None:
        """End the oversized item at its first delimiter (the rest of them returned), or
        drop what came of it (None)."""
        skipped = self._skipped
        assert skipped is not None  # noqa: S101 - only called while passing over
        first = delimiters.first
        if first < 0:
            self._skipped = OversizedItem(
                skipped.size + len(self._buffer), skipped.limit, skipped.head
            )
            self._buffer.clear()
            self._scanned = 0
            return None
        pieces.append(OversizedItem(skipped.size + first, skipped.limit, skipped.head))
        self._skipped = None
        del self._buffer[:first]
        self._scanned -= first
        self._at = _At.AFTER_ITEM
        return delimiters.moved(first + self._consume_separators())

    def _start_skipping(self) -> None:
        self._skipped = OversizedItem(
            len(self._buffer), self._max_item_bytes, bytes(self._buffer[:_KEPT_HEAD_BYTES])
        )
        self._buffer.clear()
        self._scanned = 0

    def _consume_separators(self) -> int:
        before = len(self._buffer)
        self._advance()
        consumed = before - len(self._buffer)
        self._scanned = max(0, self._scanned - consumed)
        return consumed

    def _finish(self, pieces: list[Piece[_T]]) -> None:
        if self._at is _At.START:
            raise MalformedBodyError("empty response body")
        if self._at is not _At.DONE and self._skipped is None and self._buffer:
            if self._scan is None:
                self._scan = ScanState()
                self._scanned = 0
            self._scan_new(pieces)
        if self._at is not _At.DONE:
            raise MalformedBodyError("response body ends before its JSON array does")

    def _advance(self) -> None:
        """Consume brackets, commas and whitespace up to the next item (or the end)."""
        while True:
            found = _NOT_WHITESPACE.search(self._buffer)
            if found is None:
                self._buffer.clear()
                return
            del self._buffer[: found.start()]
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
            elif self._at is _At.DONE:
                raise MalformedBodyError("data after the end of the JSON array")
            elif head in b",]":
                raise MalformedBodyError(f"expected an item {self._at.value}")
            else:
                return  # an item starts here
            del self._buffer[0]


def _sub_run(text: bytes, commas: Positions, start: int, stop: int) -> Run:
    """The items of ``text[start:stop]`` (``start`` after a comma, ``stop`` at one or the end)."""
    piece = text[start:stop]
    lead = len(piece) - len(piece.lstrip(_WHITESPACE))
    inner = commas[(commas >= start) & (commas < stop)] - start - lead
    return Run(piece[lead:].rstrip(_WHITESPACE), inner)


def _parse_guess(text: bytes) -> list[Any] | None:
    """``fast`` for :meth:`ArrayDecoder.feed`: orjson parses the guessed run, or refuses it."""
    try:
        items: list[Any] = orjson.loads(b"[" + text + b"]")
    except orjson.JSONDecodeError:
        return None
    return items


def _parsed(pieces: list[Piece[list[Any]]]) -> list[Any]:
    items: list[Any] = []
    for piece in pieces:
        if isinstance(piece, Run):
            items += parse_items(piece.text)
        elif isinstance(piece, OversizedItem):
            items.append(piece)
        else:
            items += piece
    return items
