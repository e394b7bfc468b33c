"""Apply Alembic migrations through the store's own connections.

SQLite: every migration in one write transaction of the store's writer.
PostgreSQL: on a connection of the write pool outside any transaction, in a
transaction Alembic begins itself, replicas taking turns under a
session-level advisory lock: a migration may then end that transaction to
build an index with ``CONCURRENTLY`` in an ``autocommit_block`` (which no
transaction can hold) and go on in a new one, so the table keeps taking
writes (and reads) while the index builds (``migrations/online.py``, from
0025 on). A replica waiting for the lock holds no transaction meanwhile:
such a build waits for every open one.

A database already at this code's head is the common start: it is read with
one plain query and Alembic is not loaded at all (loading it and reading
its script folder were ~0.2 s of CPU at every start on the CI machine)."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from corral.store.db import Database, Tx, outages

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps
_VERSION = sa.text(f"SELECT version_num FROM {VERSION_TABLE}")
# Any fixed number: replicas starting together take turns migrating.
_PG_LOCK = 0x636F7272616C
_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:k)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:k)")
LOCK_POLL = 0.2  # seconds between tries while another replica migrates


def alembic_config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def heads() -> list[str]:
    """Alembic's heads, from the scripts themselves (one: ``test_single_head``)."""
    from alembic.script import ScriptDirectory

    return list(ScriptDirectory.from_config(alembic_config()).get_heads())


@functools.cache
def head() -> str:
    """This code's newest revision without loading Alembic: each migration is
    ``versions/NNNN_name.py`` with revision ``NNNN`` (a unit test holds that
    to ``heads()``)."""
    return max(p.name[:4] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


async def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate to ``revision``; a database already at the head is left alone
    after one read."""
    if revision == "head" and await current(db) == head():
        return
    from alembic import command

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
    """The database's revision (None before the first migration), as Alembic's
    ``get_current_revision`` reads it."""
    return await db.read(_current)


def _current(conn: sa.Connection) -> str | None:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    versions = list(conn.execute(_VERSION).scalars())
    if len(versions) > 1:
        raise RuntimeError(f"the database is at several migration heads: {versions}")
    return versions[0] if versions else None
