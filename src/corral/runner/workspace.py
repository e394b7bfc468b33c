"""Workspaces: where a local agent works.

A job with ``repo`` runs in a git worktree of it on branch ``corral/<job-id>``
off ``base`` (default: the repository's HEAD); a remote URL is cloned once
(bare) into a cache under the data dir and fetched on later use. Without
``repo``, a plain directory. Follow-up turns of a session reuse its workspace.

The cache clone's ``refs/heads/`` hold the worktrees' branches, so a fetch
never writes there: git refuses to move a branch a worktree has checked out,
and a ``corral/<job-id>`` branch pushed to the remote (the tracker's pull
requests) comes back on every later fetch. The remote's branches are fetched
into ``refs/remotes/origin/`` (its HEAD into ``refs/remotes/origin/HEAD``),
and a URL job's ``base`` is looked up there first.

Everything lives under ``DATA_DIR/workspaces/<session-id>``; what corral made
is recorded in ``DATA_DIR/workspaces/.meta/<session-id>.json``, and garbage
collection only ever removes what such a record names. Blocking (git runs as
a subprocess): call from a thread."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from corral import jsontext
from corral.executors.sandbox import Mount, real_under, ro, rw
from corral.models import Job

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
GIT_TIMEOUT = 300.0
# The agent's environment must not redirect corral's own git calls.
_GIT_ENV_DROP = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")


class WorkspaceError(Exception):
    """The job's repo or base cannot be used (bad input: retrying cannot help)."""


@dataclass
class Workspace:
    session_id: str
    path: Path
    repo: str | None = None  # as the job gave it
    source: str | None = None  # the git directory worktrees are made from
    branch: str | None = None
    base: str | None = None  # the commit the branch started from
    # The worktree's own git directory and the repository's common one, found
    # when corral made it: the runner's git calls name them rather than trust
    # the worktree's `.git` file, which the job can rewrite.
    gitdir: str | None = None
    common: str | None = None
    created_at: float = field(default_factory=time.time)
    used_at: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        return "worktree" if self.repo else "dir"


@dataclass
class Changes:
    """What a job changed in its worktree, against the branch's base."""

    branch: str
    base: str
    commit: str | None  # HEAD, when the agent committed
    files: list[dict[str, str]]  # {"status": "M", "path": "a.txt"}
    patch: bytes

    def summary(self) -> dict[str, object]:
        return {
            "branch": self.branch,
            "base": self.base,
            "commit": self.commit,
            "files": self.files,
            "patch_bytes": len(self.patch),
        }


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _GIT_ENV_DROP}


def git(*args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None) -> str:
    full = _clean_env()
    full.update(env or {})
    full.setdefault("GIT_TERMINAL_PROMPT", "0")
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=full,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as exc:
        raise WorkspaceError("git is not installed on this runner") from exc
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise WorkspaceError(f"git {args[0]}: {message}")
    return done.stdout.decode(errors="replace")


class Workspaces:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "workspaces"
        self.meta_dir = self.root / ".meta"
        self.cache = data_dir / "repos"
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()
        self._inside = f"{self._real_root}/"

    def path_of(self, session_id: str) -> Path:
        if not SAFE_ID.match(session_id):
            raise WorkspaceError(f"unsafe session id {session_id!r}")
        # Strings, not pathlib: once per job start (issue #18). The root is
        # resolved once; the id is one plain name, so only the workspace
        # itself may be a link to look through (``realpath`` of the whole
        # path walked every component of the data dir at every start).
        path = real_under(str(self._real_root), session_id)[0]
        if not path.startswith(self._inside):
            raise WorkspaceError(f"workspace {path} escapes {self.root}")
        return Path(path)

    # -- records -------------------------------------------------------------

    def load(self, session_id: str) -> Workspace | None:
        try:
            data = json.loads((self.meta_dir / f"{session_id}.json").read_text())
            data["path"] = Path(data["path"])
            return Workspace(**data)
        except (OSError, ValueError, TypeError):
            return None

    def save(self, ws: Workspace, *, new: bool = False) -> None:
        """Write ``ws``'s record: a ``new`` one in place (a torn one reads as
        none, as no record would), a replaced one through a renamed temporary
        file. The rename was ~150 us of a new job's start here (issue #18)."""
        # Its fields are plain values: no asdict (a deep copy of each).
        data = {f.name: getattr(ws, f.name) for f in fields(ws)}
        data["path"] = str(ws.path)
        text = jsontext.dumps(data).encode()
        path = f"{self.meta_dir}/{ws.session_id}.json"
        if new:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # a record that did not read (torn): replaced
                pass
            else:
                try:
                    os.write(fd, text)
                finally:
                    os.close(fd)
                return
        tmp = f"{self.meta_dir}/.{ws.session_id}.tmp"
        with open(tmp, "wb") as f:
            f.write(text)
        os.replace(tmp, path)

    def all(self) -> list[Workspace]:
        found = []
        for path in sorted(self.meta_dir.glob("*.json")):
            ws = self.load(path.stem)
            if ws is not None:
                found.append(ws)
        return found

    # -- making --------------------------------------------------------------

    def prepare(self, job: Job) -> Workspace:
        """The workspace for ``job``: its session's, made on the first turn."""
        path = self.path_of(job.session_id)
        return self._prepare(job, path, self.load(job.session_id))

    def prepare_folder(self, job: Job) -> Workspace | None:
        """``prepare`` for a job whose workspace is a plain folder (no repo,
        and its session's, if any, is no worktree): a few file system calls,
        cheap enough for the event loop. None: use ``prepare``."""
        if job.repo is not None:
            return None
        path = self.path_of(job.session_id)  # an unsafe id is refused before any file is read
        ws = self.load(job.session_id)
        if ws is not None and (ws.repo is not None or ws.branch is not None):
            return None
        return self._prepare(job, path, ws)

    def _prepare(self, job: Job, path: Path, ws: Workspace | None) -> Workspace:
        """``prepare`` with the session's record (``ws``) already read."""
        if ws is not None and ws.path.is_dir():
            if job.repo is not None and ws.repo is not None and job.repo != ws.repo:
                raise WorkspaceError(
                    f"the session's workspace is a worktree of {ws.repo}, not {job.repo}"
                )
            ws.used_at = time.time()
            if ws.branch is not None and ws.gitdir is None:  # a record of an older corral
                ws.gitdir, ws.common = _git_dirs(ws.path)
            self.save(ws)
            return ws
        if job.repo is None:
            path.mkdir(parents=True, exist_ok=True)
            ws = Workspace(session_id=job.session_id, path=path)
        else:
            ws = self._worktree(job, path)
        self.save(ws, new=True)
        return ws

    def _worktree(self, job: Job, path: Path) -> Workspace:
        assert job.repo is not None
        source = self._source(job.repo)
        with self._lock(source):
            base_ref = job.base or "HEAD"
            base = _commit_of(source, base_ref, remote=not job.repo.startswith("/"))
            if base is None:
                raise WorkspaceError(f"base {base_ref!r} is not a commit of {job.repo}")
            branch = f"corral/{job.id}"
            if path.exists() and any(path.iterdir()):
                raise WorkspaceError(f"workspace {path} exists and is not a worktree of corral's")
            git("worktree", "add", "--quiet", "-b", branch, str(path), base.strip(), cwd=source)
            gitdir, common = _git_dirs(path)
        return Workspace(
            session_id=job.session_id,
            path=path,
            repo=job.repo,
            source=str(source),
            branch=branch,
            base=base.strip(),
            gitdir=gitdir,
            common=common,
        )

    def _source(self, repo: str) -> Path:
        """The git directory to make worktrees from: the repo itself, or a
        bare clone of a URL kept in the cache (fetched on each use)."""
        if repo.startswith("/"):
            path = Path(repo)
            if not path.is_dir():
                raise WorkspaceError(f"repo {repo} does not exist on this runner")
            try:
                git("rev-parse", "--git-common-dir", cwd=path)
            except WorkspaceError as exc:
                raise WorkspaceError(f"repo {repo} is not a git repository") from exc
            if not git("rev-parse", "--verify", "--quiet", "HEAD", cwd=path).strip():
                raise WorkspaceError(f"repo {repo} has no commits")
            return path
        self.cache.mkdir(parents=True, exist_ok=True)
        clone = self.cache / (hashlib.sha256(repo.encode()).hexdigest()[:20] + ".git")
        with self._lock(clone):
            if (clone / "HEAD").exists():
                _fetch(clone)
            else:
                tmp = Path(tempfile.mkdtemp(dir=self.cache, prefix=".clone-"))
                try:
                    git("clone", "--quiet", "--bare", repo, str(tmp / "r.git"))
                    _fetch(tmp / "r.git")
                    (tmp / "r.git").rename(clone)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        return clone

    @contextlib.contextmanager
    def _lock(self, source: Path) -> Iterator[None]:
        """One git writer per repository across every runner of this host."""
        locks = self.meta_dir / "locks"
        locks.mkdir(exist_ok=True)
        name = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:20]
        with open(locks / f"{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the sandbox ---------------------------------------------------------

    def mounts(self, ws: Workspace) -> list[Mount]:
        """What a sandboxed job in ``ws`` reaches besides the host's read-only
        view: the workspace, writable; for a worktree also what a commit
        needs — the repository's git directory read-only, with its objects
        (but the packs), the ``corral/*`` branches and this worktree's own
        git directory writable. The repository's config and hooks stay
        read-only: git on the host (the runner's, the user's) would run what
        they name."""
        own = rw(ws.path)
        if ws.gitdir is None or ws.common is None:
            return own
        common, gitdir = Path(ws.common), Path(ws.gitdir)
        branches = [common / "refs/heads/corral", common / "logs/refs/heads/corral"]
        for d in branches:
            d.mkdir(parents=True, exist_ok=True)
        return [
            *ro(common),
            *rw(common / "objects", *branches, gitdir),
            *ro(common / "objects" / "pack", gitdir / "commondir", gitdir / "gitdir"),
            *own,
        ]

    # -- results -------------------------------------------------------------

    def changes(self, ws: Workspace) -> Changes | None:
        """The worktree's diff against its base (uncommitted and untracked
        files included, .gitignore respected), its changed files and its
        HEAD commit when the agent committed. The worktree's own index is
        left alone: a throwaway index holds the snapshot."""
        if ws.branch is None or ws.base is None or not ws.path.is_dir():
            return None
        dirs = _git_env(ws)
        with tempfile.TemporaryDirectory(prefix="corral-index-") as tmp:
            env = {**dirs, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git("read-tree", "HEAD", cwd=ws.path, env=env)
            git("add", "-A", cwd=ws.path, env=env)
            patch = subprocess.run(
                ["git", "diff", "--cached", "--binary", ws.base],
                cwd=ws.path,
                env={**_clean_env(), **env},
                capture_output=True,
                check=True,
                timeout=GIT_TIMEOUT,
            ).stdout
            status = git("diff", "--cached", "--name-status", "-z", ws.base, cwd=ws.path, env=env)
        head = git("rev-parse", "HEAD", cwd=ws.path, env=dirs).strip()
        return Changes(
            branch=ws.branch,
            base=ws.base,
            commit=head if head != ws.base else None,
            files=_name_status(status),
            patch=patch,
        )

    # -- removing ------------------------------------------------------------

    def remove(self, ws: Workspace, *, delete_branch: bool = False) -> None:
        """Remove a workspace corral made (and, if asked, the branch it made)."""
        path = self.path_of(ws.session_id)
        if ws.path.resolve() != path:
            raise WorkspaceError(f"record of {ws.session_id} names {ws.path}, not {path}")
        if ws.source is not None:
            with self._lock(Path(ws.source)):
                if path.exists():
                    with contextlib.suppress(WorkspaceError):
                        git("worktree", "remove", "--force", str(path), cwd=ws.source)
                with contextlib.suppress(WorkspaceError):
                    git("worktree", "prune", cwd=ws.source)
                if delete_branch and ws.branch and ws.branch.startswith("corral/"):
                    with contextlib.suppress(WorkspaceError):
                        git("branch", "-D", ws.branch, cwd=ws.source)
        if path.exists():
            shutil.rmtree(path)
        (self.meta_dir / f"{ws.session_id}.json").unlink(missing_ok=True)


# Into namespaces no worktree checks out (see the module docstring); tags are
# not checked out either. HEAD comes as a plain ref: the remote's default branch.
FETCH_REFSPECS = (
    "+HEAD:refs/remotes/origin/HEAD",
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
)


def _fetch(clone: Path) -> None:
    git("fetch", "--quiet", "--no-write-fetch-head", "origin", *FETCH_REFSPECS, cwd=clone)


def _commit_of(source: Path, ref: str, *, remote: bool) -> str | None:
    """The commit ``ref`` names in ``source``; for a clone of a URL
    (``remote``) the remote's branch of that name wins over the clone's own
    refs (its ``refs/heads/`` are as old as the clone, or corral's)."""
    candidates = [ref]
    if remote:
        branch = ref.removeprefix("refs/heads/")
        candidates.insert(0, f"refs/remotes/origin/{branch}")
    for candidate in candidates:
        try:
            found = git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", cwd=source)
        except WorkspaceError:
            continue
        if found.strip():
            return found.strip()
    return None


def _git_dirs(worktree: Path) -> tuple[str, str]:
    """A worktree's own git directory and its repository's common one."""
    gitdir = git("rev-parse", "--absolute-git-dir", cwd=worktree).strip()
    common = git("rev-parse", "--git-common-dir", cwd=worktree).strip()
    return gitdir, str((worktree / common).resolve())


def _git_env(ws: Workspace) -> dict[str, str]:
    """Git's view of ``ws`` from what corral recorded (never from files the
    job could have rewritten: its `.git` file, its git directory's
    `commondir`)."""
    if ws.gitdir is None or ws.common is None:
        return {}
    return {"GIT_DIR": ws.gitdir, "GIT_COMMON_DIR": ws.common, "GIT_WORK_TREE": str(ws.path)}


def _name_status(raw: str) -> list[dict[str, str]]:
    """Parse ``git diff --name-status -z``: status, path (two paths for renames)."""
    parts = raw.split("\0")
    files = []
    i = 0
    while i < len(parts) - 1:
        status = parts[i]
        if status[:1] in ("R", "C"):
            files.append({"status": status[0], "from": parts[i + 1], "path": parts[i + 2]})
            i += 3
        else:
            files.append({"status": status, "path": parts[i + 1]})
            i += 2
    return files
