"""The runner's outcome journal: how a job whose process finished is not run
again when the runner (or the server embedding it) dies before its
completion report is acknowledged.

When a job's process has ended, the runner records the outcome here with
what the server has not acknowledged yet (the last events, with their ids)
and the job's worker JWT, and reports it; once the server answers the
report, the entry is forgotten. A runner that starts presents the entries
left over when it registers (``RunnerRegister.journal``), and the server ends
each job with its journalled outcome unless the job has started again
elsewhere (``store/jobs/lifecycle.recover``). So a job whose process finished
is not run again as long as this file survives; without it (a wiped work
dir), recovery is at-least-once, as before.

The report does not wait for the recording to reach the disk: a job is safe
from running again once either is durable, its entry here or its completion
in the server's database, and the recording starts as early as before, so
the window in which a kill leaves neither is no longer than when the report
waited for it (one fsync at every job's end: issue #18). A recording whose
report was answered before its commit began is never written: as before,
once the server answered, its own commit is what keeps the job from running
again (the entry was deleted then; against a power cut, that commit is as
durable as the server's database makes it).

Why SQLite (the standard library's ``sqlite3``) and not an append-only log
of our own: an entry is written once and deleted once, out of order, so a
log needs compaction and torn-tail handling, which SQLite's WAL already
does, transactionally. A recording is committed with ``synchronous=FULL``
(fsync'd before ``record`` returns); a deletion with ``NORMAL``: a deletion
lost to a power cut only presents an entry again, which the server answers
as already recorded. Recordings that arrive while a commit is under way go
in the next commit together (group commit): one fsync costs ~5 ms on this
machine's disk, and a runner with many slots may finish hundreds of jobs a
second.

The file is ``WORKDIR/runner/journal.sqlite`` (the embedded runner's work dir
is the data dir); the sandbox hides it from jobs, like the rest of the work
dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from corral.protocol import JournalEntry

log = logging.getLogger(__name__)

T = TypeVar("T")

# Test hook (tests/acceptance/test_journal.py): with this variable set to a
# file path, a runner that has journalled an outcome creates that file and
# never reports the outcome, so a test can kill -9 it (or the `corral serve`
# embedding it) at exactly that point. Nothing else reads it.
HOLD_ENV = "CORRAL_TEST_HOLD_REPORT"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    entry TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """An entry left in the journal: the job it is about, and the entry."""

    job_id: str
    entry: JournalEntry


class Journal:
    """``put(job_id, entry)`` (a future, done once it is durable),
    ``await record(job_id, entry)`` (the same, waited for),
    ``forget(entry_id)``, ``pending()``. Open it with ``async with``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the connection is used from worker threads
        self._puts: list[tuple[str, JournalEntry, asyncio.Future[None]]] = []
        self._drops: set[str] = set()
        # Ids of entries a commit has taken or ``pending`` read (on disk, or
        # about to be): only these need a deletion when forgotten.
        self._taken: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # A thread of its own: a commit never queues behind the runner's other
        # blocking work (process scans, worktrees) in the default executor.
        self._thread: ThreadPoolExecutor | None = None
        self._busy = False  # a commit is under way
        self._idle: list[asyncio.Future[None]] = []  # woken once nothing is left to commit

    async def __aenter__(self) -> Journal:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="corral-journal")
        await self._in_thread(self._open)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="corral-journal")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            await self._flush()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self._conn is not None:
            with self._lock:
                self._conn.close()
            self._conn = None
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._thread is not None, "the journal is not open"
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
        os.chmod(self.path, 0o600)
        self._conn = conn

    def put(self, job_id: str, entry: JournalEntry) -> asyncio.Future[None]:
        """Write ``entry`` (or replace the one with its id) in the next commit.
        The future is done once it is on disk, or once it need not be (the
        entry was forgotten first); its exception is the commit's, if that
        failed (and logged here)."""
        assert self._wake is not None, "the journal is not open"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._puts.append((job_id, entry, done))
        self._wake.set()
        return done

    async def record(self, job_id: str, entry: JournalEntry) -> None:
        """``put``, returning once the entry is on disk."""
        await self.put(job_id, entry)

    def forget(self, entry_id: str) -> None:
        """Delete the entry (the server answered its report); not waited for.
        A recording of it no commit has taken yet is dropped unwritten."""
        if self._wake is None:
            return
        if any(entry.id == entry_id for _, entry, _ in self._puts):
            kept = []
            for put in self._puts:
                if put[1].id != entry_id:
                    kept.append(put)
                elif not put[2].done():
                    put[2].set_result(None)
            self._puts = kept
        if entry_id in self._taken:
            self._taken.discard(entry_id)
            self._drops.add(entry_id)
            self._wake.set()

    async def pending(self) -> list[Pending]:
        """The entries left over, oldest first."""
        await self._flush()
        pending = await self._in_thread(self._read)
        self._taken.update(p.entry.id for p in pending)
        return pending

    async def _flush(self) -> None:
        """Wait until every recording and deletion asked for so far is committed."""
        if self._wake is None or not (self._puts or self._drops or self._busy):
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(done)
        self._wake.set()
        await done

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._puts or self._drops:
                puts, self._puts = self._puts, []
                drops, self._drops = self._drops, set()
                self._taken.update(entry.id for _, entry, _ in puts)
                self._busy = True
                try:
                    await self._in_thread(self._commit, puts, drops)
                except Exception as exc:
                    log.exception("the outcome journal %s could not be written", self.path)
                    for _, _, done in puts:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _, _, done in puts:
                        if not done.done():
                            done.set_result(None)
                finally:
                    self._busy = False
            idle, self._idle = self._idle, []
            for done in idle:
                if not done.done():
                    done.set_result(None)

    def _commit(
        self, puts: list[tuple[str, JournalEntry, asyncio.Future[None]]], drops: set[str]
    ) -> None:
        assert self._conn is not None
        with self._lock:
            conn = self._conn
            # FULL: the commit is fsync'd before it returns. A deletion alone
            # need not be (see the module docstring).
            conn.execute(f"PRAGMA synchronous={'FULL' if puts else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO outcomes (id, job_id, recorded_at, entry) "
                    "VALUES (?, ?, strftime('%s','now'), ?)",
                    [(entry.id, job_id, entry.model_dump_json()) for job_id, entry, _ in puts],
                )
                # A deletion asked for in this batch follows its recording.
                conn.executemany("DELETE FROM outcomes WHERE id = ?", [(i,) for i in drops])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self) -> list[Pending]:
        assert self._conn is not None
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, job_id, entry FROM outcomes ORDER BY recorded_at, rowid"
            ).fetchall()
        pending = []
        for entry_id, job_id, text in rows:
            try:
                pending.append(Pending(job_id, JournalEntry.model_validate_json(text)))
            except ValueError as exc:  # written by another version: it cannot be presented
                log.warning("dropping an unreadable journal entry of job %s: %s", job_id, exc)
                with self._lock:
                    self._conn.execute("DELETE FROM outcomes WHERE id = ?", (entry_id,))
        return pending
