"""Workspaces: real git repositories and worktrees (no database needed)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from corral.jobs import JobState
from corral.models import Job, new_id
from corral.runner.workspace import WorkspaceError, Workspaces, git
from corral.testing import git_repo


def make_repo(path: Path) -> Path:
    return git_repo(path, {"README.md": "hello\n", ".gitignore": "*.log\n"})


def job(session: str | None = None, **fields: object) -> Job:
    now = datetime.now(UTC)
    data: dict[str, object] = {
        "id": new_id(),
        "session_id": session or new_id(),
        "turn": 1,
        "state": JobState.ASSIGNED,
        "provider": "shell",
        "priority": 2,
        "attempt": 1,
        "max_attempts": 1,
        "source": "api",
        "epoch": 1,
        "created_at": now,
        "available_at": now,
        "updated_at": now,
        **fields,
    }
    return Job.model_validate(data)


def test_worktree_per_session_and_changes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git("rev-parse", "HEAD", cwd=repo).strip()
    spaces = Workspaces(tmp_path / "data")
    j = job(repo=str(repo))
    ws = spaces.prepare(j)
    assert ws.kind == "worktree" and ws.branch == f"corral/{j.id}" and ws.base == head
    assert ws.path == (tmp_path / "data" / "workspaces" / j.session_id).resolve()
    assert (ws.path / "README.md").read_text() == "hello\n"
    # The user's checkout is untouched and stays on its branch.
    assert git("branch", "--show-current", cwd=repo).strip() == "main"

    (ws.path / "README.md").write_text("hello\nworld\n")
    (ws.path / "new.txt").write_text("new\n")
    (ws.path / "debug.log").write_text("ignored\n")
    changes = spaces.changes(ws)
    assert changes is not None and changes.commit is None
    assert sorted((f["status"], f["path"]) for f in changes.files) == [
        ("A", "new.txt"),
        ("M", "README.md"),
    ]
    assert b"+world" in changes.patch and b"debug.log" not in changes.patch
    # The patch applies to the base in a clean checkout.
    check = tmp_path / "check"
    git("clone", "--quiet", str(repo), str(check))
    subprocess.run(["git", "apply", "-"], cwd=check, input=changes.patch, check=True)
    assert (check / "new.txt").read_text() == "new\n"
    # The worktree's own index was not touched (nothing staged by corral).
    assert git("diff", "--cached", "--name-only", cwd=ws.path) == ""

    # A follow-up turn of the session reuses the worktree; a commit is reported.
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qam", "agent", cwd=ws.path)
    again = spaces.prepare(job(session=j.session_id, repo=str(repo), turn=2))
    assert again.path == ws.path and again.branch == ws.branch
    changes = spaces.changes(again)
    assert changes is not None
    assert changes.commit == git("rev-parse", "HEAD", cwd=ws.path).strip() != head


def test_base_and_bad_input(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = git("rev-parse", "HEAD", cwd=repo).strip()
    (repo / "README.md").write_text("second\n")
    git("commit", "--quiet", "-am", "second", cwd=repo)
    git("tag", "v1", first, cwd=repo)
    spaces = Workspaces(tmp_path / "data")
    ws = spaces.prepare(job(repo=str(repo), base="v1"))
    assert ws.base == first and (ws.path / "README.md").read_text() == "hello\n"
    with pytest.raises(WorkspaceError, match="is not a commit"):
        spaces.prepare(job(repo=str(repo), base="no-such-branch"))
    with pytest.raises(WorkspaceError, match="does not exist"):
        spaces.prepare(job(repo=str(tmp_path / "missing")))
    (tmp_path / "plain").mkdir()
    with pytest.raises(WorkspaceError, match="not a git repository"):
        spaces.prepare(job(repo=str(tmp_path / "plain")))
    with pytest.raises(WorkspaceError, match="unsafe session id"):
        spaces.prepare(job(session="../../etc"))


def test_url_is_cloned_once_into_the_cache(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "upstream")
    url = f"file://{repo}"
    spaces = Workspaces(tmp_path / "data")
    a = spaces.prepare(job(repo=url))
    assert a.source is not None and Path(a.source).parent == tmp_path / "data" / "repos"
    (repo / "later.txt").write_text("later\n")
    git("add", "-A", cwd=repo)
    git("commit", "--quiet", "-m", "later", cwd=repo)
    b = spaces.prepare(job(repo=url))
    assert b.source == a.source  # one clone, fetched again
    assert (b.path / "later.txt").exists() and not (a.path / "later.txt").exists()


def test_remove_only_touches_what_corral_made(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git("branch", "feature", cwd=repo)
    spaces = Workspaces(tmp_path / "data")
    plain = spaces.prepare(job())
    ws = spaces.prepare(job(repo=str(repo)))
    assert {w.session_id for w in spaces.all()} == {plain.session_id, ws.session_id}
    spaces.remove(ws, delete_branch=True)
    spaces.remove(plain)
    assert not ws.path.exists() and not plain.path.exists() and spaces.all() == []
    branches = git("branch", "--format=%(refname:short)", cwd=repo).split()
    assert sorted(branches) == ["feature", "main"]
    assert git("worktree", "list", "--porcelain", cwd=repo).count("worktree ") == 1
    assert (repo / "README.md").exists()


def commit_all(worktree: Path, message: str) -> str:
    git("add", "-A", cwd=worktree)
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", message, cwd=worktree)
    return git("rev-parse", "HEAD", cwd=worktree).strip()


def test_a_job_branch_pushed_to_the_remote_does_not_break_the_next_job(tmp_path: Path) -> None:
    """Issue #15's defect: once ``corral/<job-id>`` was pushed to the remote
    while its worktree existed, every later fetch of the shared clone failed
    ("refusing to fetch into branch ... checked out"), and with it every job
    on that repository."""
    remote = tmp_path / "remote.git"
    git("clone", "--quiet", "--bare", str(make_repo(tmp_path / "upstream")), str(remote))
    url = f"file://{remote}"
    spaces = Workspaces(tmp_path / "data")
    first = spaces.prepare(job(repo=url))
    assert first.source is not None and first.branch is not None
    (first.path / "fix.txt").write_text("fixed\n")
    fixed = commit_all(first.path, "fix")
    # What the tracker's write-back does: the job's branch goes to the remote.
    git("push", "--quiet", "origin", first.branch, cwd=first.source)
    # Meanwhile a person pushes a review commit onto that branch, and main moves on.
    dev = tmp_path / "dev"
    git("clone", "--quiet", url, str(dev))
    git("checkout", "--quiet", first.branch, cwd=dev)
    (dev / "review.txt").write_text("review\n")
    reviewed = commit_all(dev, "review")
    git("checkout", "--quiet", "main", cwd=dev)
    (dev / "later.txt").write_text("later\n")
    later = commit_all(dev, "later")
    git("push", "--quiet", "origin", "main", first.branch, cwd=dev)

    second = spaces.prepare(job(repo=url))
    assert second.source == first.source and second.base == later
    assert (second.path / "later.txt").exists() and not (second.path / "fix.txt").exists()
    # The fetch left the checked-out branch and its worktree alone.
    assert git("rev-parse", first.branch, cwd=first.source).strip() == fixed
    assert git("status", "--porcelain", cwd=first.path) == ""
    assert not (first.path / "review.txt").exists()
    # A base naming a branch is the remote's as of now, not the clone's copy
    # from the day it was cloned (nor corral's own branch of that name).
    assert spaces.prepare(job(repo=url, base="main")).base == later
    assert spaces.prepare(job(repo=url, base=first.branch)).base == reviewed
    assert (
        spaces.prepare(job(repo=url, base="main~1")).base
        == git("rev-parse", "main~1", cwd=dev).strip()
    )


def test_a_plain_folder_is_prepared_in_place_and_a_worktree_is_not(tmp_path: Path) -> None:
    """``prepare_folder`` (the runner calls it on the event loop) makes a job's
    plain folder and its record as ``prepare`` does, and leaves anything git
    would run for (a repo job, a later turn of a worktree's session) to
    ``prepare`` in a thread."""
    repo = make_repo(tmp_path / "repo")
    spaces = Workspaces(tmp_path / "data")
    first = job()
    plain = spaces.prepare_folder(first)
    assert plain is not None and plain.kind == "dir" and plain.path.is_dir()
    assert spaces.load(first.session_id) == plain
    again = spaces.prepare_folder(job(session=first.session_id, turn=2))
    assert again is not None and again.path == plain.path and again.used_at >= plain.used_at
    assert spaces.prepare_folder(job(repo=str(repo))) is None
    tree = spaces.prepare(job(repo=str(repo)))
    assert spaces.prepare_folder(job(session=tree.session_id, turn=2)) is None
    with pytest.raises(WorkspaceError, match="unsafe"):
        spaces.prepare_folder(job(session="../../etc"))


def test_a_torn_record_reads_as_none_and_is_replaced(tmp_path: Path) -> None:
    """A new record is written in place (no renamed temporary file): one torn
    by a crash reads as no record, and the next turn writes a whole one."""
    spaces = Workspaces(tmp_path / "data")
    first = job()
    made = spaces.prepare_folder(first)
    assert made is not None
    record = tmp_path / "data" / "workspaces" / ".meta" / f"{first.session_id}.json"
    record.write_text(record.read_text()[:10])
    assert spaces.load(first.session_id) is None
    again = spaces.prepare_folder(job(session=first.session_id, turn=2))
    assert again is not None and again.path == made.path
    assert spaces.load(first.session_id) == again
    assert [p.name for p in record.parent.iterdir()] == [record.name]  # no temporary left


def test_a_workspace_path_never_leads_out_of_the_workspaces(tmp_path: Path) -> None:
    """A session's workspace is one plain name under the (resolved) root; a
    workspace that is a link is looked through, and refused if it leads out."""
    (tmp_path / "real").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "real")  # a data dir reached through a link
    spaces = Workspaces(tmp_path / "data")
    root = (tmp_path / "real" / "workspaces").resolve()
    assert spaces.path_of("s1") == root / "s1"  # not made yet
    (root / "s1").mkdir()
    assert spaces.path_of("s1") == root / "s1"
    (root / "s2").symlink_to(root / "s1")
    assert spaces.path_of("s2") == root / "s1"
    (tmp_path / "outside").mkdir()
    (root / "s3").symlink_to(tmp_path / "outside")
    for bad in ("s3", "../s1", "a/b", ""):
        with pytest.raises(WorkspaceError):
            spaces.path_of(bad)
