"""The API: ``create_app(settings)`` builds a Quart app whose clients live in its lifecycle."""

from collections.abc import AsyncGenerator

from quart import Quart, Response
from quart_schema import QuartSchema
from werkzeug.exceptions import HTTPException

from common.layout import Layout
from common.logs import get_logger
from common.settings import Settings
from common.storage import open_store
from producer.http import ApiError, error_response
from producer.publisher import JobPublisher
from producer.routes import health, jobs, stats
from producer.services import EXTENSION_KEY, Services

log = get_logger(__name__)
MAX_REQUEST_BYTES = 64 * 1024


def create_app(settings: Settings) -> Quart:
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
        async with open_store(settings) as store, JobPublisher(settings) as publisher:
            app.extensions[EXTENSION_KEY] = Services(
                settings=settings,
                layout=Layout(settings.s3_prefix),
                store=store,
                publisher=publisher,
            )
            log.info("api.started", namespace=settings.namespace, bucket=settings.s3_bucket)
            yield
            del app.extensions[EXTENSION_KEY]

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
