"""Migrations: one head, and upgrading gives exactly the metadata."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from corral.store import Store, migrate
from corral.store.schema import metadata


def test_single_head() -> None:
    assert len(migrate.heads()) == 1


async def test_upgrade_matches_metadata(db_url: str) -> None:
    store = Store(db_url)
    try:
        await store.migrate()
        await store.migrate()  # idempotent
        assert await migrate.current(store.db) == migrate.heads()[0]
        diff = await store.db.read(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata)
        )
        assert diff == []
    finally:
        await store.close()
