"""One chunk of a city's response body into stored JSON lines, rejected records and sums.

:func:`convert` is the consumer's hot path: every record of every city passes through it
once. Besides the lines to store it returns the chunk's share of the figures the
statistics need (:class:`common.models.ObjectSums`), so that a city's sums are made
while it is written, with no second read.
"""

from dataclasses import dataclass, field

from common.records import ArrayDecoder, BadRecord, encode_line, normalise_record


@dataclass(frozen=True)
class Converted:
    """A chunk's stored lines, its rejected records and the sums of its stored records."""

    lines: bytes
    records: int
    bad: list[BadRecord]
    passengers: int = 0
    accident: bool = False
    delay_seconds: float = 0.0


@dataclass
class Sums:
    """Running sums of one city object (exact integers; the delay as a float sum)."""

    departures: int = 0
    passengers: int = 0
    accident: bool = False
    delays: list[float] = field(default_factory=list)

    def add(self, converted: Converted) -> None:
        self.departures += converted.records
        self.passengers += converted.passengers
        self.accident = self.accident or converted.accident
        self.delays.append(converted.delay_seconds)


def convert(decoder: ArrayDecoder, city_id: int, chunk: bytes | None) -> Converted:
    """Decode a chunk (``None``: end of body) into stored lines and rejected records."""
    items = decoder.finish() if chunk is None else decoder.feed(chunk)
    out = bytearray()
    bad: list[BadRecord] = []
    passengers = 0
    accident = False
    delay = 0.0
    for item in items:
        record = normalise_record(city_id, item)
        if isinstance(record, BadRecord):
            bad.append(record)
        else:
            passengers += record["passengers"]
            accident = accident or record["accident"]
            delay += record["delay_seconds"]
            out += encode_line(record)
    return Converted(
        lines=bytes(out),
        records=len(items) - len(bad),
        bad=bad,
        passengers=passengers,
        accident=accident,
        delay_seconds=delay,
    )
