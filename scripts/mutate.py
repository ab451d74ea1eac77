"""``python -m scripts.mutate`` (``make mutate``): remove each guard of the lifecycle in turn.

Each mutation is one hand-picked edit of the job and date protocol (a conditional
header, a fencing check, the generation comparison, the stand-down, the finality of
``succeeded``/``failed``), applied alone to a copy of the tree (the real files are never
touched). The tests that should catch it run on the copy with the project's interpreter,
cheapest first: the model check (:mod:`tests.unit.test_lifecycle_model`), then the
scenario tests of the integration suite. A mutation is caught when one of them fails.

Prints one table row per mutation and exits non-zero if any survived (or if the tests
fail on the unmutated copy: then no mutation proves anything).
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
IGNORED: Final = (
    ".venv",
    ".git",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "__pycache__",
    ".bench",
    ".demo",
    "node_modules",
)
MODEL: Final = "tests/unit/test_lifecycle_model.py"  # the machine and its replayed schedules
DUPLICATE: Final = (
    "tests/unit/test_lifecycle_model.py::test_a_copy_of_a_message_while_its_job_runs_is_dropped"
)
UPGRADE: Final = (
    "tests/unit/test_lifecycle_model.py::"
    "test_a_claim_over_a_version_1_manifest_takes_a_higher_generation_and_commits"
)
HEARTBEAT: Final = "tests/unit/test_heartbeat_fencing.py"
PAUSED: Final = (
    "tests/unit/test_lifecycle_model.py::"
    "test_a_run_paused_before_its_commit_never_commits_after_a_newer_job_took_the_lease"
)
SWEEP: Final = (
    "tests/unit/test_lifecycle_model.py::"
    "test_a_final_sweep_never_deletes_what_a_newer_claim_wrote_after_it_read_the_date"
)
FENCING: Final = "tests/integration/test_fencing.py"
RACES: Final = "tests/integration/test_races.py"
PROFILE: Final = "mutate"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = (MODEL, FENCING, RACES)


MUTATIONS: Final = (
    Mutation(
        "date-state CAS without If-Match",
        "common/jobs.py",
        """        new_etag = await put_conditionally(
            self._store, self._layout.manifest(state.date), body, etag
        )""",
        """        new_etag = await self._store.put(self._layout.manifest(state.date), body)""",
    ),
    Mutation(
        "job-state CAS without If-Match",
        "common/jobs.py",
        """        return await put_conditionally(
            self._store, self._layout.job(job.job_id), job.model_dump_json().encode(), etag
        )""",
        """        key, body = self._layout.job(job.job_id), job.model_dump_json().encode()
        return await self._store.put(key, body)""",
    ),
    Mutation(
        "If-None-Match dropped (first date state, job create)",
        "common/jobs.py",
        "                return await store.put(key, body, if_none_match=True)",
        "                return await store.put(key, body)",
    ),
    Mutation(
        "lost answer taken as success, no read-back",
        "common/jobs.py",
        """            last_error = error
            try:
                stored = await store.get(key)""",
        """            last_error = error
            return etag or '"lost"'
            try:
                stored = await store.get(key)""",
    ),
    Mutation(
        "Run.commit does not check the lease",
        "common/lifecycle.py",
        """            if state.run != self.lease:
                raise FencedError(f"run {self.run_id} lost its lease before committing")""",
        "",
        (PAUSED, MODEL, FENCING, RACES),
    ),
    Mutation(
        "Run.commit does not check the committed generation",
        "common/lifecycle.py",
        "            if state.committed is not None and state.committed.generation >= "
        "self.lease.generation:\n"
        '                raise FencedError(f"date {self.state.date} holds a newer version")',
        "",
    ),
    Mutation(
        "claim generation from the claim alone, not top_generation",
        "common/lifecycle.py",
        """            job = JobState.queued(
                uuid.uuid4().hex, day, force=force, generation=state.top_generation + 1
            )""",
        """            job = JobState.queued(
                uuid.uuid4().hex, day, force=force,
                generation=(state.claim.generation if state.claim else 0) + 1,
            )""",
        (MODEL, UPGRADE, FENCING, RACES),
    ),
    Mutation(
        "_final writes over a final state",
        "common/lifecycle.py",
        """            if job.status in FINAL:
                return job
            final = job.model_copy(update=update)""",
        """            final = job.model_copy(update=update)""",
    ),
    Mutation(
        "end() does not clear the ended job's lease",
        "common/lifecycle.py",
        """            if state.run is not None and state.run.job_id == job_id:
                update["run"] = None""",
        "",
    ),
    Mutation(
        "end() deletes before the date-state write",
        "common/lifecycle.py",
        """        committed: Manifest | None = None

        def change(state: DateState) -> dict[str, Any] | None:""",
        """        doomed = await self.jobs.get(job_id)
        if doomed is not None:
            await self.delete_job_data(day, doomed.generation, job_id)
        committed: Manifest | None = None

        def change(state: DateState) -> dict[str, Any] | None:""",
    ),
    Mutation(
        "end() with a lease does not check it",
        "common/lifecycle.py",
        """            if lease is not None and state.run != lease:
                raise FencedError(f"run {lease.run_id} lost its lease")""",
        "",
    ),
    Mutation(
        "may_commit always False (sweeps delete live jobs' objects)",
        "common/lifecycle.py",
        "        return holds_claim or holds_lease",
        "        return False",
    ),
    Mutation(
        "start() ignores claim.ended",
        "common/lifecycle.py",
        """            if claim.ended:
                return Ended(await self.end(job_id, day, job.error or "the job was given up"))""",
        "",
    ),
    Mutation(
        "start() ignores a newer claim (no stand-down)",
        "common/lifecycle.py",
        """            if claim is None or claim.job_id != job_id:
                by = None if claim is None else claim.job_id""",
        """            if claim is None:
                by = None""",
    ),
    Mutation(
        "Duplicate check dropped (a copy of a message runs twice)",
        "common/lifecycle.py",
        "                return Duplicate(job)",
        "                pass",
        (DUPLICATE, MODEL, FENCING, RACES),
    ),
    Mutation(
        "Run.save writes over any state (no If-Match)",
        "common/lifecycle.py",
        "                self._etag = await jobs.replace(state, self._etag)",
        """                self._etag = await self._lifecycle.store.put(
                    self._lifecycle.layout.job(state.job_id), state.model_dump_json().encode()
                )""",
    ),
    Mutation(
        "final sweep deletes generations claimed after it read the date",
        "consumer/sweep.py",
        "        if owner.generation > known:",
        "        if False:",
        (SWEEP, MODEL, FENCING, RACES),
    ),
    Mutation(
        "heartbeat never checks the lease",
        "consumer/handler.py",
        """                    await self.run.check()
                    await self._save(force=True)""",
        """                    await self._save(force=True)""",
        (HEARTBEAT, FENCING, RACES),
    ),
    Mutation(
        "heartbeat never stands down (fenced work goes on)",
        "consumer/handler.py",
        """                    work.cancel("fenced: another run or an ending took over")""",
        """                    pass""",
        (HEARTBEAT, FENCING, RACES),
    ),
)


def pytest_configure() -> None:
    """With ``-p scripts.mutate``: report a failing example at once, without shrinking it."""
    from hypothesis import Phase, settings  # noqa: PLC0415 - only inside the test runs

    settings.register_profile(
        # No example database: an example saved by one mutation's run must not be replayed
        # against the next (it may fail for reasons of its own).
        PROFILE,
        phases=(Phase.explicit, Phase.generate),
        print_blob=False,
        database=None,
    )
    settings.load_profile(PROFILE)


def _copy(target: Path) -> None:
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)


def _why(output: bytes) -> str:
    """The first error line pytest printed (what the failing test said)."""
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("E ") and line[1:].strip():
            return line[1:].strip()[:90].replace("|", "/")
    return "failed"


def _run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str | None, float]:
    """The first of ``tests`` that fails on the copy (``None``: all pass), and the time."""
    clock = time.monotonic()
    for test in tests:
        if not (copy / test.partition("::")[0]).exists():
            continue
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
        command += ["-p", "scripts.mutate", "-o", "addopts=", "-m", "not cluster", test]
        try:
            result = subprocess.run(  # noqa: PLW1510 - the code is the answer
                command, cwd=copy, capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return f"{test} (timed out: counted as caught)", time.monotonic() - clock
        if result.returncode != 0:
            return f"{test}: {_why(result.stdout)}", time.monotonic() - clock
    return None, time.monotonic() - clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutations whose name contains this")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test file")
    parser.add_argument("--skip-baseline", action="store_true", help="trust the unmutated tree")
    parser.add_argument(
        "--unit-only", action="store_true", help="leave out the integration tests (minutes each)"
    )
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only is None or args.only in m.name]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bus-stats-mutate-") as scratch:
        copy = Path(scratch) / "tree"
        _copy(copy)
        broken: set[str] = {FENCING, RACES} if args.unit_only else set()
        if not args.skip_baseline:
            for test in dict.fromkeys(t for m in chosen for t in m.tests if t not in broken):
                failed, seconds = _run_tests(copy, (test,), args.timeout)
                if failed is None:
                    print(f"baseline: {test} passes unmutated ({seconds:.0f} s)", flush=True)
                    continue
                if test == MODEL:
                    print(f"the unmutated tree fails {failed}: nothing to prove")
                    return 2
                print(f"baseline: {failed} unmutated ({seconds:.0f} s): not used", flush=True)
                broken.add(test)
        rows: list[tuple[str, str, str, str, float]] = []
        for mutation in chosen:
            target = copy / mutation.path
            original = target.read_text()
            if original.count(mutation.old) != 1:
                rows.append((mutation.name, mutation.path, "(the code changed)", "NOT APPLIED", 0))
                continue
            target.write_text(original.replace(mutation.old, mutation.new))
            try:
                tests = tuple(test for test in mutation.tests if test not in broken)
                caught_by, seconds = _run_tests(copy, tests, args.timeout)
            finally:
                target.write_text(original)
            verdict = "caught" if caught_by is not None else "SURVIVED" if tests else "UNTESTED"
            rows.append((mutation.name, mutation.path, caught_by or "-", verdict, seconds))
            print(f"{verdict:8} {mutation.name} ({seconds:.0f} s)", flush=True)
    print()
    print("| mutation | where | caught by (test) | caught? | seconds |")
    print("|---|---|---|---|---|")
    for name, path, test, verdict, seconds in rows:
        print(f"| {name} | {path} | {test} | {verdict} | {seconds:.0f} |")
    survived = [row for row in rows if row[3] != "caught"]
    print(f"\n{len(rows) - len(survived)}/{len(rows)} caught in {time.monotonic() - started:.0f} s")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
