"""The analyst's page at ``/`` and its files at ``/static/...``, all shipped in the package.

Nothing is loaded from elsewhere: the chart library (uPlot) and the API reference's
Swagger UI are vendored under ``producer/static/vendor`` (see its ``VENDOR.md``).
"""

from pathlib import Path
from typing import Final

from quart import Blueprint, Response, send_from_directory
from quart_schema import hide

blueprint = Blueprint("page", __name__)
STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
# The page runs only its own files; the API reference (/docs) is a separate page.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@blueprint.get("/")
@hide
async def page() -> Response:
    """The analyst's page: charts, tables and jobs (HTML)."""
    response = await send_from_directory(STATIC_DIR, "index.html")
    response.headers.update(PAGE_HEADERS)
    return response


@blueprint.get("/favicon.ico")
@hide
async def favicon() -> Response:
    """The icon browsers ask for (the API reference's page names none)."""
    return await send_from_directory(STATIC_DIR, "favicon.svg", mimetype="image/svg+xml")


@blueprint.get("/static/<path:filename>")
@hide
async def static_file(filename: str) -> Response:
    """A file of the page or of the API reference; 404 outside ``producer/static``."""
    response = await send_from_directory(STATIC_DIR, filename)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
