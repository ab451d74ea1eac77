# One image for every bus-stats process. ENTRYPOINT is `python -m`, so the command picks
# the module: `docker run IMAGE` (the API), `docker run IMAGE consumer`,
# `docker run IMAGE refsim --host 0.0.0.0 --port 8080`. Configure with BUSSTATS_* variables.
#
# Versions: uv.lock stays out of git; pyproject.toml pins every package through
# [tool.uv] constraint-dependencies, so `uv sync` below resolves the same versions.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the virtual environment, without the dev and bench groups -----------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN uv sync --no-default-groups --no-install-project

# Then the code, installed into the environment (not editable: the runtime stage copies
# the environment alone).
COPY common ./common
COPY producer ./producer
COPY consumer ./consumer
COPY refsim ./refsim
RUN uv sync --no-default-groups --no-editable

# --- runtime: the environment and an unprivileged user, nothing else ---------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BUSSTATS_API_HOST=0.0.0.0

# A regular (not --system) account: uid 10001 is above SYS_UID_MAX, and useradd warns
# when a system account is given one. --no-log-init keeps lastlog/faillog small.
RUN groupadd --gid 10001 busstats \
    && useradd --no-log-init --uid 10001 --gid busstats --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin busstats

WORKDIR /app
COPY --from=builder /app/.venv /app/.venv

# Numeric, so that runtimes can verify the user is not root (runAsNonRoot).
USER 10001:10001

# 8000: the API (BUSSTATS_API_PORT); 9100: a consumer's Prometheus metrics and /healthz
# (BUSSTATS_METRICS_PORT).
EXPOSE 8000 9100

# No HEALTHCHECK here, on purpose: one image runs three different processes, each healthy
# in its own way on its own (configurable) port: the API's GET /readyz, a consumer's
# GET /healthz on its metrics port (200 only while connected to the broker), the
# simulator's GET /cities; `consumer replay-dead-letters` is a one-off with nothing to
# check. A single image-level check would be wrong for all but one of them (a consumer
# reported unhealthy forever), so the check belongs to the orchestrator, per service:
# see docker-compose.yml's healthcheck entries (Kubernetes ignores HEALTHCHECK anyway
# and takes probes).

# Exec form: python is PID 1 and receives SIGTERM itself (graceful shutdown).
ENTRYPOINT ["python", "-m"]
CMD ["producer"]
