"""Apply Alembic migrations through the store's own connections.

SQLite: every migration in one write transaction of the store's writer.
PostgreSQL: on a connection of the write pool outside any transaction, in a
transaction Alembic begins itself, replicas taking turns under a
session-level advisory lock: a migration may then end that transaction to
build an index with ``CONCURRENTLY`` in an ``autocommit_block`` (which no
transaction can hold) and go on in a new one, so the table keeps taking
writes (and reads) while the index builds (``migrations/online.py``, from
0025 on). A replica waiting for the lock holds no transaction meanwhile:
such a build waits for every open one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from corral.store.db import Database, Tx, outages

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: replicas starting together take turns migrating.
_PG_LOCK = 0x636F7272616C
_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:k)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:k)")
LOCK_POLL = 0.2  # seconds between tries while another replica migrates


def alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def heads() -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config()).get_heads())


async def upgrade(db: Database, revision: str = "head") -> None:
    if db.is_sqlite:

        def body(tx: Tx) -> None:
            command.upgrade(alembic_config(tx.conn), revision)

        await db.write(body)
        return

    with outages():
        async with db.engine.connect() as conn:
            # Waiting with a try in a transaction of its own, not in one that
            # blocks on the lock: a CREATE INDEX CONCURRENTLY of the replica
            # that holds it waits for every open transaction, this one too.
            while not await conn.scalar(_TRY_LOCK, {"k": _PG_LOCK}):
                await conn.commit()
                await asyncio.sleep(LOCK_POLL)
            await conn.commit()
            try:
                await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
            finally:
                try:
                    await conn.rollback()  # whatever a failed migration left open
                    await conn.execute(_UNLOCK, {"k": _PG_LOCK})
                    await conn.commit()
                except sa.exc.DBAPIError:
                    await conn.invalidate()  # its backend gone, or closed now: the lock with it


async def current(db: Database) -> str | None:
    return await db.read(lambda c: MigrationContext.configure(c).get_current_revision())
