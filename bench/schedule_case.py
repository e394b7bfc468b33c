"""(l) schedule firing jitter: a `[[schedules]]` table firing every second
(croniter's sixth field) on a real `corral serve`; for each slot, the time
from the slot to its job's row (`created_at`, the server's clock) and to the
job's start (`started_at`). The loop sleeps until the next slot, so this is
its wake-up lateness plus one submit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cases
from cases import Result, admin_http, ms, pct, skipped, ts

from corral.testing import start_server

CONFIG = """
[[schedules]]
name = "jitter"
cron = "* * * * * *"
command = "true"
"""


async def firing_jitter(root: Path, seconds: float) -> list[Result]:
    label = "(l) schedule slot→job created"
    (root / "k").mkdir(parents=True, exist_ok=True)
    config = root / "k" / "corral.toml"
    config.write_text(CONFIG)
    args = ("--config", str(config), "--no-queue")
    srv = await asyncio.to_thread(
        start_server, root / "k" / "data", args=args, env=cases.SERVER_ENV
    )
    try:
        await asyncio.sleep(seconds)
        async with admin_http(srv) as http:
            jobs = (await http.get("/jobs", params={"limit": 500})).json()["jobs"]
            shown = (await http.get("/schedules/jitter")).json()
    finally:
        await asyncio.to_thread(srv.stop)
    created: list[float] = []
    started: list[float] = []
    for job in jobs:
        if job["source"] != "schedule" or not job["idempotency_key"]:
            continue
        slot = ts(job["idempotency_key"].removeprefix("schedule:jitter:"))
        created.append(ts(job["created_at"]) - slot)
        if job["started_at"]:
            started.append(ts(job["started_at"]) - slot)
    if not created:
        return [skipped(f"{label} p50", "ms", "no slot fired")]
    note = f"{len(created)} one-second slots; {shown['skipped']} skipped"
    detail = {
        "created_max_ms": ms(max(created)),
        "started_p50_ms": ms(pct(started, 50)) if started else None,
        "started_p99_ms": ms(pct(started, 99)) if started else None,
        "skipped": shown["skipped"],
    }
    return [
        Result(
            f"{label} p50",
            ms(pct(created, 50)),
            "ms",
            samples=len(created),
            note=note,
            detail=detail,
        ),
        Result(f"{label} p99", ms(pct(created, 99)), "ms", samples=len(created)),
    ]
