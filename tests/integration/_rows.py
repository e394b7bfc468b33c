"""Raw job rows for the store's integration tests: reads, and a row held."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import sqlalchemy as sa

from corral.store import Store
from corral.store.schema import jobs


async def flags(store: Store, column: str, *ids: str) -> list[bool]:
    """The boolean ``column`` of the jobs ``ids``, in their order."""

    def read(conn: sa.Connection) -> dict[str, bool]:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c[column]).where(jobs.c.id.in_(ids)))
        return {r[0]: bool(r[1]) for r in rows}

    found = await store.db.read(read)
    return [found[i] for i in ids]


@asynccontextmanager
async def row_held(store: Store, job_id: str) -> AsyncIterator[None]:
    """PostgreSQL: job ``job_id``'s row locked (``FOR UPDATE``) by another
    connection's transaction (a cancel, a lease), rolled back at the end."""
    other = await asyncpg.connect(store.db.asyncpg_dsn)
    try:
        holding = other.transaction()
        await holding.start()
        await other.execute("SELECT id FROM jobs WHERE id = $1 FOR UPDATE", job_id)
        yield
        await holding.rollback()
    finally:
        await other.close()
