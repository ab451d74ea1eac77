"""The consumer's Prometheus metrics, in a registry of its own, and the small HTTP server
that serves them beside the consumer's ``/healthz`` on its metrics port."""

from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web
from botocore.awsrequest import AWSResponse
from botocore.hooks import BaseEventHooks
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from common.logs import get_logger

log = get_logger(__name__)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "busstats_consumer_jobs",
            "Jobs finished, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.jobs_in_flight = Gauge(
            "busstats_consumer_jobs_in_flight", "Jobs running now", registry=self.registry
        )
        self.cities = Counter(
            "busstats_consumer_cities_fetched", "Cities fetched and stored", registry=self.registry
        )
        self.records = Counter(
            "busstats_consumer_records", "Records stored", registry=self.registry
        )
        self.bad_records = Counter(
            "busstats_consumer_bad_records", "Records rejected as malformed", registry=self.registry
        )
        self.bytes_written = Counter(
            "busstats_consumer_bytes_written",
            "Bytes of records written to S3",
            registry=self.registry,
        )
        self.retries = Counter(
            "busstats_consumer_retries", "City requests retried", registry=self.registry
        )
        self.fetch_seconds = Histogram(
            "busstats_consumer_city_seconds",
            "Time to fetch and store one city",
            buckets=(0.1, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "busstats_consumer_job_seconds",
            "Time to process one job",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.s3_errors = Counter(
            "busstats_consumer_s3_errors",
            "S3 requests that failed after the SDK's retries (5xx or no answer), by operation",
            ["operation"],
            registry=self.registry,
        )
        self.broker_connection_losses = Counter(
            "busstats_consumer_broker_connection_losses",
            "Times the broker connection was lost",
            registry=self.registry,
        )


def count_s3_errors(events: BaseEventHooks, errors: Counter) -> None:
    """Count in ``errors`` (label ``operation``) every S3 request of the client whose
    ``meta.events`` is ``events`` that failed after the SDK's own retries: an answer of
    500 or more, or none at all. 4xx answers are outcomes the code expects (a missing
    key, a lost compare-and-swap), not errors."""

    def after_call(http_response: AWSResponse, event_name: str, **_: object) -> None:
        if http_response.status_code >= _SERVER_ERROR:
            errors.labels(_operation(event_name)).inc()

    def after_call_error(event_name: str, **_: object) -> None:
        errors.labels(_operation(event_name)).inc()

    events.register("after-call.s3", after_call, unique_id="busstats-s3-errors")
    events.register("after-call-error.s3", after_call_error, unique_id="busstats-s3-no-answer")


_SERVER_ERROR = 500


def _operation(event_name: str) -> str:
    """``after-call.s3.PutObject`` -> ``PutObject``."""
    return event_name.rsplit(".", 1)[-1]


class MetricsServer:
    """``/metrics`` and ``/healthz`` of one consumer process, on its event loop.

    ``/healthz`` answers 200 while ``healthy()`` says so (the consumer is connected to the
    broker), 503 otherwise: what an orchestrator's health check asks. The port comes from
    ``BUSSTATS_METRICS_PORT``; ``0`` takes any free port. A port already taken (a second
    consumer on the same host) is not fatal: a warning, and the server takes a free port
    instead. Either way the port really bound is logged (``metrics.listening``).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        healthy: Callable[[], bool],
        host: str,
        port: int,
        detail: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._registry = registry
        self._healthy = healthy
        self._detail = detail  # each dependency's state, shown beside the status
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The port bound, once started."""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            self.port = await self._bind(self._port)
        except OSError as error:
            if self._port == 0:
                await self._runner.cleanup()
                raise
            log.warning(
                "metrics.port_taken",
                host=self._host,
                port=self._port,
                error=error.strerror or str(error),
                fallback="any free port",
            )
            self.port = await self._bind(0)
        log.info("metrics.listening", host=self._host, port=self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _bind(self, port: int) -> int:
        assert self._runner is not None  # noqa: S101 - set up just before
        site = web.TCPSite(self._runner, self._host, port, reuse_address=True)
        await site.start()
        bound: int = self._runner.addresses[-1][1]  # (host, port, ...) of the socket bound
        return bound

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _health(self, _request: web.Request) -> web.Response:
        healthy = self._healthy()
        detail = {} if self._detail is None else self._detail()
        return web.json_response(
            {"status": "ok" if healthy else "not connected to the broker", **detail},
            status=200 if healthy else 503,
        )
