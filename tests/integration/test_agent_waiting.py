"""A job waiting for a person is not a stalled agent: the agent executors'
stall guard pauses while ``ctx.waiting`` is held and counts again from the
moment the wait ends (a real process printing a captured Claude Code
transcript, stopping half-way until the test lets it go on)."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corral.executors.base import Context, load
from corral.executors.claude_code import ClaudeCodeExecutor
from corral.jobs import JobState
from corral.models import Job, Session, new_id

TRANSCRIPT = Path(__file__).parents[1] / "fixtures" / "claude" / "text.jsonl"
STALL = 0.3

# Prints the transcript's first line, then the rest once the file `go` exists.
SCRIPT = """
import os, sys, time
lines = open(sys.argv[1]).read().splitlines()
print(lines[0], flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
for line in lines[1:]:
    print(line, flush=True)
"""


def _context(tmp_path: Path, events: list[tuple[str, dict[str, Any]]]) -> Context[Any]:
    now = datetime.now(UTC)
    job = Job(
        id=new_id(),
        session_id=new_id(),
        turn=1,
        state=JobState.RUNNING,
        provider="claude",
        priority=2,
        attempt=1,
        max_attempts=1,
        source="api",
        epoch=1,
        created_at=now,
        available_at=now,
        updated_at=now,
    )
    session = Session(
        id=job.session_id, created_at=now, updated_at=now, epoch=1, last_seq=0, turns=1
    )
    script = tmp_path / "agent.py"
    script.write_text(SCRIPT)
    # The executor appends Claude Code's flags; the script reads only its own two.
    command = [sys.executable, str(script), str(TRANSCRIPT), str(tmp_path / "go")]
    settings = load("claude-code").settings(
        kind="claude-code", command=command, stall_timeout=STALL, startup_timeout=30
    )

    def emit(type: str, payload: Any, *, ephemeral: bool = False, internal: bool = False) -> None:
        events.append((type, {**payload, "emitted_at": time.monotonic()}))

    work = tmp_path / "work"
    work.mkdir()
    return Context(
        job=job,
        session=session,
        workdir=work,
        emit=emit,
        started=lambda pid: None,
        settings=settings,
        kill_grace=1,
        state_dir=tmp_path / "state",
    )


async def _until(events: list[tuple[str, dict[str, Any]]], type: str) -> None:
    while type not in [t for t, _ in events]:
        await asyncio.sleep(0.01)


async def test_no_stall_while_the_job_waits_for_a_person(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = _context(tmp_path, events)
    run = asyncio.create_task(ClaudeCodeExecutor().run(ctx))
    await asyncio.wait_for(_until(events, "agent.init"), 30)
    with ctx.waiting.hold():
        await asyncio.sleep(4 * STALL)  # silent four times as long as a stall
        assert not run.done()
        (tmp_path / "go").touch()
        await asyncio.wait_for(_until(events, "agent.result"), 30)
    outcome = await asyncio.wait_for(run, 30)
    assert outcome.status == "done" and outcome.result == "Hello from the fake."
    assert "agent.guard" not in [t for t, _ in events]


async def test_the_stall_guard_counts_again_once_the_wait_ends(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = _context(tmp_path, events)
    run = asyncio.create_task(ClaudeCodeExecutor().run(ctx))
    await asyncio.wait_for(_until(events, "agent.init"), 30)
    with ctx.waiting.hold():
        await asyncio.sleep(4 * STALL)
    released = time.monotonic()
    outcome = await asyncio.wait_for(run, 30)  # `go` never appears: the agent stalls
    assert outcome.status == "failed" and outcome.reason == "hang_stall"
    [guard] = [p for t, p in events if t == "agent.guard"]
    assert guard["guard"] == "stall"
    # It fired a stall timeout after the wait ended, not during the wait.
    assert guard["emitted_at"] >= released + STALL - 0.01
