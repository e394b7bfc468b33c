"""One error shape for every failure: ``{"error": {"code", "message"}}``.
Routes raise CorralError subclasses; only these handlers build error JSON."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.errors import AmbiguousId, CorralError
from corral.protocol import error_body
from corral.ui import web

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status)


def is_ollama(request: Request) -> bool:
    """Ollama's paths (/api/*, but corral's own /api/delegated/*) answer errors
    in Ollama's shape, ``{"error": "..."}``: that is what Ollama clients read."""
    path = request.url.path
    return path.startswith("/api/") and not path.startswith("/api/delegated/")


def _shaped(request: Request, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    if is_ollama(request):
        return JSONResponse({"error": message}, status_code=status)
    return error_response(status, code, message, **extra)


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "request")


def install(app: FastAPI) -> None:
    @app.exception_handler(CorralError)
    async def _corral(request: Request, exc: CorralError) -> Response:
        if exc.status >= 500:
            log.error("request failed: %s", exc.message)
        if exc.status < 500 and web.wants_page(request):
            return await web.error_page(request, exc.status, exc.message)
        if isinstance(exc, AmbiguousId):
            return error_response(exc.status, exc.code, exc.message, candidates=exc.candidates)
        return _shaped(request, exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _shaped(request, 400, "malformed_json", "the request body is not valid JSON")
        details = [{"field": _where(tuple(e["loc"])), "message": e["msg"]} for e in errors]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return _shaped(request, 422, "invalid_input", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and web.wants_page(request):
            return await web.error_page(request, 404, f"no page {request.url.path}")
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        response = _shaped(request, exc.status_code, code, str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _shaped(request, 500, "internal_error", "internal server error")
