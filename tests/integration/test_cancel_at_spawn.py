"""A cancel that reaches an executor while its process is being started (the
runner stopping, or a person cancelling, right at the start) still stops
that process: before, ``cancel()`` found no process yet and the job ran on
(found by test_sse_shutdown: a stop waited the runner's 3 s for a `sleep 30`).
The shell executor starts its process without a wait (``process.spawn``), so
its window is before the start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from corral.executors.base import Context, load
from corral.executors.claude_code import ClaudeCodeExecutor
from corral.executors.shell import ShellExecutor
from tests.unit.test_agent_parsing import context


async def _cancel_at_spawn(ex: Any, ctx: Context[Any]) -> tuple[Any, float]:
    """Run ``ex``, cancelling it from inside process creation (the moment it
    is awaited), so ``cancel()`` runs before the executor holds the process."""
    real = asyncio.create_subprocess_exec

    async def spawn(*args: Any, **kw: Any) -> Any:
        await ex.cancel()
        return await real(*args, **kw)

    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(asyncio, "create_subprocess_exec", spawn)
        out = await ex.run(ctx)
    return out, time.monotonic() - started


async def test_a_shell_job_cancelled_before_its_process_exists_is_stopped(tmp_path: Path) -> None:
    # The shell executor starts its process without awaiting anything
    # (process.spawn): a cancel can only come before that, while the runner
    # prepares the job (its workspace, its gateway); the process it then
    # starts is stopped at once.
    ctx: Context[Any]
    ctx, _, _ = context("shell")
    ctx.workdir, ctx.kill_grace = tmp_path, 0.5
    ctx.job = ctx.job.model_copy(update={"command": "sleep 30"})
    ex = ShellExecutor()
    started = time.monotonic()
    await ex.cancel()
    out = await ex.run(ctx)
    assert (out.status, out.reason) == ("failed", "cancelled")
    assert time.monotonic() - started < 10


async def test_an_agent_cancelled_while_starting_is_stopped(tmp_path: Path) -> None:
    ctx: Context[Any]
    ctx, _, _ = context("claude-code")
    ctx.workdir, ctx.kill_grace = tmp_path, 0.5
    ctx.settings = load("claude-code").settings(
        kind="claude-code", command=["sh", "-c", "sleep 30", "claude-code"]
    )
    out, took = await _cancel_at_spawn(ClaudeCodeExecutor(), ctx)
    assert out.status == "failed" and out.reason == "cancelled", out
    assert took < 10
