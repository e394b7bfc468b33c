"""(e) the queue folder: pick-up latency (file renamed into queue/ -> job
queued) and the time to drain a burst of trivial shell jobs."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import cases
from cases import Result, pct, ts

from corral.testing import start_server


def _drop(queue: Path, name: str, text: str) -> float:
    tmp = queue / f".{name}.part"
    tmp.write_text(text)
    at = time.time()
    os.rename(tmp, queue / name)
    return at


async def queue_folder(root: Path, pickups: int, burst: int, slots: int) -> list[Result]:
    queue = root / "queue"
    srv = await asyncio.to_thread(
        start_server,
        root / "e",
        args=("--queue", str(queue)),
        env={**cases.SERVER_ENV, "CORRAL_RUNNER__SLOTS": str(slots)},
    )
    try:
        with srv.http() as http:
            dropped: dict[str, float] = {}
            for i in range(pickups):
                name = f"pick-{i:04d}.md"
                dropped[name] = _drop(queue, name, "---\ncommand: 'true'\n---\n")
                await asyncio.sleep(0.05)
            jobs: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                jobs = http.get("/jobs", params={"limit": 500}).json()["jobs"]
                if len(jobs) >= pickups:
                    break
                await asyncio.sleep(0.1)
            lat = sorted(ts(j["created_at"]) - dropped[Path(j["source_ref"]).name] for j in jobs)
            start = time.monotonic()
            for i in range(burst):
                _drop(queue, f"burst-{i:04d}.md", f"---\npriority: {i % 4}\ncommand: 'true'\n---\n")
            done = queue / "done"
            while len(list(done.glob("burst-*.md"))) < burst:
                if time.monotonic() - start > 300:
                    raise TimeoutError(f"{burst} files did not drain in 300 s")
                await asyncio.sleep(0.1)
            drain = time.monotonic() - start
            failed = len(list((queue / "failed").glob("burst-*.md")))
    finally:
        await asyncio.to_thread(srv.stop)
    note = f"{pickups} files renamed in one at a time, 50 ms apart"
    return [
        Result("(e) queue pick-up p50", pct(lat, 50) * 1000, "ms", samples=len(lat), note=note),
        Result(
            "(e) queue pick-up p99", pct(lat, 99) * 1000, "ms", 1000.0, samples=len(lat), note=note
        ),
        Result(
            "(e) queue drain",
            drain,
            "s",
            samples=burst,
            note=f"{burst} files of `true` at once, {slots} slots; {failed} failed",
            detail={"jobs_per_second": round(burst / drain, 1)},
        ),
    ]
