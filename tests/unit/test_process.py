"""Process trees: descendants are found and stopped; pid records reap orphans."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

from corral.runner import process


def _wait_for(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_stop_tree_reaches_grandchildren_even_in_their_own_group() -> None:
    # The grandchild calls setsid, so killing the process group alone would miss it.
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        "setsid sleep 300 & sleep 300 & wait",
        start_new_session=True,
    )
    assert _wait_for(lambda: len(process.tree(proc.pid)) >= 3)
    members = process.tree(proc.pid)
    await process.stop_tree(proc, grace=0.5)
    assert _wait_for(lambda: not any(_alive(p) for p in members))


def test_pid_records_reap_what_a_crash_left(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    records = process.PidRecords(tmp_path)
    records.add("job1", child.pid)
    assert records.reap() == [child.pid]
    assert child.wait(5) == -9
    assert list(tmp_path.glob("*.json")) == []


def test_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(f'{{"pid": {os.getpid()}, "start": 1}}')
    assert process.PidRecords(tmp_path).reap() == []
