"""What each codec makes of a production-size date (``make bench ARGS='--only ingest'``).

One date of the simulator's production profile (30 cities of 78-88k records), converted
to the stored lines by the consumer's own :func:`consumer.convert.convert` in 256 KiB
chunks, then compressed city by city, for each codec and level offered, the way the
consumer compresses (:class:`common.codec.Compressor`, chunk by chunk, one frame an
object), and with zstd level 1 in one shot (the issue's yardstick). Own CPU per MB of
lines to compress and to decompress; bytes a record; bytes a 366-date year.
"""

import time
from dataclasses import dataclass
from datetime import date
from typing import Final

from common.codec import Codec, Compressor, compress, decompress
from common.records import ArrayDecoder
from consumer.convert import convert
from refsim.config import SimulatorConfig
from refsim.data import cities as cities_of
from refsim.data import data_seed, render_chunks

MB: Final = 1_000_000
CHUNK_BYTES: Final = 256 * 1024
YEAR: Final = 366
OPTIONS: Final[tuple[tuple[Codec, int | None], ...]] = (
    ("none", None),
    ("zstd", 1),
    ("zstd", 3),
    ("gzip", 1),
    ("gzip", 6),
)


@dataclass(frozen=True)
class CodecRow:
    codec: Codec
    level: int | None
    stored: int
    compress_seconds: float
    decompress_seconds: float


@dataclass(frozen=True)
class CodecSizes:
    records: int
    line_bytes: int
    zstd1_one_shot: int
    rows: list[CodecRow]


def date_lines(config: SimulatorConfig, day: date) -> list[list[bytes]]:
    """Each city's stored lines, in the 256 KiB-of-body chunks the consumer converts."""
    cities: list[list[bytes]] = []
    for city in cities_of(config):
        city_id = city.id
        body = "".join(render_chunks(config, data_seed(config, city_id, day), day)).encode()
        decoder = ArrayDecoder()
        pieces = [body[at : at + CHUNK_BYTES] for at in range(0, len(body), CHUNK_BYTES)]
        cities.append([convert(decoder, city_id, piece).lines for piece in [*pieces, None]])
    return cities


def measure(config: SimulatorConfig, day: date) -> CodecSizes:
    cities = date_lines(config, day)
    records = sum(chunk.count(b"\n") for chunks in cities for chunk in chunks)
    line_bytes = sum(len(chunk) for chunks in cities for chunk in chunks)
    one_shot = sum(len(compress(b"".join(chunks), "zstd", 1)) for chunks in cities)
    rows = []
    for codec, level in OPTIONS:
        stored = 0
        spent = 0.0
        objects: list[bytes] = []
        for chunks in cities:
            clock = time.process_time()
            compressor = Compressor(codec, level)
            parts = [compressor.compress(chunk) for chunk in chunks]
            parts.append(compressor.flush())
            spent += time.process_time() - clock
            objects.append(b"".join(parts))
            stored += len(objects[-1])
        clock = time.process_time()
        for body in objects:
            decompress(body, codec)
        rows.append(CodecRow(codec, level, stored, spent, time.process_time() - clock))
    return CodecSizes(records, line_bytes, one_shot, rows)


def table(sizes: CodecSizes, date_records: int) -> tuple[list[str], list[list[str]]]:
    """The rows; a year is 366 dates of ``date_records`` records."""
    headers = [
        "codec",
        "level",
        "ratio",
        "bytes / record",
        "vs zstd-1 one shot",
        "a 366-date year",
        "compress ms / MB",
        "decompress ms / MB",
    ]
    mb = sizes.line_bytes / MB
    rows = [
        [
            row.codec,
            "-" if row.level is None else str(row.level),
            f"{sizes.line_bytes / row.stored:.2f}",
            f"{row.stored / sizes.records:.2f}",
            f"{row.stored / sizes.zstd1_one_shot:.3f}",
            f"{row.stored / sizes.records * date_records * YEAR / 1e9:.2f} GB",
            "-" if row.codec == "none" else f"{row.compress_seconds * 1000 / mb:.2f}",
            "-" if row.codec == "none" else f"{row.decompress_seconds * 1000 / mb:.2f}",
        ]
        for row in sizes.rows
    ]
    return headers, rows
