"""The codex executor end to end: a real `corral serve`, the real `codex exec`
(pinned in agents/), and a fake OpenAI Responses API speaking the real
streaming wire format. The tests run one after another on one server and
script the fake in order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from genai_prices import Usage, calc_price

from corral.testing import ServerProcess, git_repo
from tests.fakes import agent_bin
from tests.fakes.openai_responses import FakeResponses, shell, text

from ._helpers import running_server, session_events, wait_for, wait_job


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeResponses]:
    with FakeResponses() as f:
        yield f


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, fake: FakeResponses) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("codex")
    env = {"OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": fake.api_key}
    env_table = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }"
    config = root / "corral.toml"
    config.write_text(
        "[runner]\nproviders = ['shell', 'codex']\n\n"
        "[providers.codex]\nkind = 'codex'\nmodel = 'gpt-5.5'\n"
        f"command = [{json.dumps(str(agent_bin('codex')))}]\n"
        f"env = {env_table}\n"
    )
    with running_server(root / "data", args=("--config", str(config), "--no-queue")) as s:
        yield s


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def submit(http: httpx.Client, prompt: str, **fields: Any) -> str:
    resp = http.post("/jobs", json={"prompt": prompt, "provider": "codex", **fields})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def events_of(http: httpx.Client, job: dict[str, Any], type: str) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in session_events(http, job["session_id"])
        if e["type"] == type and e["job_id"] == job["id"]
    ]


def test_hello_then_resume(http: httpx.Client, fake: FakeResponses) -> None:
    fake.reply(text("hello from codex"))
    first = wait_job(http, submit(http, "say hello"), timeout=60)
    assert first["state"] == "done" and first["result"] == "hello from codex", first
    assert first["usage"]["input_tokens"] > 0
    # Codex reports no cost: its usage is priced with genai-prices (cached input included).
    assert first["cost_source"] == "estimated"
    u = first["usage"]
    usage = Usage(
        input_tokens=u["input_tokens"],
        output_tokens=u["output_tokens"],
        cache_read_tokens=u.get("cached_input_tokens", 0),
    )
    expected = float(calc_price(usage, "gpt-5.5", provider_id="openai").total_price)
    assert first["cost"] == pytest.approx(expected)
    [init] = events_of(http, first, "agent.init")
    thread = init["session_id"]
    assert http.get(f"/sessions/{first['session_id']}").json()["handle"] == f"codex:{thread}"

    fake.reply(text("you said hello"))
    resp = http.post(
        f"/sessions/{first['session_id']}/turns",
        json={"prompt": "what did I say?", "provider": "codex"},
    )
    second = wait_job(http, resp.json()["job_id"], timeout=60)
    assert second["state"] == "done" and second["result"] == "you said hello", second
    [init2] = events_of(http, second, "agent.init")
    assert init2["session_id"] == thread  # `codex exec resume THREAD`
    assert "say hello" in json.dumps(fake.requests[-1]["input"])  # history re-sent
    # codex reports the thread's running total; the job gets this run's share
    # (tests/unit/test_agent_parsing.py checks the arithmetic).
    assert second["usage"]["input_tokens"] > 0


def test_command_in_a_worktree(http: httpx.Client, fake: FakeResponses, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    fake.reply(text("writing"), shell("echo hi > a.txt && cat a.txt"))
    fake.reply(text("done"))
    job = wait_job(http, submit(http, "write hi to a.txt", repo=str(repo)), timeout=60)
    assert job["state"] == "done" and job["result"] == "done", job
    [call] = events_of(http, job, "agent.tool_call")
    [result] = events_of(http, job, "agent.tool_result")
    assert "echo hi > a.txt" in call["input"]["command"]
    assert result["exit_code"] == 0 and result["content"] == "hi\n"
    changes = http.get(f"/jobs/{job['id']}/artifacts/changes.json").json()
    assert changes["files"] == [{"status": "A", "path": "a.txt"}]
    assert "+hi" in http.get(f"/jobs/{job['id']}/artifacts/diff.patch").text
    assert not (repo / "a.txt").exists()


def test_429_pauses_codex_until_lifted(
    srv: ServerProcess, http: httpx.Client, fake: FakeResponses
) -> None:
    fake.fail(429, message="Rate limit reached", headers={"retry-after": "600"})
    job_id = submit(http, "say hello again")
    try:
        job = wait_for(
            lambda: (j := http.get(f"/jobs/{job_id}").json())["failure"] == "quota" and j,
            timeout=60,
            what="the 429 to re-queue the job",
        )
        # No fallback: the job waits, as the same attempt, until the pause ends.
        assert job["state"] == "queued" and job["attempt"] == 1, job
        assert "paused by a quota limit" in job["waiting"]
        [pause] = http.get("/status").json()["providers_paused"]
        assert pause["provider"] == "codex" and pause["fallback"] is None
    finally:
        out = srv.cli("resume", "--provider", "codex")
    assert "pause lifted" in out.stdout, out.stdout + out.stderr
    job = wait_job(http, job_id, timeout=60)
    assert job["state"] == "done" and job["result"] == "ok", job
