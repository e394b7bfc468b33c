"""Process trees: descendants are found and stopped; pid records reap orphans.

All through psutil: the tree-kill logic runs here with every Python-level
access to ``/proc`` refused (psutil pointed at the same file system under
another path), as on a host without ``/proc``."""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.executors import process

SRC = Path(__file__).parents[2] / "src" / "corral"


def _wait_for(pred, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def no_proc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """``/proc`` refused to every open, scandir and listdir of this process;
    on Linux psutil reads the same file system through another path."""

    def refuse(path: Any) -> None:
        text = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else ""
        if text == "/proc" or text.startswith("/proc/"):
            raise PermissionError(f"no /proc here: {text}")

    def guarded(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            refuse(path)
            return real(path, *args, **kwargs)

        return call

    for owner, name in [(builtins, "open"), (io, "open"), (os, "open")]:
        monkeypatch.setattr(owner, name, guarded(getattr(owner, name)))
    monkeypatch.setattr(os, "scandir", guarded(os.scandir))
    monkeypatch.setattr(os, "listdir", guarded(os.listdir))
    if sys.platform.startswith("linux"):
        (tmp_path / "procfs").symlink_to("/proc")
        monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path / "procfs"))
    with pytest.raises(PermissionError):
        Path("/proc/self/stat").read_text()
    yield


async def test_stop_tree_reaches_grandchildren_even_in_their_own_group(no_proc: None) -> None:
    # The grandchild calls setsid, so killing the process group alone would miss it.
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        "setsid sleep 300 & sleep 300 & wait",
        start_new_session=True,
    )

    def sessions() -> set[int]:
        found = set()
        for pid in process.tree(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                found.add(os.getsid(pid))
        return found

    # Wait until setsid has run (before, its child is still in the shell's session).
    assert _wait_for(lambda: len(process.tree(proc.pid)) >= 3 and len(sessions()) == 2)
    members = process.tree(proc.pid)
    await process.stop_tree(proc, grace=0.5)
    assert _wait_for(lambda: not any(_alive(p) for p in members))


async def test_stop_tree_finds_what_left_the_tree_by_its_marker(no_proc: None) -> None:
    # A daemonised grandchild (double fork + setsid) is re-parented away from
    # the tree; only the marker in its environment ties it to the run.
    env = {**os.environ, process.MARKER_VAR: "run-1"}
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        "(setsid sleep 300 &) ; sleep 300",
        env=env,
        start_new_session=True,
    )

    def stray() -> list[int]:
        return [p for p in process.marked("run-1") if p not in process.tree(proc.pid)]

    assert _wait_for(lambda: len(stray()) == 1)
    (orphan,) = stray()
    assert psutil.Process(orphan).ppid() != proc.pid
    await process.stop_tree(proc, grace=0.5, marker="run-1")
    assert _wait_for(lambda: not _alive(orphan) and not _alive(proc.pid))
    assert process.marked("run-1") == {}


def test_kill_marked_kills_only_the_marked(no_proc: None) -> None:
    marked = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, process.MARKER_VAR: "run-2"}, start_new_session=True
    )
    other = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, process.MARKER_VAR: "run-3"}, start_new_session=True
    )
    try:
        assert _wait_for(lambda: marked.pid in process.marked("run-2"))
        assert process.kill_marked("run-2") == [marked.pid]
        assert marked.wait(5) == -9
        assert other.poll() is None
    finally:
        other.kill()
        other.wait(5)


def test_survivors_settle_on_the_loop_only_when_no_child_carries_the_marker(
    no_proc: None,
) -> None:
    # ``settled`` is the runner's check after every job, on the event loop:
    # True only when none of this process's live children carries the run's
    # marker (a job's own running process, in ``own``, is not looked at);
    # otherwise the caller runs ``kill`` in a thread, which kills it.
    survivors = process.Survivors()
    survivors.subreaper = True  # reading children is all it needs here (no prctl)
    mine = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, process.MARKER_VAR: "run-4"}, start_new_session=True
    )
    try:
        # A child's environment reads empty for a moment while it execs.
        assert _wait_for(
            lambda: (
                mine.pid in (survivors.children() or [])
                and psutil.Process(mine.pid).environ().get(process.MARKER_VAR) == "run-4"
            )
        )
        assert survivors.settled("run-5")  # another run's marker: nothing left of run-5
        assert survivors.settled("run-4", frozenset({mine.pid}))  # a running job's own
        assert not survivors.settled("run-4")  # left behind: kill's work
        assert survivors.kill("run-4") == [mine.pid]
        assert not psutil.pid_exists(mine.pid)  # killed and waited for by kill's reap
        assert survivors.settled("run-4")
        # Without a subreaper the children say nothing about escapes: kill decides.
        assert not process.Survivors().settled("run-4")
    finally:
        if mine.poll() is None:
            mine.kill()
            mine.wait(5)


def test_settled_waits_at_once_for_a_zombie_nobody_claims(
    no_proc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a job, on the loop: a child that ended and that neither ``spawn``
    nor asyncio waits for (an orphan handed to the subreaper, as every
    sandboxed job's first process in its PID namespace is) is waited for
    at once, not left for ``REAP_AFTER``; the periodic ``reap`` (a thread)
    still waits. Where asyncio cannot say which children it waits for
    (Python 3.14 on; 3.12 and 3.13 without the runner's loop, as here: their
    watcher keeps a pidfd reader on the loop, no list), such a zombie, which
    could be one of asyncio's own about to be waited for, is left for
    ``ZOMBIE_GRACE`` (a sandbox's first process is still waited for at once,
    by what it is)."""
    survivors = process.Survivors()
    survivors.subreaper = True
    stray = subprocess.Popen(["true"])  # stands for an orphan: nobody here waits
    _wait_for(lambda: process.Survivors._zombie(stray.pid))
    assert survivors.reap() == []  # seen once: left
    assert process.Survivors._zombie(stray.pid)
    assert survivors.settled("run-6")
    if process._watched() is None:
        assert process.Survivors._zombie(stray.pid)
        monkeypatch.setattr(process, "ZOMBIE_GRACE", 0.0)
        assert survivors.reap() == [stray.pid]
    assert not psutil.pid_exists(stray.pid)
    stray.wait(5)  # finds it waited for (its Popen is only a stand-in)


async def test_settled_leaves_asyncio_s_child_to_asyncio(no_proc: None) -> None:
    """A child asyncio started (an agent's CLI, a daemon) that ended, before
    asyncio's watcher waited for it: not waited for here, or asyncio would
    report its exit status as 255. Python 3.11 reads the watcher's list;
    3.12 and 3.13 the pidfd readers the watcher keeps on the loop."""
    survivors = process.Survivors()
    survivors.subreaper = True  # (not made one: prctl would stay with the test process)
    survivors._loop = asyncio.get_running_loop()  # as become_subreaper, on the runner's loop
    # It ends when told: 3.11's watcher waits for it in a thread and forgets
    # it as soon as it has ended (a child that ended at once was gone before
    # the first check, 1 run in ~8 under the suite's load).
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", "read _; exit 4", stdin=asyncio.subprocess.PIPE
    )
    assert process._watched(asyncio.get_running_loop()) == {proc.pid}
    assert proc.stdin is not None
    proc.stdin.close()
    await proc.stdin.wait_closed()
    # Ended: with a pidfd watcher a zombie until the loop runs its callback
    # (3.11's watcher waits in a thread of its own, at once).
    assert _wait_for(lambda: process.Survivors._zombie(proc.pid) or not psutil.pid_exists(proc.pid))
    assert survivors.settled("run-9")
    assert await proc.wait() == 4  # 255 had it been waited for here
    assert process._watched(asyncio.get_running_loop()) == set()


async def test_settled_leaves_a_spawned_child_to_its_own_wait(no_proc: None) -> None:
    """A child ``spawn`` started and has not waited for yet is its
    ``Child``'s: its exit status is not taken from it."""
    survivors = process.Survivors()
    survivors.subreaper = True
    child, _ = await _spawned(["sh", "-c", "exit 3"])
    # Ended, and the loop has not run its pidfd's callback: a zombie.
    assert _wait_for(lambda: process.Survivors._zombie(child.pid))
    assert survivors.settled("run-7")
    assert process.Survivors._zombie(child.pid)
    assert await asyncio.wait_for(child.wait(), 5) == 3
    await asyncio.wait_for(child.drained(), 5)
    assert child.pid not in process._UNWAITED


_SANDBOX_ORPHAN = """
import asyncio, ctypes, os, sys, time
from pathlib import Path
from corral.executors import process
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # a child subreaper, as a runner
process._watched = lambda loop=None: None  # as where asyncio cannot say (3.14 on, other loops)
argv = ["bwrap", "--die-with-parent", "--unshare-pid", "--ro-bind", "/", "/",
        "--dev", "/dev", "--proc", "/proc", "/bin/sh", "-c", "true"]

async def main():
    child = process.spawn(argv, cwd=Path.cwd(), env=dict(os.environ), output=lambda n, b: None)
    assert await child.wait() == 0
    survivors = process.Survivors()
    survivors.subreaper = True
    deadline = time.monotonic() + 5  # the namespace's first process, handed to us
    while not (survivors.children() or []) and time.monotonic() < deadline:
        time.sleep(0.01)
    [orphan] = survivors.children()
    while not process.Survivors._zombie(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)  # it may end a moment after bwrap (the next job's end waits for it)
    assert process._sandbox_init(orphan) and not process._sandbox_init(os.getpid())
    assert survivors.settled("run-8")
    assert survivors.children() == [], survivors.children()

asyncio.run(main())
"""


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_a_sandboxs_first_process_is_waited_for_at_once_wherever_it_runs() -> None:
    """bwrap does not wait for its PID namespace's first process: handed to
    the runner (a subreaper), it is waited for at the job's end even where
    asyncio's watcher cannot tell its children (no zombie per job piles up
    for ``ZOMBIE_GRACE``). In a process of its own: the subreaper is for good."""
    done = subprocess.run(
        [sys.executable, "-c", _SANDBOX_ORPHAN], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_pid_records_reap_what_a_crash_left(tmp_path: Path, no_proc: None) -> None:
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    records = process.PidRecords(tmp_path / "pids")
    records.add("job1", child.pid)
    assert records.reap() == [child.pid]
    assert child.wait(5) == -9
    assert list((tmp_path / "pids").glob("*.json")) == []


def test_a_torn_pid_record_is_dropped(tmp_path: Path, no_proc: None) -> None:
    """Records are written in place: one a crash tore is dropped, the whole
    ones still reaped."""
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    records = process.PidRecords(tmp_path / "pids")
    records.add("whole", child.pid)
    (tmp_path / "pids" / "torn.json").write_text('{"pid": 12')
    assert records.reap() == [child.pid]
    assert child.wait(5) == -9
    assert list((tmp_path / "pids").iterdir()) == []


def test_start_time_is_psutils_and_reads_the_boot_time_once(
    monkeypatch: pytest.MonkeyPatch, no_proc: None
) -> None:
    """A record's start time is psutil's create_time (records written by
    either compare), with the boot time read once per process, not out of
    all of /proc/stat at every job's spawn (issue #18)."""
    child = subprocess.Popen(["sleep", "300"])
    try:
        want = psutil.Process(child.pid).create_time()
        reads = []
        monkeypatch.setattr(psutil, "boot_time", lambda: reads.append(1) or _boot())
        process._boot_time.cache_clear()
        for _ in range(3):
            assert abs(process.start_time(child.pid) - want) < 0.011  # type: ignore[operator]
        assert abs(process.start_time(os.getpid()) - psutil.Process().create_time()) < 0.011  # type: ignore[operator]
        assert len(reads) == 1
    finally:
        child.kill()
        child.wait(5)
        process._boot_time.cache_clear()
    assert process.start_time(child.pid) is None  # reaped: gone


_boot = psutil.boot_time


def test_a_recycled_pid_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(f'{{"pid": {os.getpid()}, "start": 1}}')
    assert process.PidRecords(tmp_path).reap() == []


def test_a_record_of_a_process_gone_is_dropped(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait(5)
    records = process.PidRecords(tmp_path)
    (tmp_path / "job.json").write_text(f'{{"pid": {child.pid}, "start": 1.5}}')
    assert records.reap() == []
    assert list(tmp_path.glob("*.json")) == []


def test_no_module_reads_proc_itself() -> None:
    """Process trees go through psutil: no string in corral names a path
    under /proc, but the sandbox's bwrap arguments (a /proc mount of the
    sandbox's own PID namespace, never read by corral)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "executors" / "sandbox.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and (text.startswith("/proc") or "/proc/" in text):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []


async def _spawned(argv: list[str]) -> tuple[process.Child, dict[str, list[bytes]]]:
    got: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    child = process.spawn(
        argv, cwd=Path.cwd(), env=dict(os.environ), output=lambda n, b: got[n].append(b)
    )
    return child, got


async def test_spawn_hands_over_output_as_read_and_the_exit_once_waited_for() -> None:
    child, got = await _spawned(["sh", "-c", "echo out; echo err >&2; printf 'no newline'; exit 3"])
    assert await child.wait() == 3 and child.returncode == 3
    await asyncio.wait_for(child.drained(), 5)
    assert b"".join(got["stdout"]) == b"out\nno newline" and got["stdout"][-1] == b""
    assert b"".join(got["stderr"]) == b"err\n" and got["stderr"][-1] == b""
    assert not psutil.pid_exists(child.pid)  # waited for: no zombie left
    child.close()  # nothing left open: a no-op


async def test_spawn_reports_a_signal_and_works_without_a_pidfd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "pidfd_open not here")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)  # a thread waits instead
    child, _ = await _spawned(["sleep", "30"])
    os.kill(child.pid, 9)
    assert await asyncio.wait_for(child.wait(), 5) == -9
    await asyncio.wait_for(child.drained(), 5)


async def test_spawn_drained_waits_for_pipes_a_background_child_holds() -> None:
    fds = set(os.listdir("/proc/self/fd"))
    child, got = await _spawned(["sh", "-c", "sleep 30 & echo started"])
    assert await asyncio.wait_for(child.wait(), 5) == 0
    with pytest.raises(TimeoutError):  # `sleep 30` holds stdout and stderr
        await asyncio.wait_for(child.drained(), 0.3)
    assert got["stdout"] == [b"started\n"]
    child.close()
    os.killpg(child.pid, signal.SIGKILL)
    assert set(os.listdir("/proc/self/fd")) == fds  # the pipes closed
    # A program that is not there: Popen's error, no pipe left open.
    with pytest.raises(FileNotFoundError):
        await _spawned(["/nonexistent/program"])
    assert set(os.listdir("/proc/self/fd")) == fds
