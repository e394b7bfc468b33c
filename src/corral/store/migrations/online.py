"""Schema changes that leave a table serving while they run on PostgreSQL.

A plain ``CREATE INDEX`` in the migrations' transaction blocks every write
to the table until the transaction ends, and a plain ``DROP INDEX`` or
``ADD COLUMN`` holds the table's exclusive lock as long: every read and
write of ``jobs`` on every replica would wait for the rest of the upgrade.
``store/migrate.py`` runs PostgreSQL's migrations on a connection outside
any transaction, so a migration may end Alembic's transaction and go on in
a new one; here:

- indexes are built and dropped ``CONCURRENTLY``, each in an
  ``autocommit_block``; each step can run again after a crash between two
  of them (an index a failed build left invalid, or one a crash left
  unrecorded, is dropped and built anew);
- a column is added once the table's exclusive lock is held (``exclusive``):
  it is waited for behind every open transaction on the table, and every
  statement on it queues behind that wait, so each try waits a moment only
  and lets the queue go before the next. A constant default rewrites
  nothing: the lock is then held for an instant, until the migration's next
  online step ends the transaction.

SQLite (one process, migrating in its writer's transaction) does the plain
thing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# ``exclusive``: each try's wait for the lock, the pause between tries, and
# how long it keeps trying before the upgrade fails.
LOCK_WAIT_MS = 500
LOCK_PAUSE = 0.5
LOCK_GIVE_UP = 300.0
_LOCK_NOT_AVAILABLE = "55P03"


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def create_index(name: str, table: str, columns: Sequence[str], **where: Any) -> None:
    """``op.create_index``; ``where``: ``sqlite_where``/``postgresql_where``."""
    if not _postgresql():
        op.create_index(name, table, list(columns), **where)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, if_exists=True, postgresql_concurrently=True)
        op.create_index(name, table, list(columns), postgresql_concurrently=True, **where)


def drop_index(name: str, table: str) -> None:
    """``op.drop_index``."""
    if not _postgresql():
        op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, if_exists=True, postgresql_concurrently=True)


def add_column(table: str, column: sa.Column[Any]) -> None:
    """``op.add_column``, the table's exclusive lock taken first (``exclusive``)."""
    if _postgresql():
        exclusive(table)
    op.add_column(table, column)


def exclusive(table: str) -> None:
    """Take ``table``'s ACCESS EXCLUSIVE lock for the rest of the transaction,
    each try waiting at most ``LOCK_WAIT_MS``, ``LOCK_PAUSE`` apart, failing
    the upgrade after ``LOCK_GIVE_UP`` seconds (a transaction that held the
    table all that time)."""
    conn = op.get_bind()
    deadline = time.monotonic() + LOCK_GIVE_UP
    while True:
        savepoint = conn.begin_nested()
        try:
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
            conn.exec_driver_sql(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        except sa.exc.DBAPIError as exc:
            savepoint.rollback()  # the setting with it
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"migration: the table {table!r} stayed locked by other transactions "
                    f"for {LOCK_GIVE_UP:.0f} s; end them (pg_stat_activity) and start again"
                ) from exc
            # In the server, not here: this runs on the event loop's thread.
            conn.exec_driver_sql(f"SELECT pg_sleep({LOCK_PAUSE})")
            continue
        savepoint.commit()  # the lock stays with the transaction
        conn.exec_driver_sql("SET LOCAL lock_timeout TO DEFAULT")
        return
