"""The app's routes are its own list (not FastAPI's included routers, which
match each request twice), ordered by traffic: the runners' calls, then jobs
and sessions, not by meaning. Starlette tries routes in order, and a route
late in the list pays for every route before it (issue #18). That is only
safe while no request could match routes of two different routers; this
checks it with the routes' own matching."""

from __future__ import annotations

import re

import pytest
from fastapi import APIRouter
from starlette.routing import Match

from corral.api import jobs, runners
from corral.api.app import ROUTERS, create_app, include
from corral.config import Settings


def _sample(path: str) -> str:
    """A concrete path the template matches: each parameter a plain segment."""
    path = re.sub(r"\{[^}]+:path\}", "a/b", path)
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_no_request_could_match_routes_of_two_routers() -> None:
    app = create_app(Settings())
    routers = [list(r.routes) for r in ROUTERS]
    # What the app adds besides (the docs, the MCP mount, the dashboard)
    # is a group of its own.
    ours = {id(route) for group in routers for route in group}
    groups = [*routers, [r for r in app.router.routes if id(r) not in ours]]
    assert sum(len(g) for g in groups) > 100
    clashes = []
    for i, group in enumerate(groups):
        for route in group:
            path = getattr(route, "path", None)
            if path is None:
                continue
            path = _sample(path) if not hasattr(route, "routes") else path + "/x1"
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                scope = {"type": "http", "method": method, "path": path, "root_path": ""}
                for j, other in enumerate(groups):
                    if j == i:
                        continue
                    for o in other:
                        match, _ = o.matches(scope)
                        if match is Match.FULL:
                            clashes.append((method, path, getattr(o, "path", o)))
    assert clashes == []


def test_every_route_is_the_apps_own_and_the_runners_calls_come_first() -> None:
    app = create_app(Settings())
    routes = app.router.routes
    # No route stands for a router (FastAPI's included router has no path).
    assert all(hasattr(r, "path") for r in routes)
    paths = [r.path for r in routes]
    first_jobs = paths.index(jobs.router.routes[0].path)
    for path in ("/worker/events", "/runners/{runner_id}/lease"):
        assert paths.index(path) < first_jobs
    assert len(routes) >= sum(len(r.routes) for r in ROUTERS)
    assert all(route in routes for route in runners.router.routes)


def test_a_router_with_more_than_routes_is_refused() -> None:
    app = create_app(Settings())
    with pytest.raises(ValueError, match="no prefix"):
        include(app, APIRouter(prefix="/extra"))
