"""(j) what the sandbox costs a job's start: the same sequential shell jobs
on a server with `runner.sandbox = none` and on one with `bwrap`, each into a
fresh session whose stream is open (as in (a)). Two spans from the POST:
*started* (the runner spawned the process: `started_at`, as in (a)) and
*running* (the job's own first instruction: the command is `date +%s.%N`,
its output the wall clock inside the job, so bwrap's namespace and mount
set-up after the spawn is counted)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import cases
from cases import Result, admin_http, ms, one_submit, pct, skipped, ts

from corral.testing import ServerProcess, start_server

MODES = ("none", "bwrap")


async def sandbox_cost(root: Path, samples: int, warmup: int, seconds: float) -> list[Result]:
    rows: list[Result] = []
    for mode in MODES:
        label = f"(j) submit→job running, sandbox {mode}"
        if mode == "bwrap" and shutil.which("bwrap") is None:
            rows.append(skipped(f"{label} p50", "ms", "bwrap is not installed"))
            continue
        env = {**cases.SERVER_ENV, "CORRAL_RUNNER__SANDBOX": mode}
        srv = await asyncio.to_thread(start_server, root / f"j-{mode}", env=env)
        try:
            rows += await _measure(srv, label, samples, warmup, seconds / len(MODES))
        finally:
            await asyncio.to_thread(srv.stop)
    return rows


async def _measure(
    srv: ServerProcess, label: str, samples: int, warmup: int, seconds: float
) -> list[Result]:
    started: list[float] = []
    running: list[float] = []
    failed = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with admin_http(srv) as http:
        for i in range(warmup + samples):
            if loop.time() > deadline:
                break
            job = await one_submit(http, "date +%s.%N")
            if i < warmup:
                continue
            if job["state"] != "done" or not job["started_at"]:
                failed += 1
                continue
            t0 = job["_submitted"]
            started.append(ts(job["started_at"]) - t0)
            running.append(float(job["result"].strip()) - t0)
    if not running:
        return [skipped(f"{label} p50", "ms", "no job completed")]
    note = f"{len(running)} sequential `date +%s.%N` jobs"
    if failed:
        note += f"; {failed} did not finish done"
    detail = {
        "started_p50_ms": ms(pct(started, 50)),
        "started_p99_ms": ms(pct(started, 99)),
        "running_max_ms": ms(max(running)),
    }
    return [
        Result(
            f"{label} p50",
            ms(pct(running, 50)),
            "ms",
            samples=len(running),
            note=note,
            detail=detail,
        ),
        Result(f"{label} p99", ms(pct(running, 99)), "ms", samples=len(running)),
    ]
