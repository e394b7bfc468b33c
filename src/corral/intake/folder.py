"""The queue folder: every ``*.md`` file dropped in it becomes a job.

    queue/          new files (picked up within a second: file watching, plus a scan at start)
    queue/running/  files whose job is not finished
    queue/done/     finished files, with a result footer appended
    queue/failed/   failed jobs and rejected files, with the reason appended

(the last two are written by the folder sink, ``corral.sinks.folder``).

A file is moved to running/ (an atomic rename) before its job is submitted
with an idempotency key made of its name and content hash, so a crash between
the two steps re-submits the same job instead of a second one; at start,
running/ is reconciled with the jobs table. Files still being written (dot
files, ``*.tmp``, ``*.swp``, ``~`` backups, files modified in the last
SETTLE_SECONDS, and on Linux files any process still has open for writing)
are left alone until they are complete. Symbolic links and other files that
are not regular files go to failed/ unread: a link could point anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import stat
import time
from pathlib import Path

from watchfiles import Change, awatch

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

from corral import queue_file
from corral.errors import CorralError
from corral.intake.submit import submit
from corral.jobs import TERMINAL
from corral.models import Job, JobCreate
from corral.protocol import topics
from corral.services import Services
from corral.sinks.folder import FolderSink, free

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.2
# Where it cannot be told whether a writer still has the file open (not
# Linux, another user's file, a file system without leases): quiet this long.
QUIET_SECONDS = 2.0
RETRY_SECONDS = 2.0  # after a database or disk error


def wanted(name: str) -> bool:
    return (
        name.endswith(".md")
        and not name.startswith(".")
        and not name.endswith(("~", ".tmp", ".swp"))
    )


def idempotency_key(name: str, raw: bytes) -> str:
    return f"folder:{name}:{hashlib.sha256(raw).hexdigest()[:32]}"


def prepare(root: Path) -> None:
    """Create the folders (before the server says it is up)."""
    for d in (root, root / "running", root / "done", root / "failed"):
        d.mkdir(parents=True, exist_ok=True)


class FolderIntake:
    def __init__(self, root: Path, services: Services, sink: FolderSink | None = None) -> None:
        """``sink`` writes finished and rejected files (by default into ``root``)."""
        self.root = root
        self.running = root / "running"
        self.sink = sink or FolderSink(root)
        self.services = services
        self.store = services.store
        self._rescan: asyncio.TimerHandle | None = None
        self._rescans: set[asyncio.Task[None]] = set()
        self._scan_lock = asyncio.Lock()

    def prepare(self) -> None:
        prepare(self.root)

    async def run(self) -> None:
        self.prepare()
        with self.store.bus.subscribe(topics.JOBS, maxsize=100_000) as finished:
            try:
                await self.reconcile()
            except (CorralError, OSError) as exc:
                log.warning("queue folder: reconcile failed (%s); retrying later", exc)
            await self._scan_safely()
            watcher = asyncio.create_task(self._watch(), name="corral-queue-watch")
            try:
                while True:
                    messages = await finished.get(timeout=10.0)
                    try:
                        if finished.overflowed or not messages:
                            finished.overflowed = False
                            await self.reconcile()  # cheap insurance: lists running/
                        # A folder job's file is in running/ before the job
                        # exists: with none there, no finished job is ours (and
                        # the read of each job is spared: issue #18).
                        if not _holds_md(self.running):
                            continue
                        for job_id in messages:
                            if isinstance(job_id, str):
                                self.sink.finish(await self.store.jobs.get(job_id))
                    except (CorralError, OSError) as exc:
                        # The database or the disk failed us: nothing is lost (the
                        # file stays in running/); the next reconcile finishes it.
                        log.warning("queue folder: %s; will reconcile", exc)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                if self._rescan is not None:
                    self._rescan.cancel()
                for task in list(self._rescans):
                    task.cancel()
                await asyncio.gather(*self._rescans, return_exceptions=True)

    async def _watch(self) -> None:
        def relevant(change: Change, path: str) -> bool:
            return change != Change.deleted and wanted(os.path.basename(path))

        async for _ in awatch(
            self.root, recursive=False, debounce=100, step=20, watch_filter=relevant
        ):
            await self._scan_safely()

    async def _scan_safely(self) -> None:
        try:
            await self.scan()
        except (CorralError, OSError) as exc:
            # A file moved to running/ whose job could not be created yet is
            # submitted by the next reconcile (same idempotency key).
            log.warning("queue folder: scan failed (%s); retrying", exc)
            self._schedule_rescan(retry=True)

    async def scan(self) -> None:
        """Take every settled file in the folder, most urgent first."""
        async with self._scan_lock:
            now = time.time()
            taken: list[tuple[int, float, Path, bytes, JobCreate | str]] = []
            unsettled = False
            refused: list[tuple[Path, str]] = []
            for entry in os.scandir(self.root):
                if not wanted(entry.name):
                    continue
                path = Path(entry.path)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone already (another replica took it)
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    refused.append((path, not_regular(entry.name, st.st_mode)))
                    continue
                age = now - st.st_mtime
                if age < SETTLE_SECONDS:
                    unsettled = True
                    continue
                try:
                    raw, writing = read_complete(path)
                except NotRegular as exc:
                    refused.append((path, str(exc)))
                    continue
                except OSError:
                    continue  # gone already (another replica took it)
                if writing or (writing is None and age < QUIET_SECONDS):
                    unsettled = True  # still being written: not a job yet
                    continue
                spec: JobCreate | str
                try:
                    spec = queue_file.parse(
                        raw.decode("utf-8"), source_ref=entry.name, base_dir=self.root
                    )
                except UnicodeDecodeError:
                    spec = "the file is not UTF-8 text"
                except CorralError as exc:
                    spec = exc.message
                priority = spec.priority if isinstance(spec, JobCreate) else -1
                taken.append((priority, st.st_mtime, path, raw, spec))
            for path, reason in refused:
                self.sink.reject(path, b"", reason)
            for _, _, path, raw, spec in sorted(taken, key=lambda t: (t[0], t[1])):
                if isinstance(spec, str):
                    self.sink.reject(path, raw, spec)
                else:
                    await self._submit(path, raw, spec)
            if unsettled:
                self._schedule_rescan()

    def _schedule_rescan(self, *, retry: bool = False) -> None:
        if self._rescan is None or self._rescan.cancelled():
            loop = asyncio.get_running_loop()

            async def again() -> None:
                if retry:
                    with contextlib.suppress(CorralError, OSError):
                        await self.reconcile()
                await self._scan_safely()

            def fire() -> None:
                self._rescan = None
                task = asyncio.create_task(again(), name="corral-queue-rescan")
                self._rescans.add(task)  # the loop keeps only a weak reference
                task.add_done_callback(self._rescans.discard)

            self._rescan = loop.call_later(RETRY_SECONDS if retry else SETTLE_SECONDS, fire)

    async def _submit(self, path: Path, raw: bytes, spec: JobCreate) -> None:
        dest = free(self.running / path.name)
        try:
            os.rename(path, dest)  # atomic: this replica owns the file now
        except FileNotFoundError:
            return
        await self._ensure_job(dest, raw, spec)

    async def _ensure_job(self, path: Path, raw: bytes, spec: JobCreate) -> Job | None:
        spec = spec.model_copy(
            update={
                "idempotency_key": idempotency_key(path.name, raw),
                "source_ref": str(path),
            }
        )
        try:
            job, _ = await submit(self.services, spec)
        except CorralError as exc:
            if not 400 <= exc.status < 500:
                raise  # the database: nothing lost, the next reconcile retries
            # The file itself is wrong: prose naming no provider with no default
            # (Unroutable), an unknown provider or session...
            self.sink.reject(path, raw, exc.message)
            return None
        if job.state in TERMINAL:
            self.sink.finish(job)
        return job

    async def reconcile(self) -> None:
        """Files in running/: submit the ones whose job was never created,
        finish the ones whose job ended."""
        for path in sorted(self.running.glob("*.md")):
            try:
                raw = read_regular(path)
            except NotRegular as exc:
                self.sink.reject(path, b"", str(exc))
                continue
            except OSError:
                continue
            job = await self.store.jobs.by_idempotency_key(idempotency_key(path.name, raw))
            if job is None:
                try:
                    spec = queue_file.parse(
                        raw.decode("utf-8"), source_ref=path.name, base_dir=self.root
                    )
                except (UnicodeDecodeError, CorralError) as exc:
                    self.sink.reject(path, raw, str(exc))
                    continue
                await self._ensure_job(path, raw, spec)
            elif job.state in TERMINAL:
                self.sink.finish(job)


class NotRegular(OSError):
    """A symbolic link, FIFO, socket or device where a job file was expected."""


def not_regular(name: str, mode: int) -> str:
    if stat.S_ISLNK(mode):
        return (
            f"{name} is a symbolic link: links in the queue folder are not followed "
            "(they could point anywhere); put the file itself in the folder"
        )
    return f"{name} is not a regular file; put a Markdown file in the queue folder"


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path`` if it is a regular file (never
    following a link, never blocking on a FIFO); else NotRegular."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link since it was listed
            raise NotRegular(not_regular(path.name, stat.S_IFLNK)) from exc
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegular(not_regular(path.name, mode))
    return fd


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def read_regular(path: Path) -> bytes:
    fd = _open_regular(path)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def read_complete(path: Path) -> tuple[bytes, bool | None]:
    """The content of the regular file ``path``, and whether a process still
    has it open for writing (None: cannot be told here).

    On Linux a read lease cannot be taken while any process has the file
    open for writing, so taking one says the writer is done; the content is
    read while it is held (a writer opening the file meanwhile waits until
    it is released, microseconds later). The lease's break signal is SIGURG,
    which is ignored by default: SIGIO, the default, would end the process."""
    fd = _open_regular(path)
    try:
        lease = getattr(fcntl, "F_SETLEASE", None) if fcntl is not None else None
        if lease is None:
            return _read_fd(fd), None
        try:
            fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
            fcntl.fcntl(fd, lease, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return b"", True
            return _read_fd(fd), None  # EACCES (not our file), EINVAL (no leases here)
        try:
            return _read_fd(fd), False
        finally:
            fcntl.fcntl(fd, lease, fcntl.F_UNLCK)
    finally:
        os.close(fd)


def _holds_md(folder: Path) -> bool:
    """Whether ``folder`` holds a ``.md`` file (one directory read, stopped
    at the first: asked after every batch of finished jobs, where pathlib's
    glob was ~2 % of the event loop's time under load; issue #18)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.endswith(".md") for e in entries)
    except FileNotFoundError:
        return False
