"""How stored JSON lines are compressed: codec names, key suffixes and streaming codecs.

A city object (and a run's rejects) is one zstd frame or one gzip member, compressed as
it streams: :class:`Compressor` takes the lines chunk by chunk and hands back whatever
compressed bytes are ready, :meth:`Compressor.flush` ends the frame. Readers pick the
codec from the key's suffix (:func:`codec_of_key`), as DuckDB, pandas, polars, Athena and
Spark do: ``city=<id>.jsonl.zst``, ``city=<id>.jsonl.gz``, ``city=<id>.jsonl``. Objects
written before compression existed end in ``.jsonl`` and read as they are.

The default is zstd level 1. Measured on 10.8 MB of one production-size city (83,000
simulator records), in 256 KiB chunks as the consumer feeds them:

===========  ============  =========  ==============================  ===============
codec        bytes/record  ratio      size vs zstd-1 in one shot      context memory
===========  ============  =========  ==============================  ===============
zstd 1       8.9           14.6       1.00                            0.58 MB
zstd 3       10.1          12.9       1.13                            1.30 MB
gzip 1       11.9          10.9       -                               ~0.3 MB
gzip 6       9.9           13.2       -                               ~0.3 MB
===========  ============  =========  ==============================  ===============

zstd 1 is both the smallest and the cheapest of these on these lines (level 3's larger
window finds nothing more in records this repetitive, and its lazier match finder costs
about twice the CPU), and its small window (512 KiB) keeps a compressor at about 0.6 MB
for each city in flight. gzip's default is zlib's own (6), the level ``gzip`` uses: a
user who picks gzip does it for a reader that only knows gzip (BigQuery) and gets a
size close to zstd's.

Compressing one 256 KiB chunk takes about 0.3 ms (zstd 1) to 3 ms (gzip 6), less
than converting it (about 4 ms, :mod:`consumer.convert`): the consumer does it on the
event loop, beside the conversion, for the same reasons.

zstd frames carry a content checksum (checked by every reader on decompression); gzip
members carry their CRC-32 by definition.
"""

import zlib
from collections import deque
from typing import Final, Literal, get_args

import zstandard

Codec = Literal["zstd", "gzip", "none"]
CODECS: Final[tuple[Codec, ...]] = get_args(Codec)
DEFAULT_CODEC: Final[Codec] = "zstd"

SUFFIXES: Final[dict[Codec, str]] = {"zstd": ".jsonl.zst", "gzip": ".jsonl.gz", "none": ".jsonl"}
DEFAULT_LEVELS: Final[dict[Codec, int | None]] = {"zstd": 1, "gzip": 6, "none": None}
LEVELS: Final[dict[Codec, range]] = {
    "zstd": range(1, 23),  # zstd's ordinary levels (negative "fast" levels left out)
    "gzip": range(1, 10),
    "none": range(0),
}

# The object's own format, not an encoding of the transfer: a client that downloads
# ``city=1.jsonl.zst`` gets the zstd bytes, and a reader that goes by suffix or by type
# knows what they are. ``Content-Encoding`` is never set: HTTP clients (and some stores'
# gateways) would decompress on the fly, and sizes, ETags and ranges would stop meaning
# the stored bytes.
CONTENT_TYPES: Final[dict[Codec, str]] = {
    "zstd": "application/zstd",
    "gzip": "application/gzip",
    "none": "application/x-ndjson",
}

_GZIP_WBITS: Final = 31  # zlib's deflate wrapped in a gzip header and trailer
_INFLATE_SLICE: Final = 128 * 1024  # compressed bytes decompressed at a time (bounds output)


def codec_of_key(key: str) -> Codec:
    """The codec a stored object's key says: ``.zst`` zstd, ``.gz`` gzip, else none."""
    if key.endswith(".zst"):
        return "zstd"
    if key.endswith(".gz"):
        return "gzip"
    return "none"


def resolve_level(codec: Codec, level: int | None) -> int | None:
    """``level``, or the codec's default when ``None``; raise if the codec has no such level."""
    if codec == "none":
        return None
    chosen = DEFAULT_LEVELS[codec] if level is None else level
    if chosen not in LEVELS[codec]:
        levels = LEVELS[codec]
        raise ValueError(f"{codec} levels are {levels.start}..{levels.stop - 1}, got {chosen}")
    return chosen


class Compressor:
    """One object's compressed form, chunk by chunk: one zstd frame or one gzip member.

    ``compress`` may give back ``b""`` (the codec holds the bytes back until it has a block's
    worth); ``flush`` ends the frame and must be called once, at the end. With codec
    ``none`` both pass the bytes through.
    """

    def __init__(self, codec: Codec, level: int | None = None) -> None:
        self.codec = codec
        self.level = resolve_level(codec, level)
        self._zstd: zstandard.ZstdCompressionObj | None = None
        self._gzip: zlib._Compress | None = None
        if codec == "zstd":
            self._zstd = zstandard.ZstdCompressor(
                level=self.level or 1, write_checksum=True
            ).compressobj()
        elif codec == "gzip":
            self._gzip = zlib.compressobj(self.level or 6, zlib.DEFLATED, _GZIP_WBITS)

    def compress(self, data: bytes) -> bytes:
        if self._zstd is not None:
            return self._zstd.compress(data)
        if self._gzip is not None:
            return self._gzip.compress(data)
        return data

    def flush(self) -> bytes:
        if self._zstd is not None:
            return self._zstd.flush()
        if self._gzip is not None:
            return self._gzip.flush()
        return b""


def compress(data: bytes, codec: Codec, level: int | None = None) -> bytes:
    """``data`` in one frame (one gzip member): for small objects such as rejects."""
    compressor = Compressor(codec, level)
    return compressor.compress(data) + compressor.flush()


class TruncatedError(ValueError):
    """Compressed bytes that end in the middle of a frame (or are not of the codec)."""


class Decompressor:
    """A stored object's lines from its compressed bytes, with bounded output.

    ``feed`` the compressed bytes as they arrive, take the lines with ``read(size)``
    (never more than ``size`` bytes, so the memory held does not grow with the ratio),
    and call ``finish`` after the last feed: it raises :class:`TruncatedError` if the
    bytes stopped in the middle of a frame. Several frames (members) one after the other
    read as their concatenation, as ``zstd -d`` and ``gzip -d`` read them. Blocking work:
    about 1 ms per MB of lines; readers call it in a worker thread.
    """

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._pending = bytearray()  # compressed, not yet given to the codec
        self._out: deque[bytes] = deque()  # decompressed, not yet read, in order
        self._out_bytes = 0
        self._zstd: zstandard.ZstdDecompressionObj | None = None
        self._gzip: zlib._Decompress | None = None
        self._started = False  # a frame is open (some of its bytes were given to the codec)
        self._new_frame()

    def _new_frame(self) -> None:
        if self.codec == "zstd":
            self._zstd = zstandard.ZstdDecompressor().decompressobj()
        elif self.codec == "gzip":
            self._gzip = zlib.decompressobj(_GZIP_WBITS)
        self._started = False

    def feed(self, data: bytes) -> None:
        if self.codec == "none":
            self._put(data)
        else:
            self._pending += data

    @property
    def buffered(self) -> int:
        """Bytes held (compressed and decompressed): what one more ``read`` may return."""
        return len(self._pending) + self._out_bytes

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of lines from what was fed; ``b""`` when it needs more."""
        while self._out_bytes < size and self._pending:
            self._step()
        parts: list[bytes] = []
        wanted = size
        while wanted and self._out:
            part = self._out.popleft()
            if len(part) > wanted:  # the rest stays for the next read
                self._out.appendleft(part[wanted:])
                part = part[:wanted]
            parts.append(part)
            wanted -= len(part)
        self._out_bytes -= size - wanted
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _put(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self._out_bytes += len(data)

    def finish(self) -> None:
        """Raise :class:`TruncatedError` unless every frame fed was complete."""
        if self._pending or (self._started and not self._at_frame_end()):
            raise TruncatedError(f"the {self.codec} data ends in the middle of a frame")

    def _at_frame_end(self) -> bool:
        if self._zstd is not None:
            return bool(self._zstd.eof)
        if self._gzip is not None:
            return self._gzip.eof
        return True

    def _step(self) -> None:
        piece = bytes(self._pending[:_INFLATE_SLICE])
        del self._pending[:_INFLATE_SLICE]
        self._started = True
        try:
            if self._zstd is not None:
                self._put(self._zstd.decompress(piece))
                unused = self._zstd.unused_data if self._zstd.eof else b""
            else:
                assert self._gzip is not None  # noqa: S101 - set for every codec but none
                self._put(self._gzip.decompress(piece))
                unused = self._gzip.unused_data if self._gzip.eof else b""
        except (zstandard.ZstdError, zlib.error) as error:
            raise TruncatedError(f"not {self.codec} data: {error}") from None
        if self._at_frame_end():
            self._pending[:0] = unused  # the next frame's start
            self._new_frame()


def decompress(data: bytes, codec: Codec) -> bytes:
    """A whole stored object's lines (small objects, tests and tools; blocking)."""
    decompressor = Decompressor(codec)
    decompressor.feed(data)
    lines = decompressor.read(len(data) * 1000 + 1024 * 1024)
    while decompressor.buffered:
        lines += decompressor.read(len(data) * 1000 + 1024 * 1024)
    decompressor.finish()
    return lines
