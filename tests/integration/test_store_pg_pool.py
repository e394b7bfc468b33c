"""PostgreSQL's pooled connections are pinged only when they sat idle
(store/db.py ``_ping_when_idle``): a connection in steady use goes straight
to its statements, and one whose server end died while it sat in the pool
is replaced before the caller sees it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from corral.store import Store, db


@pytest.fixture
def db_url(pg_url: str) -> str:
    """The shared ``store`` fixture on PostgreSQL only: the pool is its."""
    return pg_url


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    seen: list[object] = []
    ping = AsyncAdapt_asyncpg_connection.ping

    def counted(self: AsyncAdapt_asyncpg_connection) -> None:
        seen.append(self)
        ping(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted)
    return seen


async def _backend(store: Store) -> int:
    return int(
        await store.db.write(
            lambda tx: tx.conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        )
    )


async def _others(pg_url: str, what: str) -> int:
    """``what`` over every other backend of the store's database (this
    connection's not counted)."""
    dsn = sa.make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                f"SELECT {what} FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


async def _kill_everyone_but_me(pg_url: str) -> int:
    """Terminate every other backend of the store's database (a restarted
    server, a proxy's idle timeout)."""
    return await _others(pg_url, "count(pg_terminate_backend(pid))")


async def test_a_connection_in_steady_use_is_not_pinged(store: Store, pings: list[object]) -> None:
    first = await _backend(store)
    for _ in range(20):
        assert await _backend(store) == first  # the same connection, at once again
        await store.db.read(lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one())
    assert pings == []


async def test_an_idle_connection_whose_backend_died_is_replaced(
    store: Store, pg_url: str, pings: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await _backend(store)
    await store.db.read(lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one())
    assert await _kill_everyone_but_me(pg_url) >= 2  # the writer's and the reader's
    monkeypatch.setattr(db, "IDLE_PING", 0.0)  # both have sat idle since
    after = await _backend(store)
    assert after != before
    assert await store.db.read(lambda conn: conn.execute(sa.text("SELECT 2")).scalar_one()) == 2
    assert len(pings) == 2  # one failed ping each, then a fresh connection


async def test_without_the_ping_the_dead_connection_fails_its_caller(
    store: Store, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above is what saves the caller: a connection used again
    within ``IDLE_PING`` is not pinged, and its dead backend fails that one
    operation as an outage (503), after which the pool connects afresh."""
    from corral.errors import StoreUnavailable

    before = await _backend(store)
    await _kill_everyone_but_me(pg_url)
    monkeypatch.setattr(db, "IDLE_PING", 3600.0)
    with pytest.raises(StoreUnavailable):
        await _backend(store)
    assert await _backend(store) != before


async def _backends_at_once(store: Store, n: int, *, write: bool) -> set[int]:
    """The backends of ``n`` operations held open together (each waits a
    moment in PostgreSQL, so all of them need a connection at once)."""
    stmt = sa.text("SELECT pg_backend_pid() FROM pg_sleep(0.2)")

    async def one() -> int:
        if write:
            return int(await store.db.write(lambda tx: tx.conn.execute(stmt).scalar_one()))
        return int(await store.db.read(lambda conn: conn.execute(stmt).scalar_one()))

    return set(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.parametrize("write", [True, False], ids=["writes", "reads"])
async def test_a_burst_keeps_its_connections_for_the_next(store: Store, write: bool) -> None:
    """A burst as wide as the pool opens its connections once: the next burst
    uses the same ones. (Connections over a pool's size were closed as soon
    as they came back, and every burst connected afresh: a new backend each.)"""
    n = store.db.write_connections if write else store.db.read_connections
    first = await _backends_at_once(store, n, write=write)
    assert len(first) > n // 2  # they did overlap (on a slow machine not all may)
    assert await _backends_at_once(store, n, write=write) <= first


async def _connections_of(pg_url: str) -> int:
    """Backends connected to the store's database now."""
    return await _others(pg_url, "count(*)")


async def test_database_connections_bounds_what_a_burst_opens(pg_url: str) -> None:
    """``database_connections`` caps the pools: a burst wider than them
    waits for a connection instead of opening more, and every operation in
    it still succeeds."""
    assert db.pools(4) == (2, 2) and db.pools(2) == (1, 1) and db.pools(35) == (20, 15)
    store = await Store.open(pg_url, connections=4)
    try:
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await _connections_of(pg_url))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            writes, reads = await asyncio.gather(
                _backends_at_once(store, 8, write=True), _backends_at_once(store, 8, write=False)
            )
        finally:
            watcher.cancel()
        assert len(writes) <= 2 and len(reads) <= 2
        assert len(writes | reads) >= 3  # both pools were in use together
        assert 3 <= peak <= 4 + 1  # and the bus's LISTEN connection
    finally:
        await store.close()


async def test_an_operation_that_finds_no_free_connection_in_time_is_an_outage(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """503, not a 500 nor a wait without end, once ``POOL_WAIT`` passed
    with every connection busy; the busy ones finish."""
    from corral.errors import StoreUnavailable

    monkeypatch.setattr(db, "POOL_WAIT", 0.3)
    store = await Store.open(pg_url, connections=2)  # one for writes
    try:
        slow = sa.text("SELECT pg_backend_pid() FROM pg_sleep(1.5)")
        busy = asyncio.create_task(store.db.write(lambda tx: tx.conn.execute(slow).scalar_one()))
        await asyncio.sleep(0.3)
        with pytest.raises(StoreUnavailable, match="database_connections"):
            await _backend(store)
        assert await busy > 0
        assert await _backend(store) > 0  # free again
    finally:
        await store.close()


async def test_the_setting_reaches_the_server_s_store(pg_url: str, tmp_path: Path) -> None:
    from corral.config import load_settings
    from corral.server.build import open_store

    settings = load_settings(data_dir=tmp_path, database_url=pg_url, database_connections=6)
    store = await open_store(settings)
    try:
        assert (store.db.write_connections, store.db.read_connections) == db.pools(6) == (3, 3)
    finally:
        await store.close()
