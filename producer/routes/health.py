"""``/healthz`` (the process serves) and ``/readyz`` (its broker and S3 answer)."""

import asyncio

from pydantic import BaseModel
from quart import Blueprint, Response, current_app
from quart_schema import document_response

from common.logs import get_logger
from producer.connections import EXTENSION_KEY as CONNECTIONS_KEY
from producer.http import json_response
from producer.services import get_services

blueprint = Blueprint("health", __name__)
log = get_logger(__name__)
_PING_TIMEOUT = 3.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@blueprint.get("/healthz")
@document_response(Health, 200)
async def healthz() -> Response:
    """Alive: answers as soon as the process serves."""
    return json_response(Health(status="ok"))


@blueprint.get("/readyz")
@document_response(Readiness, 200)
@document_response(Readiness, 503)
async def readyz() -> Response:
    """Ready: the broker and S3 both answer; otherwise 503 naming the one that failed.

    The answer names the failing dependency and its error's class only (this route is
    open to anyone); the error's text, which may name hosts and buckets, goes to the log.
    """
    services = get_services()
    connections = current_app.extensions.get(CONNECTIONS_KEY)
    s3_ping = services.store.ping if connections is None else connections.ping_s3
    checks: dict[str, str] = {}
    for name, ping in (("broker", services.publisher.ping), ("s3", s3_ping)):
        try:
            async with asyncio.timeout(_PING_TIMEOUT):
                await ping()
        except Exception as error:  # noqa: BLE001 - any failure means "not ready", reported
            log.warning("readiness.check_failed", dependency=name, error=repr(error))
            checks[name] = f"failed: {type(error).__name__}"
        else:
            checks[name] = "ok"
    ready = all(value == "ok" for value in checks.values())
    return json_response(
        Readiness(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503
    )
