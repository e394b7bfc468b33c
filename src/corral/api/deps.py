"""What routes depend on: the app's services and the caller's credentials."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from corral import auth
from corral.auth import Principal, WorkerClaims
from corral.errors import Unauthorized
from corral.services import Services


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its thread pool on every request.
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    raise Unauthorized("missing credentials: send 'Authorization: Bearer <API key>'")


# A dashboard session cookie is a credential for reads only (the dashboard's
# EventSource feeds cannot send a header); writes from a browser go through
# /ui, which checks a CSRF token.
_SAFE = frozenset({"GET", "HEAD"})


async def principal(request: Request) -> Principal:
    # The services from the app, not a sub-dependency: each level of
    # dependencies FastAPI solves costs ~50 us a request (issue #18).
    svc: Services = request.app.state.services
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if (
        cookie
        and request.method in _SAFE
        and "authorization" not in request.headers
        and "x-api-key" not in request.headers
    ):
        who, _ = await svc.browser_principal(cookie)
        return who
    return await svc.authenticate(bearer(request))


# The least role that holds each permission: the docs' HTTP reference reads the
# `corral_role` of a route's dependencies, so the table cannot drift from the code.
_ROLE_OF = {"read": "viewer", "write": "operator", "admin": "admin", "run": "runner"}


def require(permission: str) -> object:
    async def check(request: Request) -> Principal:
        p = await principal(request)
        p.require(permission)
        return p

    check.corral_role = _ROLE_OF[permission]  # type: ignore[attr-defined]
    return Depends(check)


async def worker(request: Request) -> WorkerClaims:
    # The services from the app, as in principal(): no sub-dependency to solve.
    svc: Services = request.app.state.services
    return auth.verify_worker_token(bearer(request), svc.jwt_secret)


principal.corral_role = "any key"  # type: ignore[attr-defined]
worker.corral_role = "worker JWT"  # type: ignore[attr-defined]


Reader = Annotated[Principal, require("read")]
Writer = Annotated[Principal, require("write")]
Admin = Annotated[Principal, require("admin")]
RunnerKey = Annotated[Principal, require("run")]
Worker = Annotated[WorkerClaims, Depends(worker)]
# A W3C trace context header (corral.tracing): a runner's run span on its
# worker calls, a client's own on POST /jobs.
TraceParent = Annotated[str | None, Header(include_in_schema=False)]
