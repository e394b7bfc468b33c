"""``create_app(settings) -> FastAPI``: the routes, error handlers and middleware.

Nothing is built at import time, and nothing runs here: ``corral.server``
opens the store, sets ``app.state.services`` and runs the loops (the tests do
the same through ``corral.server.Server``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp

from corral import __version__, ui
from corral.api import (
    admin,
    agents,
    channels,
    children,
    errors,
    jobs,
    ollama,
    openapi,
    questions,
    runners,
    schedules,
    sessions,
    stats,
    system,
    trackers,
    usage,
    webhooks,
)
from corral.api.limits import BodyLimit
from corral.api.requests import BodySend, RequestIds
from corral.config import Settings
from corral.mcp.mount import PATH, McpMount

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class _App(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Around the whole stack, Starlette's ServerErrorMiddleware included.
        return BodySend(super().build_middleware_stack())


def create_app(settings: Settings, *, lifespan: Lifespan | None = None) -> FastAPI:
    """The corral HTTP app. Its routes read ``app.state.services``, which the
    owner of the process sets (``corral.server.Server``, through ``lifespan``)."""
    app = _App(
        title="corral",
        version=__version__,
        lifespan=lifespan,
        description="Control plane for fleets of AI coding agents.",
        # Swagger UI from the package's own assets (openapi.install); ReDoc
        # would load its script from a CDN.
        docs_url=None,
        redoc_url=None,
        **_no_native_telemetry(),
    )
    errors.install(app)
    openapi.install(app)
    for router in ROUTERS:
        include(app, router)
    # The operator MCP server (streamable HTTP; loaded and run while the
    # server runs: ``corral.server`` enters ``app.state.mcp.running()``).
    app.state.mcp = McpMount()
    app.router.routes.append(Route(PATH, endpoint=app.state.mcp))
    ui.install(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        larger={"/worker/artifacts/": settings.max_artifact_bytes},
    )
    # Outermost: every request, refused ones too, has an id in its log lines.
    app.add_middleware(RequestIds, access_log=settings.access_log)
    return app


# In order of traffic: Starlette tries each route in turn (issue #18). No
# request can match routes of two of them (tests/unit/test_app_routes.py),
# so order is free.
ROUTERS = tuple(
    module.router
    for module in (
        runners,
        jobs,
        sessions,
        system,
        stats,
        usage,
        questions,
        children,
        admin,
        webhooks,
        ollama,
        agents,
        trackers,
        channels,
        schedules,
    )
)


def include(app: FastAPI, router: APIRouter) -> None:
    """``router``'s routes as the app's own. FastAPI's ``include_router``
    (0.16x) keeps a router as one route that matches a request by trying
    each of its routes, then tries them again to handle it, keeping its
    context in the request's scope at each step: GET /health (the fourth
    router) spent 75 us more of the server's CPU per request than with the
    routes in the app's own list (issue #18). corral's routers only name
    their routes' tags, which each route already holds; anything an
    inclusion would have to apply is refused here rather than lost."""
    events = getattr(router, "on_startup", None) or getattr(router, "on_shutdown", None)
    if router.prefix or router.dependencies or events:
        raise ValueError("include() adds routes as they are: no prefix, dependencies or events")
    app.router.routes.extend(router.routes)


def _no_native_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry spans off (a span per request and per
    dependency, health checks and long-polls included): corral's traces are
    its jobs' (corral.tracing). Its logs too: with them on, every request
    asked OpenTelemetry for a logger provider, an environment lookup each
    time (~1 % of the event loop under (b), issue #18). FastAPI before 0.16x
    has none to turn off."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    off = {"tracing": False, "operation_spans": False, "metrics": False, "logs": False}
    return {"telemetry": off}
