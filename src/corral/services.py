"""What a running control plane hands to its routes, intake sources and sinks.

``corral.server`` builds one ``Services`` per process (store, secrets, the
provider table); routes receive it as ``Svc`` (``api/deps.py``), intake
sources submit through it (``intake/submit.py``). It lives outside
``server/`` so that those layers need not import the composition root."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from corral import auth
from corral.auth import Principal
from corral.config import DaemonSettings, Settings
from corral.models import JobCreate
from corral.protocol import topics
from corral.routing import Decision, Provider, decide
from corral.store import Store

# A verified key is trusted this long before the database is asked again, so a
# revocation reaches every replica within this many seconds.
KEY_CACHE_SECONDS = 5.0


# Why an SSE stream ended from outside its own task.
Why = Literal["gone", "stalled", "stopping"]


class Endable(Protocol):
    """An open event stream (``corral.api.sse.EventStream``)."""

    def end(self, why: Why) -> None: ...


class Streams:
    """The open event streams of one replica, to end them all when it stops."""

    def __init__(self) -> None:
        self._open: set[Endable] = set()
        self.closing = False

    def __len__(self) -> int:
        return len(self._open)

    def add(self, stream: Endable) -> None:
        self._open.add(stream)
        if self.closing:
            stream.end("stopping")

    def discard(self, stream: Endable) -> None:
        self._open.discard(stream)

    def close(self) -> None:
        """End every open stream (cleanly: the client sees the end of the
        body) and every one opened from now on."""
        self.closing = True
        for stream in list(self._open):
            stream.end("stopping")


@dataclass
class WatchdogStats:
    sweeps: int = 0
    expired: int = 0
    # Jobs ended with a runner's journalled outcome instead of being run again.
    recovered: int = 0
    last_sweep_at: float | None = None
    last_error: str | None = None
    # No lease expires before this (epoch seconds): runners get one lease_ttl
    # to heartbeat again after this replica started.
    grace_until: float | None = None


@dataclass
class Liveness:
    """What ``GET /ready`` reads of this replica: its loops' tasks (by loop
    name, and ``embedded-runner``) and, for the singleton loops, whether this
    replica leads them (``False``: another replica does; PostgreSQL only)."""

    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    leading: dict[str, bool] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)


@dataclass
class Services:
    settings: Settings
    store: Store
    jwt_secret: str
    webhook_secret: str = ""
    watchdog: WatchdogStats = field(default_factory=WatchdogStats)
    liveness: Liveness = field(default_factory=Liveness)
    providers: dict[str, Provider] = field(default_factory=dict)
    # True once this replica stops: long-polls answer now instead of waiting.
    stopping: bool = False
    # The SSE streams open on this replica (ended when it stops).
    streams: Streams = field(default_factory=Streams)
    _keys: dict[str, tuple[float, Principal]] = field(default_factory=dict)
    # runner id, key id -> (until, runner name, the agents it hosts): agent
    # reports skip a database read each, and lines go out before they are stored.
    agent_hosts: dict[tuple[str, str], tuple[float, str, set[str]]] = field(default_factory=dict)
    # The tracker intakes of this replica, by name, built on first use
    # (``corral.intake.tracker.intake_for``): the leader's poll loop and the
    # webhook route share one client each.
    trackers: dict[str, Any] = field(default_factory=dict)

    async def reload_agents(self) -> dict[str, list[str]]:
        """Read ``[agents.*]`` from the configuration file again and apply it."""
        declared: dict[str, DaemonSettings] = self.settings.reload_agents()
        return await self.store.agents.configure(declared)

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

    @property
    def browser_secret(self) -> str:
        """Signs dashboard sessions and their CSRF tokens; derived from the
        worker JWT secret, so every replica shares it."""
        return hmac.new(self.jwt_secret.encode(), b"corral-browser-v1", hashlib.sha256).hexdigest()

    async def browser_principal(self, cookie: str) -> tuple[Principal, auth.BrowserSession]:
        """Who a dashboard session cookie signs in, now (a revoked key's
        sessions end within ``KEY_CACHE_SECONDS``)."""
        session = auth.verify_browser_session(cookie, self.browser_secret)
        now = time.monotonic()
        cached = self._keys.get("id:" + session.key_id)
        if cached is not None and cached[0] > now:
            return cached[1], session
        principal = await self.store.keys.principal(session.key_id)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys["id:" + session.key_id] = (now + KEY_CACHE_SECONDS, principal)
        return principal, session

    def end_polls(self) -> None:
        """Answer every long-poll waiting on this replica now, and the ones
        that arrive from now on at once (the replica is going away)."""
        self.stopping = True
        self.store.bus.publish(topics.SERVER_STOPPING, "stopping")
        self.streams.close()
