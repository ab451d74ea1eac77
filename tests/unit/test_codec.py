"""Stored JSON lines compressed and read back: the codecs, their suffixes, the object path."""

import contextlib
import gzip
import random
from collections.abc import AsyncIterator
from datetime import date
from typing import Any, cast

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from common.codec import (
    CODECS,
    CONTENT_TYPES,
    SUFFIXES,
    Codec,
    Compressor,
    Decompressor,
    TruncatedError,
    codec_of_key,
    compress,
    decompress,
    resolve_level,
)
from common.records import BadRecord
from common.settings import Settings
from consumer.fetcher import City
from consumer.ingest import CityIngest
from consumer.rejects import encode_rejects
from producer.stats.blocks import BadObjectError, lines_totals
from producer.stats.objects import BlockBudget, ByteStream, object_totals
from producer.stats.shared import Workers

COMPRESSED: tuple[Codec, ...] = ("zstd", "gzip")


def lines(count: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return b"".join(
        b'{"city_id":3,"departure_time":"2024-01-01T08:%02d:00","bus_type":"BUS-1%02d",'
        b'"passengers":%d,"delay_seconds":%d.0,"accident":false}\n'
        % (rng.randrange(60), rng.randrange(100), rng.randrange(101), 60 * rng.randrange(121))
        for _ in range(count)
    )


def streamed(data: bytes, codec: Codec, chunk: int, level: int | None = None) -> bytes:
    """``data`` compressed as the consumer does it: chunk by chunk, then one flush."""
    compressor = Compressor(codec, level)
    parts = [compressor.compress(data[at : at + chunk]) for at in range(0, len(data), chunk)]
    return b"".join(parts) + compressor.flush()


@pytest.mark.parametrize(
    ("key", "codec"),
    [
        ("data/date=2024-01-01/run=x/city=1.jsonl.zst", "zstd"),
        ("data/date=2024-01-01/run=x/city=1.jsonl.gz", "gzip"),
        ("data/date=2024-01-01/run=x/city=1.jsonl", "none"),
        ("data/date=2024-01-01/run=x/rejects.jsonl.zst", "zstd"),
    ],
)
def test_the_codec_is_read_from_the_key_suffix(key: str, codec: Codec) -> None:
    assert codec_of_key(key) == codec
    assert key.endswith(SUFFIXES[codec])


def test_levels_default_per_codec_and_are_checked() -> None:
    assert resolve_level("zstd", None) == 1
    assert resolve_level("gzip", None) == 6
    assert resolve_level("none", None) is None
    assert resolve_level("zstd", 19) == 19
    with pytest.raises(ValueError, match=r"gzip levels are 1\.\.9"):
        resolve_level("gzip", 10)
    with pytest.raises(ValueError, match="zstd levels"):
        resolve_level("zstd", 0)


def test_content_types_never_claim_an_encoding() -> None:
    assert CONTENT_TYPES == {
        "zstd": "application/zstd",
        "gzip": "application/gzip",
        "none": "application/x-ndjson",
    }


@pytest.mark.parametrize("codec", CODECS)
def test_streamed_objects_are_one_standard_frame_of_the_same_lines(codec: Codec) -> None:
    data = lines(20_000)
    body = streamed(data, codec, 256 * 1024)
    if codec == "zstd":
        # One frame, with a checksum, read by the reference library as it is.
        frame = zstandard.get_frame_parameters(body)
        assert frame.has_checksum
        assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == data
        assert len(body) < len(data) / 5
    elif codec == "gzip":
        assert gzip.decompress(body) == data  # the standard library's reader: one member
        assert body[:2] == b"\x1f\x8b"
        assert len(body) < len(data) / 5
    else:
        assert body == data
    assert decompress(body, codec) == data


@pytest.mark.parametrize("codec", COMPRESSED)
def test_streaming_costs_no_size_against_compressing_in_one_shot(codec: Codec) -> None:
    """The issue's target: at most 1.1 x what the codec makes of the lines in one shot."""
    data = lines(30_000)
    one_shot = len(compress(data, codec))
    assert len(streamed(data, codec, 256 * 1024)) <= 1.1 * one_shot


@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from(CODECS),
    count=st.integers(0, 400),
    feed=st.integers(1, 5000),
    take=st.integers(1, 9000),
    frames=st.integers(1, 3),
)
def test_any_feeding_and_reading_gives_the_lines_back(
    codec: Codec, count: int, feed: int, take: int, frames: int
) -> None:
    data = lines(count, seed=count)
    body = b"".join(streamed(data, codec, 1000) for _ in range(frames))
    decompressor = Decompressor(codec)
    out: list[bytes] = []
    for at in range(0, len(body), feed):
        decompressor.feed(body[at : at + feed])
        while piece := decompressor.read(take):
            assert len(piece) <= take  # bounded, whatever the ratio
            out.append(piece)
    decompressor.finish()
    assert b"".join(out) == data * frames


@pytest.mark.parametrize("codec", COMPRESSED)
def test_a_truncated_object_is_refused(codec: Codec) -> None:
    body = streamed(lines(2000), codec, 4096)
    with pytest.raises(TruncatedError, match="ends in the middle of a frame"):
        decompress(body[:-3], codec)
    with pytest.raises(TruncatedError):
        decompress(b"not compressed at all, " * 10, codec)


@pytest.mark.parametrize("codec", CODECS)
def test_rejects_are_encoded_with_the_codec(codec: Codec) -> None:
    bad = [BadRecord(city_id=2, reason="no delay", raw="{}"), BadRecord(1, "x", "[]")]
    body = decompress(encode_rejects(bad, codec), codec)
    assert (
        body
        == b'{"city_id":1,"reason":"x","raw":"[]"}\n{"city_id":2,"reason":"no delay","raw":"{}"}\n'
    )


# --- the object path (verify, dates without sums, the backfill) ---------------------------


class Chunks:
    """A stored body served in small reads, as a network stream gives it."""

    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size, self.at = body, size, 0
        self.largest_read = 0

    async def read(self, size: int) -> bytes:
        piece = self.body[self.at : self.at + min(size, self.size)]
        self.at += len(piece)
        return piece


class Source:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    @contextlib.asynccontextmanager
    async def open(self, key: str, etag: str) -> AsyncIterator[ByteStream | None]:
        yield Chunks(self.objects[key], 5000)


@pytest.mark.parametrize("codec", CODECS)
async def test_the_object_path_reads_every_codec_to_the_same_sums(codec: Codec) -> None:
    data = lines(5000, seed=9)
    key = f"data/date=2024-01-01/run=x/city=3{SUFFIXES[codec]}"
    body = streamed(data, codec, 256 * 1024)
    budget = BlockBudget(block_bytes=4096, slots=3, workers=Workers(2))
    read = await object_totals(Source({key: body}), key, "e", budget)
    assert read is not None
    assert read.totals == lines_totals(memoryview(data))
    assert read.bytes_read == len(body)  # as stored: what was fetched


@pytest.mark.parametrize("codec", COMPRESSED)
async def test_the_object_path_refuses_a_truncated_compressed_object(codec: Codec) -> None:
    key = f"data/date=2024-01-01/run=x/city=3{SUFFIXES[codec]}"
    body = streamed(lines(3000), codec, 256 * 1024)[:-4]
    budget = BlockBudget(block_bytes=4096, slots=3, workers=Workers(2))
    with pytest.raises(BadObjectError, match="middle of a frame"):
        await object_totals(Source({key: body}), key, "e", budget)


async def test_the_object_path_goes_by_the_suffix_not_by_the_bytes() -> None:
    """An uncompressed key is never decompressed (a ``.jsonl`` object is read as lines)."""
    data = lines(100)
    key = "data/date=2024-01-01/run=x/city=3.jsonl.zst"
    budget = BlockBudget(block_bytes=4096, slots=3, workers=Workers(2))
    with pytest.raises(BadObjectError):
        await object_totals(Source({key: data}), key, "e", budget)


def test_the_level_setting_is_checked_against_the_codec() -> None:
    assert Settings(object_codec="gzip", object_level=9).object_level == 9
    assert Settings().object_codec == "zstd"
    with pytest.raises(ValidationError, match=r"gzip levels are 1\.\.9"):
        Settings(object_codec="gzip", object_level=12)


async def test_ingest_refuses_a_key_whose_suffix_lies_about_the_codec() -> None:
    """Readers go by the suffix: a zstd object under ``.jsonl`` would be unreadable."""
    ingest = CityIngest(
        reference=cast(Any, None),  # never reached: the key is checked first
        store=cast(Any, None),
        retry=cast(Any, None),
        codec="zstd",
    )
    city = City(id=3, name="Graz", country="Austria")
    with pytest.raises(ValueError, match="suffix of codec zstd"):
        await ingest.ingest(city, date(2024, 1, 1), "data/date=2024-01-01/run=x/city=3.jsonl")
