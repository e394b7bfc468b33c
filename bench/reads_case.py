"""(n) reads with many jobs stored: ``GET /jobs`` filtered (state, provider,
label, source), ``/status`` and ``/metrics``, p50/p99, on a database holding
100,000 jobs (10,000 with ``--quick``) written straight into it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cases
import sqlalchemy as sa
from cases import Result, pct

from corral.store import Store
from corral.store.jobs import usage
from corral.store.schema import jobs, sessions
from corral.testing import ServerProcess, job_row, session_row, start_server

BATCH = 5000
# Most jobs are finished; a few are queued (a backlog) and one provider is rare.
STATES = ("done",) * 15 + ("failed", "failed", "cancelled", "queued", "done")
PROVIDERS = (
    "shell",
    "shell",
    "shell",
    "gpu",
    "gpu",
    "claude",
    "claude",
    "claude",
    "claude",
    "rare",
)
SOURCES = ("api", "api", "folder", "cli", "api", "tracker", "api", "mcp")
LABELS = (["bench"], ["bench", "nightly"], [], ["bench", "urgent"], ["ops"])


async def seed(url: str, n: int) -> None:
    """``n`` jobs, one session each, written straight into the database."""
    store = await Store.open(url)
    start = datetime.now(UTC) - timedelta(days=30)
    try:
        for first in range(0, n, BATCH):
            sess, rows = [], []
            for i in range(first, min(n, first + BATCH)):
                at = start + timedelta(seconds=i * 20)
                sid = uuid.uuid4().hex
                sess.append(session_row(sid, at))
                state = STATES[i % len(STATES)]
                rows.append(
                    job_row(
                        sid,
                        at,
                        state=state,
                        provider=PROVIDERS[i % len(PROVIDERS)],
                        command=f"make test-{i}",
                        title=None,
                        labels=LABELS[i % len(LABELS)],
                        source=SOURCES[i % len(SOURCES)],
                        started_at=None if state == "queued" else at,
                        finished_at=None if state == "queued" else at + timedelta(seconds=3),
                        cost=None,
                    )
                )

            def body(tx: Any, sess: list[Any] = sess, rows: list[Any] = rows) -> None:
                tx.conn.execute(sa.insert(sessions), sess)
                tx.conn.execute(sa.insert(jobs), rows)

            await store.db.write(body)
        if not store.db.is_sqlite:
            # The /usage rollup's rows of the load, one per job, folded as the
            # server's watchdog would at its first sweep (during the reads).
            await store.db.write(lambda tx: usage.fold(tx.conn))
            # As autovacuum would after such a load (it is off on the bench
            # machine): without statistics the planner takes 100k rows for 28.
            await store.db.write(lambda tx: tx.conn.execute(sa.text("ANALYZE")))
    finally:
        await store.close()


READS = (
    ("GET /jobs?state=done", "/jobs?state=done"),
    ("GET /jobs?state=queued", "/jobs?state=queued"),
    ("GET /jobs?state=failed&provider=rare", "/jobs?state=failed&provider=rare"),
    ("GET /jobs?state=failed,cancelled", "/jobs?state=failed&state=cancelled"),
    ("GET /jobs?provider=gpu", "/jobs?provider=gpu"),
    ("GET /jobs?label=urgent", "/jobs?label=urgent"),
    ("GET /jobs?source=tracker", "/jobs?source=tracker"),
    ("GET /jobs (page 20)", None),
    ("GET /status", "/status"),
    ("GET /metrics", "/metrics"),
    # No work behind it: the floor of client, HTTP and the server's framework.
    ("GET /health", "/health"),
)


async def burst_on(
    measure: Callable[[ServerProcess], Awaitable[Result]],
    srv: ServerProcess,
    label: str,
    stored: int,
) -> Result:
    """(b)'s burst (``measure``) on ``srv``, whose database held ``stored``
    jobs already (issue #18: throughput stays flat from none to 100,000)."""
    row = await measure(srv)
    row.metric = f"(n) burst submit→done, {stored // 1000}k jobs stored"
    if label != "SQLite":
        row.metric += f", {label}"
        row.target = None
    return row


async def reads(
    root: Path,
    label: str,
    url: str | None,
    stored: int,
    rounds: int,
    then: Callable[[ServerProcess], Awaitable[Result]] | None = None,
) -> list[Result]:
    """The reads, then ``then`` (the burst) on the same server."""
    data = root / f"n-{label}"
    data.mkdir(parents=True)
    url = url or f"sqlite:///{data / 'corral.db'}"
    started = time.monotonic()
    await seed(url, stored)
    seeded = time.monotonic() - started
    srv = await asyncio.to_thread(
        start_server,
        data,
        database_url=url,
        args=("--no-queue",),
        env={**cases.SERVER_ENV, **cases.THROUGHPUT_ENV},
    )
    out: list[Result] = []
    try:
        async with cases.admin_http(srv, connections=1) as http:
            # The 20th page: follow ``next`` once, then ask for that page each round.
            path = "/jobs?state=done&limit=50"
            for _ in range(19):
                page = cases.check(await http.get(path))
                path = f"/jobs?state=done&limit=50&before={page['next']}"
            times: dict[str, list[float]] = {name: [] for name, _ in READS}
            for _ in range(rounds):
                # Interleaved, so a load spike touches every row alike.
                for name, p in READS:
                    t0 = time.perf_counter()
                    resp = await http.get(p or path)
                    times[name].append((time.perf_counter() - t0) * 1000)
                    if resp.status_code != 200:
                        raise RuntimeError(f"{name}: HTTP {resp.status_code} {resp.text[:200]}")
        for name, _ in READS:
            values = times[name]
            target = {"GET /status": 3.0, "GET /metrics": 3.0, "GET /health": None}.get(name, 15.0)
            out.append(
                Result(
                    f"(n) {name}, {stored // 1000}k jobs, {label} p99",
                    round(pct(values, 99), 2),
                    "ms",
                    target,
                    samples=len(values),
                    note=f"p50 {pct(values, 50):.2f} ms",
                    detail={
                        "p50_ms": round(pct(values, 50), 2),
                        "p99_ms": round(pct(values, 99), 2),
                        "stored": stored,
                        "seed_seconds": round(seeded, 1),
                    },
                )
            )
        if then is not None:
            out.append(await burst_on(then, srv, label, stored))
    finally:
        await asyncio.to_thread(srv.stop)
    return out
