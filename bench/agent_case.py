"""(f) the agent executors' overhead, with the real `claude` CLI (agents/)
against the fake Anthropic API of the tests: job leased -> agent process
started (worktree made, process spawned), agent process exited -> job done
(tree check, diff artifacts, completion), and the runner's memory per running
agent (the agent's own memory excluded: it is another process)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import cases
from cases import Result, pct, ts

from corral.testing import git_repo, start_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.fakes import AGENTS_BIN  # noqa: E402
from tests.fakes.anthropic import FakeAnthropic, text, tool_use  # noqa: E402


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _config(root: Path, fake: FakeAnthropic, slots: int) -> Path:
    env = {
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": fake.api_key,
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    config = root / "corral.toml"
    config.write_text(
        f"[runner]\nslots = {slots}\nproviders = ['shell', 'claude']\n\n"
        "[providers.claude]\nkind = 'claude-code'\n"
        f"command = {json.dumps(str(AGENTS_BIN / 'claude'))}\n"
        "permission_mode = 'acceptEdits'\n"
        "env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }\n"
    )
    return config


async def agent_overhead(root: Path, runs: int, agents: int) -> list[Result]:
    if not (AGENTS_BIN / "claude").exists():
        raise RuntimeError("the claude CLI is not installed: npm ci --prefix agents")
    repo = git_repo(root / "f-repo")
    with FakeAnthropic() as fake:
        config = _config(root, fake, max(agents, 2))
        srv = await asyncio.to_thread(
            start_server,
            root / "f",
            args=("--config", str(config), "--no-queue"),
            env=cases.SERVER_ENV,
        )
        try:
            with srv.http() as http:
                leased_to_started: list[float] = []
                exited_to_done: list[float] = []
                for i in range(runs + 1):  # the first run warms up
                    prompt = f"edit [{uuid.uuid4().hex[:8]}]"
                    fake.reply(tool_use("Bash", {"command": f"echo {i} > f.txt"}), match=prompt)
                    fake.reply(text("done"), match=prompt)
                    body = {"prompt": prompt, "provider": "claude", "repo": str(repo)}
                    job_id = http.post("/jobs", json=body).json()["job_id"]
                    job = await _wait_done(http, job_id)
                    if i == 0:
                        continue
                    events = http.get(f"/jobs/{job_id}/events").json()["events"]
                    [exited] = [e["payload"] for e in events if e["type"] == "agent.exited"]
                    leased_to_started.append(ts(job["started_at"]) - ts(job["assigned_at"]))
                    exited_to_done.append(ts(job["finished_at"]) - exited["at"])

                # Memory: the server process (with its embedded runner) idle, then
                # with `agents` agents running (each waits on a hung API call).
                await asyncio.sleep(0.5)
                before = _rss_kib(srv.proc.pid)
                prompts = [f"hang [{uuid.uuid4().hex[:8]}]" for _ in range(agents)]
                for p in prompts:
                    fake.hang(match=p)
                ids = [
                    http.post("/jobs", json={"prompt": p, "provider": "claude"}).json()["job_id"]
                    for p in prompts
                ]
                deadline = time.monotonic() + 40
                while (
                    sum(1 for f in fake.seen if any(p in json.dumps(f.body) for p in prompts))
                    < agents
                ):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the agents did not all reach the API")
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.5)
                during = _rss_kib(srv.proc.pid)
                for job_id in ids:
                    http.post(f"/jobs/{job_id}/cancel")
        finally:
            await asyncio.to_thread(srv.stop)
    note = f"{runs} sequential runs in a git worktree (Bash tool + text), after one warm-up"
    rows = []
    for name, values in (
        ("(f) claude-code: leased→agent started", leased_to_started),
        ("(f) claude-code: agent exited→job done", exited_to_done),
    ):
        lat = sorted(values)
        rows.append(
            Result(
                f"{name} p50",
                round(pct(lat, 50) * 1000, 1),
                "ms",
                samples=len(lat),
                note=note,
                detail={"p99_ms": round(pct(lat, 99) * 1000, 1)},
            )
        )
        rows.append(Result(f"{name} p99", round(pct(lat, 99) * 1000, 1), "ms", samples=len(lat)))
    rows.append(
        Result(
            "(f) runner memory per running agent",
            round((during - before) / agents / 1024, 2),
            "MiB",
            samples=agents,
            note=f"RSS of `corral serve` (embedded runner) idle vs {agents} agents running: "
            f"{before / 1024:.1f} -> {during / 1024:.1f} MiB",
        )
    )
    return rows


async def _wait_done(http: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            if job["state"] != "done":
                raise RuntimeError(f"job {job_id} {job['state']}: {job['error']}")
            return job
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish")
