"""The string-aware scan of a JSON array's items: the same answer however the text is cut."""

import itertools
import json

import numpy as np
import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from common.jsonscan import ScanState, scan


def reference(text: bytes) -> tuple[list[int], list[int], int | None]:
    """Commas between items, item ends and the array's close, one byte at a time."""
    in_string = escaped = False
    depth = 0
    commas: list[int] = []
    ends: list[int] = []
    for offset, byte in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            depth += 1
        elif byte in b"]}":
            depth -= 1
            if depth < 0:
                return commas, ends, offset
            if depth == 0:
                ends.append(offset + 1)
        elif byte == ord(",") and depth == 0:
            commas.append(offset)
    return commas, ends, None


def scan_in_pieces(text: bytes, cuts: list[int]) -> tuple[list[int], list[int], int | None]:
    state = ScanState()
    commas: list[int] = []
    ends: list[int] = []
    bounds = [0, *sorted(cuts), len(text)]
    for start, stop in itertools.pairwise(bounds):
        found = scan(text[start:stop], state)
        commas += (found.commas + start).tolist()
        ends += (found.ends + start).tolist()
        if found.close is not None:
            return commas, ends, found.close + start
    return commas, ends, None


_ALPHABET = st.sampled_from(list('}{][,:"\\ ab\n\té東😀\x00\x7f'))
_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_ALPHABET, max_size=10)
)
_VALUE = st.recursive(
    _LEAF,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(_ALPHABET, max_size=5), children, max_size=4),
    max_leaves=12,
)  # fmt: skip


@st.composite
def arrays(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """The text of a JSON array after its ``[`` (maybe with more after it), and cuts."""
    items = draw(st.lists(_VALUE, max_size=8))
    style = draw(st.sampled_from(["orjson", "indent", "ascii"]))
    if style == "ascii":
        body = json.dumps(items, ensure_ascii=True).encode()
    else:
        body = orjson.dumps(items, option=orjson.OPT_INDENT_2 if style == "indent" else 0)
    text = body[1:] + draw(st.sampled_from([b"", b" ", b'{"after":"]"}']))
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=10))
    return text, cuts


@given(arrays())
@example((b'"a\\\\",{"b":"\\"}"}]', [3, 4]))  # backslash runs cut in the middle
@example((b'"\\\\\\"]",1]', [2, 3, 4]))
def test_scan_finds_what_a_byte_loop_finds(case: tuple[bytes, list[int]]) -> None:
    text, cuts = case
    assert scan_in_pieces(text, cuts) == reference(text)


@given(arrays())
def test_scan_byte_by_byte(case: tuple[bytes, list[int]]) -> None:
    text, _ = case
    assert scan_in_pieces(text, list(range(len(text)))) == reference(text)


def test_strings_hide_every_delimiter() -> None:
    text = orjson.dumps(["}", "]", ",", "{", "[", '"},{"', "\\", "\\}"])[1:]
    found = scan(text, ScanState())
    assert (found.commas.tolist(), found.ends.tolist(), found.close) == reference(text)
    assert len(found.commas) == 7
    assert found.ends.size == 0


def test_close_by_a_brace_is_flagged() -> None:
    found = scan(b'{"a":1}}', ScanState())
    assert found.close == 7
    assert found.mismatched


def test_state_carries_a_string_across_segments() -> None:
    state = ScanState()
    first = scan(b'{"a":"}}},,', state)
    assert state.in_string
    assert first.ends.size == first.commas.size == 0
    second = scan(b'}"},2]', state)
    assert second.ends.tolist() == [3]
    assert second.commas.tolist() == [3]
    assert second.close == 5


def test_state_carries_backslashes_across_segments() -> None:
    state = ScanState()
    scan(b'"ab\\', state)
    assert state.backslashes == 1
    found = scan(b'"",1]', state)  # the first quote is escaped, the second closes
    assert found.close == 4
    assert found.commas.tolist() == [2]


def test_empty_segment_changes_nothing() -> None:
    state = ScanState(in_string=True, backslashes=1, depth=2)
    found = scan(b"", state)
    assert state == ScanState(in_string=True, backslashes=1, depth=2)
    assert found.close is None
    assert isinstance(found.commas, np.ndarray)
