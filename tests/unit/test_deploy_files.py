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

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from common.settings import ENV_PREFIX, Settings
from consumer.metrics import ConsumerMetrics
from producer.metrics import ApiMetrics

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
        entrypoint = service.get("entrypoint", dockerfile_instruction("ENTRYPOINT"))
        command = service.get("command", dockerfile_instruction("CMD"))
        assert isinstance(command, list), f"service {name}: command must be a list (exec form)"
        assert entrypoint[:2] == ["python", "-m"], f"service {name}: entrypoint {entrypoint}"
        # A service's own entrypoint may name its module (``python -m consumer``).
        arguments = [*entrypoint[2:], *command]
        commands.append((f"compose service {name}", [str(part) for part in arguments]))
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
        "BUSSTATS_PROMETHEUS_PUBLISHED_PORT": "9090",
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


# --- the compose cluster and Prometheus ----------------------------------------------------

CLUSTER = ROOT / "docker-compose.cluster.yml"
RABBITMQ_CONF = ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def test_cluster_nodes_have_fixed_resolvable_hostnames_listed_for_discovery() -> None:
    """Each node's name is rabbit@<hostname>; classic-config discovery lists exactly those,
    and every hostname resolves inside the network (the service name or an alias)."""
    services = load_yaml(CLUSTER)["services"]
    nodes = {name: service for name, service in services.items() if "hostname" in service}
    assert len(nodes) == 3
    conf = RABBITMQ_CONF.read_text()
    assert "cluster_formation.peer_discovery_backend = classic_config" in conf
    listed = set(re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", conf, re.M))
    assert listed == {f"rabbit@{service['hostname']}" for service in nodes.values()}
    for name, service in nodes.items():
        aliases = service.get("networks", {}).get("default", {}).get("aliases", [])
        assert service["hostname"] in {name, *aliases}, f"{name}: hostname does not resolve"


def test_cluster_nodes_share_one_cookie_from_the_environment() -> None:
    text = CLUSTER.read_text()
    services = load_yaml(CLUSTER)["services"]
    cookies = {
        str(service["environment"]["RABBITMQ_ERLANG_COOKIE"])
        for service in services.values()
        if "hostname" in service
    }
    assert len(cookies) == 1
    (cookie,) = cookies
    assert cookie.startswith("${BUSSTATS_ERLANG_COOKIE:?"), "the cookie must be required"
    assert "RABBITMQ_ERLANG_COOKIE: ${" in text


def test_cluster_clients_list_every_node() -> None:
    services = load_yaml(CLUSTER)["services"]
    hostnames = sorted(
        service["hostname"] for service in services.values() if "hostname" in service
    )
    for name in ("api", "consumer"):
        urls = services[name]["environment"][f"{ENV_PREFIX}AMQP_URL"].split(",")
        assert sorted(re.sub(r"^amqp://[^@]*@([^:/]+).*$", r"\1", url) for url in urls) == hostnames
        Settings(amqp_url=services[name]["environment"][f"{ENV_PREFIX}AMQP_URL"])


def test_prometheus_scrapes_every_consumer_replica_on_the_metrics_port() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = int(project_services()["consumer"]["environment"][f"{ENV_PREFIX}METRICS_PORT"])
    (sd,) = jobs["bus-stats-consumer"]["dns_sd_configs"]
    assert sd == {"names": ["consumer"], "type": "A", "port": port, "refresh_interval": "10s"}
    api_port = project_services()["api"]["environment"][f"{ENV_PREFIX}API_PORT"]
    assert jobs["bus-stats-api"]["static_configs"] == [{"targets": [f"api:{api_port}"]}]
    prometheus = load_compose()["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mounted = {volume.split(":")[0] for volume in prometheus["volumes"]}
    assert mounted == {"./deploy/prometheus/prometheus.yml", "./deploy/prometheus/alerts.yml"}


def test_alerts_use_metrics_that_exist() -> None:
    """Every busstats_* series an alert reads is one our metrics modules define."""
    defined = {
        sample.name
        for registry in (ConsumerMetrics().registry, ApiMetrics().registry)
        for metric in registry.collect()
        for sample in metric.samples
    } | {
        f"{metric.name}_total"
        for registry in (ConsumerMetrics().registry, ApiMetrics().registry)
        for metric in registry.collect()
        if metric.type == "counter"
    }
    rules = [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]
    used = {name for rule in rules for name in re.findall(r"\bbusstats_[a-z0-9_]+", rule["expr"])}
    assert used, "no alert reads our metrics"
    assert used <= defined, f"unknown metrics: {sorted(used - defined)}"
    runbook = (ROOT / "docs" / "deployment.md").read_text()
    assert "(docs/deployment.md)" in README.read_text(), "the README links the runbook"
    for rule in rules:
        assert f"- `{rule['alert']}`" in runbook, f"{rule['alert']}: no runbook line"


# --- Kubernetes --------------------------------------------------------------------------

KUBERNETES = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMAS = ROOT / "deploy" / "schemas" / "keda"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
K8S_VERSION = "1.37.0"  # bundled by kubernetes-validate; the Makefile's K8S_VERSION
SECRET_KEYS = {"amqp-url", "aws-access-key-id", "aws-secret-access-key", "rabbitmq-management-url"}
MEBI = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(KUBERNETES / "kustomization.yaml")
    return document


def manifests() -> dict[str, dict[str, Any]]:
    """kind/name -> object, from the files the kustomization lists."""
    objects: dict[str, dict[str, Any]] = {}
    for name in kustomization()["resources"]:
        for document in YAML(typ="safe").load_all((KUBERNETES / name).read_text()):
            objects[f"{document['kind']}/{document['metadata']['name']}"] = document
    return objects


def settings_literals() -> dict[str, str]:
    (generator,) = kustomization()["configMapGenerator"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def container(deployment: str) -> dict[str, Any]:
    (only,) = manifests()[f"Deployment/{deployment}"]["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


def measured_peak_mib(row: str) -> int:
    """The figure of a row of docs/benchmarks.md's summary table, e.g. ``171 MiB``."""
    match = re.search(rf"^\| {re.escape(row)} \| (\d+) MiB \|", BENCHMARKS.read_text(), re.M)
    assert match, f"no row {row!r} in {BENCHMARKS.name}"
    return int(match[1])


def mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]  # a bad quantity fails the test anyway
    return int(number) * MEBI[unit] / 2**20


def test_every_manifest_is_in_the_kustomization() -> None:
    listed = set(kustomization()["resources"])
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files


def test_the_secret_is_generated_from_a_gitignored_file_with_an_example() -> None:
    (generator,) = kustomization()["secretGenerator"]
    (env_file,) = generator["envs"]
    assert f"deploy/kubernetes/{env_file}" in (ROOT / ".gitignore").read_text().splitlines()
    example = (KUBERNETES / f"{env_file}.example").read_text()
    keys = {
        line.split("=", 1)[0]
        for line in example.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert keys == SECRET_KEYS
    # KEDA's TriggerAuthentication names the Secret: no hash suffix.
    assert generator["options"]["disableNameSuffixHash"] is True


def test_credentials_come_from_the_secret_only() -> None:
    secret = kustomization()["secretGenerator"][0]["name"]
    for deployment in ("bus-stats-api", "bus-stats-consumer"):
        env = {item["name"]: item for item in container(deployment)["env"]}
        for name in (f"{ENV_PREFIX}AMQP_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret, name
            assert "value" not in env[name]
        for item in env.values():
            assert "value" not in item, f"{deployment}: {item['name']} is a literal"
    literals = settings_literals()
    assert not any("AMQP_URL" in key or "SECRET" in key or "TOKEN" in key for key in literals)
    auth = manifests()["TriggerAuthentication/bus-stats-rabbitmq"]["spec"]["secretTargetRef"]
    assert auth == [{"parameter": "host", "name": secret, "key": "rabbitmq-management-url"}]


def test_settings_are_known() -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for key in settings_literals():
        assert key in fields or key in AWS_VARIABLES, key


def test_api_deployment() -> None:
    deployment = manifests()["Deployment/bus-stats-api"]
    assert deployment["spec"]["replicas"] == 2
    api = container("bus-stats-api")
    assert api["args"][0] == "producer"
    port = int(settings_literals()[f"{ENV_PREFIX}API_PORT"])
    assert api["ports"] == [{"name": "http", "containerPort": port}]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = manifests()["Service/bus-stats-api"]["spec"]
    assert service["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_consumer_deployment_probes_and_grace() -> None:
    consumer = container("bus-stats-consumer")
    assert consumer["args"] == ["consumer"]
    port = int(settings_literals()[f"{ENV_PREFIX}METRICS_PORT"])
    assert consumer["ports"] == [{"name": "metrics", "containerPort": port}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert consumer[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    grace = float(settings_literals()[f"{ENV_PREFIX}SHUTDOWN_GRACE_SECONDS"])
    pod = manifests()["Deployment/bus-stats-consumer"]["spec"]["template"]["spec"]
    # The grace for running jobs, then the hand-back (a confirmed publish per job) and exit.
    assert pod["terminationGracePeriodSeconds"] >= grace + 15
    assert "replicas" not in manifests()["Deployment/bus-stats-consumer"]["spec"], "KEDA's"


@pytest.mark.parametrize(
    ("deployment", "row"),
    [
        ("bus-stats-consumer", "ingest: consumer peak RSS (highest date)"),
        ("bus-stats-api", "stats: API peak RSS"),
    ],
)
def test_memory_is_sized_from_the_measured_peak(deployment: str, row: str) -> None:
    peak = measured_peak_mib(row)
    resources = container(deployment)["resources"]
    assert mib(resources["requests"]["memory"]) >= peak
    assert mib(resources["limits"]["memory"]) >= 1.25 * peak, "too little headroom"
    assert mib(resources["limits"]["memory"]) <= 2 * peak, "more than twice what was measured"


def test_disruption_budgets_select_their_pods() -> None:
    for name in ("bus-stats-api", "bus-stats-consumer"):
        budget = manifests()[f"PodDisruptionBudget/{name}"]["spec"]
        labels = manifests()[f"Deployment/{name}"]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()


def test_keda_scales_the_consumers_on_the_job_queue_counting_unacked() -> None:
    scaled = manifests()["ScaledObject/bus-stats-consumer"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "bus-stats-consumer"
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"] <= 50
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    # amqp mode sees only ready messages: busy consumers would be scaled down mid-job.
    assert trigger["metadata"]["protocol"] == "http"
    assert trigger["metadata"]["mode"] == "QueueLength"
    namespace = settings_literals()[f"{ENV_PREFIX}NAMESPACE"]
    assert trigger["metadata"]["queueName"] == f"{namespace}.jobs"
    assert trigger["metadata"]["value"] == settings_literals()[f"{ENV_PREFIX}JOB_CONCURRENCY"]
    assert trigger["authenticationRef"]["name"] == "bus-stats-rabbitmq"


def validate_core(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", K8S_VERSION]
        + [str(path) for path in paths],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def validate_keda(kind: str, path: Path) -> subprocess.CompletedProcess[str]:
    schema = KEDA_SCHEMAS / f"{kind.lower()}_v1alpha1.json"
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_validators_reject_a_broken_manifest(tmp_path: Path) -> None:
    """The Makefile's linters fail on what they should: a Deployment whose container has no
    image, a ScaledObject without scaleTargetRef."""
    deployment = load_yaml(KUBERNETES / "consumer-deployment.yaml")
    del deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45s"
    broken = tmp_path / "deployment.yaml"
    broken.write_text(json.dumps(deployment))
    result = validate_core([broken])
    assert result.returncode != 0, result.stdout + result.stderr
    assert "terminationGracePeriodSeconds" in result.stdout + result.stderr

    scaled = load_yaml(KUBERNETES / "keda-scaledobject.yaml")
    del scaled["spec"]["scaleTargetRef"]
    broken = tmp_path / "scaledobject.yaml"
    broken.write_text(json.dumps(scaled))
    result = validate_keda("ScaledObject", broken)
    assert result.returncode != 0
    assert "scaleTargetRef" in result.stdout + result.stderr


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: the files are checked one by one"
)
def test_the_kustomization_renders_to_valid_objects(tmp_path: Path) -> None:
    """``kubectl kustomize`` (offline) with the example secrets: every rendered object is
    valid, core kinds against Kubernetes' schemas, KEDA's against its CRDs."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(copy / "secrets.env.example", copy / "secrets.env")
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(copy)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    documents = list(YAML(typ="safe").load_all(rendered))
    kinds = sorted(document["kind"] for document in documents)
    assert kinds == sorted(
        [document["kind"] for document in manifests().values()] + ["ConfigMap", "Secret"]
    )
    core: list[Path] = []
    for number, document in enumerate(documents):
        path = tmp_path / f"{number}-{document['kind']}.json"
        path.write_text(json.dumps(document))
        if document["apiVersion"].startswith("keda.sh/"):
            result = validate_keda(document["kind"], path)
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            assert (
                document["kind"] == "Namespace" or document["metadata"]["namespace"] == "bus-stats"
            )
            core.append(path)
    result = validate_core(core)
    assert result.returncode == 0, result.stdout + result.stderr


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (.ci/run installs it)"
    return path


def test_the_rule_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """``promtool test rules`` (the Makefile's) passes on the rules as they are and fails
    when the no-consumer alert also matches the dead-letter queue, which never has one."""
    tests = ALERTS.parent / "alerts.test.yml"
    shutil.copy(tests, tmp_path / tests.name)
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    command = [promtool(), "test", "rules", tests.name]
    run = functools.partial(
        subprocess.run, command, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run(check=False).returncode == 0
    rules = ALERTS.read_text()
    narrow = r'rabbitmq_queue_consumers{queue=~".+\\.jobs"}'
    assert narrow in rules
    (tmp_path / ALERTS.name).write_text(rules.replace(narrow, narrow.replace('jobs"', 'jobs.*"')))
    broken = run(check=False)
    assert broken.returncode != 0
    assert 'queue="bus-stats.jobs.dead-letter"' in broken.stdout + broken.stderr
