"""Process trees: find every descendant, stop them all, and remember what
was started so a restarted runner can reap what a crash left behind.

Everything goes through psutil (children, start times, environments), so
cancel, timeout and daemon stop work on any host psutil knows (Linux, macOS,
the BSDs), not only where ``/proc`` exists: nothing here reads ``/proc``
itself. A process is identified by its pid *and* its start time, so a
recycled pid is never signalled: psutil checks that before each signal of a
``Process`` it handed out, and ``PidRecords`` compares the start time it
recorded. Jobs in the runner's sandbox (their own PID namespace) are found
from the host's view, by their host pids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import psutil

# A marker in a run's environment that every descendant inherits.
MARKER_VAR = "CORRAL_RUN"

# psutil gives start times in seconds since the epoch (boot time plus the
# kernel's start tick): the same process gives the same float, but a record
# read back by a restarted runner is compared with this much slack (a recycled
# pid would have to be handed out again within a second of the original's start).
START_SLACK = 1.0

Members = dict[int, psutil.Process]


def start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def tree(pid: int) -> Members:
    """``pid`` and all its descendants, by pid."""
    try:
        root = psutil.Process(pid)
        found = [root, *root.children(recursive=True)]
    except psutil.Error:  # gone (or gone while we looked)
        return {}
    return {p.pid: p for p in found}


def marked(marker: str) -> Members:
    """Every process whose environment carries ``CORRAL_RUN=marker``.
    Descendants inherit the environment, so this finds the ones that left the
    tree too (a daemonised child re-parented to init, a tool that started its
    own session). Processes whose environment cannot be read (another user's)
    are not ours."""
    found: Members = {}
    for p in psutil.process_iter(["environ"]):
        env = p.info.get("environ")
        if env and env.get(MARKER_VAR) == marker:
            found[p.pid] = p
    return found


def signal_tree(pgid: int, members: Members, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group and to every known member still
    alive (psutil refuses a member whose pid was recycled)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for p in members.values():
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


async def stop_tree(
    proc: asyncio.subprocess.Process, grace: float, marker: str | None = None
) -> None:
    """SIGTERM the whole tree, then SIGKILL whatever is left after ``grace``.
    With ``marker``, every process carrying it counts as part of the tree.
    The search reads every process's environment: it runs in a thread, off
    the event loop."""

    def members() -> Members:
        found = tree(proc.pid)
        if marker is not None:
            found.update(marked(marker))
        return found

    seen = await asyncio.to_thread(members)
    signal_tree(proc.pid, seen, signal.SIGTERM)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    seen.update(await asyncio.to_thread(members))
    signal_tree(proc.pid, seen, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every process still carrying ``marker`` (after a run ended)."""
    found = marked(marker)
    for p in found.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
    return list(found)


def _same(start: float, recorded: float) -> bool:
    return abs(start - recorded) < START_SLACK


class PidRecords:
    """One file per running job: pid and start time of its process."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, job_id: str, pid: int, marker: str | None = None) -> None:
        record = {"pid": pid, "start": start_time(pid), "marker": marker}
        tmp = self.dir / f".{job_id}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.dir / f"{job_id}.json")

    def remove(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{job_id}.json").unlink()

    def reap(self) -> list[int]:
        """Kill the trees of processes a previous runner left running."""
        killed: list[int] = []
        for path in self.dir.glob("*.json"):
            try:
                record = json.loads(path.read_text())
                pid, started = int(record["pid"]), record["start"]
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            now = start_time(pid)
            if isinstance(started, int | float) and now is not None and _same(now, started):
                signal_tree(pid, tree(pid), signal.SIGKILL)
                killed.append(pid)
            if record.get("marker"):
                killed.extend(kill_marked(str(record["marker"])))
            path.unlink(missing_ok=True)
        return killed
