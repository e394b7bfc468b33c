"""Process trees: find every descendant, stop them all, and remember what
was started so a restarted runner can reap what a crash left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree(pid: int) -> dict[int, int]:
    """``pid`` and all its descendants, each with its start time."""
    children = _children_map()
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        t = start_time(p)
        if t is None or p in found:
            continue
        found[p] = t
        todo.extend(children.get(p, ()))
    return found


MARKER_VAR = "CORRAL_RUN"


def marked(marker: str) -> dict[int, int]:
    """Every process whose environment carries ``CORRAL_RUN=marker``, with its
    start time. Descendants inherit the environment, so this finds the ones
    that left the tree too (a daemonised child re-parented to init, a tool
    that started its own session)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                env = handle.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            t = start_time(int(entry.name))
            if t is not None:
                found[int(entry.name)] = t
    return found


def signal_tree(pgid: int, members: dict[int, int], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group and to every known member still
    alive (same start time, so a recycled pid is never hit)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid, started in members.items():
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


async def stop_tree(
    proc: asyncio.subprocess.Process, grace: float, marker: str | None = None
) -> None:
    """SIGTERM the whole tree, then SIGKILL whatever is left after ``grace``.
    With ``marker``, every process carrying it counts as part of the tree."""

    def members() -> dict[int, int]:
        found = tree(proc.pid)
        if marker is not None:
            found.update(marked(marker))
        return found

    seen = members()
    signal_tree(proc.pid, seen, signal.SIGTERM)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    seen.update(members())
    signal_tree(proc.pid, seen, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every process still carrying ``marker`` (after a run ended)."""
    found = marked(marker)
    for pid, started in found.items():
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return list(found)


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
            if started is not None and start_time(pid) == started:
                signal_tree(pid, tree(pid), signal.SIGKILL)
                killed.append(pid)
            if record.get("marker"):
                killed.extend(kill_marked(str(record["marker"])))
            path.unlink(missing_ok=True)
        return killed
