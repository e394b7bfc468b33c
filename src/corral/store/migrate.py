"""Apply Alembic migrations through the store's own connection."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from corral.store.db import Database, Tx

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: replicas starting together take turns migrating.
_PG_LOCK = 0x636F7272616C


def alembic_config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def heads() -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config()).get_heads())


async def upgrade(db: Database, revision: str = "head") -> None:
    def body(tx: Tx) -> None:
        if not db.is_sqlite:
            tx.conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        command.upgrade(alembic_config(tx.conn), revision)

    await db.write(body)


async def current(db: Database) -> str | None:
    return await db.read(lambda c: MigrationContext.configure(c).get_current_revision())
