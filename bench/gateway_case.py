"""(k) the per-job MCP gateway (corral/gateway/): what a tool call through it
costs over calling the upstream server directly, what a sub-job with `wait`
costs, how long a gateway takes to start, and what an open one weighs.

- *round trip*: the official SDK `Client` calling `echo` of an upstream MCP
  server (tests/fixtures/mcp_upstream.py, a separate process, streamable
  HTTP) directly, and the same tool through a gateway (in this process, as in
  a runner) that proxies it; sequential calls after warm-up, interleaved in
  rounds so drift hits both alike.
- *submit_job wait*: a real `corral serve` (embedded runner serving `shell`);
  this process registers as a runner, leases a parent job and runs its
  gateway over protocol v1 with the job's worker token; `submit_job` of
  `true` on `shell` with `wait`, sequentially.
- *start*: `Gateway.start()` until it listens (corral's tools only), then
  `close()`; and with one stdio upstream server (a Python process started and
  listed for the job).
- *memory*: this process's RSS before and after opening 20 gateways
  (corral's tools only), per gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from cases import Result, ms, pct

from corral.gateway.policy import Policy
from corral.gateway.server import Gateway
from corral.gateway.settings import McpServerSettings
from corral.protocol import ChildJob, ProgressRecorded
from corral.runner.gateway import Control
from corral.runner.link import HttpLink
from corral.testing import free_port, start_server

UPSTREAM = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "mcp_upstream.py"


class _Idle:
    """A Control for gateways whose corral tools the case does not call."""

    async def submit_child(self, body: Any) -> ChildJob:
        raise NotImplementedError

    async def wait_child(self, job_id: str, body: Any) -> ChildJob:
        raise NotImplementedError

    async def cancel_child(self, job_id: str) -> ChildJob:
        raise NotImplementedError

    async def progress(self, body: Any) -> ProgressRecorded:
        return ProgressRecorded(seq=0)


def _quiet(type: str, payload: Any, **_: Any) -> None:
    pass


@asynccontextmanager
async def _client(url: str, token: str | None) -> AsyncIterator[Any]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def _upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, str(UPSTREAM), "http", str(port)]
    )
    url = f"http://127.0.0.1:{port}/mcp"
    async with httpx.AsyncClient() as http:
        for _ in range(400):
            try:
                await http.get(url)
                return proc, url
            except httpx.TransportError:
                await asyncio.sleep(0.025)
    proc.kill()
    raise RuntimeError("the upstream MCP server did not start")


async def round_trip(samples: int, warmup: int) -> list[Result]:
    proc, url = await _upstream()
    gateway = Gateway(
        job_id="bench",
        policy=Policy.of("bench", ["up.echo"], None),
        control=_Idle(),
        emit=_quiet,
        servers={"up": McpServerSettings(url=url)},
    )
    endpoint = await gateway.start()
    direct: list[float] = []
    through: list[float] = []
    try:
        async with _client(url, None) as d, _client(endpoint.url, endpoint.token) as g:
            for i in range(warmup + samples):
                for client, name, out in ((d, "echo", direct), (g, "up__echo", through)):
                    t0 = time.perf_counter()
                    result = await client.call_tool(name, {"text": "x"})
                    took = time.perf_counter() - t0
                    assert not result.is_error, result
                    if i >= warmup:
                        out.append(took)
    finally:
        await gateway.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
    added = [b - a for a, b in zip(sorted(direct), sorted(through), strict=True)]
    return [
        Result("(k) tool call, direct SDK p50", ms(pct(direct, 50)), "ms", samples=samples),
        Result("(k) tool call, direct SDK p99", ms(pct(direct, 99)), "ms", samples=samples),
        Result("(k) tool call, through gateway p50", ms(pct(through, 50)), "ms", samples=samples),
        Result("(k) tool call, through gateway p99", ms(pct(through, 99)), "ms", samples=samples),
        Result(
            "(k) gateway overhead p50",
            ms(pct(through, 50) - pct(direct, 50)),
            "ms",
            target=5.0,
            samples=samples,
            detail={
                "p99_added_ms": ms(pct(through, 99) - pct(direct, 99)),
                "sorted_diff_p50": ms(pct(added, 50)),
            },
        ),
    ]


async def start_time(samples: int) -> list[Result]:
    rows: list[Result] = []
    stdio = {"up": McpServerSettings(command=[sys.executable, str(UPSTREAM)])}
    for label, servers, rules, n in (
        ("corral tools", {}, ["corral.*"], samples),
        ("+ 1 stdio upstream", stdio, ["corral.*", "up.*"], max(5, samples // 4)),
    ):
        times: list[float] = []
        for _ in range(n + 2):
            gateway = Gateway(
                job_id="bench",
                policy=Policy.of("bench", rules, None),
                control=_Idle(),
                emit=_quiet,
                servers=servers,
            )
            t0 = time.perf_counter()
            await gateway.start()
            times.append(time.perf_counter() - t0)
            await gateway.close()
        times = times[2:]
        rows.append(Result(f"(k) gateway start, {label} p50", ms(pct(times, 50)), "ms", samples=n))
        rows.append(Result(f"(k) gateway start, {label} p99", ms(pct(times, 99)), "ms", samples=n))
    return rows


async def memory(n: int = 20) -> list[Result]:
    me = psutil.Process()
    opened = []
    # One first, so the per-gateway figure leaves out the imports and the SDK's set-up.
    first = Gateway(
        job_id="warm", policy=Policy.of("b", ["corral.*"], None), control=_Idle(), emit=_quiet
    )
    await first.start()
    before = me.memory_info().rss
    for i in range(n):
        g = Gateway(
            job_id=f"m{i}", policy=Policy.of("b", ["corral.*"], None), control=_Idle(), emit=_quiet
        )
        await g.start()
        opened.append(g)
    after = me.memory_info().rss
    for g in [first, *opened]:
        await g.close()
    return [
        Result(
            "(k) memory per open gateway",
            round((after - before) / n / 1024, 1),
            "KiB",
            samples=n,
            detail={
                "rss_before_mb": round(before / 2**20, 1),
                "rss_after_mb": round(after / 2**20, 1),
            },
        )
    ]


async def submit_wait(root: Path, samples: int) -> list[Result]:
    env = {
        "CORRAL_PROVIDERS": json.dumps({"parent": {"kind": "shell"}}),
        "CORRAL_RUNNER__PROVIDERS": json.dumps(["shell"]),
    }
    srv = await asyncio.to_thread(start_server, root / "k-submit", env=env)
    times: list[float] = []
    try:
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_key}"}, timeout=30
        ) as api:
            await api.post("/jobs", json={"command": "true", "provider": "parent"})
            reg = await api.post(
                "/runners/register", json={"name": "bench-gw", "providers": ["parent"], "slots": 1}
            )
            runner_id = reg.json()["runner_id"]
            leased = await api.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10})
            (job,) = leased.json()["jobs"]
            async with HttpLink(
                srv.url, srv.admin_key, timeout=httpx.Timeout(90), max_connections=4
            ) as link:
                gateway = Gateway(
                    job_id=job["job"]["id"],
                    policy=Policy.of("parent", ["corral.*"], None),
                    control=Control(link.worker(job["token"])),
                    emit=_quiet,
                )
                endpoint = await gateway.start()
                try:
                    async with _client(endpoint.url, endpoint.token) as client:
                        args = {"prompt": "true", "provider": "shell", "wait": True, "timeout": 30}
                        for i in range(samples + 3):
                            t0 = time.perf_counter()
                            result = await client.call_tool("submit_job", args)
                            took = time.perf_counter() - t0
                            answer = json.loads(result.content[0].text)
                            assert answer["state"] == "done", answer
                            if i >= 3:
                                times.append(took)
                finally:
                    await gateway.close()
    finally:
        await asyncio.to_thread(srv.stop)
    return [
        Result("(k) submit_job wait, shell `true` p50", ms(pct(times, 50)), "ms", samples=samples),
        Result("(k) submit_job wait, shell `true` p99", ms(pct(times, 99)), "ms", samples=samples),
    ]


async def gateway_figures(root: Path, samples: int) -> list[Result]:
    rows = await round_trip(samples, 20)
    rows += await start_time(max(10, samples // 5))
    rows += await memory()
    rows += await submit_wait(root, max(10, samples // 5))
    return rows
