"""``python -m scripts.bench`` (``make bench``): bus-stats measured against its targets.

Every scenario starts its own stack (Moto, simulator, API, consumers) in a fresh
namespace, checks every figure the system answers against the simulator's oracle before
its timing counts, and compares with a baseline measured in the same run:

- ``published``: one consumer, published-size dates one after another; job wall time
  against the slowest city latency the simulator drew for that date.
- ``production``: dates of 300+ MB at zero latency; ingest MB/s against Moto's own
  multipart ingest of the same bytes; the consumer's peak RSS.
- ``scaling``: the same dates with 1, 2 and 4 consumers; dates per minute, speed-up.
- ``stats``: 1+ GB stored; cold and warm ``/country-stats`` against DuckDB and naive
  pandas over the same objects; ``/healthz`` during the cold query; the API's peak RSS;
  a warm 30-date query.
- ``api``: ``POST /process-request`` latency with 50 concurrent clients.

Prints the tables and writes them to ``docs/benchmarks.md`` (a full run of every
scenario) or ``.bench/benchmarks.md`` (``--quick`` or ``--only``).
"""

import argparse
import asyncio
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import orjson

from refsim.config import SimulatorConfig
from refsim.oracle import expected_stats
from scripts.bench_baselines import Sums, delete_prefix, moto_multipart
from scripts.bench_env import (
    BENCH_DIR,
    ROOT,
    BenchError,
    JobTiming,
    Stack,
    check_rows,
    read_manifests,
)
from scripts.demo import DemoError

MB = 1_000_000
MIB = 1024 * 1024
PUBLISHED_LATENCY = 4.2
PART_SIZE = 8 * MIB  # the consumer's default part size and memory budget (8 parts)
PART_SLOTS = 8
SCENARIOS = ("published", "production", "scaling", "stats", "api")


# --- sizes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    published_dates: int
    big_records: tuple[int, int]
    production_dates: int
    scaling_dates: int
    stats_dates: int
    warm_dates: int
    api_posts_per_client: int
    api_clients: int = 50
    consumer_counts: tuple[int, ...] = (1, 2, 4)


FULL = Sizes(
    published_dates=3,
    big_records=(78_000, 88_000),  # about 125 bytes a record: 300+ MB a date
    production_dates=2,
    scaling_dates=8,
    stats_dates=4,
    warm_dates=30,
    api_posts_per_client=10,
)
QUICK = Sizes(
    published_dates=2,
    big_records=(6_000, 7_000),
    production_dates=1,
    scaling_dates=4,
    stats_dates=2,
    warm_dates=10,
    api_posts_per_client=2,
)


def published(seed: int) -> SimulatorConfig:
    return SimulatorConfig(
        seed=seed, cities=30, records_min=1000, records_max=3000, latency_max=PUBLISHED_LATENCY
    )


def big(seed: int, sizes: Sizes) -> SimulatorConfig:
    low, high = sizes.big_records
    return SimulatorConfig(seed=seed, cities=30, records_min=low, records_max=high, latency_max=0)


def small(seed: int) -> SimulatorConfig:
    return SimulatorConfig(seed=seed, cities=30, records_min=1000, records_max=3000, latency_max=0)


def days_from(first: str, count: int) -> list[date]:
    start = date.fromisoformat(first)
    return [start + timedelta(days=offset) for offset in range(count)]


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    goal: str
    met: bool | None
    """None: a figure reported without a target."""


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append("|" + "|".join("---" for _ in self.headers) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass
class Report:
    sections: list[Section] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def target(self, name: str, measured: str, goal: str, *, met: bool | None) -> None:
        self.targets.append(Target(name, measured, goal, met))


def f2(value: float) -> str:
    return f"{value:.2f}"


def mb(count: float) -> str:
    return f"{count / MB:.1f}"


def mib(count: float) -> str:
    return f"{count / MIB:.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# --- scenarios ----------------------------------------------------------------------------


async def scenario_published(sizes: Sizes, report: Report) -> None:
    config = published(seed=11)
    days = days_from("2024-01-01", sizes.published_dates)
    expected = expected_stats(config, days)
    async with Stack("published", config) as stack:
        await stack.start_consumers(1)
        timings: list[JobTiming] = []
        for day in days:
            timings += await stack.run_jobs([day], limit_seconds=120)
        latencies = stack.simulator_latencies()
        _, body = await stack.country_stats(days[0], days[-1])
        check_rows("published: /country-stats", body["stats"], expected)
        stack.stop_consumers()
    section = report.add(
        Section(
            "published: 30 cities, 1-3k records, latency 0-4.2 s, one consumer",
            [
                "date",
                "records",
                "MB",
                "wall s (POST to succeeded)",
                "run s (finished-started)",
                "slowest city latency s",
                "wall / slowest",
                "wall / 4.2 s",
            ],
        )
    )
    worst = 0.0
    for timing in timings:
        drawn = [e["seconds"] for e in latencies if e["date"] == timing.job.date.isoformat()]
        slowest = max(drawn)
        ratio = timing.wall_seconds / slowest
        worst = max(worst, ratio)
        section.rows.append(
            [
                timing.job.date.isoformat(),
                f"{timing.job.records:,}",
                mb(timing.job.bytes),
                f2(timing.wall_seconds),
                f2(timing.run_seconds),
                f2(slowest),
                f2(ratio),
                f2(timing.wall_seconds / PUBLISHED_LATENCY),
            ]
        )
    section.notes.append(
        "Slowest latency: the largest delay the simulator drew for the date's 30 stats "
        "requests (each logged by the simulator as stats.latency); figures checked against "
        "the oracle."
    )
    report.target(
        "published: job wall / slowest city latency (worst date)",
        f"{worst:.2f}x",
        "<= 1.15x",
        met=worst <= 1.15,  # noqa: PLR2004 - the target
    )


async def scenario_production(sizes: Sizes, report: Report) -> None:
    config = big(seed=12, sizes=sizes)
    days = days_from("2024-02-01", sizes.production_dates)
    expected = expected_stats(config, days)
    async with Stack("production", config) as stack:
        await stack.start_consumers(1)
        timings: list[JobTiming] = []
        before = stack.cpu_by_child()
        for day in days:
            timings += await stack.run_jobs([day], limit_seconds=900)
        after = stack.cpu_by_child()
        async with stack.s3_client() as client:
            manifest = (await read_manifests(client, stack.namespace, days[-1:]))[0]
            object_sizes = [int(city["bytes"]) for city in manifest["cities"]]
            moto_seconds = await moto_multipart(
                client,
                stack.namespace,
                "baseline/",
                object_sizes,
                part_size=PART_SIZE,
                slots=PART_SLOTS,
            )
            await delete_prefix(client, stack.namespace, "baseline/")
        peak = stack.stop_consumers()[0]
        _, body = await stack.country_stats(days[0], days[-1])
        check_rows("production: /country-stats", body["stats"], expected)
    moto_rate = sum(object_sizes) / moto_seconds
    low, high = sizes.big_records
    section = report.add(
        Section(
            f"production: 30 cities x {low // 1000}-{high // 1000}k records, latency 0, "
            "one consumer",
            [
                "date",
                "records",
                "MB stored",
                "wall s",
                "ingest MB/s",
                "Moto multipart MB/s",
                "ratio",
            ],
        )
    )
    worst = math.inf
    for timing in timings:
        rate = timing.job.bytes / timing.wall_seconds
        worst = min(worst, rate / moto_rate)
        section.rows.append(
            [
                timing.job.date.isoformat(),
                f"{timing.job.records:,}",
                mb(timing.job.bytes),
                f2(timing.wall_seconds),
                f"{rate / MB:.1f}",
                f"{moto_rate / MB:.1f}",
                f"{rate / moto_rate:.0%}",
            ]
        )
    section.notes += [
        f"Moto baseline: the same {len(object_sizes)} object sizes ({mb(sum(object_sizes))} MB) "
        f"uploaded by aiobotocore multipart into the same Moto server, {PART_SIZE // MIB} MiB "
        f"parts, {PART_SLOTS} parts in flight (the consumer's budget): {f2(moto_seconds)} s.",
        f"Consumer peak RSS (VmHWM): {mib(peak)} MiB.",
        "CPU seconds per process over the ingest of these dates ("
        + f"{sum(t.wall_seconds for t in timings):.1f} s of wall time on {os.cpu_count()} CPUs): "
        + ", ".join(f"{name} {after[name] - before[name]:.1f}" for name in sorted(after))
        + ".",
        "MB = 10^6 bytes; stored bytes as the job reports them; figures checked against "
        "the oracle.",
    ]
    report.target(
        "production: ingest / Moto multipart (worst date)",
        f"{worst:.0%}",
        ">= 60%",
        met=worst >= 0.60,  # noqa: PLR2004 - the target
    )
    report.target(
        "production: consumer peak RSS",
        f"{mib(peak)} MiB",
        "<= 200 MB",
        met=peak <= 200 * MB,
    )


async def scenario_scaling(sizes: Sizes, report: Report) -> None:
    config = published(seed=13)
    runs = [
        (count, days_from("2024-03-01", 40)[index * 10 : index * 10 + sizes.scaling_dates])
        for index, count in enumerate(sizes.consumer_counts)
    ]
    all_days = [day for _, days in runs for day in days]
    expected = expected_stats(config, all_days)
    walls: list[tuple[int, float, float]] = []
    async with Stack("scaling", config) as stack:
        for count, days in runs:
            await stack.start_consumers(count)
            clock = time.perf_counter()
            timings = await stack.run_jobs(days, limit_seconds=600)
            wall = time.perf_counter() - clock
            walls.append((count, wall, max(t.run_seconds for t in timings)))
            stack.stop_consumers()
        _, body = await stack.country_stats(min(all_days), max(all_days))
        got = [row for row in body["stats"] if date.fromisoformat(row["date"]) in set(all_days)]
        check_rows("scaling: /country-stats", got, expected)
    section = report.add(
        Section(
            f"scaling: {sizes.scaling_dates} published-size dates (latency 0-4.2 s) at once",
            ["consumers", "wall s", "dates/min", "speed-up", "efficiency"],
        )
    )
    base = walls[0][1]
    for count, wall, _ in walls:
        section.rows.append(
            [
                str(count),
                f2(wall),
                f"{sizes.scaling_dates / wall * 60:.1f}",
                f"{base / wall:.2f}x",
                f"{base / wall / count:.0%}",
            ]
        )
    section.notes.append(
        "Each consumer runs 2 jobs at once (BUSSTATS_JOB_CONCURRENCY default); wall time from "
        "the first POST to the last job seen succeeded; figures checked against the oracle."
    )


async def poll_health(session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> list[float]:
    """``GET /healthz`` about every 10 ms until ``stop``; each latency in seconds."""
    found: list[float] = []
    while not stop.is_set():
        clock = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
        found.append(time.perf_counter() - clock)
        await asyncio.sleep(0.01)
    return found


async def download(
    stack: Stack, days: Sequence[date], root: Path
) -> tuple[float, int, dict[str, dict[int, str]]]:
    """Copy every committed object to ``root``; seconds, bytes and each date's city countries."""
    countries: dict[str, dict[int, str]] = {}
    total = 0
    limit = asyncio.Semaphore(8)
    async with stack.s3_client() as client:
        manifests = await read_manifests(client, stack.namespace, days)
        clock = time.perf_counter()

        async def fetch(day: str, city: dict[str, Any]) -> int:
            async with limit:
                response = await client.get_object(Bucket=stack.namespace, Key=city["key"])
                async with response["Body"] as stream:
                    body: bytes = await stream.read()
            folder = root / f"date={day}"
            await asyncio.to_thread((folder / f"city={city['city_id']}.jsonl").write_bytes, body)
            return len(body)

        tasks = []
        async with asyncio.TaskGroup() as group:
            for manifest in manifests:
                day = str(manifest["date"])
                (root / f"date={day}").mkdir()
                countries[day] = {int(c["city_id"]): str(c["country"]) for c in manifest["cities"]}
                tasks += [group.create_task(fetch(day, city)) for city in manifest["cities"]]
        total = sum(task.result() for task in tasks)
        seconds = time.perf_counter() - clock
    return seconds, total, countries


def rows_from_sums(sums: Sums, countries: dict[str, dict[int, str]]) -> list[dict[str, Any]]:
    """Per (date, country) rows, as the API and the oracle shape them."""
    totals: dict[tuple[str, str], list[Any]] = {}
    for day, city_id, departures, passengers, accident, delay in sums:
        total = totals.setdefault((day, countries[day][city_id]), [0, 0, False, 0.0])
        total[0] += departures
        total[1] += passengers
        total[2] = total[2] or accident
        total[3] += delay
    return [
        {
            "date": day,
            "country": country,
            "buses_started": departures,
            "passengers": passengers,
            "accident": accident,
            "average_delay_seconds": delay / departures,
        }
        for (day, country), (departures, passengers, accident, delay) in sorted(totals.items())
        if departures
    ]


def run_baseline(engine: str, root: Path, runs: int) -> dict[str, Any]:
    """Run DuckDB or pandas in a child process over ``root``; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "scripts.bench_baselines", engine, str(root), str(runs)],
        cwd=ROOT,
        capture_output=True,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        raise BenchError(f"{engine} baseline failed: {done.stderr.decode()[-2000:]}")
    answer: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return answer


async def scenario_stats(sizes: Sizes, report: Report) -> None:
    config = big(seed=14, sizes=sizes)
    days = days_from("2024-04-01", sizes.stats_dates)
    expected = expected_stats(config, days)
    scratch = Path(tempfile.mkdtemp(prefix="bench-stats-", dir=BENCH_DIR))
    try:
        async with Stack("stats", config) as stack:
            await stack.start_consumers(1)
            await stack.run_jobs(days, limit_seconds=1800)
            stack.stop_consumers()
            get_seconds, stored, countries = await download(stack, days, scratch)

            stop = asyncio.Event()
            poller = asyncio.create_task(poll_health(stack.session, stack.api + "/healthz", stop))
            before = stack.cpu_by_child()
            try:
                cold, body = await stack.country_stats(days[0], days[-1])
            finally:
                stop.set()
                health = await poller
            after = stack.cpu_by_child()
            check_rows("stats: cold /country-stats", body["stats"], expected)
            warm, body = await stack.country_stats(days[0], days[-1])
            check_rows("stats: warm /country-stats", body["stats"], expected)
            api_peak = stack.api_peak_rss()

        duck = run_baseline("duckdb", scratch, runs=2)
        check_rows("stats: DuckDB", rows_from_sums(duck["sums"], countries), expected)
        pandas = run_baseline("pandas", scratch, runs=1)
        check_rows("stats: pandas", rows_from_sums(pandas["sums"], countries), expected)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    warm_dates, warm_first, warm_times = await warm_query(sizes)

    duck_best = min(duck["seconds"])
    section = report.add(
        Section(
            f"stats: {len(days)} dates, {mb(stored)} MB stored (30 objects a date)",
            ["reader", "seconds", "MB/s", "vs DuckDB", "peak RSS MiB"],
        )
    )
    section.rows += [
        ["API cold (no sidecars)", f2(cold), f"{stored / cold / MB:.0f}",
         f"{duck_best / cold:.0%}", mib(api_peak)],
        ["API warm (sidecars)", f"{warm:.3f}", f"{stored / warm / MB:.0f}",
         f"{duck_best / warm:.0%}", mib(api_peak)],
        ["DuckDB read_json, local files (best of 2)", f2(duck_best),
         f"{stored / duck_best / MB:.0f}", "100%", mib(duck["peak_rss"])],
        ["pandas read_json(lines=True), local files", f2(pandas["seconds"][0]),
         f"{stored / pandas['seconds'][0] / MB:.0f}", f"{duck_best / pandas['seconds'][0]:.0%}",
         mib(pandas["peak_rss"])],
        ["(Moto GET of the same objects, 8 at a time)", f2(get_seconds),
         f"{stored / get_seconds / MB:.0f}", "", ""],
    ]  # fmt: skip
    health_p99 = percentile(health, 0.99)
    section.notes += [
        "Every reader's figures equal the oracle's. The API reads from Moto over HTTP; "
        "DuckDB and pandas read the same objects from local files (downloaded once, in the "
        f"page cache). DuckDB runs: {', '.join(f2(s) for s in duck['seconds'])} s.",
        "pandas: `pd.read_json(BytesIO(..), lines=True)` (default engine) per date, then one "
        "concatenated frame and one group-by.",
        "CPU seconds per process during the cold query: "
        + ", ".join(f"{name} {after[name] - before[name]:.1f}" for name in sorted(after))
        + f" (over {f2(cold)} s of wall time on {os.cpu_count()} CPUs).",
        f"/healthz during the cold query: {len(health)} requests, p50 "
        f"{ms(percentile(health, 0.5))} ms, p99 {ms(health_p99)} ms, max {ms(max(health))} ms.",
        f"Warm {warm_dates}-date query (published-size dates): first warm "
        f"{ms(warm_first)} ms; then median {ms(statistics.median(warm_times))} ms, "
        f"max {ms(max(warm_times))} ms over {len(warm_times)} more.",
    ]
    report.target(
        "stats: API cold throughput / DuckDB",
        f"{duck_best / cold:.0%}",
        ">= 70%",
        met=duck_best / cold >= 0.70,  # noqa: PLR2004 - the target
    )
    report.target(
        "stats: API peak RSS", f"{mib(api_peak)} MiB", "<= 1 GB", met=api_peak <= 1024 * MIB
    )
    report.target(
        f"stats: warm {warm_dates}-date query",
        f"{ms(warm_first)} ms",
        "<= 100 ms",
        met=warm_first <= 0.100,  # noqa: PLR2004 - the target
    )
    report.target(
        "stats: /healthz p99 during the cold query",
        f"{ms(health_p99)} ms",
        "<= 50 ms",
        met=health_p99 <= 0.050,  # noqa: PLR2004 - the target
    )


async def warm_query(sizes: Sizes) -> tuple[int, float, list[float]]:
    """Ingest small dates, query once cold; the second query's seconds, then more."""
    config = small(seed=15)
    days = days_from("2024-05-01", sizes.warm_dates)
    expected = expected_stats(config, days)
    async with Stack("stats-warm", config) as stack:
        await stack.start_consumers(2)
        await stack.run_jobs(days, limit_seconds=900)
        stack.stop_consumers()
        _, body = await stack.country_stats(days[0], days[-1])
        check_rows("stats: warm-range cold query", body["stats"], expected)
        first, body = await stack.country_stats(days[0], days[-1])
        check_rows("stats: warm-range warm query", body["stats"], expected)
        more = []
        for _ in range(9):
            seconds, _ = await stack.country_stats(days[0], days[-1])
            more.append(seconds)
    return len(days), first, more


async def scenario_api(sizes: Sizes, report: Report) -> None:
    clients, per_client = sizes.api_clients, sizes.api_posts_per_client
    days = days_from("2001-01-01", clients * per_client)
    latencies: list[float] = []
    async with Stack("api", small(seed=16)) as stack:

        async def client(index: int) -> None:
            for day in days[index::clients]:
                clock = time.perf_counter()
                await stack.post_date(day)
                latencies.append(time.perf_counter() - clock)

        clock = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for index in range(clients):
                group.create_task(client(index))
        wall = time.perf_counter() - clock
        queued = await stack.queue_messages()
        if queued != len(days):
            raise BenchError(f"api: {queued} messages queued for {len(days)} accepted dates")
    p99 = percentile(latencies, 0.99)
    section = report.add(
        Section(
            f"api: POST /process-request, {clients} concurrent clients, {len(days)} distinct "
            "dates, no consumers",
            ["requests", "p50 ms", "p90 ms", "p99 ms", "max ms", "requests/s"],
        )
    )
    section.rows.append(
        [
            str(len(latencies)),
            ms(percentile(latencies, 0.5)),
            ms(percentile(latencies, 0.9)),
            ms(p99),
            ms(max(latencies)),
            f"{len(latencies) / wall:.0f}",
        ]
    )
    section.notes.append(
        "Every answer was 202 after the broker's confirm; the queue held one message per date; "
        "the namespace's queues were deleted afterwards."
    )
    report.target("api: POST p99 (50 clients)", f"{ms(p99)} ms", "(no target)", met=None)


# --- the run ------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Sizes, Report], Awaitable[None]]] = {
    "published": scenario_published,
    "production": scenario_production,
    "scaling": scenario_scaling,
    "stats": scenario_stats,
    "api": scenario_api,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description="Benchmark bus-stats against its targets (needs RabbitMQ).",
    )
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run this scenario (repeatable)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke check in under 3 minutes"
    )
    parser.add_argument("--output", type=Path, help="the Markdown report to write")
    return parser.parse_args(argv)


def machine() -> list[str]:
    memory = next(
        line.split(":", 1)[1].strip()
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("moto", "duckdb", "pandas", "pyarrow")
    )
    return [
        f"- CPUs (nproc): {os.cpu_count()} ({model})",
        f"- memory: {memory}",
        f"- Python {platform.python_version()} on {platform.platform()}",
        f"- {packages}",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def status(met: bool | None, missed: str) -> str:
    if met is None:
        return "reported"
    return "met" if met else missed


def render(report: Report, command: str, seconds: float) -> str:
    lines = ["# Benchmarks", "", "Machine:", "", *machine(), "", "Command:", ""]
    lines += ["```", command, "```", "", f"Total run time: {seconds:.0f} s.", ""]
    lines += ["## Targets", "", "| target | measured | goal | |", "|---|---|---|---|"]
    lines += [
        f"| {t.name} | {t.measured} | {t.goal} | {status(t.met, '**missed**')} |"
        for t in report.targets
    ]
    lines += ["", "## Results", ""]
    for section in report.sections:
        lines += [section.markdown(), ""]
    lines += ["## Reading the two ratio targets", "", *RATIO_NOTES, ""]
    return "\n".join(lines)


RATIO_NOTES = (
    "- production ingest / Moto multipart: here the simulator, Moto and the consumer share "
    "2 CPUs, while the Moto baseline runs alone. The CPU seconds per process (production "
    "section) bound the ingest wall time from below by their sum / 2 per date, whatever the "
    "consumer does; with the simulator's and Moto's share alone the bound is already below "
    "60% of the baseline. The consumer's own cost is the figure to watch (CPU seconds per MB).",
    "- stats cold / DuckDB: DuckDB reads local files; the API downloads the same objects from "
    "Moto over HTTP, and that download alone (the Moto GET row of the stats table) runs below "
    "70% of DuckDB's rate on this machine, before any parsing.",
)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


async def run_all(names: Sequence[str], sizes: Sizes, report: Report) -> None:
    for name in names:
        print(f"\n== {name} ==", flush=True)
        sections, targets = len(report.sections), len(report.targets)
        clock = time.perf_counter()
        await RUNNERS[name](sizes, report)
        for section in report.sections[sections:]:
            print("\n" + section.markdown())
        for target in report.targets[targets:]:
            print(
                f"target: {target.name}: {target.measured} (goal {target.goal}) "
                + status(target.met, "MISSED")
            )
        print(f"({name}: {time.perf_counter() - clock:.0f} s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name for name in SCENARIOS if args.only is None or name in args.only]
    sizes = QUICK if args.quick else FULL
    output = args.output
    if output is None:
        complete = not args.quick and args.only is None
        output = ROOT / "docs" / "benchmarks.md" if complete else BENCH_DIR / "benchmarks.md"
    given = list(sys.argv[1:] if argv is None else argv)
    command = "make bench" + (f" ARGS='{' '.join(given)}'" if given else "")
    command += f"   # uv run python -m scripts.bench {' '.join(given)}".rstrip()
    BENCH_DIR.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, raise_interrupt)
    report = Report()
    clock = time.perf_counter()
    try:
        asyncio.run(run_all(names, sizes, report))
    except (BenchError, DemoError) as error:
        print(f"\nbench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    seconds = time.perf_counter() - clock
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(report, command, seconds) + "\n")
    print(f"\nWrote {output} ({seconds:.0f} s).")
    missed = [target.name for target in report.targets if target.met is False]
    if missed:
        print("Missed targets: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
