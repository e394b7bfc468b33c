"""(g) ``run()`` round trip on a trivial job, by webhook and by polling,
through ``Client`` and ``AsyncClient``: the wall time of ``run(command="true")``
(submit, learn that it ended, read the job and its artifacts), p50/p99."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import cases
from cases import Result, pct

from corral.client import AsyncClient, Client
from corral.client import Result as RunResult
from corral.testing import start_server


def _check(result: RunResult) -> None:
    if not result.ok:
        raise RuntimeError(f"job {result.job_id} {result.state.value}: {result.error}")


def _runs(client: Client, n: int, polling: bool) -> list[float]:
    times = []
    for _ in range(n):
        started = time.monotonic()
        result = client.run(command="true", polling=polling, timeout=30)
        times.append(time.monotonic() - started)
        _check(result)
    return times


async def _aruns(client: AsyncClient, n: int, polling: bool) -> list[float]:
    times = []
    for _ in range(n):
        started = time.monotonic()
        result = await client.run(command="true", polling=polling, timeout=30)
        times.append(time.monotonic() - started)
        _check(result)
    return times


def _rows(face: str, polling: bool, lat: list[float]) -> list[Result]:
    how = "polling (0.05 s, ×1.5 up to 5 s)" if polling else "webhook"
    return [
        Result(
            f"(g) {face}.run() round trip, {how} p{p}",
            round(pct(lat, p) * 1000, 1),
            "ms",
            samples=len(lat),
            note=f"sequential {face}.run(command='true') against one server",
        )
        for p in (50, 99)
    ]


async def run_round_trip(root: Path, samples: int) -> list[Result]:
    srv = await asyncio.to_thread(start_server, root / "g", env=cases.SERVER_ENV)
    rows = []
    try:
        with Client(srv.url, srv.admin_key) as client:
            for polling in (False, True):
                await asyncio.to_thread(_runs, client, 5, polling)  # warm up
                lat = sorted(await asyncio.to_thread(_runs, client, samples, polling))
                rows += _rows("Client", polling, lat)
        async with AsyncClient(srv.url, srv.admin_key) as aclient:
            for polling in (False, True):
                await _aruns(aclient, 5, polling)
                rows += _rows(
                    "AsyncClient", polling, sorted(await _aruns(aclient, samples, polling))
                )
    finally:
        await asyncio.to_thread(srv.stop)
    return rows
