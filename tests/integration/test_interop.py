"""A committed date read as a downstream user reads it: DuckDB, pandas and polars.

A date is ingested by the real consumer into Moto with the default codec (zstd). Then,
with nothing of bus-stats but the manifest's list of keys and its city-to-country map:

- DuckDB reads the objects straight from S3 (``read_ndjson`` over ``s3://`` keys, httpfs
  LOADed from the duckdb-extension-httpfs package's file: no download), picking zstd from
  the ``.zst`` suffix, and the ``date=`` folder as a hive-style column;
- polars (``scan_ndjson``) reads them from S3 too, with its own object-store client;
- pandas (``read_json(lines=True, compression="infer")``) reads them downloaded to files
  under the same relative keys (over ``s3://`` it would need s3fs).

Each must produce the simulator oracle's per-country figures, exactly.
"""

import asyncio
import importlib.util
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pandas as pd
import polars as pl
import pytest
from aio_pika.abc import AbstractRobustConnection

from common.jobs import ManifestStore
from common.layout import Layout
from common.models import Manifest
from common.settings import Settings
from common.storage import S3Store
from refsim import SimulatorConfig, expected_stats
from refsim.server import serve
from tests.integration.services import running, start_api, start_consumer, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DAY = date(2024, 1, 1)
CONFIG = SimulatorConfig(
    seed=18, cities=8, countries=3, records_min=300, records_max=3000, latency_max=0
)


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-country figures from a frame of ``country, n, passengers, accident, delay``."""
    return [
        {
            "date": DAY.isoformat(),
            "country": str(row["country"]),
            "buses_started": int(row["n"]),
            "passengers": int(row["passengers"]),
            "accident": bool(row["accident"]),
            "average_delay_seconds": float(row["delay"]) / int(row["n"]),
        }
        for row in frame.sort_values("country").to_dict("records")
    ]


def countries_of(manifest: Manifest) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "city_id": [city.city_id for city in manifest.cities],
            "country": [city.country for city in manifest.cities],
        }
    )


def httpfs_extension() -> Path:
    spec = importlib.util.find_spec("duckdb_extension_httpfs")
    assert spec is not None, "uv sync --all-groups"
    assert spec.origin is not None
    return next(Path(spec.origin).parent.glob("extensions/*/httpfs.duckdb_extension"))


def duckdb_over_s3(settings: Settings, keys: list[str], manifest: Manifest) -> pd.DataFrame:
    connection = duckdb.connect()
    connection.execute(f"LOAD '{httpfs_extension()}'")
    assert settings.s3_endpoint_url is not None
    host = settings.s3_endpoint_url.removeprefix("http://").rstrip("/")
    connection.execute(
        "CREATE SECRET moto (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
        f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)"
    )
    connection.register("countries", countries_of(manifest))
    files = ", ".join(f"'s3://{settings.s3_bucket}/{key}'" for key in keys)
    query = f"""
        select cast(date as date)::varchar as day, country, count(*) as n,
               sum(passengers) as passengers, bool_or(accident) as accident,
               sum(delay_seconds) as delay
        from read_ndjson([{files}], hive_partitioning = true) join countries using (city_id)
        group by day, country
    """  # noqa: S608 - the test's own keys
    frame: pd.DataFrame = connection.execute(query).df()
    assert set(frame["day"]) == {DAY.isoformat()}  # a column from the date= folder
    return frame


def pandas_over_files(paths: list[Path], manifest: Manifest) -> pd.DataFrame:
    frames = [pd.read_json(path, lines=True, compression="infer") for path in paths]
    records = pd.concat(frames).merge(countries_of(manifest), on="city_id")
    return (
        records.groupby("country")
        .agg(
            n=("city_id", "size"),
            passengers=("passengers", "sum"),
            accident=("accident", "any"),
            delay=("delay_seconds", "sum"),
        )
        .reset_index()
    )


def polars_over_s3(settings: Settings, keys: list[str], manifest: Manifest) -> pd.DataFrame:
    assert settings.s3_endpoint_url is not None
    options = {
        "aws_endpoint_url": settings.s3_endpoint_url.rstrip("/"),
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    countries = pl.from_pandas(countries_of(manifest))
    scans = [
        pl.scan_ndjson(f"s3://{settings.s3_bucket}/{key}", storage_options=options) for key in keys
    ]
    frame = (
        pl.concat(scans)
        .join(countries.lazy(), on="city_id")
        .group_by("country")
        .agg(
            pl.len().alias("n"),
            pl.col("passengers").sum(),
            pl.col("accident").any(),
            pl.col("delay_seconds").sum().alias("delay"),
        )
        .collect()
    )
    return pd.DataFrame(frame.to_dict(as_series=False))


async def test_a_date_is_read_by_duckdb_pandas_and_polars(
    settings: Settings, store: S3Store, amqp: AbstractRobustConnection, tmp_path: Path
) -> None:
    async with serve(CONFIG) as live:
        settings = settings.model_copy(update={"reference_url": live.url})
        api = await start_api(settings)
        consumer = await start_consumer(settings)
        async with running(api.service, consumer), aiohttp.ClientSession() as http:
            async with http.post(f"{api.url}/process-request?date={DAY}") as response:
                job_id = (await response.json())["job_id"]
            job = await wait_for_job(http, api.url, job_id, deadline=180)
    assert job["status"] == "succeeded", job
    manifest, _ = await ManifestStore(store, Layout(settings.s3_prefix)).get(DAY)
    assert manifest is not None
    keys = [city.key for city in manifest.cities]
    assert all(key.endswith(".jsonl.zst") for key in keys)  # the default codec

    paths: list[Path] = []
    for key in keys:
        stored = await store.get(key)
        assert stored is not None
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(stored.body)
        paths.append(path)

    oracle = expected_stats(CONFIG, [DAY])
    by_duckdb = await asyncio.to_thread(duckdb_over_s3, settings, keys, manifest)
    assert rows(by_duckdb) == oracle
    assert rows(await asyncio.to_thread(pandas_over_files, paths, manifest)) == oracle
    assert rows(await asyncio.to_thread(polars_over_s3, settings, keys, manifest)) == oracle
