"""Apply Alembic migrations through an open connection."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from corral.store.db import Database

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
    async with db.writer.begin() as conn:
        if not db.is_sqlite:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))


async def current(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with db.reader.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
