"""One chunk of a city's response body into stored JSON lines, rejected records and sums.

:func:`convert` is the consumer's hot path: every record of every city passes through it
once. Besides the lines to store it returns the chunk's share of the figures the
statistics need (:class:`common.models.ObjectSums`), so that a city's sums are made
while it is written, with no second read.

Runs of records in the server's usual form are rewritten at the byte level, with no
Python call per record (:mod:`consumer.canonical`); that is nearly every chunk. A run the
rewrite refuses (a bad record, whitespace, an escape) is cut in halves at item
boundaries and each half tried again, so one odd record costs a few tries, not the whole
run going record by record; halves of at most ``_FEW_ITEMS`` items, and whatever is left
once the tries have examined ``_TRIES_PER_BYTE`` times the run's bytes, go through orjson
and :func:`common.records.normalise_record` one record at a time.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from common.jsonscan import Positions
from common.models import ObjectSums
from common.records import (
    ArrayDecoder,
    BadRecord,
    Run,
    encode_line,
    normalise_record,
    parse_items,
)
from consumer.canonical import Lines, rewrite

_FEW_ITEMS: Final = 8
_TRIES_PER_BYTE: Final = 4
_WHITESPACE: Final = b" \t\r\n"


@dataclass(frozen=True)
class Converted:
    """A chunk's stored lines, its rejected records and the sums of its stored records."""

    lines: bytes
    records: int
    bad: list[BadRecord]
    passengers: int = 0
    accident: bool = False
    delay_seconds: float = 0.0


class _Summed(Protocol):
    """Stored records and their sums: a chunk's (:class:`Converted`) or a run's (``Lines``)."""

    @property
    def records(self) -> int: ...
    @property
    def passengers(self) -> int: ...
    @property
    def accident(self) -> bool: ...
    @property
    def delay_seconds(self) -> float: ...


@dataclass
class Sums:
    """Running sums of stored records (exact integers; the delay as a float sum).

    Kept per chunk by :func:`convert` and per city object by the consumer's ingest.
    """

    departures: int = 0
    passengers: int = 0
    accident: bool = False
    delays: list[float] = field(default_factory=list)

    def add(self, part: _Summed) -> None:
        self.departures += part.records
        self.passengers += part.passengers
        self.accident = self.accident or part.accident
        self.delays.append(part.delay_seconds)

    def add_record(self, record: dict[str, Any]) -> None:
        """One normalised record (:func:`common.records.normalise_record`)."""
        self.departures += 1
        self.passengers += record["passengers"]
        self.accident = self.accident or record["accident"]
        self.delays.append(record["delay_seconds"])

    @property
    def delay_seconds(self) -> float:
        return math.fsum(self.delays)

    def frozen(self) -> ObjectSums:
        return ObjectSums(
            departures=self.departures,
            passengers=self.passengers,
            accident=self.accident,
            delay_seconds=self.delay_seconds,
        )


def convert(decoder: ArrayDecoder, city_id: int, chunk: bytes | None) -> Converted:
    """Decode a chunk (``None``: end of body) into stored lines and rejected records."""
    chunk_lines = _ChunkLines(city_id)
    for piece in decoder.split(chunk, lambda text: rewrite(text, city_id)):
        if isinstance(piece, Lines):
            chunk_lines.take_lines(piece)
        elif isinstance(piece, Run):
            chunk_lines.take_run(piece)
        else:
            chunk_lines.take_item(piece)
    return chunk_lines.converted()


class _ChunkLines:
    """What one chunk converts to, gathered in the body's order."""

    def __init__(self, city_id: int) -> None:
        self.city_id = city_id
        self.lines: list[bytes] = []
        self.bad: list[BadRecord] = []
        self.sums = Sums()
        self.budget = 0

    def converted(self) -> Converted:
        return Converted(
            lines=b"".join(self.lines),
            records=self.sums.departures,
            bad=self.bad,
            passengers=self.sums.passengers,
            accident=self.sums.accident,
            delay_seconds=self.sums.delay_seconds,
        )

    def take_lines(self, lines: Lines) -> None:
        self.lines.append(lines.lines)
        self.sums.add(lines)

    def take_item(self, item: Any) -> None:
        record = normalise_record(self.city_id, item)
        if isinstance(record, BadRecord):
            self.bad.append(record)
            return
        self.lines.append(encode_line(record))
        self.sums.add_record(record)

    def take_run(self, run: Run) -> None:
        """Items the byte-level rewrite has not taken as a whole (or not been offered)."""
        self.budget = _TRIES_PER_BYTE * len(run.text)
        self._halves(run.text, run.commas)

    def _halves(self, text: bytes, commas: Positions) -> None:
        if commas.size < _FEW_ITEMS:
            self._one_by_one(text)
            return
        middle = commas.size // 2
        cut = int(commas[middle])
        right = text[cut + 1 :]
        lead = len(right) - len(right.lstrip(_WHITESPACE))
        self._try(text[:cut].rstrip(_WHITESPACE), commas[:middle])
        self._try(right[lead:], commas[middle + 1 :] - (cut + 1 + lead))

    def _try(self, text: bytes, commas: Positions) -> None:
        if self.budget < len(text):
            self._one_by_one(text)
            return
        self.budget -= len(text)
        lines = rewrite(text, self.city_id)
        if lines is None:
            self._halves(text, commas)
        else:
            self.take_lines(lines)

    def _one_by_one(self, text: bytes) -> None:
        for item in parse_items(text):
            self.take_item(item)
