"""convert(): one chunk of the server's body into stored lines and rejected records."""

import itertools
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from common.records import ArrayDecoder, BadRecord, MalformedBodyError, normalise_record
from consumer import convert as convert_module
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
    cuts = list(range(0, len(BODY), 13))
    bounds = [0, *cuts, len(BODY)]
    chunks = [BODY[start:end] for start, end in itertools.pairwise(bounds)]
    assert len(chunks) > 10
    whole = convert_all([BODY])
    split = convert_all(chunks)
    assert b"".join(result.lines for result in split) == b"".join(r.lines for r in whole)
    assert sum(r.records for r in split) == sum(r.records for r in whole)
    assert [b for r in split for b in r.bad] == [b for r in whole for b in r.bad]


# --- the byte-level path and its fallbacks --------------------------------------------------


def usual_body(count: int, **changes_at: dict[str, Any]) -> tuple[list[Any], bytes]:
    """``count`` records of the usual form; ``changes_at["5"]`` changes record 5."""
    items = [
        record(
            **{
                "departure-time": f"2024-01-01T{index % 12:02d}:{index % 60:02d}:00",
                "bus-type": f"BUS-{100 + index % 100}",
                "passengers": index % 101,
                "delay": "P0D" if index % 7 == 0 else f"PT{60 * (index % 121)}S",
                "accident": index % 1000 == 999,
                **changes_at.get(str(index), {}),
            }
        )
        for index in range(count)
    ]
    return items, orjson.dumps(items)


def reference(city_id: int, items: list[Any]) -> tuple[bytes, list[BadRecord], int, bool, float]:
    """What the consumer always stored: orjson.dumps of each normalised record, and sums."""
    lines, bad, passengers, accident, delays = b"", [], 0, False, []
    for item in items:
        normalised = normalise_record(city_id, item)
        if isinstance(normalised, BadRecord):
            bad.append(normalised)
            continue
        lines += orjson.dumps(normalised, option=orjson.OPT_APPEND_NEWLINE)
        passengers += normalised["passengers"]
        accident = accident or normalised["accident"]
        delays.append(normalised["delay_seconds"])
    return lines, bad, passengers, accident, math.fsum(delays)


def converted_whole(results: list[Converted]) -> tuple[bytes, list[BadRecord], int, bool, float]:
    return (
        b"".join(result.lines for result in results),
        [rejected for result in results for rejected in result.bad],
        sum(result.passengers for result in results),
        any(result.accident for result in results),
        math.fsum(result.delay_seconds for result in results),
    )


def in_chunks(body: bytes, size: int) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


class CountingNormaliser:
    """Wraps normalise_record to count the records that go one by one."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, city_id: int, item: Any) -> dict[str, Any] | BadRecord:
        self.calls += 1
        return normalise_record(city_id, item)


@pytest.fixture
def one_by_one(monkeypatch: pytest.MonkeyPatch) -> CountingNormaliser:
    counting = CountingNormaliser()
    monkeypatch.setattr(convert_module, "normalise_record", counting)
    return counting


def test_usual_records_never_go_one_by_one(one_by_one: CountingNormaliser) -> None:
    items, body = usual_body(5000)
    results = convert_all(in_chunks(body, 256 * 1024), city_id=3)
    assert converted_whole(results) == reference(3, items)
    assert sum(result.records for result in results) == 5000
    assert one_by_one.calls == 0


def test_one_bad_record_costs_a_few_records_one_by_one(one_by_one: CountingNormaliser) -> None:
    items, body = usual_body(3000, **{"1234": {"passengers": -1}})
    results = convert_all(in_chunks(body, 256 * 1024), city_id=3)
    assert converted_whole(results) == reference(3, items)
    assert [rejected.raw for result in results for rejected in result.bad] == [
        orjson.dumps(items[1234]).decode()
    ]
    assert one_by_one.calls <= 2 * 8


def test_every_record_odd(one_by_one: CountingNormaliser) -> None:
    items, body = usual_body(2000)
    body = body.replace(b',"', b', "')
    results = convert_all(in_chunks(body, 64 * 1024), city_id=5)
    assert converted_whole(results) == reference(5, items)
    assert one_by_one.calls == 2000


def test_sums_of_a_chunk() -> None:
    items, body = usual_body(500, **{"7": {"delay": "PT1.5S"}, "8": {"accident": "yes"}})
    lines, bad, passengers, accident, delay = reference(2, items)
    results = convert_all([body], city_id=2)
    assert converted_whole(results) == (lines, bad, passengers, accident, delay)
    assert sum(result.records for result in results) == 499
    assert passengers == sum(item["passengers"] for item in items[:8] + items[9:])


def test_an_oversized_item_is_a_bad_record() -> None:
    items, body = usual_body(10)
    huge = orjson.dumps(record(**{"bus-type": "}" * 2_000_000}))
    body = body[:-1] + b"," + huge + b"]"
    results = convert_all(in_chunks(body, 256 * 1024), city_id=1)
    lines, bad, *_ = converted_whole(results)
    assert lines == reference(1, items)[0]
    assert [rejected.reason for rejected in bad] == [f"item longer than {1024 * 1024} bytes"]
    assert bad[0].raw.startswith('{"departure-time":')
    assert len(bad[0].raw) == 2000


_ODD_STRING = st.text(st.sampled_from(list('}{][,:"\\/ a\n\x00é東😀\u2028')), max_size=6)
_ITEM: st.SearchStrategy[Any] = st.fixed_dictionaries(
    {
        "departure-time": st.sampled_from(["2024-01-01T03:00:00", "2024-01-01T03:00+01", "x"]),
        "bus-type": st.sampled_from(["BUS-107", "B},{"]) | _ODD_STRING,
        "passengers": st.integers(0, 100) | st.sampled_from([-1, 100_001, 2**63, True, 1.5]),
        "delay": st.sampled_from(["PT60S", "P0D", "PT1.5S", "P7DT1S", "soon"]),
        "accident": st.booleans() | st.none(),
    }
) | st.sampled_from([5, "x", None, [], {}])


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[list[Any], list[bytes]]:
    items = draw(st.lists(_ITEM, max_size=40))
    style = draw(st.sampled_from(["orjson", "ascii", "indent"]))
    if style == "orjson":
        body = orjson.dumps(items)
    elif style == "ascii":
        body = json.dumps(items, ensure_ascii=True, separators=(",", ":")).encode()
    else:
        body = orjson.dumps(items, option=orjson.OPT_INDENT_2)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    return items, [body[start:end] for start, end in itertools.pairwise([0, *cuts, len(body)])]


@given(chunked_bodies())
@example(([record(**{"bus-type": "a},{b"})], [orjson.dumps([record(**{"bus-type": "a},{b"})])]))
def test_stored_bytes_are_what_orjson_writes(case: tuple[list[Any], list[bytes]]) -> None:
    items, chunks = case
    assert converted_whole(convert_all(chunks, city_id=6)) == reference(6, items)
