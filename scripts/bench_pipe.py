"""The bare pipe the consumer is measured against: bodies copied to S3 with no decoding.

``python -m scripts.bench_pipe --reference URL --s3 URL --bucket B --date D --prefix P``
fetches the city list, then streams every city's stats body (aiohttp, 256 KiB chunks, as
the consumer reads them) straight into an aiobotocore multipart upload (5 MiB parts),
32 cities at a time, with the consumer's part-buffer budget (6 parts of 5 MiB) and S3
client settings. Nothing is decoded, normalised or summed: it is the floor of what an
ingest of the same bodies through the same client libraries costs.

With ``--codec zstd|gzip`` (and ``--level``) each chunk is compressed on the way, one
frame per object (:class:`common.codec.Compressor`, as the consumer does it): the honest
floor of "fetch, compress, store". The body is still not decoded.

It prints one JSON line: body bytes, stored bytes, objects, its own CPU seconds and wall
seconds over the copy (process start-up and imports excluded).
"""

import argparse
import asyncio
import io
import json
import resource
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from types_aiobotocore_s3 import S3Client
from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

from common.codec import CODECS, Compressor

CHUNK_BYTES = 256 * 1024  # what the consumer's fetcher reads at a time
MIB = 1024 * 1024


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def copy_city(
    session: aiohttp.ClientSession,
    client: S3Client,
    args: argparse.Namespace,
    slots: asyncio.Semaphore,
    city_id: int,
) -> tuple[int, int]:
    """Stream one city's body into one object; the body's size and the object's."""
    key = f"{args.prefix}city={city_id}.json"
    url = f"{args.reference}/cities/{city_id}/stats"
    upload = await client.create_multipart_upload(Bucket=args.bucket, Key=key)
    upload_id = upload["UploadId"]
    parts: list[CompletedPartTypeDef] = []
    chunks: list[bytes] = []
    buffered = 0
    size = 0
    stored = 0
    holding = False
    compressor = Compressor(args.codec, args.level)

    async def send() -> None:
        nonlocal chunks, buffered, holding, stored
        stored += buffered
        body = io.BytesIO(b"".join(chunks))  # as the consumer's S3 writer sends a part
        chunks, buffered = [], 0
        number = len(parts) + 1
        sent = await client.upload_part(
            Bucket=args.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        parts.append({"ETag": sent["ETag"], "PartNumber": number})
        if holding:
            holding = False
            slots.release()

    async with session.get(url, params={"date": args.date}) as response:
        response.raise_for_status()
        async for body_chunk in response.content.iter_chunked(CHUNK_BYTES):
            if not holding:
                await slots.acquire()
                holding = True
            size += len(body_chunk)
            chunk = compressor.compress(body_chunk)
            chunks.append(chunk)
            buffered += len(chunk)
            if buffered >= args.part_size:
                await send()
    last = compressor.flush()
    chunks.append(last)
    buffered += len(last)
    await send()
    await client.complete_multipart_upload(
        Bucket=args.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    return size, stored


async def pipe(args: argparse.Namespace) -> dict[str, Any]:
    config = AioConfig(
        max_pool_connections=args.concurrency + 8,
        retries={"mode": "standard", "max_attempts": 5},
        read_timeout=60,
    )
    client_context = get_session().create_client(
        "s3",
        endpoint_url=args.s3,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - Moto's dummy credentials
        config=config,
    )
    async with (
        client_context as client,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session,
    ):
        cpu, clock = own_cpu_seconds(), time.perf_counter()
        async with session.get(f"{args.reference}/cities") as response:
            cities = json.loads(await response.read())
        slots = asyncio.Semaphore(max(1, args.memory_budget // args.part_size))
        limit = asyncio.Semaphore(args.concurrency)

        async def one(city_id: int) -> tuple[int, int]:
            async with limit:
                return await copy_city(session, client, args, slots, city_id)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(int(city["id"]))) for city in cities]
        return {
            "bytes": sum(task.result()[0] for task in tasks),
            "stored_bytes": sum(task.result()[1] for task in tasks),
            "objects": len(tasks),
            "cpu_seconds": own_cpu_seconds() - cpu,
            "wall_seconds": time.perf_counter() - clock,
        }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_pipe", description=__doc__)
    parser.add_argument("--reference", required=True, help="the simulator's base URL")
    parser.add_argument("--s3", required=True, help="the S3 (Moto) endpoint URL")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--date", required=True, help="as the simulator takes it")
    parser.add_argument("--prefix", default="pipe/")
    parser.add_argument("--concurrency", type=int, default=32, help="cities in flight")
    parser.add_argument("--part-size", type=int, default=5 * MIB)
    parser.add_argument("--memory-budget", type=int, default=32 * MIB)
    parser.add_argument("--codec", choices=CODECS, default="none", help="compress on the way")
    parser.add_argument("--level", type=int, default=None, help="the codec's level")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    print(json.dumps(asyncio.run(pipe(parse_args(argv)))))


if __name__ == "__main__":
    main(sys.argv[1:])
