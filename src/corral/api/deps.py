"""What routes depend on: the app's services and the caller's credentials."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Annotated

from fastapi import Depends, Request

from corral import auth
from corral.auth import Principal, WorkerClaims
from corral.config import DaemonSettings, Settings
from corral.errors import Unauthorized
from corral.models import JobCreate
from corral.routing import Decision, Provider, decide
from corral.store import Store

# A verified key is trusted this long before the database is asked again, so a
# revocation reaches every replica within this many seconds.
KEY_CACHE_SECONDS = 5.0


@dataclass
class WatchdogStats:
    sweeps: int = 0
    expired: int = 0
    last_sweep_at: float | None = None
    last_error: str | None = None


@dataclass
class Services:
    settings: Settings
    store: Store
    jwt_secret: str
    webhook_secret: str = ""

    async def reload_agents(self) -> dict[str, list[str]]:
        """Read ``[agents.*]`` from the configuration file again and apply it."""
        declared: dict[str, DaemonSettings] = self.settings.reload_agents()
        return await self.store.agents.configure(declared)

    watchdog: WatchdogStats = field(default_factory=WatchdogStats)
    providers: dict[str, Provider] = field(default_factory=dict)

    async def route(self, spec: JobCreate) -> Decision:
        """Where ``spec`` would run (routing.decide over the configured
        providers); a follow-up turn that names no provider prefers the one
        its session's latest turn ran on. Raises ``Unroutable``."""
        job = spec.route()
        if spec.session_id is not None and job.preferred_ai is None and not job.command:
            latest = await self.store.jobs.list(session_id=spec.session_id, limit=1)
            if latest:
                job = replace(job, session_provider=latest[0].provider)
            else:
                await self.store.sessions.get(spec.session_id)  # 404 before a refusal
        return decide(
            job,
            self.providers,
            default_provider=self.settings.default_provider,
            default_local=self.settings.default_local,
        )

    _keys: dict[str, tuple[float, Principal]] = field(default_factory=dict)
    # runner id, key id -> (until, runner name, the agents it hosts): agent
    # reports skip a database read each, and lines go out before they are stored.
    agent_hosts: dict[tuple[str, str], tuple[float, str, set[str]]] = field(default_factory=dict)

    async def authenticate(self, key: str) -> Principal:
        digest = auth.hash_key(key)
        cached = self._keys.get(digest)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self.store.keys.authenticate(key)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (now + KEY_CACHE_SECONDS, principal)
        return principal


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain function in its thread pool on every request.
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    raise Unauthorized("missing credentials: send 'Authorization: Bearer <API key>'")


async def principal(request: Request, svc: Svc) -> Principal:
    return await svc.authenticate(_bearer(request))


# The least role that holds each permission: the docs' HTTP reference reads the
# `corral_role` of a route's dependencies, so the table cannot drift from the code.
_ROLE_OF = {"read": "viewer", "write": "operator", "admin": "admin", "run": "runner"}


def require(permission: str) -> object:
    async def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
        p.require(permission)
        return p

    check.corral_role = _ROLE_OF[permission]  # type: ignore[attr-defined]
    return Depends(check)


async def worker(request: Request, svc: Svc) -> WorkerClaims:
    return auth.verify_worker_token(_bearer(request), svc.jwt_secret)


principal.corral_role = "any key"  # type: ignore[attr-defined]
worker.corral_role = "worker JWT"  # type: ignore[attr-defined]


Reader = Annotated[Principal, require("read")]
Writer = Annotated[Principal, require("write")]
Admin = Annotated[Principal, require("admin")]
RunnerKey = Annotated[Principal, require("run")]
Worker = Annotated[WorkerClaims, Depends(worker)]
