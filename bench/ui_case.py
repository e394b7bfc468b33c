"""(m) the dashboard in Debian's Chromium (Playwright): time to first paint
of /ui/jobs with many jobs stored, the page weight (cold), and the live
update latency (a job changes state -> the page shows it)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cases
import sqlalchemy as sa
from cases import Result, pct

from corral.store import Store
from corral.store.schema import jobs, sessions
from corral.testing import start_server

CHROMIUM = os.environ.get("CORRAL_CHROMIUM", "/usr/bin/chromium")
BATCH = 5000
STATES = ("done", "done", "done", "failed", "cancelled")


async def seed(data_dir: Path, n: int) -> None:
    """``n`` finished jobs, one session each, written straight into the database."""
    store = await Store.open(f"sqlite:///{data_dir / 'corral.db'}")
    start = datetime.now(UTC) - timedelta(days=30)
    try:
        for first in range(0, n, BATCH):
            sess, rows = [], []
            for i in range(first, min(n, first + BATCH)):
                at = start + timedelta(seconds=i * 20)
                sid, jid = uuid.uuid4().hex, uuid.uuid4().hex
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
                rows.append(
                    {
                        "id": jid,
                        "session_id": sid,
                        "turn": 1,
                        "state": STATES[i % 5],
                        "provider": "shell",
                        "command": f"make test-{i}",
                        "title": None,
                        "priority": 2,
                        "attempt": 1,
                        "max_attempts": 3,
                        "labels": ["bench"],
                        "source": "api",
                        "epoch": 1,
                        "created_at": at,
                        "available_at": at,
                        "started_at": at,
                        "finished_at": at + timedelta(seconds=3),
                        "updated_at": at,
                        "cost": None,
                    }
                )

            def body(tx: Any, sess: list[Any] = sess, rows: list[Any] = rows) -> None:
                tx.conn.execute(sa.insert(sessions), sess)
                tx.conn.execute(sa.insert(jobs), rows)

            await store.db.write(body)
    finally:
        await store.close()


async def dashboard(root: Path, stored: int, updates: int) -> list[Result]:
    from playwright.async_api import async_playwright

    data = root / "k"
    data.mkdir(parents=True)
    started = time.monotonic()
    await seed(data, stored)
    seeded = time.monotonic() - started
    srv = await asyncio.to_thread(start_server, data, args=("--no-queue",), env=cases.SERVER_ENV)
    try:
        async with async_playwright() as pw:
            args = ["--no-sandbox"] if os.geteuid() == 0 else []
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
            ctx = await browser.new_context(base_url=srv.url)
            page = await ctx.new_page()
            await page.goto("/ui/login")
            await page.fill("input[name=key]", srv.admin_key)
            await page.click("button[type=submit]")
            await page.wait_for_url("**/ui/jobs")
            await page.close()
            paints, weights, loads = [], [], []
            for _ in range(5):
                # Cold: a fresh page with the cache off, the session cookie kept.
                page = await ctx.new_page()
                cdp = await ctx.new_cdp_session(page)
                await cdp.send("Network.enable")
                await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
                received: dict[str, float] = {}
                cdp.on(
                    "Network.loadingFinished",
                    lambda e, r=received: r.__setitem__(e["requestId"], e["encodedDataLength"]),
                )
                t0 = time.monotonic()
                await page.goto("/ui/jobs", wait_until="load")
                loads.append((time.monotonic() - t0) * 1000)
                # Painting may end after the load event on a busy machine.
                entry = await page.wait_for_function(
                    "performance.getEntriesByName('first-contentful-paint')[0]?.startTime"
                )
                fcp = await entry.json_value()
                paints.append(float(fcp))
                weights.append(sum(received.values()) / 1024)
                await page.close()
            page = await ctx.new_page()
            await page.goto("/ui/jobs")
            await page.wait_for_timeout(300)  # the SSE feed connects
            lat = []
            with srv.http() as http:
                for _ in range(updates):
                    t0 = time.time()
                    job_id = http.post("/jobs", json={"command": "sleep 60"}).json()["job_id"]
                    await page.wait_for_selector(f"#job-{job_id}", timeout=10_000)
                    await page.wait_for_function(
                        f"document.querySelector('#job-{job_id}').dataset.state === 'running'"
                    )
                    t1 = time.time()
                    http.post(f"/jobs/{job_id}/cancel")
                    seen = await page.wait_for_function(
                        "id => { const r = document.getElementById('job-' + id);"
                        " return r.dataset.state === 'cancelled' && Date.now(); }",
                        arg=job_id,
                    )
                    lat.append(await seen.json_value() - t1 * 1000)
                    del t0
            await browser.close()
    finally:
        await asyncio.to_thread(srv.stop)
    return [
        Result(
            f"(m) /ui/jobs first contentful paint, {stored:,} jobs stored, p50",
            round(pct(paints, 50), 1),
            "ms",
            samples=len(paints),
            detail={"fcp_ms": paints, "load_ms": loads, "seed_s": round(seeded, 1)},
        ),
        Result(
            "(m) /ui/jobs page weight, cold",
            round(pct(weights, 50), 1),
            "KB",
            samples=len(weights),
            note="HTML + CSS + JS as transferred (uncompressed)",
        ),
        Result(
            "(m) live update: API cancel -> row shows cancelled, p50",
            round(pct(lat, 50), 1),
            "ms",
            samples=len(lat),
            detail={"p95": round(pct(lat, 95), 1), "all": [round(x, 1) for x in lat]},
        ),
    ]
