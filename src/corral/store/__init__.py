"""The store: SQLAlchemy Core over SQLite or PostgreSQL (asyncpg).

``store.jobs.create(...)``, ``store.sessions.get(...)``, ``store.events.list(...)``:
one noun per repository, the same nouns as the API."""

from __future__ import annotations

import time

from corral.bus import Bus, MemoryBus
from corral.bus.postgres import PostgresBus
from corral.store import migrate
from corral.store.agents import Agents
from corral.store.chat import Chats
from corral.store.db import CONNECTIONS, Database
from corral.store.events import Events
from corral.store.jobs import Caps, Jobs, Lease, RetryPolicy, now_utc
from corral.store.keys import Keys, ServerSettings
from corral.store.outbox import Outbox
from corral.store.overview import Overview, read_overview
from corral.store.questions import Questions
from corral.store.runners import Runners
from corral.store.schedules import Schedules
from corral.store.sessions import Sessions
from corral.store.trackers import Trackers

# How long /status and /metrics may serve a snapshot of the fleet (Store.overview).
OVERVIEW_FRESH = 0.5


class Store:
    """Repositories over one database, and the bus their commits publish to:
    in-process on SQLite, LISTEN/NOTIFY across replicas on PostgreSQL."""

    def __init__(
        self,
        url: str,
        *,
        bus: Bus | None = None,
        policy: RetryPolicy | None = None,
        caps: Caps | None = None,
        connections: int = CONNECTIONS,
    ):
        self.db = Database(url, connections=connections)
        self.jobs = Jobs(self.db, policy, caps)
        self.sessions = Sessions(self.db)
        self.events = Events(self.db)
        if bus is None and not self.db.is_sqlite:
            pg = PostgresBus(
                self.db.asyncpg_dsn,
                fetch=lambda sid, since: self.events.list(sid, since=since, internal=True),
            )
            self.db.before_commit = pg.notify_in
            bus = pg
        self.bus: Bus = bus or MemoryBus()
        self.db.publish = self.bus.publish
        self.runners = Runners(self.db, self.jobs.policy)
        self.keys = Keys(self.db)
        self.settings = ServerSettings(self.db)
        self.outbox = Outbox(self.db)
        self.agents = Agents(self.db)
        self.questions = Questions(self.db)
        self.trackers = Trackers(self.db)
        self.chat = Chats(self.db)
        self.schedules = Schedules(self.db)
        self._overviews: dict[bool, tuple[float, int, Overview]] = {}

    async def overview(self, *, webhooks: bool = False) -> Overview:
        """The fleet at a glance, in one read (``store/overview.py``); ``webhooks``:
        with the count of webhook deliveries waiting. A snapshot serves again
        while no write finished in this process since it was read and for at
        most ``OVERVIEW_FRESH`` seconds: what this replica changed shows at
        once, what other replicas changed within that time."""
        began, writes = time.monotonic(), self.db.writes
        cached = self._overviews.get(webhooks)
        if cached is not None and cached[1] == writes and began - cached[0] < OVERVIEW_FRESH:
            return cached[2]
        fallbacks, now = self.jobs.policy.fallbacks, now_utc()
        fresh = await self.db.read(
            lambda conn: read_overview(conn, fallbacks=fallbacks, now=now, webhooks=webhooks)
        )
        # Stamped with the writes counted before the read: one that ends meanwhile voids it.
        self._overviews[webhooks] = (began, writes, fresh)
        return fresh

    async def migrate(self) -> None:
        await migrate.upgrade(self.db)

    async def start(self) -> None:
        """Start listening to other replicas (PostgreSQL)."""
        if isinstance(self.bus, PostgresBus):
            await self.bus.start()

    async def close(self) -> None:
        if isinstance(self.bus, PostgresBus):
            await self.bus.stop()
        await self.db.dispose()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        bus: Bus | None = None,
        policy: RetryPolicy | None = None,
        caps: Caps | None = None,
        connections: int = CONNECTIONS,
        migrate_schema: bool = True,
    ) -> Store:
        """``connections``: on PostgreSQL, the most this store's pools keep
        open (``database_connections``); SQLite ignores it."""
        store = cls(url, bus=bus, policy=policy, caps=caps, connections=connections)
        if migrate_schema:
            await store.migrate()
        await store.start()
        return store


__all__ = ["Caps", "Lease", "RetryPolicy", "Store"]
