"""The record codec: ISO 8601 durations, record normalisation, JSON lines, the array decoder."""

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from common.records import (
    ACCIDENT,
    BUS_TYPE,
    CITY_ID,
    DELAY_SECONDS,
    DEPARTURE_TIME,
    PASSENGERS,
    ArrayDecoder,
    BadDurationError,
    BadRecord,
    MalformedBodyError,
    OversizedItem,
    Run,
    encode_line,
    format_duration,
    normalise_record,
    parse_duration_seconds,
    parse_items,
)

# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT5340S", 5340.0),
        ("P0D", 0.0),
        ("PT0S", 0.0),
        ("P1DT2H3M4.5S", 93784.5),
        ("PT1.5M", 90.0),
        ("P1W", 604800.0),
        ("PT0,5S", 0.5),
        ("PT36H", 129600.0),
        ("P1DT12H", 129600.0),
        ("PT2M", 120.0),
        ("P2D", 172800.0),
        ("PT1H0M0S", 3600.0),
        ("PT0.25S", 0.25),
        ("P1WT1S", 604801.0),
        ("PT007S", 7.0),
    ],
)
def test_parse_duration_accepts_fixed_length_forms(text: str, seconds: float) -> None:
    assert parse_duration_seconds(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1Y",
        "P1M",  # a month: no fixed length
        "P1Y2M3D",
        "-PT5S",
        "soon",
        "PT5",
        "P1DT",
        "P0DT",
        "PTS",
        "P1H",  # hours need the T
        "PT1D",  # days cannot follow the T
        "P1S",
        "PT5s",
        "pt5s",
        " PT5S",
        "PT5S ",
        "PT5S\n",
        "PT+5S",
        "PT-5S",
        "PT1.S",
        "PT.5S",
        "5340",
        "PT5M4H",  # components out of order
    ],
)
def test_parse_duration_refuses_everything_else(text: str) -> None:
    with pytest.raises(BadDurationError):
        parse_duration_seconds(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "PT\u00b2S",
            id="superscript-digit",
        ),
        pytest.param(
            "PT" + "9" * 400 + "S",
            id="overflow-to-inf",
        ),
    ],
)
def test_parse_duration_refuses_unrepresentable_values(text: str) -> None:
    with pytest.raises(BadDurationError):
        parse_duration_seconds(text)


def test_bad_duration_error_is_a_value_error() -> None:
    assert issubclass(BadDurationError, ValueError)


def test_format_duration_spells_like_the_server() -> None:
    assert format_duration(0) == "P0D"
    assert format_duration(5340) == "PT5340S"
    assert format_duration(1) == "PT1S"


@pytest.mark.parametrize(
    "seconds", [0, 1, 59, 60, 61, 3599, 3600, 5340, 43200, 86399, 86400, 10**9]
)
def test_format_then_parse_round_trips(seconds: int) -> None:
    assert parse_duration_seconds(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**53))
def test_format_then_parse_round_trips_any_count(seconds: int) -> None:
    assert parse_duration_seconds(format_duration(seconds)) == seconds


_PART = st.none() | st.integers(min_value=0, max_value=10**6)


@given(weeks=_PART, days=_PART, hours=_PART, minutes=_PART, seconds=_PART)
def test_parse_duration_equals_the_arithmetic(
    weeks: int | None, days: int | None, hours: int | None, minutes: int | None, seconds: int | None
) -> None:
    assume(any(part is not None for part in (weeks, days, hours, minutes, seconds)))
    text = "P"
    text += f"{weeks}W" if weeks is not None else ""
    text += f"{days}D" if days is not None else ""
    if any(part is not None for part in (hours, minutes, seconds)):
        text += "T"
        text += f"{hours}H" if hours is not None else ""
        text += f"{minutes}M" if minutes is not None else ""
        text += f"{seconds}S" if seconds is not None else ""
    expected = (
        (weeks or 0) * 604800 + (days or 0) * 86400 + (hours or 0) * 3600 + (minutes or 0) * 60
    ) + (seconds or 0)
    assert parse_duration_seconds(text) == expected


@given(
    whole=st.integers(min_value=0, max_value=10**6),
    tenths=st.integers(min_value=0, max_value=9),
    comma=st.booleans(),
)
def test_parse_duration_takes_fractional_seconds(whole: int, tenths: int, comma: bool) -> None:
    separator = "," if comma else "."
    parsed = parse_duration_seconds(f"PT{whole}{separator}{tenths}S")
    assert parsed == pytest.approx(whole + tenths / 10, abs=1e-9)


# --- records ---------------------------------------------------------------------------

VALID: dict[str, Any] = {
    "departure-time": "2024-01-01T03:00:00",
    "bus-type": "BUS-107",
    "passengers": 44,
    "delay": "PT5340S",
    "accident": False,
}
STORED: dict[str, Any] = {
    CITY_ID: 7,
    DEPARTURE_TIME: "2024-01-01T03:00:00",
    BUS_TYPE: "BUS-107",
    PASSENGERS: 44,
    DELAY_SECONDS: 5340.0,
    ACCIDENT: False,
}


def with_field(name: str, value: Any) -> dict[str, Any]:
    return {**VALID, name: value}


def without_field(name: str) -> dict[str, Any]:
    return {key: value for key, value in VALID.items() if key != name}


def test_valid_record_is_stored_in_field_order() -> None:
    stored = normalise_record(7, VALID)
    assert stored == STORED
    assert isinstance(stored, dict)
    assert list(stored) == [CITY_ID, DEPARTURE_TIME, BUS_TYPE, PASSENGERS, DELAY_SECONDS, ACCIDENT]
    assert list(stored) == [
        "city_id",
        "departure_time",
        "bus_type",
        "passengers",
        "delay_seconds",
        "accident",
    ]
    assert isinstance(stored[DELAY_SECONDS], float)


def test_valid_record_variants() -> None:
    item = {**VALID, "delay": "P0D", "accident": True, "passengers": 0, "bus-type": ""}
    assert normalise_record(0, item) == {
        CITY_ID: 0,
        DEPARTURE_TIME: "2024-01-01T03:00:00",
        BUS_TYPE: "",
        PASSENGERS: 0,
        DELAY_SECONDS: 0.0,
        ACCIDENT: True,
    }


def test_extra_fields_are_dropped() -> None:
    assert normalise_record(7, {**VALID, "driver": "Ana"}) == STORED


def test_encode_line_is_one_json_line() -> None:
    stored = normalise_record(0, VALID)
    assert isinstance(stored, dict)
    assert encode_line(stored) == (
        b'{"city_id":0,"departure_time":"2024-01-01T03:00:00","bus_type":"BUS-107",'
        b'"passengers":44,"delay_seconds":5340.0,"accident":false}\n'
    )
    assert orjson.loads(encode_line(stored)) == stored


def test_encode_line_keeps_unicode() -> None:
    stored = normalise_record(3, with_field("bus-type", 'Zürich "Nord"\n東京'))
    assert isinstance(stored, dict)
    line = encode_line(stored)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert orjson.loads(line)[BUS_TYPE] == 'Zürich "Nord"\n東京'


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (without_field("delay"), "missing field delay"),
        (without_field("departure-time"), "missing field departure-time"),
        (without_field("bus-type"), "missing field bus-type"),
        (without_field("passengers"), "missing field passengers"),
        (without_field("accident"), "missing field accident"),
        ({}, "missing field departure-time"),
        (with_field("delay", "soon"), "not an ISO 8601 duration: 'soon'"),
        (with_field("delay", "P1M"), "not an ISO 8601 duration: 'P1M'"),
        (with_field("delay", 5340), "delay is not a string"),
        (with_field("delay", None), "delay is not a string"),
        (with_field("passengers", "many"), "passengers is not a non-negative integer"),
        (with_field("passengers", True), "passengers is not a non-negative integer"),
        (with_field("passengers", False), "passengers is not a non-negative integer"),
        (with_field("passengers", -1), "passengers is not a non-negative integer"),
        (with_field("passengers", 44.0), "passengers is not a non-negative integer"),
        (with_field("passengers", None), "passengers is not a non-negative integer"),
        (with_field("accident", "no"), "accident is not a boolean"),
        (with_field("accident", 0), "accident is not a boolean"),
        (with_field("accident", None), "accident is not a boolean"),
        (with_field("bus-type", 107), "bus-type is not a string"),
        (with_field("departure-time", "yesterday"), "departure-time is not an ISO date-time"),
        (
            with_field("departure-time", "2024-13-01T00:00:00"),
            "departure-time is not an ISO date-time",
        ),
        (
            with_field("departure-time", "2024-01-01 3pm"),
            "departure-time is not an ISO date-time",
        ),
        (with_field("departure-time", 1704078000), "departure-time is not a string"),
    ],
)
def test_malformed_record_is_a_bad_record(item: dict[str, Any], reason: str) -> None:
    result = normalise_record(7, item)
    assert isinstance(result, BadRecord)
    assert result.city_id == 7
    assert reason in result.reason
    assert result.raw == orjson.dumps(item).decode()
    assert orjson.loads(result.raw) == item


@pytest.mark.parametrize("item", [5, [VALID], "text", None, True, 1.5, []], ids=repr)
def test_non_object_item_is_a_bad_record(item: Any) -> None:
    result = normalise_record(2, item)
    assert isinstance(result, BadRecord)
    assert result.city_id == 2
    assert result.reason
    assert result.raw == orjson.dumps(item).decode()


def test_bad_record_raw_is_capped() -> None:
    item = with_field("delay", "x" * 5000)
    result = normalise_record(1, item)
    assert isinstance(result, BadRecord)
    assert len(result.raw) == 2000
    assert result.raw == orjson.dumps(item).decode()[:2000]
    assert len(result.reason) < 200


def test_deeply_nested_item_from_the_decoder_is_a_bad_record() -> None:
    body = b'[{"departure-time":' + b"[" * 300 + b"]" * 300 + b"}]"
    decoder = ArrayDecoder()
    items = decoder.feed(body) + decoder.finish()
    assert len(items) == 1
    result = normalise_record(1, items[0])
    assert isinstance(result, BadRecord)


_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=12,
)
_FIELDS = ["departure-time", "bus-type", "passengers", "delay", "accident"]


@given(
    item=_JSON
    | st.fixed_dictionaries({}, optional={name: _JSON | st.just(VALID[name]) for name in _FIELDS})
)
def test_normalise_record_never_raises(item: Any) -> None:
    result = normalise_record(9, item)
    if isinstance(result, BadRecord):
        assert result.city_id == 9
        assert result.reason
        assert result.raw == orjson.dumps(item).decode()[:2000]
    else:
        assert list(result) == [
            CITY_ID,
            DEPARTURE_TIME,
            BUS_TYPE,
            PASSENGERS,
            DELAY_SECONDS,
            ACCIDENT,
        ]
        assert result[CITY_ID] == 9
        assert type(result[PASSENGERS]) is int
        assert result[PASSENGERS] >= 0
        assert isinstance(result[DELAY_SECONDS], float)
        assert type(result[ACCIDENT]) is bool
        assert orjson.loads(encode_line(result)) == result


# --- the array decoder -----------------------------------------------------------------

TRICKY_ITEMS: list[Any] = [
    {"s": "}"},
    {"s": "},{"},
    {"s": "]"},
    {"s": "["},
    {"s": 'say \\"}\\" and "}," then \\'},
    {"s": "Zürich 東京 😀 \u2028 é"},
    {"nested": {"a": {"b": [1, {"c": "}]"}]}}, "list": [[], [{}], {"x": [None]}]},
    {},
    {"n": -1.5e10, "t": True, "f": False, "z": None},
    {**VALID},
]
TRICKY_BODY = orjson.dumps(TRICKY_ITEMS)


def feed_all(decoder: ArrayDecoder, chunks: list[bytes]) -> list[Any]:
    """Feed chunks without finishing: the items they complete."""
    items: list[Any] = []
    for chunk in chunks:
        items += decoder.feed(chunk)
    return items


def refuse(text: bytes) -> list[Any] | None:
    """A ``fast`` function that takes nothing: the decoder scans everything."""
    del text
    return None


def decode_scanning(decoder: ArrayDecoder, chunks: list[bytes | None]) -> list[Any]:
    items: list[Any] = []
    for chunk in chunks:
        for piece in decoder.split(chunk, refuse):
            if isinstance(piece, Run):
                items += parse_items(piece.text)
            else:
                items.append(piece)
    return items


def decode(chunks: list[bytes], max_item_bytes: int = 1024 * 1024) -> list[Any]:
    """The items of the whole body, both by guessing cuts (``feed``) and by scanning only:
    they must agree, in what they find and in what they refuse."""
    outcomes: list[tuple[str, Any]] = []
    for guessing in (True, False):
        decoder = ArrayDecoder(max_item_bytes=max_item_bytes)
        try:
            if guessing:
                items = feed_all(decoder, chunks) + decoder.finish()
            else:
                items = decode_scanning(decoder, [*chunks, None])
        except MalformedBodyError as error:
            outcomes.append(("refused", error))
        else:
            outcomes.append(("decoded", items))
        # Linear: each byte is looked at a bounded number of times. Items split across
        # many small chunks cost a few rescans of the unfinished item: a case Hypothesis
        # found (deeply nested, indented, cut near its end) took 3.7 times.
        assert decoder.bytes_examined <= 4 * sum(map(len, chunks)) + 256
    assert outcomes[0][0] == outcomes[1][0], outcomes
    if outcomes[0][0] == "refused":
        raise outcomes[0][1]
    assert outcomes[0][1] == outcomes[1][1]
    decoded: list[Any] = outcomes[0][1]
    return decoded


def byte_by_byte(body: bytes) -> list[bytes]:
    return [body[index : index + 1] for index in range(len(body))]


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(body)]
    return [body[start:end] for start, end in itertools.pairwise(bounds)]


def test_tricky_body_is_valid_json_with_awkward_strings() -> None:
    # The fixture itself: braces and brackets inside strings really are in the body.
    for fragment in (b'"}"', b'"},{"', b'"]"', b'"["', b'\\"}'):
        assert fragment in TRICKY_BODY
    assert orjson.loads(TRICKY_BODY) == TRICKY_ITEMS


def test_decoder_whole_body() -> None:
    assert decode([TRICKY_BODY]) == TRICKY_ITEMS


def test_decoder_chunk_ending_right_after_an_item() -> None:
    assert decode([b'[{"a":1}', b',{"b":2}]']) == [{"a": 1}, {"b": 2}]


def test_decoder_byte_by_byte() -> None:
    assert decode(byte_by_byte(TRICKY_BODY)) == TRICKY_ITEMS


def test_decoder_every_two_way_split() -> None:
    for cut in range(len(TRICKY_BODY) + 1):
        assert decode([TRICKY_BODY[:cut], TRICKY_BODY[cut:]]) == TRICKY_ITEMS, cut


def test_decoder_every_two_way_split_not_right_after_a_brace() -> None:
    # The splits inside strings, nested values, between a comma and the next item.
    cuts = [cut for cut in range(len(TRICKY_BODY) + 1) if TRICKY_BODY[cut - 1 : cut] != b"}"]
    assert len(cuts) > len(TRICKY_BODY) * 3 // 4
    for cut in cuts:
        assert decode([TRICKY_BODY[:cut], TRICKY_BODY[cut:]]) == TRICKY_ITEMS, cut


def test_decoder_yields_items_as_soon_as_they_close() -> None:
    decoder = ArrayDecoder()
    assert decoder.feed(b'[{"a":1},{"b"') == [{"a": 1}]
    assert decoder.feed(b':"}"') == []
    assert decoder.feed(b'},{"c":3}') == [{"b": "}"}, {"c": 3}]
    assert decoder.feed(b"]") == []
    assert decoder.finish() == []


PRETTY_BODY = b' \n[\n  {"a": 1} ,\n\t{"b": [1, 2]}\r\n,{"c":"x"}\n]\n  '
PRETTY_ITEMS: list[Any] = [{"a": 1}, {"b": [1, 2]}, {"c": "x"}]


def test_decoder_pretty_printed_body() -> None:
    assert decode([PRETTY_BODY]) == PRETTY_ITEMS


def test_decoder_pretty_printed_body_byte_by_byte() -> None:
    assert decode(byte_by_byte(PRETTY_BODY)) == PRETTY_ITEMS


@pytest.mark.parametrize("body", [b"[]", b"[ ]", b" \n[\n]\n", b"[\r\n\t]"])
def test_decoder_empty_array(body: bytes) -> None:
    assert decode([body]) == []
    assert decode(byte_by_byte(body)) == []


@pytest.mark.parametrize(
    "body",
    [b'[1,2,"x"]', b'[{"a":1},1,{"b":"}"},[2,{"c":[]}],"x",null,true]', b"[[],{},[{}]]"],
)
def test_decoder_non_object_items(body: bytes) -> None:
    assert decode([body]) == orjson.loads(body)


def test_decoder_non_object_items_byte_by_byte() -> None:
    assert decode(byte_by_byte(b'[1, 2,"x" ,[3]]')) == [1, 2, "x", [3]]


_STRING_ALPHABET = st.sampled_from(list('{}[],:" \\\n\tabé東😀'))
_DECODER_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_STRING_ALPHABET, max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(_STRING_ALPHABET, max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)
_DECODER_ITEMS = st.lists(
    st.dictionaries(st.text(_STRING_ALPHABET, max_size=6), _DECODER_VALUE, max_size=5)
    | _DECODER_VALUE,
    max_size=8,
)


@st.composite
def split_bodies(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A JSON array (compact or indented) and where to cut it into chunks."""
    items = draw(_DECODER_ITEMS)
    indent = draw(st.booleans())
    body = orjson.dumps(items, option=orjson.OPT_INDENT_2 if indent else 0)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(body)), max_size=12))
    return body, cuts


@given(split_bodies())
@example((b"[null,{},{}]", [8]))  # a chunk ending right after an item
@example(  # nested and indented, cut near the end: 3.7 bytes examined per byte
    (
        b'[\n  {},\n  null,\n  null,\n  {\n    "": null,\n    ",": null,\n    "b\\n": '
        b'1.1954243314958214e+16,\n    "b\xe6\x9d\xb1]\\t\xc3\xa9,": [\n      null,\n'
        b'      ",,[\xf0\x9f\x98\x80:\\"\xf0\x9f\x98\x80\\t\xc3\xa9{ }",\n      {\n'
        b'        "": null,\n        ":": null,\n        "::\\"\xe6\x9d\xb1": null\n'
        b"      }\n    ]\n  }\n]",
        [240],
    )
)
def test_decoder_any_split_gives_what_orjson_gives(case: tuple[bytes, list[int]]) -> None:
    body, cuts = case
    assert decode(split_at(body, cuts)) == orjson.loads(body)


@given(split_bodies())
def test_decoder_any_split_not_after_a_brace_gives_what_orjson_gives(
    case: tuple[bytes, list[int]],
) -> None:
    body, cuts = case
    cuts = [cut for cut in cuts if body[cut - 1 : cut] not in {b"}", b" ", b"\n"}]
    assert decode(split_at(body, cuts)) == orjson.loads(body)


SMALL_ITEMS: list[Any] = [{"a": "}", "b": [1, {"c": 2}]}, {"d": "],["}, 3, "x"]
SMALL_BODY = orjson.dumps(SMALL_ITEMS)


@pytest.mark.parametrize(
    "bytewise",
    [False, pytest.param(True)],
    ids=["prefix", "bytewise"],
)
def test_decoder_truncated_at_every_position(bytewise: bool) -> None:
    for cut in range(len(SMALL_BODY) + 1):
        decoder = ArrayDecoder()
        items: list[Any] = []
        for chunk in byte_by_byte(SMALL_BODY[:cut]) if bytewise else [SMALL_BODY[:cut]]:
            items += decoder.feed(chunk)
        if cut == len(SMALL_BODY):
            assert items + decoder.finish() == SMALL_ITEMS
        else:
            assert items == SMALL_ITEMS[: len(items)], cut
            with pytest.raises(MalformedBodyError):
                decoder.finish()


@pytest.mark.parametrize("body", [b"", b" ", b"\n\t "])
def test_decoder_empty_body(body: bytes) -> None:
    decoder = ArrayDecoder()
    assert decoder.feed(body) == []
    with pytest.raises(MalformedBodyError, match="empty response body"):
        decoder.finish()


@pytest.mark.parametrize(
    "body", [b'{"a":1}', b"null", b"<html>", b"  x[]", b'"[]"', b"1", b"\xef\xbb\xbf[]"]
)
def test_decoder_refuses_a_body_that_is_not_an_array(body: bytes) -> None:
    with pytest.raises(MalformedBodyError, match="not a JSON array"):
        ArrayDecoder().feed(body)
    with pytest.raises(MalformedBodyError, match="not a JSON array"):
        feed_all(ArrayDecoder(), byte_by_byte(body))


def test_decoder_refuses_data_after_the_array_in_a_later_chunk() -> None:
    decoder = ArrayDecoder()
    assert decoder.feed(b'[{"a":1}]') == [{"a": 1}]
    assert decoder.feed(b" \n") == []
    with pytest.raises(MalformedBodyError, match="data after the end"):
        decoder.feed(b"x")


def test_decoder_refuses_data_after_the_array_byte_by_byte() -> None:
    with pytest.raises(MalformedBodyError):
        decode(byte_by_byte(b'[{"a":1}]{"b":2}'))


def test_decoder_accepts_trailing_whitespace() -> None:
    assert decode([b'[{"a":1}]\n \r\n']) == [{"a": 1}]


@pytest.mark.parametrize(
    "body",
    [
        b"[]x",
        b"[] []",
        b"[1]x",
        b'[{"a":1},,{"b":2}]',
        b'[{"a":1]',
        b'[{"a":}]',
        pytest.param(b'[{"a":1}]x', id="object-then-junk"),
        pytest.param(b'[{"a":1}] ]', id="object-then-bracket"),
        pytest.param(b'[{"a":1}][{"b":2}]', id="two-arrays"),
        pytest.param(b'[{"a":1}{"b":2}]', id="missing-comma"),
        pytest.param(b'[{"a":1},]', id="trailing-comma"),
        pytest.param(b'[,{"a":1}]', id="leading-comma"),
    ],
)
def test_decoder_refuses_what_json_refuses(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    with pytest.raises(MalformedBodyError):
        decode([body])


def test_decoder_passes_over_an_item_longer_than_the_limit() -> None:
    body = b'[{"a":1},{"s":"' + b"x" * 200 + b'"},{"b":2}]'
    for chunks in ([body], split_at(body, list(range(0, len(body), 10))), byte_by_byte(body)):
        items = decode(chunks, max_item_bytes=100)
        assert items[0] == {"a": 1}
        assert items[2] == {"b": 2}
        oversized = items[1]
        assert isinstance(oversized, OversizedItem)
        assert oversized.size == len(b'{"s":"' + b"x" * 200 + b'"}')
        assert oversized.limit == 100
        rejected = normalise_record(4, oversized)
        assert isinstance(rejected, BadRecord)
        assert rejected.reason == "item longer than 100 bytes"
        assert rejected.raw.startswith('{"s":"xxx')


def test_decoder_never_buffers_an_oversized_item_whole() -> None:
    item = b'{"s":"' + b"}" * 5000 + b'"}'
    body = b"[" + item + b"]"
    decoder = ArrayDecoder(max_item_bytes=1000)
    items: list[Any] = []
    for chunk in split_at(body, list(range(0, len(body), 64))):
        items += decoder.feed(chunk)
        assert len(decoder._buffer) <= 1000 + 64
    items += decoder.finish()
    assert [(item.size, item.limit) for item in items] == [(len(item), 1000)]


@pytest.mark.parametrize(
    ("item", "size"),
    [
        pytest.param(b'  {"a": [1, 2]}  ', 13, id="object: to its bracket"),
        pytest.param(b'  "abc"  ', 7, id="scalar: to the delimiter"),
    ],
)
def test_item_size_does_not_depend_on_chunks(item: bytes, size: int) -> None:
    body = b"[0," + item + b",0]"
    for cut in range(len(body) + 1):
        assert decode([body[:cut], body[cut:]], max_item_bytes=size) == orjson.loads(body), cut
        zero, oversized, other = decode([body[:cut], body[cut:]], max_item_bytes=size - 1)
        assert zero == other == 0
        assert isinstance(oversized, OversizedItem), cut
        assert (oversized.size, oversized.limit) == (size, size - 1), cut


def test_decoder_limit_is_per_item_not_per_body() -> None:
    items = [{"i": index, "s": "}" * 20} for index in range(200)]
    body = orjson.dumps(items)
    assert len(body) > 10 * 100
    cuts = list(range(0, len(body), 7))
    assert decode(split_at(body, cuts), max_item_bytes=100) == items


# --- linear work ---------------------------------------------------------------------------


@pytest.mark.parametrize("filler", [b"}", b"x", b"},{", b'\\"'])
@pytest.mark.parametrize("chunk_bytes", [1, 1000, 65536])
def test_decoder_work_is_linear_for_one_big_item(filler: bytes, chunk_bytes: int) -> None:
    size = 200_000 if chunk_bytes > 1 else 20_000
    text = b'{"departure-time":"' + filler * (size // len(filler)) + b'"}'
    body = b"[" + text + b"," + text + b"]"
    decoder = ArrayDecoder()
    chunks = split_at(body, list(range(0, len(body), chunk_bytes)))
    assert len(feed_all(decoder, chunks) + decoder.finish()) == 2
    assert decoder.bytes_examined <= 3 * len(body)


def test_decoder_work_is_linear_for_many_small_items_byte_by_byte() -> None:
    body = orjson.dumps(
        [{"s": "}" * (index % 7), "n": [index, {"m": "]"}]} for index in range(300)]
    )
    decoder = ArrayDecoder()
    assert len(feed_all(decoder, byte_by_byte(body)) + decoder.finish()) == 300
    assert decoder.bytes_examined <= 3 * len(body)


def test_decoder_work_is_linear_when_every_guess_fails() -> None:
    # Every chunk ends inside a string holding "}": every guess is wrong.
    item = b'{"a":"}}}}","b":"' + b"x" * 100 + b'"}'
    body = b"[" + b",".join([item] * 500) + b"]"
    cuts = [index * len(item) + 8 for index in range(500)]
    decoder = ArrayDecoder()
    assert len(feed_all(decoder, split_at(body, cuts)) + decoder.finish()) == 500
    assert decoder.bytes_examined <= 3 * len(body)
