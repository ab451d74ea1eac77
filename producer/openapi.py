"""The API's OpenAPI document: quart-schema's, with three things it leaves out filled in.

- A query parameter the model requires (no default) is marked ``required: true``
  (quart-schema copies only per-property keys, and pydantic lists ``required`` per model).
- A response whose body is not JSON (Prometheus text, CSV) is documented with
  :func:`document_media_response`.
- Every route's token (:mod:`producer.auth`): its security requirement, a ``401`` answer
  with its ``WWW-Authenticate`` header, and the schemes' descriptions.

The document must pass ``openapi-spec-validator`` (a test checks it).
"""

from collections.abc import Callable
from typing import Any, Final, TypeVar

from quart_schema.openapi import OpenAPIProvider
from werkzeug.routing import Rule

from producer import auth
from producer.http import ErrorBody

T = TypeVar("T", bound=Callable[..., Any])
_MEDIA_ATTRIBUTE: Final = "_bus_stats_media_responses"


def document_media_response(
    status: int, media_type: str, description: str, schema: dict[str, Any] | None = None
) -> Callable[[T], T]:
    """Document a ``status`` answer whose body is ``media_type`` (e.g. ``text/csv``).

    With a JSON model documented for the same status (``document_response``), the answer
    lists both media types: the client picks one with ``Accept`` (or a query parameter).
    """

    def decorator(func: T) -> T:
        documented: dict[int, tuple[str, str, dict[str, Any]]] = getattr(func, _MEDIA_ATTRIBUTE, {})
        documented[status] = (media_type, description, schema or {"type": "string"})
        setattr(func, _MEDIA_ATTRIBUTE, documented)
        return func

    return decorator


class OpenApi(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        document = super().schema()
        schemes = document.get("components", {}).get("securitySchemes", {})
        for name, description in auth.SCHEME_DESCRIPTIONS.items():
            if name in schemes:
                schemes[name] = {**schemes[name], "description": description}
        return document

    def build_querystring_parameters(
        self, model: type[Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, definitions = super().build_querystring_parameters(model)
        json_schema = getattr(model, "model_json_schema", None)
        required = set(json_schema(by_alias=True).get("required", [])) if json_schema else set()
        for parameter in parameters:
            if parameter["name"] in required:
                parameter["required"] = True
        return parameters, definitions

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        security = auth.security_of(auth.access_of(rule.endpoint))
        refused: dict[str, Any] | None = None
        if security is not None:
            refused, refused_components = self.build_response_object(ErrorBody, None)
            refused["description"] = "no valid token, when the API has one"
            components = {**components, **refused_components}
        documented: dict[int, tuple[str, str, dict[str, Any]]] = getattr(func, _MEDIA_ATTRIBUTE, {})
        for operations in paths.values():
            for name, operation in operations.items():
                # quart-schema shares one responses object between a rule's methods.
                responses = {code: dict(answer) for code, answer in operation["responses"].items()}
                if refused is not None:
                    responses.setdefault(401, dict(refused))
                for status, (media_type, description, schema) in documented.items():
                    answer = responses.setdefault(status, {"description": description})
                    answer["content"] = {
                        **answer.get("content", {}),
                        media_type: {"schema": schema},
                    }
                    answer["description"] = answer.get("description") or description
                if 401 in responses:  # noqa: PLR2004 - HTTP 401
                    responses[401]["headers"] = {
                        "WWW-Authenticate": {
                            "description": "Bearer: the scheme the API expects",
                            "schema": {"type": "string"},
                        }
                    }
                operations[name] = {**operation, "responses": responses}
                if security is not None:
                    operations[name]["security"] = security
        return paths, components
