"""convert(): one chunk of the server's body into stored lines and rejected records."""

import itertools
from typing import Any

import orjson
import pytest

from common.records import ArrayDecoder, BadRecord, MalformedBodyError
from consumer.convert import Converted, convert


def record(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "departure-time": "2024-01-01T03:00:00",
        "bus-type": "BUS-107",
        "passengers": 44,
        "delay": "PT5340S",
        "accident": False,
    }
    item.update(changes)
    return item


def stored(city_id: int, **changes: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "city_id": city_id,
        "departure_time": "2024-01-01T03:00:00",
        "bus_type": "BUS-107",
        "passengers": 44,
        "delay_seconds": 5340.0,
        "accident": False,
    }
    line.update(changes)
    return line


ITEMS: list[Any] = [
    record(),
    record(passengers="many"),
    record(**{"departure-time": "2024-01-01T04:14:00", "delay": "P0D", "accident": True}),
    record(delay="soon"),
    5,
]
BODY = orjson.dumps(ITEMS)
EXPECTED_LINES = [
    stored(4),
    stored(4, departure_time="2024-01-01T04:14:00", delay_seconds=0.0, accident=True),
]


def parse_lines(lines: bytes) -> list[dict[str, Any]]:
    assert lines == b"" or lines.endswith(b"\n")
    return [orjson.loads(line) for line in lines.splitlines()]


def convert_all(chunks: list[bytes], city_id: int = 4) -> list[Converted]:
    decoder = ArrayDecoder()
    return [convert(decoder, city_id, chunk) for chunk in [*chunks, None]]


def test_chunk_with_valid_and_malformed_records() -> None:
    results = convert_all([BODY])
    lines = b"".join(result.lines for result in results)
    bad = [rejected for result in results for rejected in result.bad]
    assert parse_lines(lines) == EXPECTED_LINES
    assert sum(result.records for result in results) == 2
    assert [rejected.city_id for rejected in bad] == [4, 4, 4]
    assert [orjson.loads(rejected.raw) for rejected in bad] == [ITEMS[1], ITEMS[3], 5]
    assert "passengers is not a non-negative integer" in bad[0].reason
    assert "not an ISO 8601 duration" in bad[1].reason
    assert all(isinstance(rejected, BadRecord) and rejected.reason for rejected in bad)


def test_records_count_matches_lines() -> None:
    for result in convert_all([BODY]):
        assert result.records == result.lines.count(b"\n")


def test_first_chunk_gives_the_items_it_completes() -> None:
    decoder = ArrayDecoder()
    cut = BODY.index(b"P0D")  # inside the third item
    first = convert(decoder, 4, BODY[:cut])
    assert parse_lines(first.lines) == [stored(4)]
    assert first.records == 1
    assert [orjson.loads(rejected.raw) for rejected in first.bad] == [ITEMS[1]]


def test_finish_flushes_what_only_the_end_of_body_completes() -> None:
    # A trailing number could go on ("5" or "55") until the closing bracket arrives.
    decoder = ArrayDecoder()
    body = orjson.dumps([record(), 5])
    before = convert(decoder, 1, body[:-1])
    after = convert(decoder, 1, body[-1:])
    flushed = convert(decoder, 1, None)
    assert parse_lines(before.lines) == [stored(1)]
    assert before.bad == []
    assert after.lines + flushed.lines == b""
    assert after.records + flushed.records == 0
    assert [rejected.raw for rejected in after.bad + flushed.bad] == ["5"]


def test_finish_after_a_complete_body_adds_nothing() -> None:
    decoder = ArrayDecoder()
    whole = convert(decoder, 2, orjson.dumps([record()]))
    assert parse_lines(whole.lines) == [stored(2)]
    assert convert(decoder, 2, None) == Converted(lines=b"", records=0, bad=[])


def test_empty_array() -> None:
    results = convert_all([b"[]"])
    assert results == [Converted(lines=b"", records=0, bad=[])] * 2


def test_finish_on_a_truncated_body_raises() -> None:
    decoder = ArrayDecoder()
    convert(decoder, 4, BODY[: len(BODY) // 2])
    with pytest.raises(MalformedBodyError):
        convert(decoder, 4, None)


def test_chunking_does_not_change_the_output() -> None:
    # Cuts inside items only (not right after one: see the ArrayDecoder bug in test_records).
    cuts = [cut for cut in range(0, len(BODY), 13) if BODY[cut - 1 : cut] != b"}"]
    bounds = [0, *cuts, len(BODY)]
    chunks = [BODY[start:end] for start, end in itertools.pairwise(bounds)]
    assert len(chunks) > 10
    whole = convert_all([BODY])
    split = convert_all(chunks)
    assert b"".join(result.lines for result in split) == b"".join(r.lines for r in whole)
    assert sum(r.records for r in split) == sum(r.records for r in whole)
    assert [b for r in split for b in r.bad] == [b for r in whole for b in r.bad]
