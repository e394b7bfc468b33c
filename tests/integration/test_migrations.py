"""Migrations: one head, upgrading gives exactly the metadata, and an index
rebuilt on PostgreSQL leaves the table working."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from corral.store import Store, migrate
from corral.store.schema import jobs, metadata, sessions
from corral.testing import job_row, session_row


def test_single_head() -> None:
    assert len(migrate.heads()) == 1
    # What a start compares with, read from the file names without Alembic.
    assert migrate.head() == migrate.heads()[0]


async def test_upgrade_matches_metadata(empty_db_url: str) -> None:
    store = Store(empty_db_url)
    try:
        assert await migrate.current(store.db) is None
        await store.migrate()
        await store.migrate()  # idempotent
        assert await migrate.current(store.db) == migrate.heads()[0]
        diff = await store.db.read(
            lambda c: compare_metadata(MigrationContext.configure(c), metadata)
        )
        assert diff == []
    finally:
        await store.close()


async def test_a_store_at_the_head_opens_without_loading_alembic(db_url: str) -> None:
    """The common start reads the revision with one query: neither Alembic nor
    (on SQLite) SQLAlchemy's ORM, which its asyncio engine imports, is loaded."""
    code = (
        "import asyncio, json, sys\n"
        "from corral.store import Store\n"
        "async def main():\n"
        f"    store = await Store.open({db_url!r})\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
        "print(json.dumps(sorted(m for m in ('alembic', 'sqlalchemy.orm') if m in sys.modules)))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    loaded = json.loads(out)
    assert loaded == ([] if db_url.startswith("sqlite") else ["sqlalchemy.orm"])


@pytest.mark.parametrize("start", ["0024", "0026", "0028"])
async def test_an_upgrade_leaves_the_jobs_table_working(empty_pg_url: str, start: str) -> None:
    """PostgreSQL's migrations change ``jobs`` online (``migrations/online.py``;
    ``store/migrate.py`` runs them outside one transaction for it): while an
    upgrade waits for a transaction that holds a job row, other writes and
    reads of ``jobs`` are served. From 0028, 0029 rebuilds the runner index
    CONCURRENTLY; from 0026, 0027 first adds a column (the table's lock
    taken in short tries); from 0024, 0025 first builds an index. (A plain
    DROP INDEX or ADD COLUMN queued for the table's exclusive lock behind
    that transaction, and every statement on ``jobs`` queued behind it; a
    plain CREATE INDEX blocked every write until the upgrade's end.)"""
    store = Store(empty_pg_url)
    holder = None
    try:
        await migrate.upgrade(store.db, start)
        at = datetime.now(UTC)
        # The rows as the schema at ``start`` has them (later columns have defaults).
        tables = {}
        for table in (sessions, jobs):
            names = await store.db.read(
                lambda c, t=table: [col["name"] for col in sa.inspect(c).get_columns(t.name)]
            )
            tables[table.name] = sa.table(
                table.name, *(sa.column(n, table.c[n].type) for n in names)
            )

        def add_job(tx: Any) -> str:
            sid = uuid.uuid4().hex
            tx.conn.execute(
                sa.insert(tables["sessions"]), [_only(tables["sessions"], session_row(sid, at))]
            )
            row = _only(tables["jobs"], job_row(sid, at))
            tx.conn.execute(sa.insert(tables["jobs"]), [row])
            return str(row["id"])

        job_id = await store.db.write(add_job)
        holder = await asyncpg.connect(store.db.asyncpg_dsn)
        await holder.execute("BEGIN")
        await holder.execute("UPDATE jobs SET priority = 3 WHERE id = $1", job_id)

        upgrading = asyncio.create_task(migrate.upgrade(store.db))
        await asyncio.sleep(1.0)
        assert not upgrading.done()  # the build waits for the holder
        await asyncio.wait_for(store.db.write(add_job), 5)
        count = sa.select(sa.func.count()).select_from(jobs)
        assert await asyncio.wait_for(store.db.read(lambda c: c.execute(count).scalar()), 5) == 2
        assert not upgrading.done()

        await holder.execute("COMMIT")
        await asyncio.wait_for(upgrading, 30)
        assert await migrate.current(store.db) == migrate.heads()[0]
        found = await store.db.read(
            lambda c: c.execute(
                sa.text(
                    "SELECT c.relname, i.indisvalid, pg_get_indexdef(i.indexrelid) "
                    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname LIKE 'ix_jobs_runner_id_state%'"
                )
            ).all()
        )
        [(name, valid, definition)] = found
        assert name == "ix_jobs_runner_id_state" and valid, found
        assert "WHERE" in definition and "running" in definition, definition
        invalid = sa.text("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
        assert await store.db.read(lambda c: c.execute(invalid).scalar()) == 0
    finally:
        if holder is not None:
            await holder.close()
        await store.close()


async def test_an_index_a_crash_left_behind_is_built_again(empty_pg_url: str) -> None:
    """A build that ended (or failed, leaving an invalid index) before its
    migration was recorded: the next upgrade drops it and builds it anew
    instead of failing on its name."""
    store = Store(empty_pg_url)
    try:
        await migrate.upgrade(store.db, "0024")
        await store.db.write(
            lambda tx: tx.conn.execute(sa.text("CREATE INDEX ix_jobs_runner_id_state ON jobs (id)"))
        )
        await migrate.upgrade(store.db)
        definition = await store.db.read(
            lambda c: c.execute(
                sa.text("SELECT pg_get_indexdef('ix_jobs_runner_id_state'::regclass)")
            ).scalar()
        )
        assert "(runner_id, state)" in definition, definition
    finally:
        await store.close()


def _only(table: sa.TableClause, row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k in table.c}


async def test_replicas_starting_together_take_turns(empty_pg_url: str) -> None:
    """Two stores migrating one fresh PostgreSQL database at once (replicas
    started together): one migrates, the other then finds nothing left to
    do. (The one waiting for the lock first waited inside a transaction, and
    the other's CREATE INDEX CONCURRENTLY waited for that transaction: a
    deadlock PostgreSQL broke by failing one of them.)"""
    a, b = Store(empty_pg_url), Store(empty_pg_url)
    try:
        await asyncio.wait_for(asyncio.gather(a.migrate(), b.migrate()), 60)
        assert await migrate.current(a.db) == await migrate.current(b.db) == migrate.heads()[0]
    finally:
        await a.close()
        await b.close()
