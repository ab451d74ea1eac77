"""Sums of stored JSON lines, one block of an object at a time (blocking: run in a thread).

An object is read in blocks of a fixed size, cut anywhere, so that memory never depends
on the object's size. :func:`parse_block` sums the block's complete lines and hands back
the cut lines at both ends; :func:`stitch` joins the cut lines of consecutive blocks and
adds everything up. Lines as the consumer writes them are split by pyarrow's CSV
tokenizer (about twice as fast as its JSON parser, every value checked against its key);
any other form of JSON lines goes through pyarrow's JSON reader with an explicit schema
of the three needed fields. pandas sums the columns.

Sums are exact: integer columns are summed by numpy only when the sum provably fits in
int64, by Python otherwise. A block pyarrow cannot read as int64 (a passengers value
above it, in an object written before ingest bounded values) is summed again by
:func:`exact_totals` with the standard library's JSON parser and Python integers; a block
that parser refuses too raises :class:`BadObjectError`, quoting the line.
"""

import json
import math
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pa_csv
from pyarrow import json as pa_json

from common.records import ACCIDENT, DELAY_SECONDS, PASSENGERS
from producer.stats.figures import ZERO, Totals

INT64_MAX: Final = 2**63 - 1
MAX_LINE_BYTES: Final = 16 * 1024 * 1024  # a longer "line" is not a record
_SCHEMA: Final = pa.schema(
    [(PASSENGERS, pa.int64()), (DELAY_SECONDS, pa.float64()), (ACCIDENT, pa.bool_())]
)
_PARSE_OPTIONS: Final = pa_json.ParseOptions(
    explicit_schema=_SCHEMA, unexpected_field_behavior="ignore"
)


class BadObjectError(ValueError):
    """Stored lines that are not records (not JSON, or a field missing or mistyped)."""


@dataclass(frozen=True, slots=True)
class Block:
    """A block's complete lines summed, and its cut lines at both ends.

    ``head`` runs up to and including the first newline, ``tail`` follows the last one.
    A block without any newline is all ``tail`` (a piece of one long line).
    """

    head: bytes
    totals: Totals
    tail: bytes
    has_newline: bool


def parse_block(data: bytes) -> Block:
    first = data.find(b"\n")
    if first < 0:
        return Block(b"", ZERO, data, has_newline=False)
    last = data.rfind(b"\n")
    middle = memoryview(data)[first + 1 : last + 1]
    return Block(data[: first + 1], lines_totals(middle), data[last + 1 :], has_newline=True)


def stitch(blocks: list[Block]) -> Totals:
    """The sums of a whole object from its blocks, in order."""
    total = ZERO
    carry = b""
    for block in blocks:
        if not block.has_newline:
            carry += block.tail
        else:
            total += lines_totals(carry + block.head) + block.totals
            carry = block.tail
        if len(carry) > MAX_LINE_BYTES:
            raise BadObjectError(f"a line longer than {MAX_LINE_BYTES} bytes")
    return total + lines_totals(carry)


def lines_totals(lines: bytes | memoryview) -> Totals:
    """Sums of complete JSON lines (blank lines allowed)."""
    if len(lines) == 0:
        return ZERO
    if len(lines) < _SMALL:
        return exact_totals(lines)  # a cut line: not worth pyarrow's set-up
    buffer = pa.py_buffer(lines)
    table = _stored_layout(buffer)
    if table is None:
        table = _any_layout(buffer)
    if table is None:
        return exact_totals(lines)  # let the exact path sum it, or name the bad line
    if table.num_rows == 0:
        return ZERO
    frame = table.to_pandas()
    passengers = frame[PASSENGERS]
    count = len(frame)
    largest = max(abs(int(passengers.max())), abs(int(passengers.min())))
    if largest * count <= INT64_MAX:
        passenger_sum = int(passengers.sum())
    else:  # numpy would wrap around: add them up as Python integers
        passenger_sum = sum(passengers.tolist())
    return Totals(
        departures=count,
        passengers=passenger_sum,
        accident=bool(frame[ACCIDENT].any()),
        delay_seconds=float(frame[DELAY_SECONDS].sum()),
    )


# The fast path: lines exactly as the consumer writes them (orjson, fields in this order,
# no spaces) are six comma-separated fields, which pyarrow's CSV tokenizer splits several
# times faster than its JSON parser parses them. Every value is checked to start with its
# own key, so a line of any other form (another order, a comma inside a string, which
# adds a column, a quote, which JSON escapes) is never misread: the block goes to the
# JSON parser instead.
_FIELDS: Final = ("city_id", "departure_time", "bus_type", PASSENGERS, DELAY_SECONDS, ACCIDENT)
_PASSENGERS_KEY: Final = f'"{PASSENGERS}":'
_DELAY_KEY: Final = f'"{DELAY_SECONDS}":'
_ACCIDENT_TRUE: Final = f'"{ACCIDENT}":true}}'
_ACCIDENT_FALSE: Final = f'"{ACCIDENT}":false}}'
_CSV_PARSE: Final = pa_csv.ParseOptions(
    delimiter=",", quote_char=False, escape_char=False, double_quote=False
)
_CSV_CONVERT: Final = pa_csv.ConvertOptions(
    column_types=dict.fromkeys(_FIELDS, pa.string()),
    include_columns=[PASSENGERS, DELAY_SECONDS, ACCIDENT],
    strings_can_be_null=False,
    quoted_strings_can_be_null=False,
)


def _stored_layout(buffer: pa.Buffer) -> pa.Table | None:
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(buffer),
            read_options=pa_csv.ReadOptions(
                column_names=list(_FIELDS), use_threads=False, block_size=_block_size(buffer)
            ),
            parse_options=_CSV_PARSE,
            convert_options=_CSV_CONVERT,
        )
        count = table.column(PASSENGERS)
        late = table.column(DELAY_SECONDS)
        crash = table.column(ACCIDENT)
        crashed = pc.equal(crash, _ACCIDENT_TRUE)
        if not (
            pc.all(pc.starts_with(count, _PASSENGERS_KEY)).as_py() is not False
            and pc.all(pc.starts_with(late, _DELAY_KEY)).as_py() is not False
            and pc.all(pc.or_(crashed, pc.equal(crash, _ACCIDENT_FALSE))).as_py() is not False
        ):
            return None
        return pa.table(
            {
                PASSENGERS: pc.cast(
                    pc.utf8_slice_codeunits(count, len(_PASSENGERS_KEY)), pa.int64()
                ),
                DELAY_SECONDS: pc.cast(
                    pc.utf8_slice_codeunits(late, len(_DELAY_KEY)), pa.float64()
                ),
                ACCIDENT: crashed,
            }
        )
    except pa.ArrowInvalid:  # another form of line, or a value int64 or float64 cannot hold
        return None


def _any_layout(buffer: pa.Buffer) -> pa.Table | None:
    """Any JSON lines with the three fields (other fields skipped); None if not."""
    try:
        table = pa_json.read_json(
            pa.BufferReader(buffer),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=_block_size(buffer)),
            parse_options=_PARSE_OPTIONS,
        )
    except pa.ArrowInvalid:
        return None
    if any(column.null_count for column in table.columns):
        return None  # a field missing
    return table


_SMALL: Final = 4096


def _block_size(buffer: pa.Buffer) -> int:
    # One parse block for the whole region: parallelism comes from blocks in flight.
    return max(1 << 20, int(buffer.size) + 1)


def exact_totals(lines: bytes | memoryview) -> Totals:
    """Sums of JSON lines with Python integers, whatever their size; slow, but exact."""
    departures = passengers = 0
    accident = False
    delay = 0.0
    for line in bytes(lines).splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise BadObjectError(f"a line is not JSON ({error}): {line[:80]!r}") from None
        count, late, crash = _fields(record, line)
        departures += 1
        passengers += count
        accident = accident or crash
        delay += late
    return Totals(departures, passengers, accident, delay)


def _fields(record: Any, line: bytes) -> tuple[int, float, bool]:
    where = f"in line {line[:80]!r}"
    if not isinstance(record, dict):
        raise BadObjectError(f"not a JSON object {where}")
    count = record.get(PASSENGERS)
    late = record.get(DELAY_SECONDS)
    crash = record.get(ACCIDENT)
    if not isinstance(count, int) or isinstance(count, bool):
        raise BadObjectError(f"{PASSENGERS} is not an integer {where}")
    if not isinstance(late, int | float) or isinstance(late, bool):
        raise BadObjectError(f"{DELAY_SECONDS} is not a number {where}")
    try:
        seconds = float(late)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise BadObjectError(f"{DELAY_SECONDS} is not a finite number {where}")
    if not isinstance(crash, bool):
        raise BadObjectError(f"{ACCIDENT} is not a boolean {where}")
    return count, seconds, crash
