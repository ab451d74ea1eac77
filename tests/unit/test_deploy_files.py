"""The deployment files agree with the code, checked without Docker.

Every command the image can be started with (the Dockerfile's CMD, each ``command:`` of a
service built from this repository in docker-compose.yml) names a module with a
``__main__`` that answers ``--help`` and knows every option the command passes; every
BUSSTATS_* variable in compose is a setting; compose gives a consumer more time to stop
than the consumer gives its running jobs.
"""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from common.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return document


def project_services() -> dict[str, dict[str, Any]]:
    """The compose services that run this repository's image (the ones with ``build``)."""
    services: dict[str, dict[str, Any]] = load_compose()["services"]
    return {name: service for name, service in services.items() if "build" in service}


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form arguments of a top-level instruction (not HEALTHCHECK's ``CMD``)."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith(f"{name} "):
            arguments: list[str] = json.loads(line.removeprefix(f"{name} "))
            return arguments
    raise AssertionError(f"no {name} instruction in {DOCKERFILE.name}")


def image_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments after ``python -m``) for every way the image is started."""
    commands = [("Dockerfile CMD", dockerfile_instruction("CMD"))]
    for name, service in project_services().items():
        command = service.get("command", dockerfile_instruction("CMD"))
        assert isinstance(command, list), f"service {name}: command must be a list (exec form)"
        commands.append((f"compose service {name}", [str(part) for part in command]))
    return commands


def seconds(duration: str) -> float:
    """A compose duration (``40s``, ``1m30s``) in seconds."""
    parts = DURATION_PART.findall(duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(value + unit for value, unit in parts) == duration, duration
    return sum(float(value) * UNIT_SECONDS[unit] for value, unit in parts)


def test_entrypoint_runs_modules() -> None:
    assert dockerfile_instruction("ENTRYPOINT") == ["python", "-m"]


def test_compose_runs_every_process() -> None:
    modules = {command[0] for _, command in image_commands()}
    assert modules == {"producer", "consumer", "refsim"}


MODULES = sorted({command[0] for _, command in image_commands()})


@pytest.fixture(scope="module")
def help_output() -> dict[str, tuple[int, str, str]]:
    """``python -m <module> --help`` of every module, run in parallel: (status, out, err)."""
    processes = {
        module: subprocess.Popen(
            [sys.executable, "-m", module, "--help"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in MODULES
        if importlib.util.find_spec(f"{module}.__main__") is not None
    }
    results: dict[str, tuple[int, str, str]] = {}
    for module, process in processes.items():
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results[module] = (process.returncode, out, err)
    return results


@pytest.mark.parametrize("module", MODULES)
def test_command_module_answers_help(
    module: str, help_output: dict[str, tuple[int, str, str]]
) -> None:
    """``python -m <module> --help`` works and lists every option the commands pass."""
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    assert importlib.util.find_spec(f"{module}.__main__") is not None, f"no {module}.__main__"
    status, out, err = help_output[module]
    assert status == 0, err
    for where, command in image_commands():
        if command[0] != module:
            continue
        for option in (part.split("=")[0] for part in command[1:] if part.startswith("--")):
            assert option in out, f"{where}: {module} has no option {option}"


def test_compose_configures_known_settings_only() -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for name, service in project_services().items():
        for variable in service.get("environment", {}):
            if variable.startswith(ENV_PREFIX):
                assert variable in fields, f"service {name}: {variable} is not a setting"
            else:
                assert variable in AWS_VARIABLES, f"service {name}: {variable} is not ours"


def test_consumer_stop_grace_exceeds_shutdown_grace() -> None:
    consumer = project_services()["consumer"]
    default = Settings.model_fields["shutdown_grace_seconds"].default
    grace = float(
        consumer.get("environment", {}).get(f"{ENV_PREFIX}SHUTDOWN_GRACE_SECONDS", default)
    )
    assert seconds(consumer["stop_grace_period"]) > grace


def test_consumer_healthcheck_uses_its_metrics_port() -> None:
    consumer = project_services()["consumer"]
    port = consumer["environment"][f"{ENV_PREFIX}METRICS_PORT"]
    assert f":{port}/" in " ".join(consumer["healthcheck"]["test"])
