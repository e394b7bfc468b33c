"""(i) agent daemons: log-line lag over SSE (line written by the daemon ->
received by an SSE client), the control plane's CPU and memory with 50 idle
daemons, and the time from `POST /agents/{id}/restart` to running."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import cases
import httpx
from cases import Result, cpu_seconds, pct

from corral.testing import start_server

FLOOD_LINES = 100_000
FLOOD = f"import time\nfor i in range({FLOOD_LINES}): print(i)\ntime.sleep(3600)\n"
TICKER = (
    "import time\nwhile True:\n    print(repr(time.time()), flush=True)\n    time.sleep(0.02)\n"
)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _toml(agents: dict[str, list[str]]) -> str:
    return "\n".join(f"[agents.{n}]\ncommand = {json.dumps(c)}\n" for n, c in agents.items())


async def agents_figures(root: Path, lines: int) -> list[Result]:
    agents = {"ticker": [sys.executable, "-u", "-c", TICKER]}
    agents.update({f"idle{i:02d}": ["sleep", "3600"] for i in range(50)})
    config = root / "i.toml"
    flood = "[agents.flood]\nautostart = false\ncommand = " + json.dumps(
        [sys.executable, "-c", FLOOD]
    )
    config.write_text(_toml(agents) + "\n" + flood + "\n")
    srv = await asyncio.to_thread(
        start_server,
        root / "i",
        args=("--config", str(config), "--no-queue"),
        env=cases.SERVER_ENV,
    )
    try:
        headers = {"Authorization": f"Bearer {srv.admin_key}", "Accept": "text/event-stream"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = (await http.get("/agents")).json()
                if all(r["status"] == "running" for r in rows):
                    break
                await asyncio.sleep(0.2)
            lags: list[float] = []
            async with http.stream("GET", "/sse/agents/ticker/logs") as resp:
                async for raw in resp.aiter_lines():
                    if raw.startswith("data:"):
                        sent = float(json.loads(raw[5:])["line"])
                        lags.append(time.time() - sent)
                        if len(lags) >= lines:
                            break
            lags.sort()
            # 50 idle daemons (plus the ticker): the server's CPU over 10 s, and its memory.
            await http.post("/agents/ticker/stop")
            cpu0, t0 = cpu_seconds(srv.proc.pid), time.monotonic()
            await asyncio.sleep(10)
            cpu = (cpu_seconds(srv.proc.pid) - cpu0) / (time.monotonic() - t0)
            rss = _rss_mib(srv.proc.pid)
            restarts = []
            for i in range(10):
                started = time.monotonic()
                resp = await http.post(f"/agents/idle{i:02d}/restart")
                resp.raise_for_status()
                restarts.append(time.monotonic() - started)
            restarts.sort()
            # A daemon printing 100,000 lines at once: until the last is stored.
            cpu0 = cpu_seconds(srv.proc.pid)
            flood_started = time.monotonic()
            (await http.post("/agents/flood/start")).raise_for_status()
            while time.monotonic() - flood_started < 120:
                tail = (await http.get("/agents/flood/logs", params={"n": 1})).json()
                if tail and tail[-1]["offset"] >= FLOOD_LINES:
                    break
                await asyncio.sleep(0.02)
            flood_seconds = time.monotonic() - flood_started
            flood_cpu = cpu_seconds(srv.proc.pid) - cpu0
    finally:
        await asyncio.to_thread(srv.stop)
    return [
        Result(
            "(i) agent log line → SSE client p50",
            round(pct(lags, 50) * 1000, 2),
            "ms",
            samples=len(lags),
            note="a daemon printing a line every 20 ms",
        ),
        Result(
            "(i) agent log line → SSE client p99",
            round(pct(lags, 99) * 1000, 2),
            "ms",
            target=10.0,
            samples=len(lags),
        ),
        Result(
            "(i) control plane CPU with 50 idle daemons",
            round(cpu * 100, 2),
            "% of a core",
            note=f"RSS {rss:.1f} MiB (corral serve with its runner and supervisor)",
        ),
        Result(
            "(i) restart → running p50",
            round(pct(restarts, 50) * 1000, 1),
            "ms",
            samples=len(restarts),
            note="POST /agents/{id}/restart of a `sleep` daemon",
        ),
        Result(
            "(i) restart → running p99",
            round(pct(restarts, 99) * 1000, 1),
            "ms",
            samples=len(restarts),
        ),
        Result(
            "(i) 100,000 log lines at once → all stored",
            round(flood_seconds, 2),
            "s",
            note=f"server CPU {flood_cpu:.2f} s (start included)",
        ),
    ]
