"""The byte-level rewrite of the usual record form: orjson's bytes, or a refusal."""

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from common.records import BadRecord, normalise_record
from consumer import canonical
from consumer.canonical import Lines, rewrite

USUAL = (
    b'{"departure-time":"2024-01-01T03:00:00","bus-type":"BUS-107","passengers":44,'
    b'"delay":"PT5340S","accident":false}'
)
FIELDS = ["departure-time", "bus-type", "passengers", "delay", "accident"]
STORED = (
    b'{"city_id":7,"departure_time":"2024-01-01T03:00:00","bus_type":"BUS-107",'
    b'"passengers":44,"delay_seconds":5340.0,"accident":false}\n'
)


def expected(city_id: int, items: list[Any]) -> tuple[bytes, int, int, bool, float] | None:
    """What the general path stores for ``items``: lines (orjson.dumps of each normalised
    record, as the consumer always wrote them) and sums; None if one is a bad record."""
    lines = b""
    passengers, accident, delays = 0, False, []
    for item in items:
        record = normalise_record(city_id, item)
        if isinstance(record, BadRecord):
            return None
        lines += orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        passengers += record["passengers"]
        accident = accident or record["accident"]
        delays.append(record["delay_seconds"])
    return lines, len(items), passengers, accident, math.fsum(delays)


def as_tuple(lines: Lines) -> tuple[bytes, int, int, bool, float]:
    return lines.lines, lines.records, lines.passengers, lines.accident, lines.delay_seconds


def test_one_usual_record() -> None:
    lines = rewrite(USUAL, 7)
    assert lines is not None
    assert lines.lines == STORED
    assert (lines.records, lines.passengers, lines.accident, lines.delay_seconds) == (
        1,
        44,
        False,
        5340.0,
    )


def test_a_run_of_usual_records() -> None:
    items = [
        {
            "departure-time": f"2024-01-01T{hour:02d}:00:00",
            "bus-type": f"BUS-{hour}",
            "passengers": hour,
            "delay": "P0D" if hour % 3 == 0 else f"PT{hour * 60}S",
            "accident": hour == 5,
        }
        for hour in range(12)
    ]
    text = orjson.dumps(items)[1:-1]
    lines = rewrite(text, 3)
    assert lines is not None
    assert as_tuple(lines) == expected(3, items)
    assert lines.accident


def test_accident_in_the_last_record_counts() -> None:
    text = USUAL + b"," + USUAL.replace(b"false", b"true")
    lines = rewrite(text, 1)
    assert lines is not None
    assert lines.accident


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(USUAL.replace(b"BUS-107", b'BUS-\\"107'), id="escape"),
        pytest.param(USUAL.replace(b'"BUS-107"', b'"BUS-\\u0031"'), id="unicode-escape"),
        pytest.param(USUAL.replace(b",", b", "), id="whitespace"),
        pytest.param(b" " + USUAL, id="leading-space"),
        pytest.param(USUAL + b",", id="trailing-comma"),
        pytest.param(USUAL + b"," + USUAL + b" ", id="trailing-space"),
        pytest.param(USUAL[:-1] + b',"driver":"Ana"}', id="extra-field"),
        pytest.param(
            USUAL.replace(b'"bus-type":"BUS-107",', b"").replace(b"{", b'{"bus-type":"B",'),
            id="other-order",
        ),
        pytest.param(USUAL.replace(b'"delay":"PT5340S",', b""), id="missing-field"),
        pytest.param(USUAL.replace(b"44", b"-1"), id="negative-passengers"),
        pytest.param(USUAL.replace(b"44", b"100001"), id="passengers-over-the-bound"),
        pytest.param(USUAL.replace(b"44", b"44.0"), id="float-passengers"),
        pytest.param(USUAL.replace(b"44", b"true"), id="boolean-passengers"),
        pytest.param(USUAL.replace(b"44", b"9223372036854775808"), id="passengers-over-int64"),
        pytest.param(USUAL.replace(b"PT5340S", b"P8D"), id="delay-over-the-bound"),
        pytest.param(USUAL.replace(b"PT5340S", b"soon"), id="bad-delay"),
        pytest.param(USUAL.replace(b"false", b"0"), id="number-flag"),
        pytest.param(USUAL.replace(b"03:00:00", b"25:00:00"), id="bad-time"),
        pytest.param(USUAL.replace(b'"BUS-107"', b"107"), id="number-bus-type"),
        pytest.param(USUAL.replace(b"BUS-107", b"BUS\x01107"), id="control-character"),
        pytest.param(USUAL.replace(b"BUS-107", b"BUS\xff"), id="not-utf-8"),
        pytest.param(b"[" + USUAL + b"]", id="an-array"),
        pytest.param(b"", id="empty"),
        pytest.param(b"5", id="a-number"),
    ],
)
def test_anything_else_is_refused(text: bytes) -> None:
    assert rewrite(text, 1) is None


def test_a_refusal_leaves_the_memo_usable() -> None:
    assert rewrite(USUAL.replace(b"44", b"-1"), 1) is None
    lines = rewrite(USUAL, 7)
    assert lines is not None
    assert lines.lines == STORED


def test_a_full_memo_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canonical, "_MEMO_ENTRIES", 4)
    items = [
        {
            "departure-time": f"2024-01-01T03:{minute:02d}:00",
            "bus-type": f"B{minute}",
            "passengers": minute,
            "delay": f"PT{minute}S",
            "accident": False,
        }
        for minute in range(30)
    ]
    for start in range(0, 30, 3):
        part = items[start : start + 3]
        lines = rewrite(orjson.dumps(part)[1:-1], 2)
        assert lines is not None
        assert as_tuple(lines) == expected(2, part)
    assert len(canonical._TIME.stored) <= 4 + 3


# --- byte for byte what orjson writes ------------------------------------------------------

_ODD_TEXT = st.text(
    st.sampled_from(list('}{][,:"\\/ ab\n\t\x00\x1f\x7fé東😀\u2028\u2029')), max_size=8
) | st.text(max_size=8)
_TIMES = (
    st.sampled_from(["2024-01-01T03:00:00", "2024-02-29T23:59:59", "2024-01-01T00:00:00"])
    | st.datetimes().map(lambda moment: moment.isoformat())
    | st.sampled_from(["2024-01-01T03:00+01", "2024-01-01T03:00:00.5", "2024-01-01", "x"])
    | _ODD_TEXT
)
_COUNTS = (
    st.integers(0, 100)
    | st.integers(-3, 100_003)
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -(2**63)])
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _ODD_TEXT
)
_DELAYS = (
    st.integers(0, 7200).map(lambda seconds: f"PT{seconds}S")
    | st.sampled_from(
        ["P0D", "PT0S", "PT007S", "P1DT2H", "PT1.5S", "PT0,5S", "P7D", "P7DT1S", "PT604801S"]
    )
    | st.sampled_from(["PT-1S", "PT1e2S", "soon", "", "P1M"])
    | _ODD_TEXT
    | st.integers(0, 10)
)
_FLAGS = st.booleans() | st.sampled_from([0, 1, None, "false"])
_USUAL_RECORD = st.fixed_dictionaries(
    {
        "departure-time": st.sampled_from(["2024-01-01T03:00:00", "2024-01-01T11:59:00"]),
        "bus-type": st.sampled_from(["BUS-107", "BUS-199", ""]),
        "passengers": st.integers(0, 100),
        "delay": st.sampled_from(["PT5340S", "P0D", "PT60S"]),
        "accident": st.booleans(),
    }
)
_ODD_RECORD = st.fixed_dictionaries(
    {
        "departure-time": _TIMES,
        "bus-type": _ODD_TEXT | st.integers(0, 9),
        "passengers": _COUNTS,
        "delay": _DELAYS,
        "accident": _FLAGS,
    },
    optional={"driver": _ODD_TEXT},
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[list[Any], bytes]:
    """Records (mostly the usual form) and the text of a run of them, in a JSON style."""
    items = draw(st.lists(_USUAL_RECORD | _ODD_RECORD, min_size=1, max_size=12))
    style = draw(st.sampled_from(["orjson", "ascii", "spaced"]))
    if style == "orjson":
        body = orjson.dumps(items)
    else:
        separators = (",", ":") if style == "ascii" else (", ", ": ")
        body = json.dumps(items, ensure_ascii=True, separators=separators).encode()
    return items, body[1:-1]


@given(bodies())
@example(([{**orjson.loads(USUAL), "bus-type": "a},{b"}], USUAL.replace(b"BUS-107", b"a},{b")))
@example(
    (
        [{**orjson.loads(USUAL), "bus-type": "é\u2028"}],
        USUAL.replace(b"BUS-107", b"\\u00e9\\u2028"),
    )
)
@example(([{**orjson.loads(USUAL), "bus-type": 'a":"b'}], USUAL.replace(b"BUS-107", b'a\\":\\"b')))
def test_rewrite_writes_what_orjson_writes_or_refuses(case: tuple[list[Any], bytes]) -> None:
    items, text = case
    lines = rewrite(text, 9)
    want = expected(9, items)
    if lines is not None:
        assert as_tuple(lines) == want
    elif want is not None:
        # Refused though every record is valid: only for text the usual form excludes.
        assert b"\\" in text or b", " in text or any(list(item) != FIELDS for item in items)
