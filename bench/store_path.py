"""The job path at the store, without HTTP, the runner or processes: K
coroutines each create a job, lease it, start it and complete it, on a fresh
SQLite file (or a fresh PostgreSQL database, ``--postgres``), and the
process's CPU per job and jobs/s are printed. It isolates what the writer
thread, or PostgreSQL's round trips, cost per job (issue #18, item 2).

    python bench/store_path.py [--jobs 600] [--clients 8] [--no-group]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]

``--no-group`` caps the writer's groups at one body (one transaction per body,
as before group commit). Run it with ``PYTHONPATH=OTHER_CHECKOUT/src`` to
measure another version (``--no-group`` needs a version with group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from corral.auth import WorkerClaims
from corral.models import JobCreate, Outcome
from corral.store import Store
from corral.testing import create_pg_database, drop_pg_database


async def main(jobs: int, clients: int, group: bool, postgres: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        if postgres is not None:
            url = await create_pg_database(postgres)
        try:
            await path(url, jobs, clients, group)
        finally:
            if postgres is not None:
                await drop_pg_database(url)


async def path(url: str, jobs: int, clients: int, group: bool) -> None:
    store = await Store.open(url)
    writer = getattr(store.db, "writer", None)
    if not group and writer is not None:
        writer.limit = 1
    runner = await store.runners.register(
        name="bench", key_id="bench", hostname=None, providers=["shell"], labels=[], slots=64
    )
    done = 0

    async def client(until: int) -> None:
        nonlocal done
        while done < until:
            await store.jobs.create(JobCreate(command="true"))
            for lease in await store.jobs.lease(runner, 1, ttl=3600):
                claims = WorkerClaims(lease.job.id, lease.session.id, lease.job.epoch, runner.id)
                await store.jobs.start(claims)
                await store.jobs.complete(claims, Outcome(status="done", exit_code=0))
                done += 1

    await asyncio.gather(*(client(50) for _ in range(2)))  # warm-up
    done = 0
    groups, bodies = getattr(writer, "groups", 0), getattr(writer, "bodies", 0)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(jobs) for _ in range(clients)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    per_group = ""
    if writer is not None and hasattr(writer, "groups") and writer.groups > groups:
        per_group = f", {(writer.bodies - bodies) / (writer.groups - groups):.2f} bodies per commit"
    await store.close()
    print(
        f"{done / wall:.0f} jobs/s, {cpu * 1000 / done:.2f} ms CPU per job{per_group} "
        f"(load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-group", action="store_true")
    parser.add_argument(
        "--postgres", metavar="URL", help="a PostgreSQL server's URL: run on a fresh database there"
    )
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.clients, not args.no_group, args.postgres))
