"""A priced completion with budgets, at the store: what the budgets' sums
add to the write of a job's end when the period already holds many jobs.

    python bench/budget_path.py [--jobs 50000] [--postgres]

Seeds finished jobs over the last 24 hours (on any day but the 1st the
month's window holds them all), then ends 60 priced jobs covered by two
monthly budgets (global and label) and prints the completion's p50/p90.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import cost_case

from corral.budgets import Budget
from corral.models import JobCreate, Outcome
from corral.store import Caps, Store
from corral.testing import create_pg_database, drop_pg_database, worker_claims


async def measure(url: str, n: int) -> list[float]:
    await cost_case.seed(url, n, days=1)
    budgets = (
        Budget("month", "global", 1e9, "month"),
        Budget("team", "label:team-a", 1e9, "month"),
    )
    store = await Store.open(url, caps=Caps(budgets=budgets))
    try:
        runner = await store.runners.register(
            name="r", key_id="k", hostname=None, providers=["cpu"], labels=[], slots=10
        )
        times = []
        for _ in range(60):
            await store.jobs.create(JobCreate(prompt="x", provider="cpu", labels=["team-a"]))
            (lease,) = await store.jobs.lease(runner, 1, 30)
            claims, priced = worker_claims(lease, runner), Outcome(status="done", cost=0.01)
            began = time.perf_counter()
            await store.jobs.complete(claims, priced)
            times.append(time.perf_counter() - began)
        return sorted(times)
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    if args.postgres:
        url = await create_pg_database()
    else:
        url = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'budgets.db'}"
    try:
        times = await measure(url, args.jobs)
    finally:
        if args.postgres:
            await drop_pg_database(url)
    print(
        f"{'PostgreSQL' if args.postgres else 'SQLite'}, {args.jobs:,} jobs this month: "
        f"a priced completion with 2 monthly budgets p50 {statistics.median(times) * 1000:.2f} ms, "
        f"p90 {times[int(len(times) * 0.9)] * 1000:.2f} ms (load average {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
