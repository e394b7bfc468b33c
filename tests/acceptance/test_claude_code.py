"""The claude-code executor end to end: a real `corral serve`, the real `claude`
CLI (pinned in agents/), and a fake Anthropic Messages API (the only fake; it
speaks the real streaming wire format). Each test scripts the fake by its own
prompt, so tests sharing the server do not take each other's replies."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.runner.workspace import git
from corral.testing import ServerProcess, git_repo
from tests.fakes import agent_bin
from tests.fakes.anthropic import FakeAnthropic, text, tool_use

from ._helpers import (
    get_job,
    kill_leftovers,
    marker,
    pids_matching,
    running_server,
    session_events,
    wait_for,
    wait_job,
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


@pytest.fixture(scope="module")
def linger() -> str:
    return f"300.{marker()}"


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeAnthropic, linger: str
) -> Iterator[ServerProcess]:
    claude = str(agent_bin("claude"))
    root = tmp_path_factory.mktemp("claude")
    env = {
        "ANTHROPIC_BASE_URL": fake.url,
        "ANTHROPIC_API_KEY": fake.api_key,
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    agent = {
        "kind": "claude-code",
        "command": [claude],
        "permission_mode": "acceptEdits",
        "allowed_tools": ["Bash", "Edit", "Write"],
        "env": env,
        "stall_timeout": 4,
        "result_grace": 1,
    }
    providers = {
        "claude": {**agent, "fallback": "backup"},
        "backup": agent,
        # Prints its result, then lingers with stdout open: the known headless hang.
        "lingering": {**agent, "command": ["sh", "-c", f'"$0" "$@"; sleep {linger}', claude]},
    }
    config = root / "corral.toml"
    lines = ["max_infra_retries = 0", "", "[runner]", "slots = 4", "kill_grace = 1"]
    lines.append(f"providers = {json.dumps(['shell', *providers])}")
    for name, table in providers.items():
        lines.append(f"\n[providers.{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    config.write_text("\n".join(lines) + "\n")
    try:
        with running_server(root / "data", args=("--config", str(config), "--no-queue")) as s:
            yield s
    finally:
        kill_leftovers(linger)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def submit(http: httpx.Client, prompt: str, **fields: Any) -> str:
    resp = http.post("/jobs", json={"prompt": prompt, "provider": "claude", **fields})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def unique(what: str) -> str:
    return f"{what} [{uuid.uuid4().hex[:8]}]"


def events_of(http: httpx.Client, job: dict[str, Any], type: str) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in session_events(http, job["session_id"])
        if e["type"] == type and e["job_id"] == job["id"]
    ]


def processes_in(path: Path) -> list[int]:
    """Live processes whose working directory is ``path`` or below it."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and (cwd == str(path) or cwd.startswith(f"{path}/")):
            found.append(int(entry.name))
    return found


def workspace(srv: ServerProcess, job: dict[str, Any]) -> Path:
    return (srv.data_dir / "workspaces" / job["session_id"]).resolve()


def test_edit_in_a_worktree_gives_a_diff_cost_and_usage(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "repo")
    prompt = unique("write hello.txt")
    fake.reply(
        text("Writing it."),
        tool_use("Bash", {"command": "echo hello > hello.txt && cat hello.txt"}),
        match=prompt,
    )
    fake.reply(text("Wrote hello.txt."), match=prompt)
    job = wait_job(http, submit(http, prompt, repo=str(repo)), timeout=60)
    assert job["state"] == "done", job
    assert job["result"] == "Wrote hello.txt."
    assert job["cost"] is not None and job["cost"] > 0
    assert job["usage"]["input_tokens"] > 0 and job["usage"]["output_tokens"] > 0
    assert job["usage"]["num_turns"] == 2

    # The Bash tool round trip is in the event log.
    [call] = [c for c in events_of(http, job, "agent.tool_call") if c["name"] == "Bash"]
    [result] = [r for r in events_of(http, job, "agent.tool_result") if r["id"] == call["id"]]
    assert "hello" in json.dumps(result["content"]) and result["is_error"] is False
    [init] = events_of(http, job, "agent.init")
    assert init["cwd"] == str(workspace(srv, job))

    # Artifacts: the diff against the base, and what changed.
    names = {a["name"] for a in http.get(f"/jobs/{job['id']}/artifacts").json()}
    assert names == {"diff.patch", "changes.json"}
    patch = http.get(f"/jobs/{job['id']}/artifacts/diff.patch")
    assert patch.headers["content-type"].startswith("text/x-diff")
    assert "+hello" in patch.text and "hello.txt" in patch.text
    changes = http.get(f"/jobs/{job['id']}/artifacts/changes.json").json()
    assert changes["branch"] == f"corral/{job['id']}" and changes["commit"] is None
    assert changes["files"] == [{"status": "A", "path": "hello.txt"}]
    # The user's checkout is untouched; the branch exists in the repo.
    assert not (repo / "hello.txt").exists()
    assert git("branch", "--show-current", cwd=repo).strip() == "main"
    assert f"corral/{job['id']}" in git("branch", "--list", "corral/*", cwd=repo)
    subprocess.run(["git", "apply", "--check", "-"], cwd=repo, input=patch.content, check=True)

    show = srv.cli("jobs", "show", job["id"])
    assert show.returncode == 0, show.stderr
    assert "diff.patch" in show.stdout and "cost" in show.stdout and str(repo) in show.stdout


def test_follow_up_turn_resumes_the_agent_session(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic, tmp_path: Path
) -> None:
    first_prompt = unique("remember the word heron")
    fake.reply(text("Noted: heron."), match=first_prompt)
    first = wait_job(
        http, submit(http, first_prompt, repo=str(git_repo(tmp_path / "r"))), timeout=60
    )
    assert first["state"] == "done", first
    session = http.get(f"/sessions/{first['session_id']}").json()
    [init1] = events_of(http, first, "agent.init")
    assert session["handle"] == f"claude:{init1['session_id']}"  # PROVIDER:ID

    follow = unique("which word?")
    fake.reply(text("heron"), match=follow)
    resp = http.post(
        f"/sessions/{first['session_id']}/turns", json={"prompt": follow, "provider": "claude"}
    )
    assert resp.status_code == 202, resp.text
    second = wait_job(http, resp.json()["job_id"], timeout=60)
    assert second["state"] == "done" and second["result"] == "heron", second
    # Same agent session (--resume), same worktree, the history re-sent to the API.
    [init2] = events_of(http, second, "agent.init")
    assert init2["session_id"] == init1["session_id"] and init2["cwd"] == init1["cwd"]
    assert second["repo"] == first["repo"]
    [request] = [r for r in fake.requests if follow in json.dumps(r)]
    assert first_prompt in json.dumps(request["messages"])


def test_a_follow_up_turn_naming_no_provider_stays_on_the_agent(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic
) -> None:
    """The README's `corral turn SESSION "now add a test"`: the turn inherits
    the session's provider and resumes the agent; it never reaches /bin/sh."""
    first_prompt = unique("remember the word ibis")
    fake.reply(text("Noted: ibis."), match=first_prompt)
    first = wait_job(http, submit(http, first_prompt), timeout=60)
    assert first["state"] == "done", first
    follow = unique("now add a test")
    fake.reply(text("ibis"), match=follow)
    out = srv.cli("turn", first["session_id"], follow, "--wait", "--json", timeout=90)
    assert out.returncode == 0, out.stderr
    second = json.loads(out.stdout)
    assert (second["provider"], second["state"], second["result"]) == ("claude", "done", "ibis")
    assert "inherited from the session" in second["route_reason"]
    [init1], [init2] = events_of(http, first, "agent.init"), events_of(http, second, "agent.init")
    assert init2["session_id"] == init1["session_id"]  # resumed, not a shell
    assert events_of(http, second, "output") == []  # nothing ran in a shell
    # Explicitly a command: that one runs in the shell, in the same session.
    out = srv.cli("turn", first["session_id"], "--shell", "echo from-sh", "--wait", "--json")
    assert out.returncode == 0, out.stderr
    third = json.loads(out.stdout)
    assert (third["provider"], third["result"]) == ("shell", "from-sh")


def test_hang_after_result_is_killed_and_the_result_kept(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic, linger: str
) -> None:
    prompt = unique("answer and linger")
    fake.reply(text("the answer"), match=prompt)
    job = wait_job(http, submit(http, prompt, provider="lingering"), timeout=60)
    assert job["state"] == "done" and job["result"] == "the answer", job
    guards = [g["guard"] for g in events_of(http, job, "agent.guard")]
    assert guards == ["linger"]
    wait_for(lambda: not pids_matching(linger), timeout=10, what="the lingering wrapper to die")
    assert processes_in(workspace(srv, job)) == []


def test_silent_stall_is_killed_with_nothing_left(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic
) -> None:
    prompt = unique("stall")
    fake.hang(match=prompt)
    job = wait_job(http, submit(http, prompt), timeout=60)
    # A hang is infrastructure; this server allows no infrastructure re-runs.
    assert job["state"] == "failed", job
    assert job["reason"] == "hang_stall" and job["failure"] == "infra", job
    assert "stall_timeout" in job["error"]
    assert [g["guard"] for g in events_of(http, job, "agent.guard")] == ["stall"]
    assert processes_in(workspace(srv, job)) == []


def test_cancel_mid_tool_stops_the_tool_too(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic
) -> None:
    prompt = unique("run a long tool")
    m = f"60.{marker()}"
    # The Bash tool runs in a session of its own: only the run marker finds it.
    command = f"python3 -c 'import time; time.sleep({m})'"
    fake.reply(tool_use("Bash", {"command": command}), match=prompt)
    try:
        job_id = submit(http, prompt)
        wait_for(lambda: pids_matching(m), timeout=60, what="the tool's process to start")
        assert http.post(f"/jobs/{job_id}/cancel").status_code == 200
        job = wait_job(http, job_id, timeout=30)
        assert job["state"] == "cancelled"
        wait_for(lambda: not pids_matching(m), timeout=15, what="the tool's process to die")
        wait_for(
            lambda: not processes_in(workspace(srv, job)),
            timeout=15,
            what="every process of the job to die",
        )
    finally:
        kill_leftovers(m)


def test_429_pauses_the_provider_and_falls_back(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic
) -> None:
    prompt = unique("quota")
    fake.fail(
        429, headers={"retry-after": "120"}, message="Number of requests exceeded", match=prompt
    )
    fake.reply(text("done by backup"), match=prompt)
    try:
        job = wait_job(http, submit(http, prompt), timeout=60)
        assert job["state"] == "done" and job["result"] == "done by backup", json.dumps(job)
        assert job["provider"] == "backup" and job["attempt"] == 1
        assert "claude is paused" in job["route_reason"]
        [requeued] = [
            e["payload"]
            for e in session_events(http, job["session_id"])
            if e["type"] == "job.state" and e["payload"]["to"] == "queued" and e["payload"]["from"]
        ]
        assert requeued["reason"] == "api_error_429" and requeued["attempt"] == 1, requeued
        assert "paused_until" in requeued
        status = http.get("/status").json()
        [pause] = status["providers_paused"]
        assert pause["provider"] == "claude" and pause["fallback"] == "backup"
        assert "429" in pause["reason"]
        out = srv.cli("status")
        assert "provider claude PAUSED until" in out.stdout, out.stdout + out.stderr
    finally:
        http.post("/admin/providers/claude/resume")
    assert http.get("/status").json()["providers_paused"] == []


def test_two_jobs_in_two_worktrees_of_one_repo(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic, tmp_path: Path
) -> None:
    repo = git_repo(tmp_path / "shared")
    prompts = {name: unique(f"write {name}.txt") for name in ("a", "b")}
    for name, prompt in prompts.items():
        fake.reply(tool_use("Bash", {"command": f"echo {name} > {name}.txt"}), match=prompt)
        fake.reply(text(f"wrote {name}"), match=prompt)
    ids = {name: submit(http, prompt, repo=str(repo)) for name, prompt in prompts.items()}
    jobs = {name: wait_job(http, job_id, timeout=60) for name, job_id in ids.items()}
    for name, job in jobs.items():
        assert job["state"] == "done", job
        changes = http.get(f"/jobs/{job['id']}/artifacts/changes.json").json()
        assert changes["files"] == [{"status": "A", "path": f"{name}.txt"}], changes
        assert (workspace(srv, job) / f"{name}.txt").read_text() == f"{name}\n"
    assert workspace(srv, jobs["a"]) != workspace(srv, jobs["b"])
    assert not (workspace(srv, jobs["a"]) / "b.txt").exists()
    assert get_job(http, ids["a"])["repo"] == str(repo)


def test_max_cost_gives_claude_its_budget_and_the_job_stops_as_budget(
    http: httpx.Client, fake: FakeAnthropic
) -> None:
    prompt = unique("Run echo hi, then more.")
    step = tool_use("Bash", {"command": "echo hi", "description": "hi"})
    # The fake reports usage that Claude Code prices at $8.02 (its own price table).
    fake.reply(
        text("I will run it."), step, input_tokens=2_000_000, output_tokens=1000, match=prompt
    )
    fake.reply(text("Done."), match=prompt)
    job = wait_job(http, submit(http, prompt, max_cost=0.5), timeout=90)
    assert job["state"] == "failed", job
    assert job["failure"] == "budget" and job["reason"] == "error_max_budget_usd"
    assert job["attempt"] == 1  # not retried: the budget is spent
    assert job["max_cost"] == 0.5
    assert job["cost"] == pytest.approx(8.02) and job["cost_source"] == "reported"
    (started,) = events_of(http, job, "agent.started")
    argv = started["argv"]
    assert argv[argv.index("--max-budget-usd") + 1] == "0.5"
    # Claude Code stopped after the first request: the second reply is still queued.
    assert sum(prompt in json.dumps(r) for r in fake.requests) == 1
