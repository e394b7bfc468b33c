"""Engines and transactions.

A store operation is one synchronous transaction body, ``body(tx) -> T``, run in
a single hop: on SQLite in a dedicated writer thread (one connection,
``BEGIN IMMEDIATE``, bodies that queue up meanwhile committed together:
``store/writer.py``; readers use their own threads under WAL), on PostgreSQL
through SQLAlchemy's asyncio engine (asyncpg), the whole transaction in one
greenlet (``greenlet_spawn``, as ``run_sync`` runs a body). Measured on the
target machine, aiosqlite costs ~210 µs per statement against ~22 µs for the
same statement run in one thread, and a job transaction runs about ten.

Bus messages queued on the transaction are published once it commits (from
the event loop, even if the awaiting request was cancelled meanwhile), so
nobody hears of rows they cannot read yet.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.util import greenlet_spawn

from corral import jsontext
from corral.errors import ConfigError, StoreUnavailable
from corral.store.prepared import driver
from corral.store.writer import WAL_BACKSTOP, Checkpointer, Item, Writer
from corral.webhooks import Rules

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
Publish = Callable[[str, Any], None]
BeforeCommit = Callable[[sa.Connection, list[tuple[str, Any]]], None]
READERS = 4
# Each replica's PostgreSQL connections at most, by default (``database_connections``;
# the bus's LISTEN connection and the singleton loops' advisory locks come on
# top), and the pools they make: writes get 4 of each 7.
CONNECTIONS = 35


def pools(connections: int) -> tuple[int, int]:
    """The write and read pools' sizes for ``connections`` in all (at least 2)."""
    writes = max(1, round(connections * 4 / 7))
    return writes, max(1, connections - writes)


# How long an operation waits for a pooled PostgreSQL connection to come free
# before it fails as an outage (503) rather than queue without end.
POOL_WAIT = 30.0


def fields(row: sa.Row[*tuple[Any, ...]]) -> dict[str, Any]:
    """A row as a plain dict. Pydantic reads a plain dict ~3x faster than
    SQLAlchemy's ``row._mapping`` (a Job: 28 -> 11 us; issue #18)."""
    return dict(zip(row._fields, row, strict=True))


def dicts(result: sa.Result[Any]) -> Iterator[dict[str, Any]]:
    """The rows of ``result`` as plain dicts, its keys read once (``fields``
    builds them again for each row: half of what a row costs to become a Job)."""
    keys = tuple(result.keys())
    for row in result:
        yield dict(zip(keys, row, strict=True))


class Tx:
    """A write transaction: its connection, what to publish after commit, and
    the webhook rules its changes are announced by (the outbox)."""

    __slots__ = ("after_abort", "after_commit", "conn", "messages", "webhooks")

    def __init__(self, conn: sa.Connection, webhooks: Rules | None = None) -> None:
        self.conn = conn
        self.messages: list[tuple[str, Any]] = []
        self.webhooks: Rules = webhooks or Rules()
        # Run in this process, on the event loop, once the transaction
        # committed (metrics), or once it did not (rolled back, or its outcome
        # unknown: a lost COMMIT).
        self.after_commit: list[Callable[[], None]] = []
        self.after_abort: list[Callable[[], None]] = []

    def notify(self, topic: str, message: Any) -> None:
        self.messages.append((topic, message))


class Database:
    def __init__(
        self, url: str, publish: Publish | None = None, *, connections: int = CONNECTIONS
    ) -> None:
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"invalid database_url {url!r}: {exc}") from exc
        self.url = parsed
        self.dialect = parsed.get_backend_name()
        self.publish: Publish = publish or (lambda topic, message: None)
        self.webhooks = Rules()  # server-wide webhook endpoints, for the outbox
        # Runs inside each write transaction that queued messages (the PostgreSQL bus).
        self.before_commit: BeforeCommit | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        # Write transactions this process finished (failed ones too: a lost
        # COMMIT may have committed): what a cached read checks it is still current by.
        self.writes = 0
        if self.dialect == "sqlite":
            if parsed.get_driver_name() not in ("pysqlite", "aiosqlite"):
                raise ConfigError("use sqlite:///PATH (or sqlite+aiosqlite:///PATH) for SQLite")
            file = parsed.database if parsed.database not in (None, "", ":memory:") else None
            if file is not None:
                Path(file).parent.mkdir(parents=True, exist_ok=True)
            sync_url = parsed.set(drivername="sqlite+pysqlite")
            self.writer = Writer(
                _sqlite_engine(sync_url, writer=True),
                name="corral-db-write",
                checkpoints=None
                if file is None
                else Checkpointer(file, name="corral-db-checkpoint"),
            )
            self.reader = _sqlite_engine(sync_url, writer=False)
            self._read_threads = ThreadPoolExecutor(READERS, thread_name_prefix="corral-db-read")
            # Each reader thread keeps its connection (a pool checkout and a
            # Connection per read were ~50 us of a ~130 us point read's CPU).
            self._reading = threading.local()
            self._readers: list[sa.Connection] = []
            self._readers_lock = threading.Lock()
        elif self.dialect == "postgresql":
            if parsed.get_driver_name() != "asyncpg":
                raise ConfigError("use postgresql+asyncpg://... for PostgreSQL")
            # Imported here: it imports SQLAlchemy's ORM, which SQLite's
            # store, the default, never needs (0.06-0.1 s of CPU at every
            # start on the CI machine).
            from sqlalchemy.ext.asyncio import create_async_engine

            # Queue tables change size fast and may have no statistics yet
            # (autovacuum lags or is off): a cached generic plan chosen when
            # a table was empty turns index lookups into sequential scans
            # (measured: 108 ms per event batch at 40k rows). Plan per call.
            #
            # No JIT: it compiles a statement whose estimated cost passes
            # jit_above_cost (PostgreSQL's default is on), at every execution,
            # and corral's statements are short. A version of the lease tried
            # in issue #18, behind 5,000 scheduled jobs, was estimated at
            # 125,000 and spent 58 ms compiling to run for 3 ms.
            connect_args = {
                "server_settings": {"plan_cache_mode": "force_custom_plan", "jit": "off"}
            }
            self.write_connections, self.read_connections = pools(connections)
            # Pools of a fixed size, each connection opened when first needed
            # and kept: connections over a pool's size ("overflow") were
            # closed as soon as they were given back, so every burst (a
            # runner's slots completing while clients submit) connected
            # afresh, a new backend each time (150 per 1,000 jobs of the
            # burst bench: 95 and 96 → 109 and 114 jobs/s without them; issue #18).
            self.engine: AsyncEngine = create_async_engine(
                parsed,
                pool_size=self.write_connections,
                max_overflow=0,
                pool_timeout=POOL_WAIT,
                pool_use_lifo=True,
                connect_args=connect_args,
                json_deserializer=jsontext.loads,
            )
            _ping_when_idle(self.engine)
            # Reads run outside a transaction: under READ COMMITTED each
            # statement has its own snapshot either way, and a read then
            # costs the ping and its statements, not BEGIN and ROLLBACK too
            # (a ping inside a transaction is itself BEGIN, ping, ROLLBACK):
            # 2 round trips for a one-statement read instead of 6.
            self.read_engine: AsyncEngine = create_async_engine(
                parsed,
                pool_size=self.read_connections,
                max_overflow=0,
                pool_timeout=POOL_WAIT,
                pool_use_lifo=True,
                isolation_level="AUTOCOMMIT",
                connect_args=connect_args,
                json_deserializer=jsontext.loads,
            )
            _ping_when_idle(self.read_engine)
        else:
            raise ConfigError(f"unsupported database {self.dialect!r}: use sqlite or postgresql")

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def asyncpg_dsn(self) -> str:
        """The PostgreSQL URL as asyncpg takes it (for LISTEN and advisory locks)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def write(self, body: Callable[[Tx], T]) -> T:
        """Run ``body`` in one write transaction; publish its messages after commit.
        Once started it runs to the end, even if the caller is cancelled."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[T, Tx]]
        began: list[Tx] = []  # the transaction, for its after_abort if it fails
        if self.is_sqlite:
            future = loop.create_future()

            def run(conn: sa.Connection) -> tuple[T, Tx]:
                tx = Tx(conn, self.webhooks)
                began.append(tx)
                return body(tx), tx

            self.writer.submit(Item(run, loop, functools.partial(_settle, future)))
        else:
            future = asyncio.ensure_future(self._pg_write(body, began))
        future.add_done_callback(functools.partial(self._published, began))
        self._pending.add(future)
        with outages():
            result, _ = await asyncio.shield(future)
        return result

    async def _pg_write(self, body: Callable[[Tx], T], began: list[Tx]) -> tuple[T, Tx]:
        return await greenlet_spawn(self._pg_transaction, body, began)

    def _pg_transaction(self, body: Callable[[Tx], T], began: list[Tx]) -> tuple[T, Tx]:
        # The whole transaction (checkout, BEGIN, the body, COMMIT, checkin)
        # in one greenlet, as ``AsyncSession.run_sync`` runs a session's work:
        # ``async with engine.begin()`` and ``run_sync`` switched to a
        # greenlet of their own for each step, a task to close the connection
        # and an event-loop iteration or more each: ~0.13 ms of a one-statement
        # transaction's 0.53 (issue #18).
        with self.engine.sync_engine.begin() as sync_conn:
            tx = Tx(sync_conn, self.webhooks)
            began.append(tx)
            result = body(tx)
            if tx.messages and self.before_commit is not None:
                self.before_commit(sync_conn, tx.messages)
            return result, tx

    def _published(self, began: list[Tx], future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        self.writes += 1
        if future.cancelled() or future.exception() is not None:
            for tx in began:
                for fn in tx.after_abort:
                    fn()
            return
        _, tx = future.result()
        for topic, message in tx.messages:
            self.publish(topic, message)
        for fn in tx.after_commit:
            fn()

    async def read(self, body: Callable[[sa.Connection], T]) -> T:
        """Run ``body`` on a read connection (no writes)."""
        with outages():
            if self.is_sqlite:
                return await asyncio.get_running_loop().run_in_executor(
                    self._read_threads, self._read_here, body
                )
            return await greenlet_spawn(self._pg_read, body)

    def _pg_read(self, body: Callable[[sa.Connection], T]) -> T:
        # One greenlet for checkout, body and checkin (see _pg_transaction).
        with self.read_engine.sync_engine.connect() as conn:
            return body(conn)

    def _read_here(self, body: Callable[[sa.Connection], T]) -> T:
        """``body`` on this reader thread's connection (opened on first use;
        a read that fails gives it back, the next opens a fresh one)."""
        conn: sa.Connection | None = getattr(self._reading, "conn", None)
        if conn is None:
            conn = self._reading.conn = self.reader.connect()
            with self._readers_lock:
                self._readers.append(conn)
        try:
            return body(conn)
        except BaseException:
            self._reading.conn = None
            with self._readers_lock:
                self._readers.remove(conn)
            conn.close()
            raise

    async def dispose(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.is_sqlite:
            await asyncio.to_thread(self.writer.close)
            self._read_threads.shutdown(wait=True)
            with self._readers_lock:
                readers, self._readers = self._readers, []
            for conn in readers:
                conn.close()
            self.reader.dispose()
        else:
            await self.engine.dispose()
            await self.read_engine.dispose()


def _settle(future: asyncio.Future[Any], item: Item) -> None:
    if future.done():
        return
    if item.error is not None:
        future.set_exception(item.error)
    else:
        future.set_result(item.result)


@contextmanager
def outages() -> Iterator[None]:
    """Driver errors that mean "the database is not there" become
    StoreUnavailable (503); the rest (integrity errors, ...) pass through."""
    try:
        yield
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise StoreUnavailable(f"database error: {exc.orig}") from exc
        raise
    except sa.exc.TimeoutError as exc:  # every pooled connection busy for pool_timeout
        raise StoreUnavailable(
            f"no database connection came free in time ({exc}): raise database_connections "
            "or lower the load"
        ) from exc
    except OSError as exc:
        raise StoreUnavailable(f"database unreachable: {exc}") from exc


# A pooled PostgreSQL connection idle longer than this is pinged before use.
IDLE_PING = 1.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection at checkout only when it sat idle for more
    than ``IDLE_PING`` seconds; a dead one is replaced (the pool connects
    afresh, up to three times) before the caller sees it.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout, and asyncpg's
    ping outside a transaction is three round trips (BEGIN, an empty
    statement, ROLLBACK): a third of the round trips of an event batch's
    write, and as many as a whole read (issue #18). A connection in steady
    use has just answered; one that sat idle is where a restarted server,
    a killed backend or a proxy's idle timeout shows. What fails between
    two uses a moment apart is an outage in progress: that operation fails
    (``StoreUnavailable``, 503) and SQLAlchemy drops the pool's older
    connections at once, as on any disconnect."""
    pool = engine.sync_engine

    @event.listens_for(pool, "checkin")
    def _idle(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= IDLE_PING:
            return  # fresh from connect, or in steady use
        try:
            dbapi_conn.ping()
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"idle connection is gone: {exc}") from exc


# How long a connection keeps trying to switch a new SQLite file to WAL while
# others do the same (the busy timeout of every other statement).
WAL_WAIT = 30.0


def wal(cur: Any, wait: float = WAL_WAIT) -> None:
    """Put the database of ``cur`` (a sqlite3 cursor) in WAL mode, kept by the
    file: a file already in it is left alone. Connections switching one new
    file at the same moment (a server and a CLI command on a fresh data
    folder, or a writer and its readers) can each hold a read lock the
    other's switch needs: SQLite answers one of them "database is locked" at
    once, without its busy handler (it would wait for a deadlock), so the
    loser tries again until ``wait`` has passed."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


def _sqlite_engine(url: sa.URL, *, writer: bool) -> sa.Engine:
    engine = sa.create_engine(
        url,
        pool_size=1 if writer else READERS,
        max_overflow=0,
        pool_timeout=60,
        # Readers run each statement in its own implicit transaction (as
        # PostgreSQL's reads do, under READ COMMITTED): no BEGIN, no ROLLBACK
        # when the connection goes back; they were ~half of a point read's
        # CPU (jobs.get 559 -> 319 us; issue #18).
        pool_reset_on_return="rollback" if writer else None,
        connect_args={"check_same_thread": False, "timeout": 30},
        json_deserializer=jsontext.loads,  # JSON columns: ~2.5x json.loads' speed
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver: BEGIN comes from us.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        if writer:  # the checkpoint thread does it (store/writer.py)
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP}")
        cur.close()

    if writer:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # On the driver's cursor: ``exec_driver_sql`` built an execution
            # context and a result for it, most of an empty transaction's
            # CPU (issue #18); errors are raised as SQLAlchemy's all the same.
            driver(conn, "BEGIN IMMEDIATE")

    return engine
