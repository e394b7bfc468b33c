"""The agent executors' guards, by their behaviour: the real executor runs a
scripted stand-in for its CLI (a shell printing JSON lines, then going quiet
or looping) and the run's outcome and events say which guard stopped it and
how the failure is classed (issue #20 item 6: not by setting ``guard`` or
reading ``idle_line`` by hand)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from corral.executors.agent import AgentExecutor
from corral.executors.base import Context, load
from corral.executors.claude_code import ClaudeCodeExecutor
from corral.executors.codex import CodexExecutor
from tests.unit.test_agent_parsing import context

CLAUDE_INIT = json.dumps({"type": "system", "subtype": "init", "session_id": "s-1"})
RECONNECTING = json.dumps({"type": "error", "message": "Reconnecting... waiting for network"})


async def _run(
    kind: str, script: str, tmp_path: Path, timeout: float | None = None, **settings: Any
) -> tuple[Any, list[tuple[str, dict[str, Any]]], float]:
    ctx: Context[Any]
    ctx, events, _ = context(kind)
    ctx.workdir = tmp_path
    ctx.kill_grace = 0.5
    ctx.settings = load(kind).settings(kind=kind, command=["sh", "-c", script, kind], **settings)
    if timeout is not None:
        ctx.job = ctx.job.model_copy(update={"timeout": timeout})
    ex: AgentExecutor[Any] = ClaudeCodeExecutor() if kind == "claude-code" else CodexExecutor()
    started = time.monotonic()
    out = await ex.run(ctx)
    return out, events, time.monotonic() - started


def _guards(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [p["guard"] for t, p in events if t == "agent.guard"]


async def test_a_stalled_agent_is_killed_as_an_infrastructure_failure(tmp_path: Path) -> None:
    out, events, _ = await _run(
        "claude-code", f"echo '{CLAUDE_INIT}'; sleep 30", tmp_path, stall_timeout=0.3
    )
    assert (out.status, out.failure, out.reason) == ("failed", "infra", "hang_stall")
    assert "stall_timeout" in (out.error or "")
    assert _guards(events) == ["stall"]


async def test_an_agent_past_the_jobs_timeout_is_the_agents_failure(tmp_path: Path) -> None:
    out, events, _ = await _run(
        "claude-code", f"echo '{CLAUDE_INIT}'; sleep 30", tmp_path, timeout=0.5
    )
    assert (out.status, out.failure, out.reason) == ("failed", "agent", "timeout")
    assert _guards(events) == ["timeout"]


async def test_a_silent_start_is_the_startup_guard(tmp_path: Path) -> None:
    out, events, _ = await _run("claude-code", "sleep 30", tmp_path, startup_timeout=0.3)
    assert (out.failure, out.reason) == ("infra", "hang_startup")
    assert _guards(events) == ["startup"]


async def test_codex_reconnecting_lines_do_not_hold_off_the_stall_guard(tmp_path: Path) -> None:
    """Codex prints "Reconnecting..." while its network is down: those lines
    are recorded (agent.retry) but are not progress, so a codex that only
    reconnects is stopped by the stall guard, not left running."""
    script = f"for i in $(seq 1 100); do echo '{RECONNECTING}'; sleep 0.05; done"
    out, events, took = await _run("codex", script, tmp_path, stall_timeout=0.5)
    assert (out.failure, out.reason) == ("infra", "hang_stall"), out
    assert _guards(events) == ["stall"]
    assert any(t == "agent.retry" for t, _ in events)
    assert took < 4  # well before the script's own 5 s of reconnecting
