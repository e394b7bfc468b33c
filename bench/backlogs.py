"""Queries behind a backlog, at the store: what one call costs when many rows
wait that it must not take (issue #18: no request does work in proportion to
the table). Each case writes its backlog straight into a fresh database
(then PostgreSQL's statistics, as autovacuum would take them) and times the
call ``--calls`` times:

- *lease, N/5 queued turns*: a lease for a new job in its own session,
  behind N/5 queued turns of one session whose first turn runs (the turn
  lock);
- *lease, N/10 queued after as many done*: the same behind a session's
  N/10 queued turns that follow N/10 finished ones and a running one;
- *lease, N scheduled*: the same behind N jobs whose ``run_at`` is tomorrow;
- *lease, none*: the same with nothing else queued, the baseline;
- *webhook due, N pending*: ``outbox.due`` behind N deliveries pending to one
  job's URL and 4 N delivered before them, plus one pending elsewhere.

Prints p50 and p90 in ms per case, SQLite and PostgreSQL.

    python bench/backlogs.py [--rows 5000] [--calls 50]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test | --no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import cases  # bench/, the script's folder
import sqlalchemy as sa

from corral.auth import WorkerClaims
from corral.models import JobCreate, Outcome
from corral.store import Store
from corral.store.schema import jobs, sessions, webhook_deliveries
from corral.testing import create_pg_database, drop_pg_database, job_row, session_row

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def _queue(kind: str, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sessions and jobs queued ahead of the measured ones, all older."""
    at = datetime.now(UTC) - timedelta(hours=1)
    if kind in ("turns", "history"):
        # One session: `finished` turns done, the next one running (holding
        # the session's turn lock), n more waiting.
        finished = n if kind == "history" else 0
        sid = uuid.uuid4().hex
        rows = [job_row(sid, at, turn=i + 1) for i in range(finished)]
        running = job_row(sid, at, turn=finished + 1, state="running")
        rows.append(running)
        # Flagged as a create behind a live turn flags them (store/jobs/turns.py).
        rows += [
            job_row(
                sid,
                at + timedelta(milliseconds=i),
                turn=finished + 2 + i,
                state="queued",
                behind=True,
            )
            for i in range(n)
        ]
        session = session_row(sid, at, turns=len(rows), active_job_id=running["id"])
        return [session], rows
    if kind == "scheduled":
        later = datetime.now(UTC) + timedelta(days=1)
        sids = [uuid.uuid4().hex for _ in range(n)]
        rows = [
            job_row(
                sid,
                at + timedelta(milliseconds=i),
                state="queued",
                run_at=later,
                available_at=later,
                later=True,  # as the create flags it (store/jobs/later.py)
            )
            for i, sid in enumerate(sids)
        ]
        return [session_row(sid, at) for sid in sids], rows
    return [], []


async def _write(store: Store, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    def body(tx: Any) -> None:
        if rows:
            tx.conn.execute(sa.insert(table), rows)
        if tx.conn.dialect.name == "postgresql":
            tx.conn.execute(sa.text(f"ANALYZE {table.name}"))

    await store.db.write(body)


async def _timed(calls: int, one: Callable[[], Awaitable[float]]) -> list[float]:
    """``one()`` ``calls`` times after a warm-up; it returns the seconds it measured."""
    await one()
    return [await one() for _ in range(calls)]


async def lease_behind(url: str, kind: str, n: int, calls: int) -> list[float]:
    store = await Store.open(url)
    try:
        sess, rows = _queue(kind, n)
        await _write(store, sessions, sess)
        await _write(store, jobs, rows)
        runner = await store.runners.register(
            name="bench", key_id="bench", hostname=None, providers=["shell"], labels=[], slots=16
        )

        async def one() -> float:
            await store.jobs.create(JobCreate(command="true"))
            t0 = time.perf_counter()
            leases = await store.jobs.lease(runner, 16, ttl=3600)
            took = time.perf_counter() - t0
            if [lease.job.command for lease in leases] != ["true"]:
                raise RuntimeError(f"the lease took {len(leases)} jobs, not the new one")
            lease = leases[0]  # done, so the next lease has the same room
            claims = WorkerClaims(lease.job.id, lease.session.id, lease.job.epoch, runner.id)
            await store.jobs.complete(
                claims, Outcome(status="done"), started_at=lease.job.created_at
            )
            return took

        return await _timed(calls, one)
    finally:
        await store.close()


async def due_behind(url: str, n: int, calls: int) -> list[float]:
    store = await Store.open(url)
    try:
        busy, _ = await store.jobs.create(JobCreate(command="true"))
        other, _ = await store.jobs.create(JobCreate(command="true"))
        at = datetime.now(UTC) - timedelta(minutes=1)

        def delivery(job_id: str, state: str) -> dict[str, Any]:
            return {
                "id": uuid.uuid4().hex,
                "job_id": job_id,
                "url": "http://receiver/hook",
                "event": "output",
                "body": {},
                "state": state,
                "attempts": 0,
                "next_attempt_at": at,
                "created_at": at,
                "updated_at": at,
            }

        rows = [delivery(busy.id, "delivered") for _ in range(4 * n)]
        rows += [delivery(busy.id, "pending") for _ in range(n)]
        rows.append(delivery(other.id, "pending"))
        await _write(store, webhook_deliveries, rows)

        async def one() -> float:
            t0 = time.perf_counter()
            due = await store.outbox.due(datetime.now(UTC), limit=50)
            took = time.perf_counter() - t0
            if len(due) != 2:
                raise RuntimeError(f"{len(due)} deliveries due, not one per destination")
            return took

        return await _timed(calls, one)
    finally:
        await store.close()


Fresh = Callable[[], contextlib.AbstractAsyncContextManager[str]]


async def run(fresh: Fresh, rows: int, calls: int) -> dict[str, list[float]]:
    """Each case on a database of its own."""
    out: dict[str, list[float]] = {}
    # Before migration 0027 a lease behind a session's queued turns grew with
    # their square (docs/benchmarks.md): the turn cases keep the smaller
    # backlogs they were measured at then, for comparison.
    sizes = {"none": 0, "turns": rows // 5, "history": rows // 10, "scheduled": rows}
    for name, kind in (
        ("lease, none queued", "none"),
        (f"lease, {sizes['turns']:,} queued turns of one session", "turns"),
        (f"lease, {sizes['history']:,} queued after as many done", "history"),
        (f"lease, {rows:,} scheduled for tomorrow", "scheduled"),
    ):
        async with fresh() as url:
            out[name] = await lease_behind(url, kind, sizes[kind], calls)
    async with fresh() as url:
        out[f"webhook due, {rows:,} pending to one URL"] = await due_behind(url, rows, calls)
    return out


async def main(rows: int, calls: int, postgres: str | None) -> None:
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = iter(range(100))

        @contextlib.asynccontextmanager
        async def sqlite() -> AsyncIterator[str]:
            yield f"sqlite+aiosqlite:///{tmp}/bench{next(files)}.db"

        results["SQLite"] = await run(sqlite, rows, calls)

    @contextlib.asynccontextmanager
    async def pg() -> AsyncIterator[str]:
        assert postgres is not None
        url = await create_pg_database(postgres)
        try:
            yield url
        finally:
            await drop_pg_database(url)

    if postgres is not None:
        results["PostgreSQL"] = await run(pg, rows, calls)
    names = list(results["SQLite"])
    head = "".join(f"{db + ' p50':>18}{'p90':>9}" for db in results)
    print(f"{'case':<44}{head}")
    for name in names:
        cells = "".join(
            f"{cases.ms(cases.pct(r[name], 50)):>15.2f} ms{cases.ms(cases.pct(r[name], 90)):>9.2f}"
            for r in results.values()
        )
        print(f"{name:<44}{cells}")
    print(f"{calls} calls a case, ms; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument(
        "--postgres", default=PG_URL, help="a PostgreSQL URL (a database beside it)"
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.calls, None if args.no_postgres else args.postgres))
