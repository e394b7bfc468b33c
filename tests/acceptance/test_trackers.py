"""Issue-tracker intake with a real `corral serve`, a fake GitHub (its REST
wire format) and a real bare git repository as the remote: labelled issues
of allowlisted repositories become jobs, results come back as a comment,
labels and a pull request, comments continue the session, closing cancels,
the kill switch holds, P0 goes first, webhooks pick issues up at once."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.queue_file import MARK
from corral.runner.workspace import git
from corral.testing import git_repo, start_server
from tests.fakes.forge import FakeForge

from ._helpers import dashboard_page, get_job, running_server, wait_for, wait_job

REPO = "acme/app"
SECRET = "hook-secret-0123456789"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    git("clone", "--quiet", "--bare", str(git_repo(tmp_path / "upstream")), str(bare))
    return bare


@pytest.fixture(params=["github", "forgejo"])
def forge(request: pytest.FixtureRequest, remote: Path) -> Iterator[FakeForge]:
    with FakeForge(request.param) as fake:
        fake.add_repo(REPO, remote)
        fake.add_repo("stranger/repo", remote)
        yield fake


def write_config(root: Path, forge: FakeForge, **extra: Any) -> Path:
    settings: dict[str, Any] = {
        "enabled": True,
        "poll_interval": 1,
        "repos": [REPO],
        "provider": "shell",  # the tests' issues are shell scripts: no model needed
        "preamble": "",
        **extra,
    }
    lines = [
        "[runner]",
        "providers = ['shell']",
        f"slots = {settings.pop('slots', 2)}",
        "",
        "[[trackers]]",
        "name = 'hub'",
        f"kind = '{forge.kind}'",
        f"base_url = '{forge.base_url}'",
        f"token = '{forge.token}'",
        f"webhook_secret = '{SECRET}'",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path = root / "corral.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serving(root: Path, forge: FakeForge, **extra: Any) -> Any:
    config = write_config(root, forge, **extra)
    return running_server(root / "data", args=("--config", str(config), "--no-queue"))


def result_comments(forge: FakeForge, number: int) -> list[str]:
    return [c for c in forge.comments_on(REPO, number) if MARK in c]


def job_of(http: httpx.Client, number: int) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        items = http.get("/trackers/hub").json()["items"] or []
        return next((i for i in items if i["number"] == number), None)

    item = wait_for(found, timeout=30, what=f"issue #{number} taken")
    return get_job(http, item["job_id"])


def test_an_issue_becomes_a_job_whose_result_comes_back(
    tmp_path: Path, forge: FakeForge, remote: Path
) -> None:
    n = forge.open_issue(REPO, "Add a fix file", "echo fixed > fix.txt", ["corral", "P1"])
    quiet = forge.open_issue(REPO, "Not for corral", "echo no > no.txt", ["bug"])
    with (
        running_server(
            tmp_path / "data", args=("--config", str(write_config(tmp_path, forge)), "--no-queue")
        ) as srv,
        srv.http() as http,
    ):
        job = job_of(http, n)
        assert job["source"] == "tracker" and job["source_ref"].endswith(f"/issues/{n}")
        assert job["priority"] == 1 and job["idempotency_key"] == f"tracker:hub:{REPO}#{n}"
        job = wait_job(http, job["id"], timeout=60)
        assert job["state"] == "done", job
        wait_for(lambda: result_comments(forge, n), timeout=30, what="the result comment")
        wait_for(lambda: "corral:done" in forge.labels_on(REPO, n), timeout=30, what="done label")
        labels = forge.labels_on(REPO, n)
        assert "corral:queued" not in labels and "corral:running" not in labels
        (comment,) = result_comments(forge, n)
        assert job["id"] in comment and "provider: shell" in comment
        # The branch went to the remote, and a pull request was opened from it.
        branch = f"corral/{job['id']}"
        assert git("show", f"{branch}:fix.txt", cwd=remote) == "fixed\n"
        (pull,) = forge.pulls(REPO)
        assert pull.pull is not None and pull.pull["head"] == branch and pull.pull["base"] == "main"
        assert f"Closes #{n}" in pull.body and pull.title == "Add a fix file"
        assert "Pull request:" in comment
        # Unlabelled issues are not taken; a second poll makes no second job.
        http.post("/trackers/hub/sync")
        info = http.get("/trackers/hub").json()
        assert [i["number"] for i in info["items"]] == [n] and info["taken"] >= 1
        assert info["state"] == "ok" and quiet not in [i["number"] for i in info["items"]]
        assert len(http.get("/jobs").json()["jobs"]) == 1
        # A webhook from a repository not on the allowlist is ignored.
        other = forge.open_issue("stranger/repo", "x", "echo x", ["corral"])
        resp = forge.deliver(
            f"{srv.url}/hooks/trackers/hub",
            "issues",
            forge.issue_payload("stranger/repo", other, "opened"),
            SECRET,
        )
        assert resp.status_code == 200 and resp.json()["done"] == "issue: not taken", resp.text
        wait_for(lambda: http.get("/trackers/hub").json()["ignored"] >= 1, what="counted")
        # A delivery with a bad signature is refused before it is read.
        bad = forge.deliver(
            f"{srv.url}/hooks/trackers/hub", "issues", {"x": 1}, "wrong-secret-0123456"
        )
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"


def test_the_kill_switch_holds_and_p0_goes_first(tmp_path: Path, forge: FakeForge) -> None:
    with serving(tmp_path, forge, slots=1) as srv, srv.http() as http:
        assert http.post("/admin/pause").status_code == 200
        low = forge.open_issue(REPO, "later", "echo low", ["corral", "P2"])
        high = forge.open_issue(REPO, "urgent", "echo high", ["corral", "P0"])
        a, b = job_of(http, low), job_of(http, high)
        assert (a["priority"], b["priority"]) == (2, 0)
        http.post("/trackers/hub/sync")
        wait_for(lambda: http.get("/trackers/hub").json()["polls"] >= 2, what="another poll")
        # Paused: taken in, but nothing runs.
        assert {get_job(http, a["id"])["state"], get_job(http, b["id"])["state"]} == {"queued"}
        http.post("/admin/resume")
        a, b = wait_job(http, a["id"], timeout=60), wait_job(http, b["id"], timeout=60)
        assert a["state"] == b["state"] == "done"
        assert b["started_at"] < a["started_at"]  # one slot: P0 first


def test_a_comment_continues_the_session_and_closing_cancels(
    tmp_path: Path, forge: FakeForge
) -> None:
    with serving(tmp_path, forge) as srv, srv.http() as http:
        n = forge.open_issue(REPO, "Talk", "echo first > a.txt", ["corral"])
        first = wait_job(http, job_of(http, n)["id"], timeout=60)
        assert first["state"] == "done"
        wait_for(lambda: len(result_comments(forge, n)) == 1, timeout=30, what="first result")
        forge.add_comment(REPO, n, "a person talking to a person")  # no trigger: no turn
        forge.add_comment(REPO, n, "@corral cat a.txt")

        def second_turn() -> dict[str, Any] | None:
            job = job_of(http, n)
            return job if job["id"] != first["id"] else None

        try:
            second = wait_for(second_turn, timeout=30, what="the follow-up turn")
        except AssertionError:
            print(http.get("/trackers/hub").json(), srv.log.read_text()[-3000:])
            raise
        assert second["session_id"] == first["session_id"] and second["turn"] == 2
        assert wait_job(http, second["id"], timeout=60)["state"] == "done"
        wait_for(lambda: len(result_comments(forge, n)) == 2, timeout=30, what="the reply")
        assert "first" in result_comments(forge, n)[1]  # ran in the same worktree
        assert len(http.get("/jobs").json()["jobs"]) == 2

        # Closing an issue cancels its running job.
        m = forge.open_issue(REPO, "Long", "sleep 120", ["corral"])
        long = wait_job(http, job_of(http, m)["id"], "running", timeout=60)
        forge.close_issue(REPO, m)
        assert wait_job(http, long["id"], timeout=60)["state"] == "cancelled"


def test_a_webhook_picks_an_issue_up_at_once(tmp_path: Path, forge: FakeForge) -> None:
    with serving(tmp_path, forge, poll_interval=3600) as srv, srv.http() as http:
        wait_for(lambda: http.get("/trackers/hub").json()["polls"] >= 1, what="the first poll")
        n = forge.open_issue(REPO, "Hooked", "echo hooked", ["corral"])
        resp = forge.deliver(
            f"{srv.url}/hooks/trackers/hub",
            "issues",
            forge.issue_payload(REPO, n, "labeled"),
            SECRET,
        )
        assert resp.status_code == 200 and resp.json()["done"].startswith("issue: job "), resp.text
        job = job_of(http, n)  # no poll in between: poll_interval is an hour
        assert wait_job(http, job["id"], timeout=60)["state"] == "done"
        again = forge.deliver(
            f"{srv.url}/hooks/trackers/hub",
            "issues",
            forge.issue_payload(REPO, n, "edited"),
            SECRET,
        )
        assert again.status_code == 200 and len(http.get("/jobs").json()["jobs"]) == 1


def test_a_crash_between_job_end_and_comment_leaves_exactly_one_comment(
    tmp_path: Path, forge: FakeForge
) -> None:
    forge.comment_delay = 60.0  # the comment is stored, the answer never comes in time
    srv = start_server(
        tmp_path / "data",
        args=("--config", str(write_config(tmp_path, forge)), "--no-queue"),
    )
    try:
        with srv.http() as http:
            n = forge.open_issue(REPO, "Crash", "echo once", ["corral"])
            job = wait_job(http, job_of(http, n)["id"], timeout=60)
            assert job["state"] == "done"
        wait_for(lambda: result_comments(forge, n), timeout=30, what="the comment stored")
        os.killpg(srv.proc.pid, signal.SIGKILL)  # before the sink heard back
        srv.proc.wait(timeout=30)
    finally:
        if srv.proc.poll() is None:
            srv.stop()
    forge.comment_delay = 0.0
    with serving(tmp_path, forge) as again, again.http() as http:
        wait_for(
            lambda: any(i["reported_job_id"] for i in http.get("/trackers/hub").json()["items"]),
            timeout=60,
            what="the turn reported after the restart",
        )
        assert len(result_comments(forge, n)) == 1


def test_two_replicas_make_one_job_and_one_comment(
    tmp_path: Path, pg_url: str, remote: Path
) -> None:
    with FakeForge("github") as forge:
        forge.add_repo(REPO, remote)
        config = write_config(tmp_path, forge)
        args = ("--config", str(config), "--no-queue")
        a = start_server(tmp_path / "a", database_url=pg_url, args=args)
        b = start_server(tmp_path / "b", database_url=pg_url, args=(*args, "--no-runner"))
        try:
            n = forge.open_issue(REPO, "Twice", "echo once > once.txt", ["corral"])
            payload = forge.issue_payload(REPO, n, "opened")
            for srv in (a, b):  # the same delivery reaches both replicas, and both may poll
                resp = forge.deliver(f"{srv.url}/hooks/trackers/hub", "issues", payload, SECRET)
                assert resp.status_code == 200, resp.text
            with b.http(a.admin_key) as http:
                job = wait_job(http, job_of(http, n)["id"], timeout=60)
                assert job["state"] == "done"
                wait_for(lambda: result_comments(forge, n), timeout=30, what="the comment")
                http.post("/trackers/hub/sync")
                wait_for(lambda: http.get("/trackers/hub").json()["polls"] >= 2, what="a poll")
                assert len(http.get("/jobs").json()["jobs"]) == 1
            assert len(result_comments(forge, n)) == 1 and len(forge.pulls(REPO)) == 1
        finally:
            b.stop()
            a.stop()


def test_a_refused_token_marks_the_tracker_in_error(tmp_path: Path, remote: Path) -> None:
    with FakeForge("github", token="the-right-one") as forge:
        forge.add_repo(REPO, remote)
        config = write_config(tmp_path, forge)
        forge.token = "rotated-away"  # what corral sends is refused now
        args = ("--config", str(config), "--no-queue")
        with running_server(tmp_path / "data", args=args) as srv, srv.http() as http:
            info = wait_for(
                lambda: (t := http.get("/trackers/hub").json())["state"] == "error" and t,
                timeout=30,
                what="the error state",
            )
            assert "Bad credentials" in info["error"] and "401" in info["error"]
            out = srv.cli("trackers", "show", "hub")
            assert out.returncode == 0 and "Bad credentials" in out.stdout, out.stdout + out.stderr
            # The fleet page shows the tracker and why it is in error.
            page = dashboard_page(srv, "/ui/fleet")
            row = page[page.index('id="tracker-hub"') :].split("</tr>")[0]
            assert 'data-f="state">error<' in row and "Bad credentials" in row, row
            assert 'id="queue-folder"' not in page  # --no-queue
