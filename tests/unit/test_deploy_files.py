"""The deployment files agree with the code, checked without Docker.

Every command the image can be started with (the Dockerfile's CMD, each ``command:`` of a
service running this repository's image in docker-compose.yml) names a module with a
``__main__`` that answers ``--help`` and knows every option the command passes; every
BUSSTATS_* variable in compose is a setting; compose gives a consumer more time to stop
than the consumer gives its running jobs. Compose builds the image once, publishes every
port from a variable on a configurable address (loopback by default), and every variable
it reads is in the README; each health check asks its process something real. (That the
stack really runs is ``make compose-test``'s job.)
"""

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from common.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
PYPROJECT = ROOT / "pyproject.toml"
APP_SERVICES = {"refsim", "api", "consumer"}
# "${BUSSTATS_BIND_ADDRESS:-127.0.0.1}:${BUSSTATS_API_PUBLISHED_PORT:-8000}:8000"
PUBLISHED_PORT = re.compile(
    r"^\$\{BUSSTATS_BIND_ADDRESS:-127\.0\.0\.1\}:"
    r"\$\{(?P<variable>BUSSTATS_[A-Z0-9_]+_PUBLISHED_PORT):-(?P<default>\d+)\}:(?P<target>\d+)$"
)
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def load_compose() -> dict[str, Any]:
    document: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return document


def project_services() -> dict[str, dict[str, Any]]:
    """The compose services that run this repository's image (the one that builds it and
    those that run the same tag)."""
    services: dict[str, dict[str, Any]] = load_compose()["services"]
    built = {service["image"] for service in services.values() if "build" in service}
    return {name: service for name, service in services.items() if service.get("image") in built}


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


def healthcheck(service: str) -> str:
    return " ".join(load_compose()["services"][service]["healthcheck"]["test"])


def test_project_services_run_the_one_image() -> None:
    assert set(project_services()) == APP_SERVICES


def test_one_service_builds_the_image_the_others_reuse() -> None:
    services = project_services()
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["api"], "exactly one service builds: `up --build` builds once"
    for name, service in services.items():
        if name not in builders:
            assert service.get("pull_policy") == "never", f"{name} must not try to pull"


def test_consumer_healthcheck_asks_for_its_broker_connection() -> None:
    consumer = project_services()["consumer"]
    port = consumer["environment"][f"{ENV_PREFIX}METRICS_PORT"]
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck("consumer")


def test_api_healthcheck_asks_for_readiness() -> None:
    port = project_services()["api"]["environment"][f"{ENV_PREFIX}API_PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in healthcheck("api")


def test_simulator_healthcheck_makes_a_real_request() -> None:
    command = project_services()["refsim"]["command"]
    port = command[command.index("--port") + 1]
    assert f"http://127.0.0.1:{port}/cities" in healthcheck("refsim")


def test_every_published_port_is_a_variable_on_the_bind_address() -> None:
    seen: dict[str, str] = {}
    for name, service in load_compose()["services"].items():
        for port in service.get("ports", []):
            match = PUBLISHED_PORT.match(port)
            assert match, f"service {name}: {port!r} is not ${{BIND}}:${{VAR:-n}}:n"
            assert match["default"] == match["target"], f"service {name}: {port!r}"
            assert match["variable"] not in seen, f"{match['variable']} used twice"
            seen[match["variable"]] = match["default"]
    assert seen == {
        "BUSSTATS_AMQP_PUBLISHED_PORT": "5672",
        "BUSSTATS_MANAGEMENT_PUBLISHED_PORT": "15672",
        "BUSSTATS_S3_PUBLISHED_PORT": "5000",
        "BUSSTATS_REFSIM_PUBLISHED_PORT": "8080",
        "BUSSTATS_API_PUBLISHED_PORT": "8000",
    }


def test_every_compose_variable_is_documented() -> None:
    variables = set(COMPOSE_VARIABLE.findall(COMPOSE.read_text()))
    assert "BUSSTATS_BIND_ADDRESS" in variables
    readme = README.read_text()
    for variable in sorted(variables):
        assert f"`{variable}`" in readme, f"{variable} is not in the README"


def test_the_image_has_no_healthcheck_that_fits_one_command_only() -> None:
    """One image runs the API, consumers and the simulator: health is per service."""
    instructions = [line.split()[0] for line in DOCKERFILE.read_text().splitlines() if line]
    assert "HEALTHCHECK" not in instructions
    for name in APP_SERVICES:
        assert load_compose()["services"][name].get("healthcheck"), f"{name}: no check"


def test_the_runtime_user_is_not_a_system_account() -> None:
    """uid 10001 is above SYS_UID_MAX: `useradd --system` would warn."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.startswith("#")]
    useradd = [line for line in lines if "useradd" in line]
    assert useradd
    assert not any("--system" in line for line in useradd)
    assert "USER 10001:10001" in lines


def test_the_build_backend_is_pinned() -> None:
    build_system = tomllib.loads(PYPROJECT.read_text())["build-system"]
    assert all("==" in requirement for requirement in build_system["requires"])
