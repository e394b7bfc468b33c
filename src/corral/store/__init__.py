"""The store: SQLAlchemy Core over SQLite (aiosqlite) or PostgreSQL (asyncpg).

``store.jobs.create(...)``, ``store.sessions.get(...)``, ``store.events.list(...)``:
one noun per repository, the same nouns as the API."""

from __future__ import annotations

from corral.bus import Bus, MemoryBus
from corral.store import migrate
from corral.store.db import Database
from corral.store.events import Events
from corral.store.jobs import Jobs, Lease, RetryPolicy
from corral.store.keys import Keys, ServerSettings
from corral.store.runners import Runners
from corral.store.sessions import Sessions


class Store:
    def __init__(self, url: str, *, bus: Bus | None = None, policy: RetryPolicy | None = None):
        self.bus: Bus = bus or MemoryBus()
        self.db = Database(url, publish=self.bus.publish)
        self.jobs = Jobs(self.db, policy)
        self.sessions = Sessions(self.db)
        self.events = Events(self.db)
        self.runners = Runners(self.db)
        self.keys = Keys(self.db)
        self.settings = ServerSettings(self.db)

    async def migrate(self) -> None:
        await migrate.upgrade(self.db)

    async def close(self) -> None:
        await self.db.dispose()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        bus: Bus | None = None,
        policy: RetryPolicy | None = None,
        migrate_schema: bool = True,
    ) -> Store:
        store = cls(url, bus=bus, policy=policy)
        if migrate_schema:
            await store.migrate()
        return store


__all__ = ["Lease", "RetryPolicy", "Store"]
