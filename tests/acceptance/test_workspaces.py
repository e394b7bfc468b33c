"""Workspaces with a real server: shell jobs in git worktrees, their artifacts,
`corral workspaces ls|gc`, and the agent start-up guard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.runner.workspace import git
from corral.testing import ServerProcess, git_repo

from ._helpers import kill_leftovers, marker, pids_matching, running_server, submit, wait_job


@pytest.fixture(scope="module")
def mute() -> str:
    return f"30.{marker()}"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, mute: str) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("ws")
    config = root / "corral.toml"
    # "mute": an agent that never prints a line (start-up guard after 1 s).
    config.write_text(
        "max_infra_retries = 0\n\n[runner]\nproviders = ['shell', 'mute']\nkill_grace = 1\n\n"
        "[providers.mute]\nkind = 'claude-code'\nstartup_timeout = 1\n"
        f"command = ['sh', '-c', 'sleep {mute}']\n"
    )
    try:
        with running_server(root / "data", args=("--config", str(config), "--no-queue")) as s:
            yield s
    finally:
        kill_leftovers(mute)


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def ws_ls(srv: ServerProcess) -> list[dict[str, Any]]:
    out = srv.cli("workspaces", "ls", "--json", "--data-dir", str(srv.data_dir))
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def gc(srv: ServerProcess, *args: str) -> str:
    out = srv.cli("workspaces", "gc", "--data-dir", str(srv.data_dir), *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_shell_job_in_a_worktree_and_gc(
    srv: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "repo")
    git("branch", "mine", cwd=repo)
    job = wait_job(http, submit(http, "echo hi > x.txt && git status --short", repo=str(repo)))
    assert job["state"] == "done" and "?? x.txt" in job["result"], job
    changes = http.get(f"/jobs/{job['id']}/artifacts/changes.json").json()
    assert changes["files"] == [{"status": "A", "path": "x.txt"}]
    plain = wait_job(http, submit(http, "echo plain > p.txt"))
    assert plain["state"] == "done"
    assert http.get(f"/jobs/{plain['id']}/artifacts").json() == []  # no repo, no diff

    rows = {r["session_id"]: r for r in ws_ls(srv)}
    assert rows[job["session_id"]]["kind"] == "worktree"
    assert rows[job["session_id"]]["branch"] == f"corral/{job['id']}"
    assert rows[plain["session_id"]]["kind"] == "dir"

    # Young workspaces are kept; a dry run removes nothing.
    assert "removed 0" in gc(srv, "--older-than", "1h")
    assert "would remove" in gc(srv, "--older-than", "0s", "--dry-run")
    assert {job["session_id"], plain["session_id"]} <= {r["session_id"] for r in ws_ls(srv)}

    # A session with a turn still running is kept even when old.
    m = f"30.{marker()}"
    busy = submit(http, f"sleep {m}")
    try:
        wait_job(http, busy, "running")
        gc(srv, "--older-than", "0s")
        left = {r["session_id"] for r in ws_ls(srv)}
        assert job["session_id"] not in left and plain["session_id"] not in left
        busy_session = http.get(f"/jobs/{busy}").json()["session_id"]
        assert busy_session in left
    finally:
        http.post(f"/jobs/{busy}/cancel")
        kill_leftovers(m)

    # The worktree is gone; the user's checkout, its branches and corral's branch stay.
    assert not (srv.data_dir / "workspaces" / job["session_id"]).exists()
    assert git("worktree", "list", "--porcelain", cwd=repo).count("worktree ") == 1
    branches = git("branch", "--format=%(refname:short)", cwd=repo).split()
    assert sorted(branches) == sorted(["main", "mine", f"corral/{job['id']}"])
    assert (repo / "README.md").read_text() == "hello\n" and not (repo / "x.txt").exists()

    # --branches also deletes the corral/* branch of a removed worktree.
    again = wait_job(http, submit(http, "echo again > y.txt", repo=str(repo)))
    gc(srv, "--older-than", "0s", "--branches")
    branches = git("branch", "--format=%(refname:short)", cwd=repo).split()
    assert f"corral/{again['id']}" not in branches and "mine" in branches


def test_bad_repo_fails_at_once_with_the_reason(http: httpx.Client, tmp_path: Path) -> None:
    job = wait_job(http, submit(http, "true", repo=str(tmp_path / "missing"), max_attempts=3))
    assert job["state"] == "failed" and job["failure"] == "input", job
    assert job["attempt"] == 1 and "does not exist" in job["error"]
    resp = http.post("/jobs", json={"prompt": "x", "repo": "relative/path"})
    assert resp.status_code == 422 and "absolute path or a URL" in resp.text


def test_agent_that_never_starts_is_killed(
    srv: ServerProcess, http: httpx.Client, mute: str
) -> None:
    accepted = http.post("/jobs", json={"prompt": "hello", "provider": "mute"}).json()
    job = wait_job(http, accepted["job_id"], timeout=30)
    assert job["state"] == "failed" and job["reason"] == "hang_startup", job
    assert job["failure"] == "infra" and "startup_timeout" in job["error"]
    assert pids_matching(mute) == []


def test_a_job_branch_pushed_to_the_remote_leaves_the_repo_usable(
    srv: ServerProcess, http: httpx.Client, tmp_path: Path
) -> None:
    """Issue #15's defect, end to end: a job commits on its branch, the branch
    is pushed to the repository's remote (as the tracker's write-back does)
    while its worktree exists, and the next job on that repository still runs."""
    remote = tmp_path / "remote.git"
    git("clone", "--quiet", "--bare", str(git_repo(tmp_path / "upstream")), str(remote))
    url = f"file://{remote}"
    commit = (
        "echo fix > fix.txt && git add fix.txt && git -c user.name=a -c user.email=a@b commit -qm f"
    )
    first = wait_job(http, submit(http, commit, repo=url))
    assert first["state"] == "done", first
    branch = f"corral/{first['id']}"
    (clone,) = (srv.data_dir / "repos").glob("*.git")
    git("push", "--quiet", "origin", branch, cwd=clone)
    assert git("ls-remote", "--heads", url, branch, cwd=tmp_path).strip()

    second = wait_job(http, submit(http, "ls", repo=url))
    assert second["state"] == "done", second
    assert "README.md" in second["result"] and "fix.txt" not in second["result"]
