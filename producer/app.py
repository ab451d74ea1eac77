"""The API: ``create_app(settings)`` builds a Quart app whose clients live in its lifecycle."""

from collections.abc import AsyncGenerator, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Quart, Response, request
from quart_schema import QuartSchema
from werkzeug.exceptions import HTTPException

from common.layout import Layout
from common.logs import get_logger
from common.settings import Settings
from common.startup import FatalStartupError
from common.storage import connect_store
from producer import access_log, auth
from producer.connections import EXTENSION_KEY as CONNECTIONS_KEY
from producer.connections import Connections, NotConnectedError
from producer.http import ApiError, error_response
from producer.limits import RefusedError
from producer.metrics import ApiMetrics
from producer.openapi import OpenApi, document_media_response
from producer.publisher import JobPublisher
from producer.routes import health, jobs, listing, page, stats
from producer.services import EXTENSION_KEY, Services
from producer.stats import StatsShared

log = get_logger(__name__)
MAX_REQUEST_BYTES = 64 * 1024
# /docs is served by quart-schema from these files (relative: they work under a path prefix).
SWAGGER_JS = "static/vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "static/vendor/swagger-ui/swagger-ui.css"
CORS_PREFLIGHT_SECONDS = "600"


def cors_origins(settings: Settings) -> frozenset[str]:
    """``BUSSTATS_CORS_ORIGINS`` as a set; empty: CORS is off (no header is ever sent)."""
    return frozenset(filter(None, (part.strip() for part in settings.cors_origins.split(","))))


def add_cors(response: Response, origins: frozenset[str]) -> None:
    """Let the request's origin read the answer if it is allowed (``*``: any origin)."""
    origin = request.headers.get("Origin")
    if not origin or not ({origin, "*"} & origins):
        return
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
    response.vary.add("Origin")
    response.headers["Access-Control-Expose-Headers"] = "Location, WWW-Authenticate"
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
        response.headers["Access-Control-Max-Age"] = CORS_PREFLIGHT_SECONDS


def add_answer_headers(response: Response, origins: frozenset[str]) -> None:
    """A 401 names the scheme it wants (RFC 9110); CORS headers for allowed origins."""
    if response.status_code == 401:  # noqa: PLR2004 - HTTP 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="bus-stats"'
    if origins:
        add_cors(response, origins)


def answer_api_error(error: ApiError, metrics: ApiMetrics) -> Response:
    """``{"error": ...}``; a refusal (a token, a limit) is counted and brings its headers."""
    response = error_response(error.status, error.message)
    if isinstance(error, RefusedError):
        metrics.refused.labels(error.reason).inc()
        response.headers.update(error.headers)
    return response


# What answers before S3 was reached: liveness, readiness, metrics and the API's docs.
_WITHOUT_S3 = frozenset({"prometheus_metrics", "openapi", "swagger_ui", "static"})
_BLUEPRINTS_WITHOUT_S3 = frozenset({health.blueprint.name, page.blueprint.name})  # page: files


def create_app(
    settings: Settings,
    metrics: ApiMetrics | None = None,
    *,
    on_fatal: Callable[[FatalStartupError], None] | None = None,
) -> Quart:
    """The API; ``on_fatal`` hears of a start-up check that forbids serving (the S3 probe)."""
    metrics = metrics or ApiMetrics()
    app = Quart("bus-stats", static_folder=None)  # the page blueprint serves /static
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = SWAGGER_JS
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = SWAGGER_CSS
    QuartSchema(
        app,
        info={"title": "bus-stats", "version": "1"},
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes=dict(auth.SECURITY_SCHEMES),
        openapi_provider_class=OpenApi,
    )
    blueprints = (page, health, jobs, listing, stats)
    for module in blueprints:
        app.register_blueprint(module.blueprint)
    allowed_origins = cors_origins(settings)

    @app.while_serving
    async def lifecycle() -> AsyncGenerator[None, None]:
        # No network call here: broker and S3 are connected in the background (with
        # retries), so the API serves /healthz and a 503 /readyz while they are down.
        async with (
            connect_store(settings) as store,
            JobPublisher(settings, metrics.publish_seconds) as publisher,
        ):
            connections = Connections(settings, store, publisher, on_fatal=on_fatal)
            app.extensions[CONNECTIONS_KEY] = connections
            app.extensions[EXTENSION_KEY] = Services(
                settings=settings,
                layout=Layout(settings.s3_prefix),
                store=store,
                publisher=publisher,
                metrics=metrics,
                stats=StatsShared.create(objects_at_once=settings.stats_concurrency),
            )
            connections.start()
            try:
                yield
            finally:
                await connections.stop()
                del app.extensions[EXTENSION_KEY]

    app.before_request(access_log.start)  # the clock of the request's access-log line
    app.before_request(auth.token_check(settings))  # first: before anything else is done

    @app.before_request
    async def wait_for_s3() -> None:
        """Requests that read or write S3 wait (bounded) for it to be reached at start-up."""
        if request.blueprint in _BLUEPRINTS_WITHOUT_S3 or request.endpoint in _WITHOUT_S3:
            return
        connections: Connections | None = app.extensions.get(CONNECTIONS_KEY)
        if connections is not None:
            try:
                await connections.wait_for_s3()
            except NotConnectedError as error:
                raise ApiError(503, str(error)) from None

    @app.get("/metrics")
    @document_media_response(200, "text/plain", "Prometheus text exposition format")
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of this API process."""
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    async def count_request(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(rule, request.method, str(response.status_code)).inc()
        add_answer_headers(response, allowed_origins)
        access_log.answered(response.status_code)
        return response

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return answer_api_error(error, metrics)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return error_response(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Response:
        log.error("request.failed", error=repr(error), exc_info=error)
        return error_response(500, "internal error; the failure was logged")

    return app
