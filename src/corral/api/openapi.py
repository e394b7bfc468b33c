"""The error responses of every operation, in the OpenAPI document.

Derived from each operation rather than written by hand on each route: what
it declares (path parameters, a body, query or header parameters, a method
that changes state; every path but /health and /ready needs a credential)
says which errors it can answer, all in the one error shape. FastAPI's own
422 shape is not what corral answers, so it is replaced. The schema-driven
fuzz test (tests/acceptance/test_fuzz_api.py) checks that no other status
comes back."""

from __future__ import annotations

from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, e.g. job_not_found, invalid_input, stale_epoch.")
    message: str = Field(description="What went wrong and what to do about it.")
    details: list[ErrorDetail] | None = Field(None, description="422: each invalid field.")


class ErrorResponse(BaseModel):
    """Every error corral answers: ``{"error": {"code", "message"}}``."""

    error: ErrorBody


class OllamaError(BaseModel):
    """Errors of the Ollama-compatible endpoints (``/api/*``)."""

    error: str | ErrorBody


WHY = {
    400: "Malformed input: the body is not JSON, or a parameter is not understood.",
    401: "No credential, or an invalid or revoked one.",
    403: "This credential's role may not do that.",
    404: "No such job, session, runner, agent, delivery or artifact.",
    409: "The state does not allow it (or a stale epoch: stop working on the job).",
    413: "The request body is over max_body_bytes (max_artifact_bytes for artifacts).",
    422: "The input does not match the schema (`details` lists each field).",
    501: "Not configured on this server (e.g. no embedding provider).",
    502: "The upstream model server failed.",
    503: "The database is unavailable; try again.",
    504: "The job did not end in time.",
}

UNAUTHENTICATED = frozenset({"/health", "/ready"})
CHANGES = frozenset({"post", "put", "patch", "delete"})
REF = "#/components/schemas/"


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer, from what it declares."""
    if path in UNAUTHENTICATED:
        return set()
    statuses = {401, 403, 503}
    where = {p.get("in") for p in operation.get("parameters", [])}
    if where or "requestBody" in operation:
        statuses |= {404}  # an id in the path, the query (before=) or the body (session_id)
    if method in CHANGES:
        statuses |= {400, 409, 413, 422}
    if where:
        statuses |= {400, 422}
    if path.startswith("/worker/"):
        statuses |= {404, 409}  # the job is gone, or the epoch is stale
    if _ollama(path):
        statuses |= {400, 404, 501, 502, 504}  # as the upstream or the job answered
    return statuses


def _ollama(path: str) -> bool:
    return path.startswith("/api/") and path != "/api/delegated/status"


ASSETS = "/docs/assets"
# Bearer credentials: an API key (``ck_...``) or, on the runner protocol's
# worker routes, the job's worker JWT.
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`corral keys create`), or a worker JWT on /worker/*.",
    }
}


def install(app: FastAPI) -> None:
    """Serve an OpenAPI document in which every operation lists its errors and
    its credential, and Swagger UI at /docs from the package's own assets."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_errors(schema: dict[str, Any]) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(ErrorResponse, "serialization"), (OllamaError, "serialization")],
        ref_template=REF + "{model}",
    )
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    schema["security"] = [{"bearer": []}]
    components = schema["components"].setdefault("schemas", {})
    components.update(defs["$defs"])
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)  # FastAPI's 422 shape: corral never answers it
    for path, operations in schema.get("paths", {}).items():
        shape = OllamaError if _ollama(path) else ErrorResponse
        for method, operation in operations.items():
            if path in UNAUTHENTICATED:
                operation["security"] = []  # overrides the document's default
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(error_statuses(path, method, operation)):
                responses.setdefault(
                    str(status),
                    {
                        "description": WHY[status],
                        "content": {"application/json": {"schema": {"$ref": REF + shape.__name__}}},
                    },
                )
    return schema
