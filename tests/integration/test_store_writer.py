"""Group commit in the SQLite writer (corral/store/writer.py): bodies queued
while the writer is busy share one transaction, each in a savepoint. Each body
stays all-or-nothing, a failing body fails only its caller, nobody hears of a
write (its result, its bus messages) before the shared COMMIT, and a failing
COMMIT fails every body of its group. PostgreSQL runs one transaction per body;
the same promises are checked there too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from corral.errors import StoreUnavailable
from corral.store.db import Database, Tx, wal
from corral.store.writer import WAL_BACKSTOP

ROWS = sa.table("t", sa.column("k", sa.String))


class Boom(Exception):
    pass


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await database.write(lambda tx: tx.conn.execute(sa.text("CREATE TABLE t (k TEXT PRIMARY KEY)")))
    try:
        yield database
    finally:
        await database.dispose()


def insert(key: str, *, then: Callable[[], None] | None = None) -> Callable[[Tx], str]:
    def body(tx: Tx) -> str:
        tx.conn.execute(sa.insert(ROWS).values(k=key))
        tx.notify("t", key)
        if then is not None:
            then()
        return key

    return body


def fail() -> None:
    raise Boom


async def keys(db: Database) -> set[str]:
    return await db.read(lambda conn: {r.k for r in conn.execute(sa.select(ROWS))})


@asynccontextmanager
async def held(db: Database, *, fails: bool = False) -> AsyncIterator[asyncio.Future[str]]:
    """Keep the SQLite writer busy until the block ends, in the first body of
    a group (it inserts ``first``; with ``fails`` it then raises), so that
    what is written meanwhile queues up and joins that group. Yields that
    body's future. On PostgreSQL, whose bodies run on the event loop, it
    holds nothing."""
    release = threading.Event()
    if db.is_sqlite:
        db.writer.window = 10.0  # the group takes everything queued, however slow the host
    blocker = asyncio.ensure_future(
        db.write(insert("first", then=lambda: (release.wait(30), fails and fail())))
        if db.is_sqlite
        else db.write(insert("first", then=lambda: fails and fail()))
    )
    await asyncio.sleep(0.05)
    try:
        yield blocker
    finally:
        release.set()


@pytest.mark.parametrize("failing", [0, 1, 2], ids=["a", "b", "c"])
async def test_a_failing_body_fails_alone(db: Database, failing: int) -> None:
    """After the group's first body, ``a``, ``b`` and ``c`` join it, each in a
    savepoint: the one that raises is rolled back alone."""
    published: list[str] = []
    db.publish = lambda topic, message: published.append(message)
    groups = db.writer.groups if db.is_sqlite else 0
    async with held(db) as first:
        bodies = [insert(k) for k in "abc"]
        bodies[failing] = insert("abc"[failing], then=fail)
        tasks = [asyncio.ensure_future(db.write(body)) for body in bodies]
        await asyncio.sleep(0)
    assert await first == "first"
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    expected = [k for i, k in enumerate("abc") if i != failing]
    assert isinstance(answers[failing], Boom)
    assert [a for a in answers if not isinstance(a, Boom)] == expected
    assert await keys(db) == {"first", *expected}
    assert sorted(published) == sorted(["first", *expected])
    if db.is_sqlite:
        assert db.writer.groups - groups == 1  # one transaction for all four


async def test_a_failing_first_body_fails_alone(db: Database) -> None:
    """The first body of a group is the transaction itself: when it raises, it
    is rolled back and what queued behind it commits in the next group."""
    published: list[str] = []
    db.publish = lambda topic, message: published.append(message)
    groups = db.writer.groups if db.is_sqlite else 0
    async with held(db, fails=True) as first:
        tasks = [asyncio.ensure_future(db.write(insert(k))) for k in "abc"]
        await asyncio.sleep(0)
    with pytest.raises(Boom):
        await first
    assert await asyncio.gather(*tasks) == ["a", "b", "c"]
    assert await keys(db) == {"a", "b", "c"}
    assert sorted(published) == ["a", "b", "c"]
    if db.is_sqlite:
        assert db.writer.groups - groups == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_nobody_hears_of_a_write_before_the_commit(db: Database) -> None:
    """Two bodies of a group have run, the third holds the transaction open:
    neither caller is answered nor its message published until the COMMIT,
    and a message, once published, names a row that another connection can
    read. (SQLite only: on PostgreSQL each body is its own transaction and
    its NOTIFY goes out with its COMMIT.)"""
    seen: list[tuple[str, bool]] = []

    def visible(key: str) -> bool:
        assert db.url.database is not None
        with contextlib.closing(sqlite3.connect(db.url.database)) as other:
            return other.execute("SELECT 1 FROM t WHERE k = ?", (key,)).fetchone() is not None

    db.publish = lambda topic, message: seen.append((message, visible(message)))
    inside, go_on = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        go_on.wait(30)

    async with held(db) as first:
        a = asyncio.ensure_future(db.write(insert("a")))
        b = asyncio.ensure_future(db.write(insert("b", then=hold)))
        await asyncio.sleep(0)
    await asyncio.to_thread(inside.wait, 30)
    await asyncio.sleep(0.2)
    assert not first.done() and not a.done()
    assert seen == []
    assert await keys(db) == set()  # not even the group's first body
    go_on.set()
    assert await asyncio.gather(first, a, b) == ["first", "a", "b"]
    assert seen == [("first", True), ("a", True), ("b", True)]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_failing_commit_fails_the_whole_group(db: Database) -> None:
    """A deferred foreign key is checked at COMMIT: the group's COMMIT fails,
    so every body in it fails and nothing of it is published or kept."""
    await db.write(
        lambda tx: tx.conn.execute(
            sa.text("CREATE TABLE child (k TEXT REFERENCES t (k) DEFERRABLE INITIALLY DEFERRED)")
        )
    )
    published: list[str] = []
    db.publish = lambda topic, message: published.append(message)

    def orphan(tx: Tx) -> None:
        tx.conn.execute(sa.text("INSERT INTO child VALUES ('nobody')"))

    async with held(db) as first:
        tasks = [asyncio.ensure_future(db.write(b)) for b in (insert("a"), orphan, insert("c"))]
        await asyncio.sleep(0)
    answers = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert all(isinstance(a, sa.exc.IntegrityError) for a in answers), answers
    assert published == []
    assert await keys(db) == set()
    assert await db.write(insert("d")) == "d"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_writer_keeps_its_connection_until_a_group_fails(db: Database) -> None:
    """Groups run on one held connection (no pool checkout per group); a
    group that failed gives it back (the pool rolls it back) and the next
    checks one out again."""

    def connection(tx: Tx) -> object:
        return tx.conn

    first, again = await db.write(connection), await db.write(connection)
    assert first is again
    await db.write(
        lambda tx: tx.conn.execute(
            sa.text("CREATE TABLE c (k TEXT REFERENCES t (k) DEFERRABLE INITIALLY DEFERRED)")
        )
    )
    with pytest.raises(sa.exc.IntegrityError):
        await db.write(lambda tx: tx.conn.execute(sa.text("INSERT INTO c VALUES ('nobody')")))
    assert await db.write(connection) is not first
    assert await db.write(insert("after")) == "after"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_write_takes_the_write_lock_before_its_body_runs(db: Database, db_url: str) -> None:
    """``BEGIN IMMEDIATE`` (issued on the driver's cursor): while another
    connection holds SQLite's write lock, a write waits before its body runs
    (a deferred BEGIN would run it and wait at its first write), then goes
    through once the lock is released."""
    other = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        began = threading.Event()

        def body(tx: Tx) -> str:
            began.set()
            return insert("after the lock")(tx)

        write = asyncio.ensure_future(db.write(body))
        await asyncio.sleep(0.3)
        assert not began.is_set() and not write.done()
        other.execute("ROLLBACK")
        assert await asyncio.wait_for(write, 10) == "after the lock"
        assert began.is_set()
    finally:
        other.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_bodies_queued_meanwhile_share_one_transaction(db: Database) -> None:
    groups, bodies = db.writer.groups, db.writer.bodies
    async with held(db) as first:
        tasks = [asyncio.ensure_future(db.write(insert(str(i)))) for i in range(40)]
        await asyncio.sleep(0)
    await asyncio.gather(first, *tasks)
    # The first body and 31 more, then the 9 left (LIMIT: 32 per group).
    assert (db.writer.groups - groups, db.writer.bodies - bodies) == (2, 41)
    assert len(await keys(db)) == 41


WRITER = """
import asyncio, os, sys, threading
import sqlalchemy as sa
from corral.store.db import Database

async def main(path, marker):
    db = Database("sqlite:///" + path)
    await db.write(lambda tx: tx.conn.execute(sa.text("CREATE TABLE t (k TEXT PRIMARY KEY)")))
    await db.write(lambda tx: tx.conn.execute(sa.text("CREATE TABLE u (k TEXT PRIMARY KEY)")))

    def pair(key, hang=False):
        def body(tx):
            tx.conn.execute(sa.text("INSERT INTO t VALUES (:k)"), {"k": key})
            if hang:
                open(marker, "w").close()
                threading.Event().wait()
            tx.conn.execute(sa.text("INSERT INTO u VALUES (:k)"), {"k": key})
        return body

    async def client(n):
        for i in range(10**9):
            key = f"{n}-{i}"
            await db.write(pair(key))
            print("ack", key, flush=True)
            if n == 0 and i == int(sys.argv[3]):
                # This client's next body hangs mid-group while the others keep writing.
                await db.write(pair("hang", hang=True))

    await asyncio.gather(*(client(n) for n in range(8)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_kill_9_mid_group_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """Eight clients write pairs of rows as fast as they can; one body hangs
    inside a group (others queued behind it and in it), and the process is
    killed with SIGKILL. Every pair that a caller was told of is there, whole;
    no pair is half there."""
    path, marker = tmp_path / "kill.db", tmp_path / "hanging"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(marker), "200"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    acked: list[str] = []
    reader = threading.Thread(
        target=lambda: acked.extend(line.split()[1] for line in proc.stdout or [])
    )
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the writer died by itself"
            assert time.monotonic() < deadline, "the hanging body never ran"
            time.sleep(0.01)
        time.sleep(0.2)  # the others pile up behind the hanging body
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        if proc.stdout is not None:
            proc.stdout.close()
    assert len(acked) > 200
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        t = {k for (k,) in conn.execute("SELECT k FROM t")}
        u = {k for (k,) in conn.execute("SELECT k FROM u")}
    assert t == u, "a body was kept in part"
    assert "hang" not in t
    missing = set(acked) - t
    assert not missing, f"acknowledged, then lost: {sorted(missing)[:5]}"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_reader_threads_keep_connections_but_no_read_transaction(
    db: Database, db_url: str
) -> None:
    """Each reader thread keeps its connection from read to read; none holds
    a read transaction between reads (one would pin the WAL: no checkpoint
    could finish and the file would grow), and a failed read gives its
    connection up."""
    await db.write(insert("a"))
    for _ in range(20):
        assert await keys(db) == {"a"}
    assert 1 <= len(db._readers) <= 4
    assert not any(c.connection.dbapi_connection.in_transaction for c in db._readers)  # type: ignore[union-attr]
    raw = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    try:
        busy, _, _ = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        raw.close()
    assert busy == 0
    failed: list[sa.Connection] = []

    def broken(conn: sa.Connection) -> None:
        failed.append(conn)
        conn.execute(sa.text("SELECT * FROM nowhere"))

    with pytest.raises(StoreUnavailable):  # an OperationalError: 503
        await db.read(broken)
    assert failed[0].closed and failed[0] not in db._readers
    assert await keys(db) == {"a"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_log_is_checkpointed_by_a_thread_of_its_own(db: Database) -> None:
    """The write-ahead log is copied into the database by the checkpoint
    thread shortly after commits, not by a commit: the writer's connection
    checkpoints itself only past WAL_BACKSTOP pages, and these writes stay far
    below that. The thread ends with the database."""
    checkpoints = db.writer.checkpoints
    assert checkpoints is not None
    assert await db.write(
        lambda tx: tx.conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    ) == (WAL_BACKSTOP)
    runs = checkpoints.runs
    for i in range(50):
        await db.write(insert(f"k{i}-" + "x" * 2000))
    deadline = time.monotonic() + 10
    while (checkpoints.runs == runs or checkpoints.last is None or not checkpoints.last[1]) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.05)
    assert checkpoints.last is not None
    busy, frames, copied = checkpoints.last
    assert busy == 0 and frames > 0 and copied == frames
    thread = checkpoints._thread
    assert thread is not None and thread.is_alive()
    await db.dispose()
    assert not thread.is_alive()


def test_a_close_racing_the_checkpointers_wait_still_ends_it(tmp_path: Path) -> None:
    """``close()`` landing between the checkpointer's wait for commits to
    gather and its clearing of the wake-up (a CI run hung there: the thread
    waited for a wake-up that close() had already given, and close() joined
    it forever). The race is forced: the thread's timed wait lets close() set
    its flags before it returns."""
    from corral.store.writer import Checkpointer

    path = tmp_path / "race.db"
    sqlite3.connect(path).close()
    cp = Checkpointer(str(path), every=0.01, name="test-checkpoint")
    closing = threading.Thread(target=cp.close, daemon=True)

    class Racing(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            got = super().wait(timeout)
            if timeout is not None and not got and not closing.is_alive():
                closing.start()  # close(): the stop flag, the wake-up, then join
                deadline = time.monotonic() + 10
                while not (self.is_set() and cp._wake.is_set()):
                    assert time.monotonic() < deadline, "close() set nothing"
                    time.sleep(0.001)
            return got

    cp._stop = Racing()
    cp.poke()
    deadline = time.monotonic() + 10
    while closing.ident is None:  # started by the checkpointer's thread
        assert time.monotonic() < deadline, "the checkpointer never waited"
        time.sleep(0.001)
    closing.join(timeout=10)
    assert not closing.is_alive(), "close() is still joining the checkpointer"


def test_connections_opening_a_new_file_together_all_put_it_in_wal(tmp_path: Path) -> None:
    """Connections switching one new SQLite file to WAL at the same moment (a
    server and a CLI command on a fresh data folder, a writer and its
    readers: ``db.wal`` in every connection's set-up) can each hold a read
    lock the other's switch needs: SQLite answers one "database is locked"
    at once, without waiting (it would be a deadlock). Each tries again
    instead; before, about one round in five of this test failed one."""
    for i in range(100):
        conns = [
            sqlite3.connect(tmp_path / f"{i}.db", timeout=5, check_same_thread=False)
            for _ in range(4)
        ]
        errors = _together(conns, lambda conn: wal(conn.cursor(), wait=5.0))
        modes = [c.execute("PRAGMA journal_mode").fetchone()[0] for c in conns]
        for c in conns:
            c.close()
        assert errors == [], f"round {i}: {errors}"
        assert modes == ["wal"] * len(conns)


def _together(
    conns: list[sqlite3.Connection], call: Callable[[sqlite3.Connection], object]
) -> list[BaseException]:
    """``call(conn)`` for each connection, each in a thread, all at one moment;
    what they raised."""
    barrier = threading.Barrier(len(conns))
    errors: list[BaseException] = []

    def one(conn: sqlite3.Connection) -> None:
        barrier.wait()
        try:
            call(conn)
        except BaseException as exc:  # the caller reports it
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
