"""The server's usual record form, rewritten into stored lines without a Python call per record.

Nearly every record the reference server sends has one compact form (the five fields in
one order, no whitespace, no escapes in strings)::

    {"departure-time":"2024-01-01T03:00:00","bus-type":"BUS-107","passengers":44,"delay":"PT5340S","accident":false},{...

Split at ``":``, a run of such records gives five tokens a record, each holding one field's
value and the name of the field after it (``"BUS-107","passengers``). :func:`rewrite`
splits a run once, checks every token at its place in the cycle and replaces it by its
stored form (``44,"delay`` becomes ``44,"delay_seconds``, ``"PT5340S","accident`` becomes
``5340.0,"accident``), then joins the tokens back: one split, one C-level ``map`` per field
and one join for the whole run.

Each *distinct* token is checked once, by parsing its value with orjson and passing it to
the same check the general path uses (:mod:`common.records`); its stored form is written
by ``orjson.dumps``. So a line written here is byte for byte the line
``encode_line(normalise_record(...))`` writes for the same record, and a record this path
cannot vouch for (another form, a bad value, an escape) makes :func:`rewrite` return
``None``: the caller then takes the general path. The tokens' forms are memoised per field
(bounded): a city's records repeat a few hundred distinct values.

Hand-written rather than a library because the measured alternatives cost more per MB of
body (``scripts/bench_ingest.py`` on production bodies, this machine): a strict regular
expression only to *validate* a run 2.3 ms, orjson parsing it into dicts 2.0 ms before any
Python per record, this whole rewrite about 3 ms including its sums.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from common.records import (
    check_bus_type,
    check_delay,
    check_departure_time,
    check_passengers,
)

_SPLIT: Final = b'":'
_FIRST: Final = b'{"departure-time'
_BETWEEN_RECORDS: Final = b'},{"departure-time'
_LAST: Final = b"}"
_FIELDS_A_RECORD: Final = 5
_MEMO_ENTRIES: Final = 8192  # per field; a city-date holds a few hundred distinct tokens


@dataclass(frozen=True, slots=True)
class Lines:
    """Stored lines of a run of records, with their sums."""

    lines: bytes
    records: int
    passengers: int
    accident: bool
    delay_seconds: float


class _Field:
    """The stored form (and value) of each distinct token of one field, checked once."""

    def __init__(
        self, suffix: bytes, stored_suffix: bytes, check: Callable[[Any], int | float | str]
    ) -> None:
        self.suffix = suffix
        self.stored_suffix = stored_suffix
        self.check = check
        self.stored: dict[bytes, bytes] = {}
        self.value: dict[bytes, Any] = {}

    def replace(self, tokens: list[bytes], start: int) -> list[bytes] | None:
        """Put the stored form of every ``tokens[start::5]`` in its place; the tokens that
        were there, or None if one of them fails its check."""
        column = tokens[start::_FIELDS_A_RECORD]
        try:
            tokens[start::_FIELDS_A_RECORD] = map(self.stored.__getitem__, column)
        except KeyError:
            if not self._learn(column):
                return None
            try:
                tokens[start::_FIELDS_A_RECORD] = map(self.stored.__getitem__, column)
            except KeyError:  # forgotten meanwhile (the memo was full)
                return None
        return column

    def _learn(self, column: list[bytes]) -> bool:
        distinct = set(column)
        new = distinct.difference(self.stored)
        if len(self.stored) + len(new) > _MEMO_ENTRIES:
            self.stored.clear()
            self.value.clear()
            new = distinct
        for token in new:
            if not token.endswith(self.suffix):
                return False
            try:
                value = self.check(orjson.loads(token[: -len(self.suffix)]))
            except (orjson.JSONDecodeError, TypeError, ValueError):
                return False
            self.stored[token] = orjson.dumps(value) + self.stored_suffix
            self.value[token] = value
        return True


_TIME: Final = _Field(b',"bus-type', b',"bus_type', check_departure_time)
_BUS: Final = _Field(b',"passengers', b',"passengers', check_bus_type)
_PASSENGERS: Final = _Field(b',"delay', b',"delay_seconds', check_passengers)
_DELAY: Final = _Field(b',"accident', b',"accident', check_delay)
# Flags take exactly these forms (anything else goes the general way); the stored form of
# the token between two records opens the next line, so it holds the city id.
_FLAGS: Final = {False: b"false", True: b"true"}


def rewrite(text: bytes, city_id: int) -> Lines | None:
    """The stored lines of a run of records in the usual form; None for any other run."""
    if b"\\" in text:  # an escape could hide a quote: the general path decodes it
        return None
    tokens = text.split(_SPLIT)
    records, rest = divmod(len(tokens) - 1, _FIELDS_A_RECORD)
    if rest or not records or tokens[0] != _FIRST:
        return None
    flags = tokens[5::_FIELDS_A_RECORD]
    opening = b'{"city_id":' + orjson.dumps(city_id) + b',"departure_time'
    stored_flags = _stored_flags(opening)
    try:
        tokens[5::_FIELDS_A_RECORD] = map(stored_flags.__getitem__, flags)
    except KeyError:
        return None
    counts = delays = None
    if _TIME.replace(tokens, 1) and _BUS.replace(tokens, 2):
        counts = _PASSENGERS.replace(tokens, 3)
        delays = _DELAY.replace(tokens, 4) if counts is not None else None
    if counts is None or delays is None:
        return None
    tokens[0] = opening
    try:
        passengers = sum(map(_PASSENGERS.value.__getitem__, counts))
        delay = math.fsum(map(_DELAY.value.__getitem__, delays))
    except KeyError:  # forgotten meanwhile (the memo was full)
        return None
    true_between, true_last = _FLAGS[True] + _BETWEEN_RECORDS, _FLAGS[True] + _LAST
    return Lines(
        lines=_SPLIT.join(tokens),
        records=records,
        passengers=passengers,
        accident=flags[-1] == true_last or true_between in flags,
        delay_seconds=delay,
    )


def _stored_flags(opening: bytes) -> dict[bytes, bytes]:
    stored: dict[bytes, bytes] = {}
    for flag, text in _FLAGS.items():
        line_end = orjson.dumps(flag) + b"}\n"
        stored[text + _BETWEEN_RECORDS] = line_end + opening
        stored[text + _LAST] = line_end
    return stored
