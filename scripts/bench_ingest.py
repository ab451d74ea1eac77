"""The ingest benchmark (``make bench ARGS='--only ingest'``): the consumer against a bare pipe.

- **convert() alone**, in this process: production-size city bodies rendered by the
  simulator, fed in the consumer's 256 KiB chunks; own CPU per body MB for the usual record
  form (the byte-level path) and for the same records with a space after every comma
  (which the byte-level path refuses: the general path, tries included).
- **decoder worst case**: a 1 MiB item whose bus type is all ``}``, split into 1 KiB
  chunks, against the same item full of ``x``; best of 5 each, and the bytes the decoder
  examined (its work counter) per body byte.
- **codecs** (:mod:`scripts.bench_codec`): what each codec and level offered makes of a
  production-size date's lines: bytes a record, a 366-date year, CPU per MB.
- **end to end**: one stack (Moto, the simulator at zero latency, the API), one consumer
  (the default codec, zstd 1), the bare pipe (:mod:`scripts.bench_pipe`: aiohttp into
  aiobotocore multipart, no decoding, same concurrency, part size and part budget) and
  the same pipe compressing with the consumer's codec and level, interleaved: every
  round each pipe copies a production-size date's bodies and the consumer ingests the
  same date (the simulator is deterministic: the same bytes), the order rotating. Then
  the same with a consumer storing uncompressed objects (``BUSSTATS_OBJECT_CODEC=none``,
  as before codecs) against the bare pipe. Own CPU seconds per body MB of each: the
  consumer's from ``/proc`` over its job, the pipes' from their own ``getrusage`` over
  the copy. The consumer's peak RSS per date (VmHWM reset before
  each date through ``/proc/<pid>/clear_refs``). The first and last dates' figures are
  checked against the oracle.
"""

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from common.codec import DEFAULT_CODEC, Codec
from common.records import ArrayDecoder
from consumer.convert import convert
from refsim.config import SimulatorConfig
from refsim.data import data_seed, render_chunks
from refsim.oracle import expected_stats
from scripts import bench_codec
from scripts.bench_baselines import delete_prefix
from scripts.bench_env import (
    ROOT,
    BenchError,
    Stack,
    check_rows,
    cpu_seconds,
    read_manifests,
    vm_hwm_bytes,
)

MB: Final = 1_000_000
MIB: Final = 1024 * 1024
CHUNK_BYTES: Final = 256 * 1024  # what the consumer's fetcher reads at a time
CPU_RATIO_GOAL: Final = 2.5
RSS_GOAL: Final = 200 * MB
RSS_GROWTH_GOAL: Final = 1.05
WORST_RATIO_GOAL: Final = 3.0
COMPRESSING_PIPE_GOAL: Final = 3.0
STORED_VS_ONE_SHOT_GOAL: Final = 1.1
YEAR_RECORDS: Final = 30 * 83_000  # a production-size date's records
BYTES_PER_RECORD_GOAL: Final = 12


@dataclass(frozen=True)
class IngestSizes:
    rounds: int
    big_records: tuple[int, int]
    body_records: int
    worst_item_bytes: int = MIB - 64
    worst_chunk_bytes: int = 1024
    codec_cities: int = 30
    plain_rounds: int = 3  # rounds of the consumer storing uncompressed objects


FULL: Final = IngestSizes(rounds=10, big_records=(78_000, 88_000), body_records=84_000)
QUICK: Final = IngestSizes(
    rounds=3, big_records=(6_000, 7_000), body_records=20_000, codec_cities=4, plain_rounds=2
)


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


async def run_ingest(quick: bool | IngestSizes) -> IngestResult:
    sizes = quick if isinstance(quick, IngestSizes) else QUICK if quick else FULL
    result = IngestResult()
    convert_alone(sizes, result)
    decoder_worst_case(sizes, result)
    codec_sizes(sizes, result)
    await end_to_end(sizes, result)
    return result


# --- codecs -------------------------------------------------------------------------------


def codec_sizes(sizes: IngestSizes, result: IngestResult) -> None:
    """Always production-size cities (the ratio depends on an object's size); fewer of
    them with ``--quick``: bytes a record and a year are the same per record."""
    low, high = FULL.big_records
    config = SimulatorConfig(
        seed=22, cities=sizes.codec_cities, records_min=low, records_max=high, latency_max=0
    )
    measured = bench_codec.measure(config, date(2024, 7, 1))
    headers, rows = bench_codec.table(measured, YEAR_RECORDS)
    section = IngestSection(
        f"ingest: codecs over one date's lines ({sizes.codec_cities} production-size "
        f"cities, {measured.records:,} records, {measured.line_bytes / MB:.1f} MB of lines)",
        headers,
        rows,
    )
    section.notes += [
        "Compressed city by city as the consumer does it: the lines of each 256 KiB chunk "
        "of body, one frame (member) an object. 'vs zstd-1 one shot': the stored bytes "
        "over what zstd level 1 makes of each city's lines in one call. A year: 366 dates "
        f"of {YEAR_RECORDS / 1e6:.2f} M records (30 such cities). CPU: time.process_time "
        "of this process, single-threaded.",
    ]
    result.sections.append(section)
    default = next(row for row in measured.rows if (row.codec, row.level) == ("zstd", 1))
    per_record = default.stored / measured.records
    result.targets += [
        IngestTarget(
            "ingest: stored bytes (zstd 1, streamed) / zstd-1 in one shot",
            f"{default.stored / measured.zstd1_one_shot:.3f}x",
            "<= 1.1x",
            default.stored <= STORED_VS_ONE_SHOT_GOAL * measured.zstd1_one_shot,
        ),
        IngestTarget(
            "ingest: stored bytes a record (default codec)",
            f"{per_record:.2f}",
            f"<= {BYTES_PER_RECORD_GOAL}",
            per_record <= BYTES_PER_RECORD_GOAL,
        ),
    ]


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
    zpipe_cpu: float | None = None  # the pipe compressing with the consumer's codec

    def per_mb(self, cpu: float) -> float:
        return cpu * 1000 / (self.body_bytes / MB)

    @property
    def ratio(self) -> float:
        return self.consumer_cpu / self.pipe_cpu

    @property
    def zratio(self) -> float:
        return self.consumer_cpu / (self.zpipe_cpu or float("nan"))


async def run_pipe(stack: Stack, day: date, codec: Codec = "none") -> dict[str, Any]:
    """The pipe over ``day``'s bodies (compressing with ``codec``), in a child process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench_pipe",
        f"--reference={stack.refsim}",
        f"--s3={stack.moto}",
        f"--bucket={stack.namespace}",
        f"--date={day.isoformat()}T00:00:00",
        f"--prefix=pipe/date={day.isoformat()}/",
        f"--codec={codec}",
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


async def one_round(stack: Stack, index: int, day: date, codec: Codec | None) -> Round:
    """The consumer and the pipes over ``day``, in an order that rotates with ``index``."""
    steps = ["pipe", "consumer"] + ([] if codec is None else ["zpipe"])
    shift = index % len(steps)
    answers: dict[str, Any] = {}
    for step in steps[shift:] + steps[:shift]:
        if step == "pipe":
            answers[step] = await run_pipe(stack, day)
        elif step == "zpipe":
            answers[step] = await run_pipe(stack, day, codec or "none")
        else:
            answers[step] = await run_consumer(stack, day)
    pipe = answers["pipe"]
    zpipe = answers.get("zpipe")
    consumer_cpu, consumer_wall, consumer_peak = answers["consumer"]
    return Round(
        day,
        int(pipe["bytes"]),
        pipe["cpu_seconds"],
        pipe["wall_seconds"],
        consumer_cpu,
        consumer_wall,
        consumer_peak,
        zpipe_cpu=None if zpipe is None else zpipe["cpu_seconds"],
    )


@dataclass(frozen=True)
class Phase:
    codec: Codec
    rounds: list[Round]
    stored_bytes: int
    line_bytes: int
    records: int


async def run_phase(stack: Stack, config: SimulatorConfig, days: list[date], codec: Codec) -> Phase:
    """Rounds of one consumer storing objects with ``codec`` (the pipes beside it)."""
    await stack.start_consumers(1, {"BUSSTATS_OBJECT_CODEC": codec})
    rounds: list[Round] = []
    for index, day in enumerate(days):
        rounds.append(await one_round(stack, index, day, None if codec == "none" else codec))
        print(f"  {codec} round {index + 1}: {describe(rounds[-1])}", flush=True)
    for day in sorted({days[0], days[-1]}):
        _, body = await stack.country_stats(day, day)
        check_rows(f"ingest: {day}", body["stats"], expected_stats(config, [day]))
    stack.stop_consumers()
    async with stack.s3_client() as client:
        manifests = await read_manifests(client, stack.namespace, days)
    cities = [city for manifest in manifests for city in manifest["cities"]]
    return Phase(
        codec,
        rounds,
        stored_bytes=sum(int(city.get("stored_bytes") or city["bytes"]) for city in cities),
        line_bytes=sum(int(city["bytes"]) for city in cities),
        records=sum(int(city["records"]) for city in cities),
    )


async def end_to_end(sizes: IngestSizes, result: IngestResult) -> None:
    low, high = sizes.big_records
    config = SimulatorConfig(seed=22, cities=30, records_min=low, records_max=high, latency_max=0)
    first = date(2024, 7, 1)
    days = [first + timedelta(days=offset) for offset in range(sizes.rounds)]
    plain_days = [days[-1] + timedelta(days=1 + n) for n in range(sizes.plain_rounds)]
    async with Stack("ingest", config) as stack:
        compressed = await run_phase(stack, config, days, DEFAULT_CODEC)
        plain = await run_phase(stack, config, plain_days, "none")
    report_end_to_end(compressed, plain, sizes, result)


def describe(one: Round) -> str:
    compressing = (
        ""
        if one.zpipe_cpu is None
        else f", compressing pipe {one.per_mb(one.zpipe_cpu):.2f} ms/MB ({one.zratio:.2f}x)"
    )
    return (
        f"{one.body_bytes / MB:.0f} MB; consumer {one.per_mb(one.consumer_cpu):.2f} ms/MB, "
        f"pipe {one.per_mb(one.pipe_cpu):.2f} ms/MB ({one.ratio:.2f}x){compressing}; "
        f"peak RSS {one.consumer_peak / MIB:.0f} MiB"
    )


def phase_rows(phase: Phase) -> list[list[str]]:
    return [
        [
            f"{phase.codec}",
            one.day.isoformat(),
            f"{one.body_bytes / MB:.1f}",
            f"{one.per_mb(one.consumer_cpu):.2f}",
            f"{one.per_mb(one.pipe_cpu):.2f}",
            "-" if one.zpipe_cpu is None else f"{one.per_mb(one.zpipe_cpu):.2f}",
            f"{one.ratio:.2f}",
            "-" if one.zpipe_cpu is None else f"{one.zratio:.2f}",
            f"{one.consumer_wall:.2f}",
            f"{one.consumer_peak / MIB:.0f}",
        ]
        for one in phase.rounds
    ]


def report_end_to_end(
    compressed: Phase, plain: Phase, sizes: IngestSizes, result: IngestResult
) -> None:
    low, high = sizes.big_records
    rounds = compressed.rounds
    section = IngestSection(
        f"ingest: consumer vs bare and compressing pipes, 30 cities x {low // 1000}-"
        f"{high // 1000}k records, {len(rounds)} + {len(plain.rounds)} interleaved rounds",
        [
            "consumer codec",
            "date",
            "body MB",
            "consumer CPU ms/MB",
            "pipe CPU ms/MB",
            f"{DEFAULT_CODEC} pipe CPU ms/MB",
            "vs pipe",
            f"vs {DEFAULT_CODEC} pipe",
            "consumer wall s",
            "consumer peak RSS MiB",
        ],
        phase_rows(compressed) + phase_rows(plain),
    )
    ratios = [one.ratio for one in rounds]
    zratios = [one.zratio for one in rounds]
    peaks = [one.consumer_peak for one in rounds]
    second, last = peaks[min(1, len(peaks) - 1)], peaks[-1]
    consumer_mb = statistics.median(one.per_mb(one.consumer_cpu) for one in rounds)
    plain_mb = statistics.median(one.per_mb(one.consumer_cpu) for one in plain.rounds)
    section.notes += [
        f"Consumer CPU per body MB, medians: {DEFAULT_CODEC} objects {consumer_mb:.2f}, "
        f"uncompressed objects {plain_mb:.2f} ({consumer_mb / plain_mb:.2f}x). Against the "
        f"{DEFAULT_CODEC} pipe: median {statistics.median(zratios):.2f}x, worst "
        f"{max(zratios):.2f}x; against the bare pipe: median {statistics.median(ratios):.2f}x.",
        f"Stored by the consumer: {compressed.stored_bytes / compressed.records:.2f} bytes a "
        f"record ({compressed.line_bytes / compressed.stored_bytes:.2f}x) with "
        f"{DEFAULT_CODEC}; {plain.stored_bytes / plain.records:.2f} uncompressed. A 366-date "
        f"year of these dates: {compressed.stored_bytes / len(rounds) * 366 / 1e9:.1f} GB "
        f"against {plain.stored_bytes / len(plain.rounds) * 366 / 1e9:.1f} GB.",
        "Body MB = 10^6 bytes of response bodies (the pipes count them; the consumer reads "
        "the same bytes). The pipes: aiohttp `iter_chunked(256 KiB)` into aiobotocore "
        "`upload_part` (5 MiB parts, 6-part budget, 32 cities at a time), no decoding; the "
        f"{DEFAULT_CODEC} pipe compresses each chunk on the way (zstd level 1, one frame "
        "an object); their CPU excludes their start-up.",
        "Consumer CPU: /proc/<pid>/stat over the job (POST to succeeded), so it includes the "
        "job's bookkeeping (city list, state writes, manifest commit).",
        f"Peak RSS (VmHWM, reset before each date): second date {second / MIB:.0f} MiB, last "
        f"{last / MIB:.0f} MiB, highest {max(peaks) / MIB:.0f} MiB.",
    ]
    result.sections.append(section)
    worst = max(zratios)
    result.targets += [
        IngestTarget(
            f"ingest: consumer CPU per body MB, {DEFAULT_CODEC} / uncompressed objects",
            f"{consumer_mb / plain_mb:.2f}x",
            "< 1x",
            consumer_mb < plain_mb,
        ),
        IngestTarget(
            f"ingest: consumer CPU per body MB / {DEFAULT_CODEC} pipe (worst round)",
            f"{worst:.2f}x",
            f"<= {COMPRESSING_PIPE_GOAL:.0f}x",
            worst <= COMPRESSING_PIPE_GOAL,
        ),
        IngestTarget(
            "ingest: consumer CPU per body MB / bare pipe (worst round)",
            f"{max(ratios):.2f}x",
            f"<= {CPU_RATIO_GOAL}x",
            max(ratios) <= CPU_RATIO_GOAL,
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
    """``python -m scripts.bench_ingest [--quick] [--rounds=N]``: this scenario, printed."""
    sizes = QUICK if "--quick" in argv else FULL
    for arg in argv:
        if arg.startswith("--rounds="):
            count = int(arg.removeprefix("--rounds="))
            sizes = replace(sizes, rounds=count, plain_rounds=min(count, sizes.plain_rounds))
    measured = asyncio.run(run_ingest(sizes))
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
