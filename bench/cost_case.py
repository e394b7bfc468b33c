"""(p) cost: what pricing a job costs, and ``GET /usage`` over 100,000 jobs.

*Price lookup*: ``corral.pricing.price`` as the completion calls it (usage of
each executor shape, with the database warm), per call: an estimate from
genai-prices, configured prices, and a model the database does not know.
The first estimate in a process imports genai-prices and reads its
database: timed once in a fresh interpreter.

*Usage*: ``n`` finished jobs over 30 days (4 providers, 3 models, 2 labels,
costs and tokens set) written straight into a fresh database (SQLite, and
PostgreSQL when one answers; the rollup's triggers count them as they go
in), then ``corral serve`` on it and
``GET /usage?from=..&to=..&group_by=provider,day`` (and ``label``) timed
over ``samples`` requests each; ``from`` and ``to`` are not on the hour, so
both edges are read from the jobs."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cases
import sqlalchemy as sa
from cases import Result

from corral.pricing import PriceRef, Prices, price, warm
from corral.store import Store
from corral.store.schema import jobs, sessions
from corral.testing import create_pg_database, drop_pg_database, pg_available, start_server

BATCH = 5000
PROVIDERS = ("claude", "codex", "gpu", "haiku")
MODELS = ("claude-sonnet-4-5", "gpt-5", "qwen2.5:7b")


def lookups(n: int) -> list[Result]:
    warm()
    usage = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 5000}
    chat = {"prompt_tokens": 900, "completion_tokens": 120}
    runs = {
        "estimated (genai-prices)": (usage, "claude-sonnet-4-5", PriceRef(provider_id="anthropic")),
        "configured prices": (chat, "qwen", PriceRef(prices=Prices(input=0.2, output=0.6))),
        "unknown model": (chat, "llama-local", PriceRef(api_url="http://127.0.0.1:8000/v1")),
    }
    out = []
    for name, (u, model, ref) in runs.items():
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            price(None, u, model, ref)
            times.append((time.perf_counter() - t0) * 1e6)
        times.sort()
        out.append(
            Result(
                f"(p) price lookup, {name}, p50",
                round(cases.pct(times, 50), 1),
                "µs",
                samples=n,
                detail={"p99_us": round(cases.pct(times, 99), 1)},
            )
        )
    code = (
        "import time; t=time.perf_counter(); from corral.pricing import warm; warm(); "
        "print((time.perf_counter()-t)*1000)"
    )
    first = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    out.append(
        Result("(p) first estimate in a process (import + load)", round(first, 1), "ms", samples=1)
    )
    return out


async def seed(url: str, n: int, days: int = 30) -> None:
    """``n`` finished jobs spread over the last ``days`` days."""
    store = await Store.open(url)
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=days)
    try:
        for first in range(0, n, BATCH):
            sess, rows = [], []
            for i in range(first, min(n, first + BATCH)):
                at = start + timedelta(seconds=i * (days * 86400 // n))
                sid = uuid.uuid4().hex
                sess.append(
                    {
                        "id": sid,
                        "created_at": at,
                        "updated_at": at,
                        "epoch": 1,
                        "last_seq": 0,
                        "turns": 1,
                    }
                )
                tin, tout = rng.randint(100, 50_000), rng.randint(10, 5_000)
                priced = i % 7 != 0
                rows.append(
                    {
                        "id": uuid.uuid4().hex,
                        "session_id": sid,
                        "turn": 1,
                        "state": "done",
                        "provider": PROVIDERS[i % 4],
                        "model": MODELS[i % 3],
                        "command": "x",
                        "priority": 2,
                        "attempt": 1,
                        "max_attempts": 1,
                        "labels": ["team-a"] if i % 2 else ["team-b", "nightly"],
                        "source": "api",
                        "epoch": 1,
                        "created_at": at,
                        "available_at": at,
                        "started_at": at,
                        "finished_at": at + timedelta(seconds=rng.randint(5, 600)),
                        "updated_at": at,
                        "cost": (tin * 3 + tout * 15) / 1e6 if priced else None,
                        "cost_source": "estimated" if priced else "unknown",
                        "input_tokens": tin,
                        "output_tokens": tout,
                        "usage": {"input_tokens": tin, "output_tokens": tout},
                    }
                )

            def body(tx: Any, sess: list[Any] = sess, rows: list[Any] = rows) -> None:
                tx.conn.execute(sa.insert(sessions), sess)
                tx.conn.execute(sa.insert(jobs), rows)

            await store.db.write(body)
        # The rows went into the rollup as they were written (its triggers),
        # one per change: folded here, as the server's watchdog would within
        # a second, so every timed request reads the folded rollup.
        await store.jobs.compact_counts()
        if not store.db.is_sqlite:
            await store.db.write(lambda tx: tx.conn.execute(sa.text("ANALYZE jobs")))
            # The fold left the seed's per-job rows dead: vacuumed, as
            # autovacuum would soon (reads run outside a transaction).
            await store.db.read(
                lambda c: c.execute(sa.text("VACUUM ANALYZE usage_hours, usage_hour_labels"))
            )
    finally:
        await store.close()


async def usage(root: Path, n: int, samples: int, pg_base: str) -> list[Result]:
    out: list[Result] = []
    dbs: list[tuple[str, str | None]] = [("SQLite", None)]
    if await pg_available(pg_base) is None:
        dbs.append(("PostgreSQL", pg_base))
    for name, base in dbs:
        data = root / f"p-{name}"
        data.mkdir(parents=True)
        url = (
            f"sqlite+aiosqlite:///{data / 'corral.db'}"
            if base is None
            else await create_pg_database(base)
        )
        try:
            t0 = time.monotonic()
            await seed(url, n)
            seeded = time.monotonic() - t0
            srv = await asyncio.to_thread(
                start_server, data, database_url=url, args=("--no-queue",), env=cases.SERVER_ENV
            )
            try:
                end = datetime.now(UTC) + timedelta(days=1)
                span = {"from": (end - timedelta(days=32)).isoformat(), "to": end.isoformat()}
                with srv.http() as http:
                    for group in ("provider,day", "label"):
                        params = {**span, "group_by": group}
                        first = http.get("/usage", params=params)
                        first.raise_for_status()
                        times = []
                        for _ in range(samples):
                            t = time.perf_counter()
                            resp = http.get("/usage", params=params)
                            times.append((time.perf_counter() - t) * 1000)
                            resp.raise_for_status()
                        times.sort()
                        body = first.json()
                        out.append(
                            Result(
                                f"(p) GET /usage group_by={group}, {n:,} jobs, {name}, p50",
                                round(cases.pct(times, 50), 1),
                                "ms",
                                samples=samples,
                                detail={
                                    "p90_ms": round(cases.pct(times, 90), 1),
                                    "rows": len(body["rows"]),
                                    "jobs_counted": body["total"]["jobs"],
                                    "seed_s": round(seeded, 1),
                                },
                            )
                        )
            finally:
                await asyncio.to_thread(srv.stop)
        finally:
            if base is not None:
                await drop_pg_database(url)
    return out


async def cost_figures(root: Path, n: int, samples: int, pg_base: str) -> list[Result]:
    return [*await asyncio.to_thread(lookups, 10_000), *await usage(root, n, samples, pg_base)]
