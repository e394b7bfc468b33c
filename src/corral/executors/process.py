"""Process trees: find every descendant, stop them all, and remember what
was started so a restarted runner can reap what a crash left behind.

Everything goes through psutil (children, start times, environments), so
cancel, timeout and daemon stop work on any host psutil knows (Linux, macOS,
the BSDs), not only where ``/proc`` exists: nothing here reads ``/proc``
itself (but for the kernel's list of this process's own children and, on
Linux, a new process's start tick, read where psutil reads them). A
process is identified by its pid *and* its start time, so a recycled pid
is never signalled: psutil checks that before each signal of a
``Process`` it handed out, and ``PidRecords`` compares the start time it
recorded. Jobs in the runner's sandbox (their own PID namespace) are found
from the host's view, by their host pids. ``spawn`` starts a job's process
without asyncio's subprocess transport (nothing to wait for until it runs)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import psutil

from corral import jsontext

# A marker in a run's environment that every descendant inherits.
MARKER_VAR = "CORRAL_RUN"

# psutil gives start times in seconds since the epoch (boot time plus the
# kernel's start tick): the same process gives the same float, but a record
# read back by a restarted runner is compared with this much slack (a recycled
# pid would have to be handed out again within a second of the original's start).
START_SLACK = 1.0

Members = dict[int, psutil.Process]


def start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None if it is gone.
    On Linux, psutil's value (the kernel's start tick plus the boot time) from
    the tick alone: psutil reads the boot time out of the whole of procfs's
    ``stat`` at every call, ~1 ms of wall time that held up the event loop
    after each job's spawn (issue #18); it is read once here."""
    if _STAT_OF_PID:
        try:
            with open(f"{psutil.PROCFS_PATH}/{pid}/stat", "rb") as f:
                stat = f.read()
            # Field 22, the start tick: the 20th after the command's ")".
            return _boot_time() + int(stat.rpartition(b")")[2].split()[19]) / _TICKS
        except (OSError, ValueError, IndexError):
            return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


_STAT_OF_PID = sys.platform.startswith("linux")
_TICKS = os.sysconf("SC_CLK_TCK") if _STAT_OF_PID else 100


@functools.cache
def _boot_time() -> float:
    return psutil.boot_time()


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


class Waitable(Protocol):
    """A started process as ``stop_tree`` needs it (``asyncio``'s or a ``Child``)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


# How much of a pipe one read callback takes.
READ_CHUNK = 65_536


class Child:
    """A process started without asyncio's subprocess transport (``spawn``):
    its output read by event-loop callbacks as it comes, its exit learnt
    from a pidfd (a thread that waits where there is none). Nothing between
    the ``fork``/``exec`` and the caller's next line waits for the loop:
    ``asyncio.create_subprocess_exec`` connects each pipe in a loop
    iteration of its own and returns the process about five iterations
    later, which under load was ~15 ms of a job's start (issue #18)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        popen: subprocess.Popen[bytes],
        pipes: Mapping[int, str],
        output: Callable[[str, bytes], None],
    ) -> None:
        self._loop = loop
        self._popen = popen
        self._output = output
        self._pipes = dict(pipes)  # open read ends: fd -> "stdout" / "stderr"
        self._exit: asyncio.Future[int] = loop.create_future()
        self._drained: asyncio.Future[None] = loop.create_future()
        for fd, name in self._pipes.items():
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._read, fd, name)
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: a thread waits
            waiting = loop.run_in_executor(None, popen.wait)
            waiting.add_done_callback(self._waited)
        else:
            loop.add_reader(self._pidfd, self._exited)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once waited for (``-N``: killed by signal N)."""
        return self._popen.returncode

    async def wait(self) -> int:
        """The exit status, once the process has ended (waited for: no zombie)."""
        return await asyncio.shield(self._exit)

    async def drained(self) -> None:
        """Once every pipe is at its end (background children may hold them open)."""
        await asyncio.shield(self._drained)

    def close(self) -> None:
        """Stop reading the pipes (what is unread is dropped)."""
        for fd in list(self._pipes):
            self._close_pipe(fd)
        # ``output`` usually reaches back to the executor holding this
        # process: let go of it, so that cycle needs no collector (issue #18).
        self._output = _dropped

    def _read(self, fd: int, name: str) -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close_pipe(fd)
        self._output(name, chunk)  # b"": the end of that pipe

    def _close_pipe(self, fd: int) -> None:
        if self._pipes.pop(fd, None) is None:
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        if not self._pipes and not self._drained.done():
            self._drained.set_result(None)

    def _exited(self) -> None:
        if self._popen.poll() is None:
            return  # not yet (a pidfd is readable only once it has ended)
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._ended()

    def _waited(self, future: asyncio.Future[int]) -> None:
        self._ended()

    def _ended(self) -> None:
        if self._popen.returncode is not None:
            _UNWAITED.discard(self._popen.pid)
            if not self._exit.done():
                self._exit.set_result(self._popen.returncode)


def _dropped(name: str, chunk: bytes) -> None:
    pass


# The children ``spawn`` started that their ``Child`` has not waited for yet:
# added in the step that forks them, dropped once waited for. Every other
# child of the event loop's thread is asyncio's (its watcher knows) or an
# orphan handed to this subreaper (``Survivors.reap``).
_UNWAITED: set[int] = set()


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    output: Callable[[str, bytes], None],
) -> Child:
    """Start ``argv`` in a session of its own, stdin from /dev/null, its
    stdout and stderr given to ``output(name, chunk)`` as they are read
    (``b""`` at a pipe's end), on the running loop. Raises what
    ``subprocess.Popen`` raises (no such program or directory, ...)."""
    loop = asyncio.get_running_loop()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    _UNWAITED.add(popen.pid)
    return Child(loop, popen, {out_r: "stdout", err_r: "stderr"}, output)


async def stop_tree(proc: Waitable, grace: float, marker: str | None = None) -> None:
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


# prctl(2): orphaned descendants are re-parented to the nearest subreaper.
PR_SET_CHILD_SUBREAPER = 36
# A child still a zombie this long after it was first seen one is waited by
# nobody here (asyncio and subprocess wait for their own children at once).
ZOMBIE_GRACE = 10.0
REAP_AFTER = 0.5


class Survivors:
    """What a finished run left running, found without reading every process.

    The runner makes itself a child subreaper (Linux): whatever a run leaves
    behind once its own process has ended (a background child, a daemon that
    double-forked into a session of its own) is re-parented to the runner
    instead of init, so it is among the runner's direct children: a handful
    to look at, not the host's whole process table. Only when one of them
    carries the run's marker is every process searched for it (its
    descendants may have left the tree); ``kill_marked`` still does that on
    runner start, for the orphans of a crash. Without a subreaper (another
    OS, or prctl refused) every run ends with that search, as before.

    Orphans that end on their own become this process's zombies: ``reap``
    waits for those nobody else waits for."""

    def __init__(self) -> None:
        self.subreaper = False
        self._zombies: dict[int, float] = {}  # pid -> when first seen a zombie
        # The runner's loop, whose asyncio children are not ours to wait for.
        self._loop: asyncio.AbstractEventLoop | None = None

    def become_subreaper(self) -> bool:
        with contextlib.suppress(RuntimeError):  # called on the runner's loop
            self._loop = asyncio.get_running_loop()
        if sys.platform.startswith("linux") and self.children() is not None:
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                self.subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        return self.subreaper

    @staticmethod
    def children() -> list[int] | None:
        """This process's direct children that a job's leftovers can be: the
        main thread's child list (None where there is none to read).

        The kernel lists children per thread, under the thread that forked
        them, and hands an orphan to a subreaper's first live thread, the
        main one: every orphan is there, and so is every process started on
        the event loop (the main thread's). Processes other threads start
        (``git`` for a worktree) are waited for by their starter and carry no
        run's marker. One file instead of one per thread: reading all ~15
        was ~4 % of the event loop's time under load (issue #18)."""
        try:
            with open(f"{psutil.PROCFS_PATH}/self/task/{os.getpid()}/children", "rb") as f:
                return [int(pid) for pid in f.read().split()]
        except OSError:
            return None

    @staticmethod
    def _zombie(pid: int) -> bool:
        """Whether the child ``pid`` has ended (it stays to be waited for)."""
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            return os.waitid(os.P_PID, pid, flags) is not None
        except ChildProcessError:
            return False

    def escaped(
        self, marker: str, own: frozenset[int] = frozenset(), kids: list[int] | None = None
    ) -> bool | None:
        """Whether a live direct child carries ``marker`` (None: cannot tell).
        ``own``: children this process started and waits for (running jobs'
        processes), not looked at. ``kids``: ``children()`` if just read."""
        if not self.subreaper:
            return None
        if kids is None:
            kids = self.children()
        if kids is None:
            return None
        for pid in kids:
            if pid in own or self._zombie(pid):
                continue
            try:
                env = psutil.Process(pid).environ()
            except psutil.Error:  # gone, or not ours to read
                continue
            if env.get(MARKER_VAR) == marker:
                return True
        return False

    def settled(self, marker: str, own: frozenset[int] = frozenset()) -> bool:
        """``kill``'s common case, cheap enough for the event loop (this
        process's threads' child lists, an ``environ`` read per live child
        not in ``own``): True if no live direct child carries ``marker`` (the
        ended ones are reaped, as ``kill`` does). False: call ``kill`` (in a
        thread: it may read every process and wait for what it killed).
        In a thread, the two hops of the check itself were ~7 ms of a job's
        end under load (issue #18)."""
        if not self.subreaper:
            return False
        kids = self.children()
        if kids is None or self.escaped(marker, own, kids) is not False:
            return False
        self.reap(frozenset(), own, kids, prompt=True)
        return True

    def kill(self, marker: str, own: frozenset[int] = frozenset()) -> list[int]:
        """SIGKILL what the run ``marker`` left running (after it ended)."""
        kids = self.children() if self.subreaper else None
        escaped = self.escaped(marker, own, kids)
        killed = kill_marked(marker) if escaped is not False else []
        if self.subreaper:
            # Nothing killed: the children are the ones just read.
            self.reap(frozenset(killed), own, None if killed else kids)
        return killed

    def reap(
        self,
        killed: frozenset[int] = frozenset(),
        own: frozenset[int] = frozenset(),
        kids: list[int] | None = None,
        *,
        prompt: bool = False,
    ) -> list[int]:
        """Wait for orphans that ended: the ones just killed (given a moment to
        die), and zombies nobody else waits for. asyncio's child watcher says
        which children it waits for, ``spawn`` which it does; a zombie neither
        knows is reaped once seen unclaimed twice ``REAP_AFTER`` apart, or
        after ``ZOMBIE_GRACE`` where the watcher cannot tell. ``prompt``
        (called on the event loop's thread, which starts every child the
        two register, in the same step): at once, since no code of that
        thread can be between its fork and a wait of its own. Each sandboxed
        job leaves one such orphan, its PID namespace's first process, which
        bwrap does not wait for (at ~140 jobs/s, ~70 zombies waited for half
        a second each were looked at twice at every job's end: issue #18);
        those are waited for at once in any case (``_sandbox_init``).
        ``kids``: ``children()`` if just read."""
        if not self.subreaper:
            return []
        reaped: list[int] = []
        deadline = time.monotonic() + (1.0 if killed else 0.0)
        while True:
            now = time.monotonic()
            present = set(kids if kids is not None else self.children() or [])
            kids = None  # a second round reads them again
            watched = _watched(self._loop)
            wait = ZOMBIE_GRACE if watched is None else REAP_AFTER
            pending = set(killed & present)
            at_once = prompt and watched is not None
            for pid in present - own:
                if (
                    pid in _UNWAITED
                    or (watched is not None and pid in watched)
                    or not self._zombie(pid)
                ):
                    self._zombies.pop(pid, None)
                    continue
                first = self._zombies.setdefault(pid, now)
                if pid in killed or at_once or now - first >= wait or _sandbox_init(pid):
                    with contextlib.suppress(ChildProcessError):
                        if os.waitpid(pid, os.WNOHANG)[0] == pid:
                            reaped.append(pid)
                            self._zombies.pop(pid, None)
                            pending.discard(pid)
            for pid in list(self._zombies):
                if pid not in present:
                    del self._zombies[pid]
            if not pending or time.monotonic() >= deadline:
                return reaped
            time.sleep(0.01)


def _sandbox_init(pid: int) -> bool:
    """Whether ``pid`` is the first process of a PID namespace of its own (a
    sandbox's, bwrap's ``--unshare-pid``): nobody in this process started it
    (bwrap did, and does not wait for it), so, handed to this subreaper, it
    is waited for at once even where asyncio's watcher cannot say which
    children are its own (Python 3.14 and later, other loops). Linux only."""
    if not _STAT_OF_PID:
        return False
    try:
        with open(f"{psutil.PROCFS_PATH}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == b"1"
    except OSError:
        pass
    return False


def _watched(loop: asyncio.AbstractEventLoop | None = None) -> set[int] | None:
    """The children asyncio's child watcher waits for (None: cannot tell).
    Python 3.11: the watcher's own registry. 3.12 and 3.13: the default
    watcher (``PidfdChildWatcher``, Linux 5.3 on) keeps none; it waits for
    each child with a reader of that child's pidfd on ``loop`` (the runner's),
    whose first argument is the pid. No watcher yet: asyncio has started no
    child. 3.14 on (no watchers): None."""
    if sys.version_info < (3, 12):
        try:
            watcher = asyncio.get_event_loop_policy().get_child_watcher()
        except Exception:
            return None
    elif sys.version_info < (3, 14):
        # Not get_child_watcher(): deprecated (a warning), and it would make one.
        watcher = getattr(asyncio.get_event_loop_policy(), "_watcher", None)
        if watcher is None:
            return set()
    else:
        return None
    for name in ("_callbacks", "_threads"):  # PidfdChildWatcher (3.11), ThreadedChildWatcher
        registry = getattr(watcher, name, None)
        if isinstance(registry, dict):
            return set(registry.copy())
    if loop is not None and type(watcher).__name__ == "PidfdChildWatcher":
        return _pidfd_readers(loop, type(watcher))
    return None


def _pidfd_readers(loop: asyncio.AbstractEventLoop, watcher: type) -> set[int] | None:
    """The pids ``watcher``'s readers on ``loop`` wait for (None: not a loop
    with a selector). The map is copied in one step: the loop's thread may
    change it meanwhile (the periodic ``reap`` runs in another)."""
    keys = getattr(getattr(loop, "_selector", None), "_fd_to_key", None)
    if not isinstance(keys, dict):
        return None
    wait = getattr(watcher, "_do_wait", None)
    pids: set[int] = set()
    for key in keys.copy().values():
        reader = key.data[0] if isinstance(key.data, tuple) else None
        callback = getattr(reader, "_callback", None)
        if wait is not None and getattr(callback, "__func__", None) is wait:
            pids.add(reader._args[0])  # type: ignore[union-attr]
    return pids


def _same(start: float, recorded: float) -> bool:
    return abs(start - recorded) < START_SLACK


class PidRecords:
    """One file per running job: pid and start time of its process."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, job_id: str, pid: int, marker: str | None = None) -> None:
        # Written in place, not through a renamed temporary file: the process
        # runs already, so a runner killed before the record is whole loses it
        # either way (``reap`` drops a torn one), and a rename was ~150 us of
        # file system work per job here (issue #18).
        record = {"pid": pid, "start": start_time(pid), "marker": marker}
        fd = os.open(self.dir / f"{job_id}.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, jsontext.dumps(record).encode())
        finally:
            os.close(fd)

    def remove(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.dir}/{job_id}.json")

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
