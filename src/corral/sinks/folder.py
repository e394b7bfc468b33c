"""The queue folder's sink: a finished job's file leaves ``running/`` for
``done/`` (with the result footer, ``queue_file.footer``) or ``failed/``;
a file that never became a job goes to ``failed/`` with the reason
(``queue_file.rejection``).

A file is written under a free name (``name-2.md``... when taken), through a
temporary dot file and a rename, so a reader of done/ never sees half a file;
the file in running/ is removed only once its copy is complete (a crash in
between leaves it there, and the next sweep finishes it again)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from corral import queue_file
from corral.jobs import TERMINAL, JobState
from corral.models import Job

log = logging.getLogger(__name__)


class FolderSink:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.running = root / "running"
        self.done = root / "done"
        self.failed = root / "failed"

    def finish(self, job: Job) -> Path | None:
        """Move the file of ``job`` (a finished job of the queue folder whose
        file is in running/) to done/ or failed/ with its footer; where it
        went, or None when there was nothing to do."""
        if job.source != "folder" or job.source_ref is None or job.state not in TERMINAL:
            return None
        path = Path(job.source_ref)
        if path.parent != self.running:
            return None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None  # finished already
        target = free((self.done if job.state is JobState.DONE else self.failed) / path.name)
        write(target, raw + queue_file.footer(job).encode())
        path.unlink(missing_ok=True)
        log.info("queue file %s -> %s", path.name, target.parent.name, extra={"job_id": job.id})
        return target

    def reject(self, path: Path, raw: bytes, reason: str) -> Path:
        """``path`` never became a job: its content and ``reason`` go to failed/."""
        target = free(self.failed / path.name)
        write(target, raw + queue_file.rejection(reason).encode())
        path.unlink(missing_ok=True)
        log.warning("queue file %s rejected: %s", path.name, reason)
        return target


def free(path: Path) -> Path:
    """``path``, or ``name-2.md``, ``name-3.md``... if it is taken."""
    if not path.exists():
        return path
    for n in range(2, 10_000):
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(path)


def write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
