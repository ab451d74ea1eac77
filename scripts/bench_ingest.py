"""The ingest benchmark (``make bench ARGS='--only ingest'``): the consumer against a bare pipe.

- **convert() alone**, in this process: production-size city bodies rendered by the
  simulator, fed in the consumer's 256 KiB chunks; own CPU per body MB for the usual record
  form (the byte-level path) and for the same records with a space after every comma
  (which the byte-level path refuses: the general path, tries included).
- **decoder worst case**: a 1 MiB item whose bus type is all ``}``, split into 1 KiB
  chunks, against the same item full of ``x``; best of 5 each, and the bytes the decoder
  examined (its work counter) per body byte.
- **end to end**: one stack (Moto, the simulator at zero latency, the API), one consumer
  and the bare pipe (:mod:`scripts.bench_pipe`: aiohttp into aiobotocore multipart, no
  decoding, same concurrency, part size and part budget), interleaved: every round the
  pipe copies a production-size date's bodies and the consumer ingests the same date (the
  simulator is deterministic: the same bytes), the order alternating. Own CPU seconds
  per body MB of each: the consumer's from ``/proc`` over its job, the pipe's from its
  own ``getrusage`` over the copy. The consumer's peak RSS per date (VmHWM reset before
  each date through ``/proc/<pid>/clear_refs``). The first and last dates' figures are
  checked against the oracle.
"""

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from common.records import ArrayDecoder
from consumer.convert import convert
from refsim.config import SimulatorConfig
from refsim.data import data_seed, render_chunks
from refsim.oracle import expected_stats
from scripts.bench_baselines import delete_prefix
from scripts.bench_env import ROOT, BenchError, Stack, check_rows, cpu_seconds, vm_hwm_bytes

MB: Final = 1_000_000
MIB: Final = 1024 * 1024
CHUNK_BYTES: Final = 256 * 1024  # what the consumer's fetcher reads at a time
CPU_RATIO_GOAL: Final = 2.5
RSS_GOAL: Final = 200 * MB
RSS_GROWTH_GOAL: Final = 1.05
WORST_RATIO_GOAL: Final = 3.0


@dataclass(frozen=True)
class IngestSizes:
    rounds: int
    big_records: tuple[int, int]
    body_records: int
    worst_item_bytes: int = MIB - 64
    worst_chunk_bytes: int = 1024


FULL: Final = IngestSizes(rounds=10, big_records=(78_000, 88_000), body_records=84_000)
QUICK: Final = IngestSizes(rounds=3, big_records=(6_000, 7_000), body_records=20_000)


@dataclass
class IngestSection:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IngestTarget:
    name: str
    measured: str
    goal: str
    met: bool


@dataclass
class IngestResult:
    sections: list[IngestSection] = field(default_factory=list)
    targets: list[IngestTarget] = field(default_factory=list)


async def run_ingest(quick: bool) -> IngestResult:
    sizes = QUICK if quick else FULL
    result = IngestResult()
    convert_alone(sizes, result)
    decoder_worst_case(sizes, result)
    await end_to_end(sizes, result)
    return result


# --- convert() alone ----------------------------------------------------------------------


def city_body(records: int) -> bytes:
    """One city's stats body as the simulator serves it."""
    config = SimulatorConfig(seed=21, records_min=records, records_max=records, latency_max=0)
    day = date(2024, 6, 1)
    return "".join(render_chunks(config, data_seed(config, 7, day), day)).encode()


def convert_seconds(body: bytes, chunk_bytes: int, repeats: int) -> tuple[float, int, int]:
    """Best own-CPU seconds of converting ``body``; the records stored and bytes examined."""
    chunks = [body[start : start + chunk_bytes] for start in range(0, len(body), chunk_bytes)]
    best = float("inf")
    records = examined = 0
    for _ in range(repeats):
        decoder = ArrayDecoder()
        clock = time.process_time()
        records = sum(convert(decoder, 7, chunk).records for chunk in [*chunks, None])
        best = min(best, time.process_time() - clock)
        examined = decoder.bytes_examined
    return best, records, examined


def convert_alone(sizes: IngestSizes, result: IngestResult) -> None:
    usual = city_body(sizes.body_records)
    spaced = usual.replace(b',"', b', "')
    section = IngestSection(
        f"ingest: convert() alone, one city body of {sizes.body_records:,} records, 256 KiB chunks",
        ["record form", "body MB", "records stored", "CPU s (best of 3)", "CPU ms / body MB"],
    )
    for name, body in (("usual (byte-level path)", usual), ("spaced (general path)", spaced)):
        seconds, records, _ = convert_seconds(body, CHUNK_BYTES, repeats=3)
        if records != sizes.body_records:
            raise BenchError(f"convert() stored {records} of {sizes.body_records} records")
        section.rows.append(
            [
                name,
                f"{len(body) / MB:.1f}",
                f"{records:,}",
                f"{seconds:.3f}",
                f"{seconds * 1000 / (len(body) / MB):.2f}",
            ]
        )
    section.notes.append(
        "Own CPU (time.process_time) of this process; spaced: the same records with a space "
        'after every comma (`, "`), which the byte-level rewrite refuses.'
    )
    result.sections.append(section)


# --- the decoder's worst case -------------------------------------------------------------------


def worst_body(item_bytes: int, filler: bytes) -> bytes:
    head = b'{"departure-time":"2024-01-01T03:00:00","bus-type":"'
    tail = b'","passengers":1,"delay":"PT1S","accident":false}'
    return b"[" + head + filler * (item_bytes - len(head) - len(tail)) + tail + b"]"


def decoder_worst_case(sizes: IngestSizes, result: IngestResult) -> None:
    section = IngestSection(
        f"ingest: one {sizes.worst_item_bytes / MIB:.2f} MiB item in "
        f"{sizes.worst_chunk_bytes:,}-byte chunks",
        ["bus type made of", "CPU ms (best of 5)", "bytes examined / body bytes"],
    )
    seconds: dict[bytes, float] = {}
    for filler in (b"x", b"}"):
        body = worst_body(sizes.worst_item_bytes, filler)
        taken, records, examined = convert_seconds(body, sizes.worst_chunk_bytes, repeats=5)
        if records != 1:
            raise BenchError("the worst-case item was not stored")
        seconds[filler] = taken
        section.rows.append(
            [f'"{filler.decode()}"', f"{taken * 1000:.1f}", f"{examined / len(body):.2f}"]
        )
    ratio = seconds[b"}"] / seconds[b"x"]
    section.notes.append(
        f"Ratio }} / x: {ratio:.2f}. Before this change the decoder re-parsed its buffer "
        "at every `}` (quadratic): 1.0 s for 80k braces, 15.7 s for a 320 KB record."
    )
    result.sections.append(section)
    result.targets.append(
        IngestTarget(
            "ingest: decoder worst case (1 MiB of `}`) / plain item",
            f"{ratio:.2f}x",
            f"<= {WORST_RATIO_GOAL:.0f}x",
            ratio <= WORST_RATIO_GOAL,
        )
    )


# --- end to end ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    day: date
    body_bytes: int
    pipe_cpu: float
    pipe_wall: float
    consumer_cpu: float
    consumer_wall: float
    consumer_peak: int

    def per_mb(self, cpu: float) -> float:
        return cpu * 1000 / (self.body_bytes / MB)

    @property
    def ratio(self) -> float:
        return self.consumer_cpu / self.pipe_cpu


async def run_pipe(stack: Stack, day: date) -> dict[str, Any]:
    """The bare pipe over ``day``'s bodies, in a child process; its JSON answer."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench_pipe",
        f"--reference={stack.refsim}",
        f"--s3={stack.moto}",
        f"--bucket={stack.namespace}",
        f"--date={day.isoformat()}T00:00:00",
        f"--prefix=pipe/date={day.isoformat()}/",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise BenchError(f"the pipe failed: {err.decode()[-2000:]}")
    answer: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    async with stack.s3_client() as client:
        await delete_prefix(client, stack.namespace, f"pipe/date={day.isoformat()}/")
    return answer


def reset_peak_rss(pid: int) -> None:
    """Start a new VmHWM for ``pid`` (Linux: ``echo 5 > /proc/<pid>/clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def run_consumer(stack: Stack, day: date) -> tuple[float, float, int]:
    """Own CPU seconds, wall seconds and peak RSS of the consumer over ``day``'s job."""
    pid = stack.consumers[0].process.pid
    reset_peak_rss(pid)
    before = cpu_seconds(pid)
    timing = (await stack.run_jobs([day], limit_seconds=900))[0]
    return cpu_seconds(pid) - before, timing.wall_seconds, vm_hwm_bytes(pid)


async def end_to_end(sizes: IngestSizes, result: IngestResult) -> None:
    low, high = sizes.big_records
    config = SimulatorConfig(seed=22, cities=30, records_min=low, records_max=high, latency_max=0)
    days = [date(2024, 7, 1) + timedelta(days=offset) for offset in range(sizes.rounds)]
    rounds: list[Round] = []
    async with Stack("ingest", config) as stack:
        await stack.start_consumers(1)
        for index, day in enumerate(days):
            if index % 2 == 0:
                pipe = await run_pipe(stack, day)
                consumer = await run_consumer(stack, day)
            else:
                consumer = await run_consumer(stack, day)
                pipe = await run_pipe(stack, day)
            rounds.append(
                Round(day, int(pipe["bytes"]), pipe["cpu_seconds"], pipe["wall_seconds"], *consumer)
            )
            print(f"  round {index + 1}: {describe(rounds[-1])}", flush=True)
        checked = sorted({days[0], days[-1]})
        for day in checked:
            _, body = await stack.country_stats(day, day)
            check_rows(f"ingest: {day}", body["stats"], expected_stats(config, [day]))
        stack.stop_consumers()
    report_end_to_end(rounds, sizes, result)


def describe(one: Round) -> str:
    return (
        f"{one.body_bytes / MB:.0f} MB; consumer {one.per_mb(one.consumer_cpu):.2f} ms/MB, "
        f"pipe {one.per_mb(one.pipe_cpu):.2f} ms/MB ({one.ratio:.2f}x); "
        f"peak RSS {one.consumer_peak / MIB:.0f} MiB"
    )


def report_end_to_end(rounds: list[Round], sizes: IngestSizes, result: IngestResult) -> None:
    low, high = sizes.big_records
    section = IngestSection(
        f"ingest: consumer vs bare pipe, 30 cities x {low // 1000}-{high // 1000}k records, "
        f"{len(rounds)} interleaved rounds",
        [
            "date",
            "body MB",
            "consumer CPU ms/MB",
            "pipe CPU ms/MB",
            "ratio",
            "consumer wall s",
            "pipe wall s",
            "consumer peak RSS MiB",
        ],
    )
    for one in rounds:
        section.rows.append(
            [
                one.day.isoformat(),
                f"{one.body_bytes / MB:.1f}",
                f"{one.per_mb(one.consumer_cpu):.2f}",
                f"{one.per_mb(one.pipe_cpu):.2f}",
                f"{one.ratio:.2f}",
                f"{one.consumer_wall:.2f}",
                f"{one.pipe_wall:.2f}",
                f"{one.consumer_peak / MIB:.0f}",
            ]
        )
    ratios = [one.ratio for one in rounds]
    peaks = [one.consumer_peak for one in rounds]
    second, last = peaks[min(1, len(peaks) - 1)], peaks[-1]
    section.notes += [
        f"CPU ratio (consumer / pipe, same date): median {statistics.median(ratios):.2f}, "
        f"worst {max(ratios):.2f}. Body MB = 10^6 bytes of response bodies (the pipe counts "
        "them; the consumer reads the same bytes).",
        "The pipe: aiohttp `iter_chunked(256 KiB)` into aiobotocore `upload_part` (5 MiB "
        "parts, 6-part budget, 32 cities at a time), no decoding; its CPU excludes its start-up.",
        "Consumer CPU: /proc/<pid>/stat over the job (POST to succeeded), so it includes the "
        "job's bookkeeping (city list, state writes, manifest commit).",
        f"Peak RSS (VmHWM, reset before each date): second date {second / MIB:.0f} MiB, last "
        f"{last / MIB:.0f} MiB, highest {max(peaks) / MIB:.0f} MiB.",
    ]
    result.sections.append(section)
    worst = max(ratios)
    result.targets += [
        IngestTarget(
            "ingest: consumer CPU per body MB / bare pipe (worst round)",
            f"{worst:.2f}x",
            f"<= {CPU_RATIO_GOAL}x",
            worst <= CPU_RATIO_GOAL,
        ),
        IngestTarget(
            "ingest: consumer peak RSS (highest date)",
            f"{max(peaks) / MIB:.0f} MiB",
            "<= 200 MB",
            max(peaks) <= RSS_GOAL,
        ),
        IngestTarget(
            f"ingest: consumer peak RSS, date {len(peaks)} / date 2",
            f"{last / second:.3f}",
            f"<= {RSS_GROWTH_GOAL}",
            last <= RSS_GROWTH_GOAL * second,
        ),
    ]


def main(argv: list[str]) -> None:
    """``python -m scripts.bench_ingest [--quick]``: this scenario alone, printed."""
    measured = asyncio.run(run_ingest(quick="--quick" in argv))
    for section in measured.sections:
        print(f"\n### {section.title}\n")
        print("| " + " | ".join(section.headers) + " |")
        print("|" + "|".join("---" for _ in section.headers) + "|")
        for row in section.rows:
            print("| " + " | ".join(row) + " |")
        for note in section.notes:
            print(f"- {note}")
    for target in measured.targets:
        print(f"target: {target.name}: {target.measured} (goal {target.goal}) {target.met}")


if __name__ == "__main__":
    main(sys.argv[1:])
