"""The app's routers are ordered by traffic (the runners' calls, then jobs and
sessions), not by meaning: Starlette tries routes in order, and a route late in
the list paid ~40 us per request to get there (issue #18). That is only safe
while no request could match routes of two different routers; this checks it
with the routes' own matching."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from starlette.routing import Match

from corral.api.app import create_app
from corral.config import Settings


def _flat(route: Any) -> Iterator[Any]:
    inner = getattr(route, "original_router", None)
    if inner is None:
        yield route
        return
    for child in inner.routes:
        yield from _flat(child)


def _sample(path: str) -> str:
    """A concrete path the template matches: each parameter a plain segment."""
    path = re.sub(r"\{[^}]+:path\}", "a/b", path)
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_no_request_could_match_routes_of_two_routers() -> None:
    app = create_app(Settings())
    groups = [list(_flat(r)) for r in app.router.routes]
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


def test_the_runners_calls_are_matched_first() -> None:
    app = create_app(Settings())
    first = next(r for r in app.router.routes if hasattr(r, "original_router"))
    paths = [getattr(r, "path", None) for r in _flat(first)]
    assert "/worker/events" in paths and "/runners/{runner_id}/lease" in paths
