"""Reads of raw job rows for the store's integration tests."""

from __future__ import annotations

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
