"""(g) ``Client.run()`` round trip on a trivial job, by webhook and by
polling: the wall time of ``run(command="true")`` (submit, learn that it ended, read
the job and its artifacts), p50/p99."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cases
from cases import Result, pct

from corral.client import Client
from corral.testing import start_server


def _runs(client: Client, n: int, polling: bool) -> list[float]:
    times = []
    for _ in range(n):
        started = time.monotonic()
        result = client.run(command="true", polling=polling, timeout=30)
        times.append(time.monotonic() - started)
        if not result.ok:
            raise RuntimeError(f"job {result.job_id} {result.state.value}: {result.error}")
    return times


async def run_round_trip(root: Path, samples: int) -> list[Result]:
    srv = await asyncio.to_thread(start_server, root / "g", env=cases.SERVER_ENV)
    rows = []
    try:
        with Client(srv.url, srv.admin_key) as client:
            for polling in (False, True):
                await asyncio.to_thread(_runs, client, 5, polling)  # warm up
                lat = sorted(await asyncio.to_thread(_runs, client, samples, polling))
                how = "polling (0.05 s, ×1.5 up to 5 s)" if polling else "webhook"
                for p in (50, 99):
                    rows.append(
                        Result(
                            f"(g) run() round trip, {how} p{p}",
                            round(pct(lat, p) * 1000, 1),
                            "ms",
                            samples=len(lat),
                            note="sequential client.run(command='true') against one server",
                        )
                    )
    finally:
        await asyncio.to_thread(srv.stop)
    return rows
