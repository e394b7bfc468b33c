"""The SQLite writer: one thread, one connection, group commit.

SQLite has one writer at a time, so every write body runs on one thread. Bodies
that queue up while that thread is busy share one transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``): the first runs as the transaction itself,
each later one inside a ``SAVEPOINT``, so each stays all-or-nothing. A body that
raises is rolled back alone (its savepoint, or the whole transaction when it was
the first) and its caller gets the exception; the others commit. A ``COMMIT``
that fails fails every body of its group. Nothing is reported before the
``COMMIT``: callers learn their result, and the store publishes each body's bus
messages, only once the group is durable, so a ``kill -9`` mid-group loses
nothing that anyone was told about.

Why: on the trivial-job path the writer thread was busy ~46 % of the wall
time with four transactions per job (create, lease, start, complete), each
paying its own ``BEGIN``/``COMMIT``, its own WAL frames for the pages the
others touch too, a pool checkout and two thread hops (the GIL hand-over alone
can cost a switch interval). A group pays these once.

A group is capped (``LIMIT`` bodies, or ``WINDOW`` seconds after its first
body started) so that an early caller does not wait long for the commit of
bodies that arrived after it.

The write-ahead log is copied into the database file (a checkpoint) by a
thread of its own (``Checkpointer``), not by the commit that happens to fill
it: SQLite's automatic checkpoint ran inside every ~1,000th page's commit,
and that commit (and the group waiting behind it) took 6 to 8 ms instead of ~1:
the p99 of a 100-event batch went from ~8 to ~2 ms without it (issue #18).
The writer's own automatic checkpoint stays as a backstop at
``WAL_BACKSTOP`` pages, should the thread fall behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from corral.store.prepared import savepoint, sqlite_in_transaction

log = logging.getLogger(__name__)

LIMIT = 32
WINDOW = 0.005
# The checkpoint thread runs at most this often, after commits; the writer's
# connection checkpoints itself only past this many pages of log (~40 MiB).
CHECKPOINT_EVERY = 0.2
WAL_BACKSTOP = 10_000


@dataclass(slots=True)
class Item:
    """One queued body and where its answer goes: ``settle(item)`` is called
    on ``loop`` once the group is committed (or failed)."""

    body: Callable[[sa.Connection], Any]
    loop: asyncio.AbstractEventLoop
    settle: Callable[[Item], None]
    result: Any = None
    error: BaseException | None = None


class Writer:
    """The writer thread of one SQLite engine (started on first use)."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        limit: int = LIMIT,
        window: float = WINDOW,
        name: str,
        checkpoints: Checkpointer | None = None,
    ) -> None:
        self.engine = engine
        self.checkpoints = checkpoints
        self.limit = limit
        self.window = window
        self._name = name
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # The writer's one connection, held from group to group (a pool
        # checkout, its Connection and its reset cost ~10 % of the thread's
        # time when each group is one body: event ingest); dropped after a
        # group that failed, so the next starts on a fresh one.
        self._conn: sa.Connection | None = None
        # Counters for tests and the curious: groups committed, bodies in them.
        self.groups = 0
        self.bodies = 0

    def submit(self, item: Item) -> None:
        if self._thread is None:  # the lock only until the thread runs
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        self._queue.put(item)

    def close(self) -> None:
        """Finish what is queued, then stop the thread and close the engine
        (blocking: call it from a worker thread)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()
        if self.checkpoints is not None:
            self.checkpoints.close()
        self.engine.dispose()

    def _run(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is None or self._group(first):
                    return
        finally:
            self._drop()

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                conn.close()

    def _group(self, first: Item) -> bool:
        """Run one group starting with ``first``; True if it met the stop
        sentinel on the way."""
        done = [first]
        stop = False
        try:
            conn = self._connection()
            with _ended(conn):
                trans = conn.begin()
                started = time.monotonic()
                _run_alone(conn, first)
                if first.error is not None:
                    # The first body is the transaction: roll it back alone;
                    # what is queued waits for the next group.
                    trans.rollback()
                    self._settle(done)
                    return False
                while len(done) < self.limit and time.monotonic() - started < self.window:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    done.append(item)
                    _run_nested(conn, item)
                    if not sqlite_in_transaction(conn):
                        raise _Lost(item.error)
                trans.commit()
            self.groups += 1
            self.bodies += len(done)
            if self.checkpoints is not None:
                self.checkpoints.poke()
        except BaseException as exc:  # the group failed: so does each body in it
            self._drop()
            cause = exc.cause if isinstance(exc, _Lost) and exc.cause is not None else exc
            for item in done:
                if item.error is None:
                    item.error = cause
                    item.result = None
        self._settle(done)
        return stop

    def _settle(self, items: list[Item]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Item]] = {}
        for item in items:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, some in by_loop.items():
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits
                loop.call_soon_threadsafe(_settle_all, some)


class Checkpointer:
    """Checkpoints the database at ``path`` (``PRAGMA wal_checkpoint(PASSIVE)``:
    copies what it can without waiting for readers or the writer) from a
    thread and connection of its own, at most every ``every`` seconds and only
    after a commit (``poke``). Started on first use."""

    def __init__(self, path: str, *, every: float = CHECKPOINT_EVERY, name: str) -> None:
        self.path = path
        self.every = every
        self._name = name
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # For tests and the curious: checkpoints run, and the last one's
        # (busy, frames in the log, frames checkpointed).
        self.runs = 0
        self.last: tuple[int, int, int] | None = None

    def poke(self) -> None:
        """The writer committed: checkpoint soon."""
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        self._wake.set()

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        self._wake.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                # Commits that come meanwhile share this checkpoint.
                if self._stop.wait(self.every):
                    return
                self._wake.clear()
                # A close() between the wait above and that clear: its wake
                # is gone with the clear, so the wait above would never end
                # (and close() would join this thread forever).
                if self._stop.is_set():
                    return
                try:
                    busy, log_frames, done = conn.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                except sqlite3.Error as exc:  # the writer's backstop still bounds the log
                    log.warning("checkpoint of %s failed: %s", self.path, exc)
                    continue
                self.runs += 1
                self.last = (busy, log_frames, done)
        finally:
            conn.close()


class _Lost(Exception):
    """SQLite ended the transaction itself (a failed body took it down)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__("the write transaction was rolled back")
        self.cause = cause


def _run_alone(conn: sa.Connection, item: Item) -> None:
    try:
        item.result = item.body(conn)
    except BaseException as exc:  # its caller gets it, whatever it is
        item.error = exc


def _run_nested(conn: sa.Connection, item: Item) -> None:
    try:
        with savepoint(conn, "corral_body"):
            item.result = item.body(conn)
    except BaseException as exc:  # its caller gets it, whatever it is
        item.error = exc


@contextlib.contextmanager
def _ended(conn: sa.Connection) -> Iterator[None]:
    """Leave no transaction open on the way out: a COMMIT that fails (a
    deferred constraint) leaves SQLite's transaction open, and the pool's
    reset does not end it."""
    try:
        yield
    except BaseException:
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None and dbapi.in_transaction:
            dbapi.rollback()
        raise


def _settle_all(items: list[Item]) -> None:
    for item in items:
        item.settle(item)
