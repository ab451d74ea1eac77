# bus-stats: every command a developer or CI runs. `make test` is the one CI runs.
# uv must never download a Python: the system's 3.11 is the interpreter.
export UV_PYTHON_DOWNLOADS := never

PYTHON ?= python3
ARGS ?=

.PHONY: install test lint-deploy compose-test cluster-test demo bench pin format

# The linters for the deployment files, shared by `test` and `lint-deploy`, all offline:
# check-jsonschema's vendor schemas ship inside the package, kubernetes-validate bundles
# Kubernetes' schemas (K8S_VERSION must be one it bundles), KEDA's CRD schemas are
# vendored in deploy/schemas/keda, and promtool (Debian's `prometheus` package; .ci/run
# installs it) checks and unit-tests the alert rules. tests/unit/test_deploy_files.py
# renders the kustomization and validates the result too.
K8S_VERSION = 1.37.0
K8S_CORE_FILES = $(filter-out %/kustomization.yaml %/keda-scaledobject.yaml %/keda-triggerauthentication.yaml,$(wildcard deploy/kubernetes/*.yaml))
define lint_deploy_commands
	uv run hadolint Dockerfile
	uv run check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.cluster.yml
	uv run check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml
	uv run kubernetes-validate --strict --quiet -k $(K8S_VERSION) $(K8S_CORE_FILES)
	uv run check-jsonschema --schemafile deploy/schemas/keda/scaledobject_v1alpha1.json deploy/kubernetes/keda-scaledobject.yaml
	uv run check-jsonschema --schemafile deploy/schemas/keda/triggerauthentication_v1alpha1.json deploy/kubernetes/keda-triggerauthentication.yaml
	promtool check config --syntax-only deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts.test.yml
endef

## install: uv (with pip, if missing), then every dependency group into .venv
install:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install uv
	uv sync --all-groups

## test: lint, type-check, lint the deployment files, then the whole test suite
test: install
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy
	$(lint_deploy_commands)
	uv run pytest

## lint-deploy: hadolint the Dockerfile; validate the compose files, the CI workflow and the
## Kubernetes manifests; check and unit-test the Prometheus rules
lint-deploy: install
	$(lint_deploy_commands)

## cluster-test: three RabbitMQ nodes of its own (rabbitmq-server, no Docker) under a
## temporary folder; SIGKILLs the job queue's leader mid-job, then the API's node during a
## burst of POSTs; checks nothing is lost or doubled and the nodes rejoin (about 4 minutes)
cluster-test: install
	uv run pytest tests/cluster -m cluster -s -p no:cacheprovider $(ARGS)

## compose-test: build the image once, run the whole compose stack (free ports, its own
## project name) and check it end to end; needs Docker with Compose v2 or later
compose-test: install
	uv run python -m scripts.compose_test $(ARGS)

## demo: the whole system on this machine, the page's address first; e.g. make demo ARGS=--once
## (uses the RabbitMQ on 127.0.0.1:5672, or starts a private node when none answers).
## Installs uv with pip when missing, like `install`, quietly; runs it as `python -m uv`
## when pip put it off the PATH (a --user install).
DEMO_UV = $(if $(shell command -v uv 2>/dev/null),uv,$(PYTHON) -m uv)
demo:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
		|| $(PYTHON) -m pip install --quiet uv \
		|| $(PYTHON) -m pip install --quiet --user --break-system-packages uv
	@$(DEMO_UV) sync --all-groups --quiet
	@$(DEMO_UV) run --quiet python -m scripts.demo $(ARGS)

## bench: the benchmark; e.g. make bench ARGS=--help
bench:
	uv run python -m scripts.bench $(ARGS)

## mutate: remove each guard of the job/date protocol in turn, on a copy of the tree, and
## show which test catches it; fails if one survives (about 15 minutes; ARGS=--only NAME)
mutate:
	uv run python -m scripts.mutate $(ARGS)

## pin: write the resolved versions into pyproject.toml's constraint-dependencies
pin:
	uv run python scripts/pin_versions.py

## format: apply ruff's fixes, then its formatter
format:
	uv run ruff check --fix .
	uv run ruff format .
