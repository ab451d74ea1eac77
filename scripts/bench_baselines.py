"""What bus-stats is measured against: Moto's own multipart ingest, DuckDB and pandas.

DuckDB and pandas run in a child process (``python -m scripts.bench_baselines ENGINE
DIR``) so that their memory and threads are their own; the child prints one JSON line:
the seconds of each run, the per-(date, city) sums of the last run, and its peak RSS.
``DIR`` holds the stored objects as ``date=YYYY-MM-DD/city=<id>.jsonl`` (or ``.jsonl.zst``,
``.jsonl.gz``: each engine picks the codec from the suffix).
"""

import asyncio
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import orjson
from types_aiobotocore_s3 import S3Client
from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

from common.codec import codec_of_key, decompress

# One stored line, as the consumer writes it: the Moto baseline uploads copies of it.
_SAMPLE_LINE: Final = orjson.dumps(
    {
        "city_id": 7,
        "departure_time": "2024-01-01T03:00:00",
        "bus_type": "BUS-107",
        "passengers": 44,
        "delay_seconds": 5340.0,
        "accident": False,
    },
    option=orjson.OPT_APPEND_NEWLINE,
)
Sums = list[tuple[str, int, int, int, bool, float]]
"""(date, city id, departures, passengers, any accident, total delay seconds)."""


async def moto_multipart(
    client: S3Client, bucket: str, prefix: str, sizes: Sequence[int], *, part_size: int, slots: int
) -> float:
    """Seconds to upload objects of ``sizes`` by multipart, ``slots`` parts in flight."""
    payload = (_SAMPLE_LINE * (part_size // len(_SAMPLE_LINE) + 1))[:part_size]
    limit = asyncio.Semaphore(slots)

    async def part(key: str, upload_id: str, number: int, size: int) -> CompletedPartTypeDef:
        async with limit:
            body = payload if size == part_size else payload[:size]
            answer = await client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def one(index: int, size: int) -> None:
        key = f"{prefix}object-{index}"
        upload = await client.create_multipart_upload(Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        sizes_of_parts = [part_size] * (size // part_size)
        if size % part_size or not sizes_of_parts:
            sizes_of_parts.append(size % part_size)
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(part(key, upload_id, number, part_bytes))
                for number, part_bytes in enumerate(sizes_of_parts, start=1)
            ]
        await client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [task.result() for task in tasks]},
        )

    clock = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for index, size in enumerate(sizes):
            group.create_task(one(index, size))
    return time.perf_counter() - clock


async def delete_prefix(client: S3Client, bucket: str, prefix: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            await client.delete_objects(Bucket=bucket, Delete={"Objects": keys})  # type: ignore[typeddict-item]  # Key-only entries are valid


# --- the child process ------------------------------------------------------------------

_DUCKDB_QUERY: Final = """
select cast(date as varchar) as date, city_id, count(*) as departures,
       sum(passengers) as passengers, bool_or(accident) as accident,
       sum(delay_seconds) as delay_seconds
from read_json(
    '{pattern}', format = 'newline_delimited', hive_partitioning = true,
    columns = {{city_id: 'BIGINT', departure_time: 'VARCHAR', bus_type: 'VARCHAR',
               passengers: 'BIGINT', delay_seconds: 'DOUBLE', accident: 'BOOLEAN'}}
)
group by all
"""


def run_duckdb(root: Path) -> Sums:
    import duckdb  # noqa: PLC0415 - only the child needs it

    query = _DUCKDB_QUERY.format(pattern=f"{root}/*/*.jsonl*")  # DuckDB decompresses by suffix
    relation = duckdb.sql(query)
    if relation is None:
        raise RuntimeError("DuckDB returned no relation for a SELECT")
    rows = relation.fetchall()
    return [(str(d), int(c), int(n), int(p), bool(a), float(s)) for d, c, n, p, a, s in rows]


def run_pandas(root: Path) -> Sums:
    """The naive way: ``pd.read_json(lines=True)`` per date, one frame, one group-by."""
    import pandas as pd  # noqa: PLC0415 - only the child needs it

    frames = []
    for folder in sorted(root.iterdir()):
        body = b"".join(
            decompress(path.read_bytes(), codec_of_key(path.name))
            for path in sorted(folder.glob("*.jsonl*"))
        )
        frame = pd.read_json(io.BytesIO(body), lines=True)
        frame["date"] = folder.name.removeprefix("date=")
        frames.append(frame)
        del body
    whole = pd.concat(frames, ignore_index=True)
    del frames
    sums = whole.groupby(["date", "city_id"]).agg(
        departures=("passengers", "size"),
        passengers=("passengers", "sum"),
        accident=("accident", "any"),
        delay_seconds=("delay_seconds", "sum"),
    )
    return [
        (str(day), int(city), int(n), int(p), bool(a), float(s))
        for (day, city), n, p, a, s in zip(
            sums.index,
            sums["departures"],
            sums["passengers"],
            sums["accident"],
            sums["delay_seconds"],
            strict=True,
        )
    ]


def own_peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: Sequence[str]) -> None:
    engine, root, runs = argv[0], Path(argv[1]), int(argv[2]) if len(argv) > 2 else 1  # noqa: PLR2004 - optional third argument
    work = {"duckdb": run_duckdb, "pandas": run_pandas}[engine]
    seconds: list[float] = []
    sums: Sums = []
    for _ in range(runs):
        clock = time.perf_counter()
        sums = work(root)
        seconds.append(time.perf_counter() - clock)
    print(json.dumps({"seconds": seconds, "sums": sums, "peak_rss": own_peak_rss()}))


if __name__ == "__main__":
    main(sys.argv[1:])
