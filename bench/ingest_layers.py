"""Event ingest layer by layer, in one process: batches of 100 output events
appended (1) at the store (``store.jobs.append_events``) and (2) through the
whole app, ``POST /worker/events`` called as an ASGI app with no socket (the
routing, middleware, worker JWT, validation, redaction and the store). (c)'s
HTTP row (``python bench/run.py --only c``) adds the client and the socket;
its ``health_p50_ms`` is a round trip with neither body nor store. Prints
events/s, wall and CPU (all threads) per batch for each layer, SQLite (or a
fresh PostgreSQL database, ``--postgres``), layers alternated ``--rounds``
times (issue #18).

    python bench/ingest_layers.py [--batches 2000] [--rounds 2]
        [--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cases  # bench/, the script's folder
import httpx

from corral.auth import Role, WorkerClaims
from corral.config import load_settings
from corral.server import Server
from corral.testing import create_pg_database, drop_pg_database

SIZE = 100


async def timed(batches: int, one: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """Wall and CPU seconds per batch of ``one(i)`` for i in range(batches)."""
    for i in range(20):  # warm-up
        await one(i)
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(batches):
        await one(20 + i)
    return (time.perf_counter() - w0) / batches, (time.process_time() - c0) / batches


async def layers(url: str, data_dir: Path, batches: int, rounds: int) -> list[dict[str, Any]]:
    settings = load_settings(data_dir=data_dir, database_url=url, lease_ttl=3600)
    rows: list[dict[str, Any]] = []
    async with Server(settings) as server:
        key = (await server.store.keys.create(name="bench", role=Role.ADMIN))[1]
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://corral",
            headers={"Authorization": f"Bearer {key}"},
        ) as http:
            runner_id = await cases.register_runner(http)
            worker = await cases.lease_worker(http, runner_id)
        job = await server.store.jobs.get(worker.job_id)
        claims = WorkerClaims(worker.job_id, worker.session_id, job.epoch, runner_id)
        # Fresh event ids for every batch (a re-sent id is a duplicate, not stored).
        total = rounds * (batches + 20)
        events = cases.event_batches(total, SIZE)
        bodies = [json.dumps({"events": b}).encode() for b in cases.event_dicts(total, SIZE)]
        used = {"store": 0, "app": 0}

        async def store(i: int) -> None:
            await server.store.jobs.append_events(claims, events[used["store"] + i])

        headers = [
            (b"host", b"corral"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {worker.token}".encode()),
        ]

        async def app(i: int) -> None:
            body = bodies[used["app"] + i]
            sent: list[dict[str, Any]] = []
            given = False

            async def receive() -> dict[str, Any]:
                nonlocal given
                if given:  # the request is over: wait as a server waits for a disconnect
                    await asyncio.Event().wait()
                given = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/worker/events",
                "raw_path": b"/worker/events",
                "query_string": b"",
                "root_path": "",
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 2),
            }
            await server.app(scope, receive, send)
            if sent[0]["status"] != 200:
                raise RuntimeError(f"POST /worker/events answered {sent}")

        for r in range(rounds):
            for name, one, label in (("store", store, "store"), ("app", app, "app, no socket")):
                wall, cpu = await timed(batches, one)
                used[name] += batches + 20
                rows.append({"round": r + 1, "layer": label, "wall": wall, "cpu": cpu})
    return rows


async def main(batches: int, rounds: int, postgres: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the server's own files stay in the temporary directory
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        if postgres is not None:
            url = await create_pg_database(postgres)
        try:
            rows = await layers(url, Path(tmp), batches, rounds)
        finally:
            if postgres is not None:
                await drop_pg_database(url)
    print(f"{'round':>5}  {'layer':<16} {'events/s':>9} {'wall ms/batch':>14} {'CPU ms/batch':>13}")
    for row in rows:
        print(
            f"{row['round']:>5}  {row['layer']:<16} {SIZE / row['wall']:>9,.0f}"
            f" {row['wall'] * 1e3:>14.3f} {row['cpu'] * 1e3:>13.3f}"
        )
    print(f"batches of {SIZE}, {batches} per row; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL (a database beside it)")
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.rounds, args.postgres))
