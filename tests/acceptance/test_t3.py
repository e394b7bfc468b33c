"""Delegation to a T3 Code server (kind `t3`) with a real `corral serve`
against the fake T3 orchestration API (tests/fakes/t3.py, which enforces the
command contract): the project is created once per repo, each job is a thread
and a turn, a follow-up turn goes to the same thread, the bearer token is
re-read on every request while it rotates, an errored turn is an agent
failure, and a kill -9 of the server mid-turn resumes the thread instead of
starting a second one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.executors.t3 import project_id, thread_id
from corral.testing import ServerProcess, git_repo, start_server
from tests.fakes.t3 import FakeT3

from ._helpers import running_server, session_events, wait_for, wait_job

ENV = {"CORRAL_HEARTBEAT_INTERVAL": "1"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeT3]:
    with FakeT3(token="t3-first") as f:
        yield f


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("t3")


@pytest.fixture(scope="module")
def token_file(root: Path, fake: FakeT3) -> Path:
    path = root / "t3.token"
    path.write_text(fake.token + "\n")
    return path


@pytest.fixture(scope="module")
def config(root: Path, fake: FakeT3, token_file: Path) -> Path:
    path = root / "corral.toml"
    path.write_text(
        "[providers.t3]\nkind = 't3'\n"
        f"base_url = {json.dumps(fake.url)}\ntoken_file = {json.dumps(str(token_file))}\n"
    )
    return path


@pytest.fixture(scope="module")
def repo(root: Path) -> Path:
    return git_repo(root / "repo")


@pytest.fixture(scope="module")
def srv(root: Path, config: Path) -> Iterator[ServerProcess]:
    with running_server(root / "data", args=("--config", str(config), "--no-queue"), env=ENV) as s:
        yield s


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


@pytest.fixture(autouse=True)
def quick_turns(fake: FakeT3) -> Iterator[None]:
    fake.turn_seconds = 0.5
    yield
    fake.turn_seconds = 0.5


def submit(http: httpx.Client, prompt: str, **fields: Any) -> str:
    resp = http.post("/jobs", json={"prompt": prompt, "preferred_ai": "t3", **fields})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def events_of(http: httpx.Client, job: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in session_events(http, job["session_id"]) if e["job_id"] == job["id"]]


def submitted(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    [event] = [e for e in events_of(http, job) if e["type"] == "remote.submitted"]
    payload: dict[str, Any] = event["payload"]
    return payload


def test_a_job_becomes_a_thread_and_a_turn_in_the_repos_project(
    http: httpx.Client, fake: FakeT3, repo: Path
) -> None:
    fake.turn_seconds = 1.5  # long enough for a poll to see it run
    fake.reply("I read the README: it says hello.")
    first = wait_job(http, submit(http, "Summarise the README", repo=str(repo)))
    assert first["state"] == "done", first
    assert first["result"] == "I read the README: it says hello."
    assert first["provider"] == "t3"

    project = project_id(str(repo))
    assert fake.count("project.create", projectId=project, workspaceRoot=str(repo)) == 1
    one = submitted(http, first)
    assert one["project"] == project and one["created_project"] and one["created_thread"]
    thread = fake.thread(one["thread"])
    assert thread is not None and thread["projectId"] == project
    assert fake.count("thread.create", threadId=one["thread"]) == 1
    assert fake.count("thread.turn.start", threadId=one["thread"]) == 1
    assert [m["text"] for m in thread["messages"] if m["role"] == "user"] == [
        "Summarise the README"
    ]
    assert thread["latestTurn"]["state"] == "completed"
    [create] = [c for c in fake.commands if c.get("threadId") == one["thread"]][:1]
    assert create["type"] == "thread.create" and create["title"] == "Summarise the README"
    states = [e["payload"]["state"] for e in events_of(http, first) if e["type"] == "t3.state"]
    assert states[-1] == "done" and "running" in states, states
    fake.turn_seconds = 0.5
    handle = http.get(f"/sessions/{first['session_id']}").json()["handle"]
    assert json.loads(handle.partition(":")[2])["thread"] == one["thread"]

    # A second job on the same repo: the project exists, so only a thread and a turn.
    second = wait_job(http, submit(http, "And the license?", repo=str(repo)))
    assert second["state"] == "done" and second["result"] == "ok", second
    two = submitted(http, second)
    assert two["project"] == project and not two["created_project"] and two["created_thread"]
    assert two["thread"] != one["thread"]
    assert fake.count("project.create", workspaceRoot=str(repo)) == 1
    assert fake.count("thread.turn.start", threadId=two["thread"]) == 1


def test_a_follow_up_turn_goes_to_the_same_thread(
    http: httpx.Client, fake: FakeT3, repo: Path
) -> None:
    fake.reply("first answer")
    fake.reply("second answer")
    first = wait_job(http, submit(http, "first question", repo=str(repo)))
    assert first["state"] == "done" and first["result"] == "first answer", first
    resp = http.post(
        f"/sessions/{first['session_id']}/turns",
        json={"prompt": "second question", "preferred_ai": "t3"},
    )
    assert resp.status_code == 202, resp.text
    second = wait_job(http, resp.json()["job_id"])
    assert second["state"] == "done" and second["result"] == "second answer", second
    assert second["turn"] == 2

    thread = submitted(http, first)["thread"]
    again = submitted(http, second)
    assert again["thread"] == thread and not again["created_thread"]
    assert fake.count("thread.create", threadId=thread) == 1
    assert fake.count("thread.turn.start", threadId=thread) == 2
    view = fake.thread(thread)
    assert view is not None
    assert [m["text"] for m in view["messages"]] == [
        "first question",
        "first answer",
        "second question",
        "second answer",
    ]


def test_the_token_is_reread_on_every_request_while_it_rotates(
    http: httpx.Client, fake: FakeT3, token_file: Path
) -> None:
    fake.turn_seconds = 120  # held open until both rotations were seen
    fake.reply("survived two rotations")
    job_id = submit(http, "take your time")
    tid = thread_id(job_id)
    wait_for(
        lambda: (fake.thread(tid) or {}).get("latestTurn"),
        timeout=10,
        what="the turn to run",
    )
    marks = []
    for new in ("t3-second", "t3-third"):
        with fake.lock:  # the file and the server change together
            marks.append(len(fake.tokens_seen))
            token_file.write_text(new + "\n")
            fake.token = new
        mark = marks[-1]
        wait_for(
            lambda mark=mark, new=new: new in fake.tokens_seen[mark:],
            timeout=30,
            what=f"a request with the rotated token {new}",
        )
    fake.finish_turns()
    job = wait_job(http, job_id)
    assert job["state"] == "done" and job["result"] == "survived two rotations", job
    after_first = fake.tokens_seen[marks[0] : marks[1]]
    after_second = fake.tokens_seen[marks[1] :]
    assert "t3-second" in after_first and "t3-third" in after_second
    # At most the one request in flight at each rotation still carried the old token.
    assert after_first.count("t3-first") <= 1 and after_second.count("t3-second") <= 1
    assert fake.count("thread.turn.start", threadId=tid) == 1


def test_an_errored_turn_fails_the_job_as_an_agent_error(http: httpx.Client, fake: FakeT3) -> None:
    fake.fail_next_turn("Codex exited: model overloaded")
    job = wait_job(http, submit(http, "this will break"))
    assert job["state"] == "failed", job
    assert job["failure"] == "agent" and job["reason"] == "t3_turn_error", job
    assert "Codex exited: model overloaded" in job["error"], job
    view = fake.thread(thread_id(job["id"]))
    assert view is not None and view["latestTurn"]["state"] == "error"


def test_a_refused_token_is_bad_input(fake: FakeT3, root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.token"
    bad.write_text("not-the-token\n")
    config = tmp_path / "corral.toml"
    config.write_text(
        "[providers.t3]\nkind = 't3'\n"
        f"base_url = {json.dumps(fake.url)}\ntoken_file = {json.dumps(str(bad))}\n"
    )
    with (
        running_server(tmp_path / "data", args=("--config", str(config), "--no-queue")) as s,
        s.http() as http,
    ):
        job = wait_job(http, submit(http, "hello", max_attempts=3))
    assert job["state"] == "failed" and job["failure"] == "input", job
    assert job["attempt"] == 1 and job["reason"] == "api_error_401", job
    assert "Unauthorized request." in job["error"]
    assert fake.count("thread.create", threadId=thread_id(job["id"])) == 0


def test_kill9_mid_turn_resumes_the_thread(
    fake: FakeT3, config: Path, repo: Path, tmp_path: Path
) -> None:
    fake.turn_seconds = 4
    fake.reply("finished after the crash")
    data = tmp_path / "data"
    args = ("--config", str(config), "--no-queue")
    local = start_server(data, args=args, env=ENV)
    try:
        with local.http() as http:
            job_id = submit(http, "a slow one", repo=str(repo))
            tid = thread_id(job_id)
            wait_for(
                lambda: (
                    ((fake.thread(tid) or {}).get("latestTurn") or {}).get("state") == "running"
                ),
                timeout=10,
                what="the turn to run",
            )
            # The turn runs in T3 as soon as its start is dispatched; corral
            # records that (remote.submitted) a moment later. Kill only once it
            # has, so the crash always falls mid-turn with the submit recorded.
            job = http.get(f"/jobs/{job_id}").json()
            wait_for(
                lambda: any(e["type"] == "remote.submitted" for e in events_of(http, job)),
                timeout=10,
                what="remote.submitted to be recorded",
            )
    finally:
        local.kill()  # kill -9 while the turn runs
    with running_server(data, args=args, env=ENV) as again, again.http() as http:
        job = wait_job(http, job_id, timeout=30)
        assert job["state"] == "done" and job["result"] == "finished after the crash", job
        types = [e["type"] for e in events_of(http, job)]
        assert types.count("remote.submitted") == 1 and "remote.resumed" in types, types
    assert fake.count("thread.create", threadId=tid) == 1
    assert fake.count("thread.turn.start", threadId=tid) == 1


def test_kill9_before_the_submit_is_recorded_resumes_the_thread(
    fake: FakeT3, config: Path, repo: Path, tmp_path: Path
) -> None:
    """T3 started the turn but corral died before it heard so: the next run
    finds the turn's message in the thread and follows it, never a second turn."""
    fake.turn_seconds = 4
    fake.answer_after["thread.turn.start"] = 3  # the turn runs; its answer is late
    fake.reply("followed after the crash")
    data = tmp_path / "data"
    args = ("--config", str(config), "--no-queue")
    local = start_server(data, args=args, env=ENV)
    try:
        with local.http() as http:
            job_id = submit(http, "a slow one", repo=str(repo))
        tid = thread_id(job_id)
        wait_for(
            lambda: ((fake.thread(tid) or {}).get("latestTurn") or {}).get("state") == "running",
            timeout=10,
            what="the turn to run",
        )
    finally:
        local.kill()  # kill -9 while the turn start's answer is held
    fake.answer_after.clear()
    with running_server(data, args=args, env=ENV) as again, again.http() as http:
        job = wait_job(http, job_id, timeout=30)
        assert job["state"] == "done" and job["result"] == "followed after the crash", job
        types = [e["type"] for e in events_of(http, job)]
        assert "remote.submitted" not in types and "remote.resumed" in types, types
    assert fake.count("thread.create", threadId=tid) == 1
    assert fake.count("thread.turn.start", threadId=tid) == 1


def test_the_fake_refuses_what_t3_refuses(fake: FakeT3) -> None:
    """The fake holds clients to the contract the tests above rely on."""
    now = "2030-01-01T00:00:00.000Z"
    root = "/nowhere/contract"
    project = project_id(root)
    good_project = {
        "type": "project.create",
        "commandId": "c-contract-1",
        "projectId": project,
        "title": "contract",
        "workspaceRoot": root,
        "createdAt": now,
    }
    thread = {
        "type": "thread.create",
        "commandId": "c-contract-2",
        "threadId": "t-contract",
        "projectId": project,
        "title": "t",
        "modelSelection": {"provider": "codex", "model": "gpt-5.4"},
        "runtimeMode": "full-access",
        "interactionMode": "default",
        "branch": None,
        "worktreePath": None,
        "createdAt": now,
    }
    turn = {
        "type": "thread.turn.start",
        "commandId": "c-contract-3",
        "threadId": "t-contract",
        "message": {"messageId": "m-contract", "role": "user", "text": "hi", "attachments": []},
        "runtimeMode": "full-access",
        "interactionMode": "default",
        "createdAt": now,
    }
    with httpx.Client(
        base_url=fake.url, headers={"Authorization": f"Bearer {fake.token}"}
    ) as client:

        def send(body: Any) -> httpx.Response:
            return client.post("/api/orchestration/dispatch", json=body)

        assert httpx.get(fake.url + "/api/orchestration/snapshot").status_code == 401
        assert send({**turn, "commandId": "c-contract-0"}).status_code == 400  # no thread yet
        assert send({**thread, "commandId": "c-contract-x"}).status_code == 400  # no project
        assert send({k: v for k, v in good_project.items() if k != "type"}).status_code == 400
        assert send({**good_project, "type": "project.make"}).status_code == 400
        assert send({k: v for k, v in good_project.items() if k != "title"}).status_code == 400
        resp = send(good_project)
        assert resp.status_code == 200 and isinstance(resp.json()["sequence"], int)
        assert send(good_project).status_code == 400  # reused commandId
        assert send({**good_project, "commandId": "c-contract-4"}).status_code == 400  # exists
        assert send({k: v for k, v in thread.items() if k != "branch"}).status_code == 400
        assert send(thread).status_code == 200
        assert send({**turn, "interactionMode": None}).status_code == 400
        resp = send(turn)
        assert resp.status_code == 200, resp.text
        snap = client.get("/api/orchestration/snapshot").json()
        assert set(snap) == {"snapshotSequence", "projects", "threads", "updatedAt"}
        [view] = [t for t in snap["threads"] if t["id"] == "t-contract"]
        assert view["projectId"] == project and view["messages"][0]["id"] == "m-contract"


def test_cancel_and_timeout_interrupt_the_turn(http: httpx.Client, fake: FakeT3) -> None:
    fake.turn_seconds = 10
    job_id = submit(http, "never mind")
    tid = thread_id(job_id)
    wait_for(
        lambda: ((fake.thread(tid) or {}).get("latestTurn") or {}).get("state") == "running",
        timeout=10,
        what="the turn to run",
    )
    assert http.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert wait_job(http, job_id)["state"] == "cancelled"
    wait_for(lambda: fake.count("thread.turn.interrupt", threadId=tid), what="an interrupt")
    view = fake.thread(tid)
    assert view is not None and view["latestTurn"]["state"] == "interrupted"

    slow = wait_job(http, submit(http, "too slow", timeout=1.5))
    assert slow["state"] == "failed" and slow["reason"] == "timeout", slow
    assert slow["failure"] == "agent"
    assert fake.count("thread.turn.interrupt", threadId=thread_id(slow["id"])) == 1
