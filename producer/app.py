"""The API: ``create_app(settings)`` builds a Quart app whose clients live in its lifecycle."""

from collections.abc import AsyncGenerator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response, request
from quart_schema import QuartSchema
from werkzeug.exceptions import HTTPException

from common.layout import Layout
from common.logs import get_logger
from common.settings import Settings
from common.storage import open_store
from producer.http import ApiError, error_response
from producer.metrics import ApiMetrics
from producer.publisher import JobPublisher
from producer.routes import health, jobs, stats
from producer.services import EXTENSION_KEY, Services
from producer.stats import StatsShared

log = get_logger(__name__)
MAX_REQUEST_BYTES = 64 * 1024


def create_app(settings: Settings, metrics: ApiMetrics | None = None) -> Quart:
    metrics = metrics or ApiMetrics()
    app = Quart("bus-stats")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    QuartSchema(
        app,
        info={"title": "bus-stats", "version": "1"},
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
    )
    for blueprint in (health.blueprint, jobs.blueprint, stats.blueprint):
        app.register_blueprint(blueprint)

    @app.while_serving
    async def lifecycle() -> AsyncGenerator[None, None]:
        async with (
            open_store(settings) as store,
            JobPublisher(settings, metrics.publish_seconds) as publisher,
        ):
            app.extensions[EXTENSION_KEY] = Services(
                settings=settings,
                layout=Layout(settings.s3_prefix),
                store=store,
                publisher=publisher,
                metrics=metrics,
                stats=StatsShared.create(objects_at_once=settings.stats_concurrency),
            )
            log.info("api.started", namespace=settings.namespace, bucket=settings.s3_bucket)
            yield
            del app.extensions[EXTENSION_KEY]

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of this API process."""
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    async def count_request(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(rule, request.method, str(response.status_code)).inc()
        return response

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return error_response(error.status, error.message)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return error_response(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.error("request.failed", error=repr(error), exc_info=error)
        return error_response(500, "internal error; the failure was logged")

    return app
