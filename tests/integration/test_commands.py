"""The consumer's commands as an operator runs them: ``--help`` says what each does and
touches, and ``sweep --dry-run`` lists what a sweep would delete without deleting it."""

import subprocess
import sys

import orjson
import pytest

from common.settings import Settings
from common.storage import S3Store
from consumer.__main__ import COMMANDS
from tests.integration.services import ROOT, environment, run_module
from tests.integration.test_sweep import DAY, commit, keys, start_upload, uploads, write_city

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_says_what_it_does_and_touches(command: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "consumer", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "Touches:" in " ".join(shown.split()), shown
    assert "BUSSTATS_" in shown


def finished(output: str) -> dict[str, object]:
    for line in output.splitlines():
        if line.startswith("{") and '"sweep.finished"' in line:
            parsed: dict[str, object] = orjson.loads(line)
            return parsed
    raise AssertionError(f"no sweep.finished line in {output[-2000:]}")


async def test_sweep_dry_run_deletes_nothing_and_counts_what_would_go(
    settings: Settings, store: S3Store
) -> None:
    older = await write_city(store, 1, 1)
    kept = await write_city(store, 2, 1)
    upload = await start_upload(store, 1, 5)
    await commit(store, 2, [kept])
    before, uploads_before = await keys(store), await uploads(store)
    env = environment(settings)
    span = ("--from", DAY.isoformat(), "--to", DAY.isoformat())

    dry = await run_module(env, "consumer", "sweep", "--dry-run", *span, deadline=120)

    assert await keys(store) == before
    assert await uploads(store) == uploads_before == {upload}
    counts = finished(dry)
    assert counts["dry_run"] is True
    # The older city's object and completion record, and the committed city's record.
    assert counts["objects"] == 3
    assert counts["uploads"] == 1
    assert older in dry  # each key it would delete is logged

    done = await run_module(env, "consumer", "sweep", *span, deadline=120)

    assert finished(done)["objects"] == 3
    assert older not in await keys(store)
    assert kept in await keys(store)
    assert await uploads(store) == set()
