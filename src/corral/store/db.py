"""Engines and transactions.

SQLite has one writer: all write transactions go through one connection
(``BEGIN IMMEDIATE``), so they queue in-process instead of failing with
SQLITE_BUSY, and readers use a small pool under WAL. PostgreSQL uses one pool
for both. Messages for the bus are queued on the transaction and published
only after it commits, so nobody is told about rows they cannot yet read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from corral.errors import ConfigError, StoreUnavailable

Publish = Callable[[str, Any], None]


class Tx:
    """A write transaction: its connection and what to publish after commit."""

    __slots__ = ("conn", "messages")

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.messages: list[tuple[str, Any]] = []

    def notify(self, topic: str, message: Any) -> None:
        self.messages.append((topic, message))


class Database:
    def __init__(self, url: str, publish: Publish | None = None) -> None:
        try:
            self.url = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"invalid database_url {url!r}: {exc}") from exc
        self.dialect = self.url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"unsupported database {self.dialect!r}: use sqlite or postgresql")
        self.publish: Publish = publish or (lambda topic, message: None)
        if self.dialect == "sqlite":
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            self.writer = _sqlite_engine(url, writer=True)
            self.reader = _sqlite_engine(url, writer=False)
        else:
            self.writer = create_async_engine(url, pool_size=10, max_overflow=10)
            self.reader = self.writer

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        try:
            async with self.writer.begin() as conn:
                tx = Tx(conn)
                yield tx
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise StoreUnavailable(f"database error: {exc.orig}") from exc
            raise
        except OSError as exc:
            raise StoreUnavailable(f"database unreachable: {exc}") from exc
        for topic, message in tx.messages:
            self.publish(topic, message)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.reader.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailable(f"database error: {exc.orig}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"database unreachable: {exc}") from exc

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()


def _sqlite_engine(url: str, *, writer: bool) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=1 if writer else 4, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver: BEGIN comes from us.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
