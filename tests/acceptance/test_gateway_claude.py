"""The per-job MCP gateway with the real `claude` CLI (pinned in agents/) and
a fake Anthropic API scripted to call corral's tools: a real `corral serve`,
its embedded runner, the gateway on 127.0.0.1 and the CLI's own MCP client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess
from tests.fakes import agent_bin
from tests.fakes.anthropic import FakeAnthropic, text, tool_use

from ._helpers import (
    create_key,
    running_server,
    session_events,
    start_runner,
    stop_process,
    wait_for,
    wait_job,
)

UPSTREAM = Path(__file__).parents[1] / "fixtures" / "mcp_upstream.py"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as f:
        yield f


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, fake: FakeAnthropic) -> Iterator[ServerProcess]:
    import sys

    root = tmp_path_factory.mktemp("gateway")
    agent = {
        "kind": "claude-code",
        "command": [str(agent_bin("claude"))],
        "permission_mode": "acceptEdits",
        "env": {
            "ANTHROPIC_BASE_URL": fake.url,
            "ANTHROPIC_API_KEY": fake.api_key,
            "CLAUDE_CODE_MAX_RETRIES": "0",
        },
        "stall_timeout": 20,
        "result_grace": 1,
    }
    providers = {
        "claude": {**agent, "mcp_servers": ["tools"], "mcp_tools": ["corral.*", "tools.echo"]},
        # corral's tools but submit_job (a job on it can only report and read)
        "narrow": {**agent, "mcp_tools": ["corral.report_progress"]},
        # No permission flags: a tool use that needs permission asks a person.
        "asking": {
            **{k: v for k, v in agent.items() if k != "permission_mode"},
            "permission_prompt": "human",
        },
    }
    # Served only by a separate `corral runner` (test_a_separate_runner_...).
    providers["remote"] = {**agent, "mcp_tools": ["corral.*"]}
    lines = ["max_infra_retries = 0", "", "[runner]", "slots = 4", "kill_grace = 1"]
    embedded = ["shell", *(n for n in providers if n != "remote")]
    lines.append(f"providers = {json.dumps(embedded)}")
    lines += ["", "[mcp.servers.tools]", f"command = {json.dumps([sys.executable, str(UPSTREAM)])}"]
    for name, table in providers.items():
        lines.append(f"\n[providers.{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    config = root / "corral.toml"
    config.write_text("\n".join(lines) + "\n")
    with running_server(root / "data", args=("--config", str(config), "--no-queue")) as s:
        yield s


@pytest.fixture
def http(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


def unique(what: str) -> str:
    return f"{what} [{uuid.uuid4().hex[:8]}]"


def submit(http: httpx.Client, prompt: str, provider: str = "claude") -> str:
    resp = http.post("/jobs", json={"prompt": prompt, "provider": provider})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def events(http: httpx.Client, job: dict[str, Any], type: str) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in session_events(http, job["session_id"])
        if e["type"] == type and e["job_id"] == job["id"]
    ]


def tool_result_of(request: dict[str, Any]) -> dict[str, Any]:
    """The tool_result block the CLI sent back to the model."""
    last = request["messages"][-1]["content"]
    block = next(b for b in last if b.get("type") == "tool_result")
    return dict(block)


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "".join(c.get("text", "") for c in content)
    return str(content)


def test_a_sub_job_submitted_with_wait_comes_back_into_the_conversation(
    http: httpx.Client, fake: FakeAnthropic
) -> None:
    prompt = unique("delegate the echo")
    word = f"SUB{uuid.uuid4().hex[:6]}"
    fake.reply(
        tool_use(
            "mcp__corral__submit_job",
            {"prompt": f"echo {word}", "provider": "shell", "wait": True, "timeout": 60},
        ),
        match=prompt,
    )
    fake.reply(text(f"The sub-job printed {word}."), match=prompt)
    job = wait_job(http, submit(http, prompt), timeout=90)
    assert job["state"] == "done", (job["reason"], job["error"], job["result"])
    assert job["result"] == f"The sub-job printed {word}."

    # The model saw the sub-job's result in the tool result.
    second = [r for r in fake.requests if prompt in json.dumps(r)][1]
    block = tool_result_of(second)
    assert not block.get("is_error"), block
    answer = json.loads(result_text(block))
    assert answer["state"] == "done" and word in answer["result"]

    # The sub-job is the job's child, with its own session.
    child = http.get(f"/jobs/{answer['job_id']}").json()
    assert child["parent_job_id"] == job["id"]
    assert child["source"] == "mcp" and child["provider"] == "shell"

    # The call is recorded: tool.call then tool.result, with a duration.
    calls = events(http, job, "tool.call")
    results = events(http, job, "tool.result")
    assert [c["tool"] for c in calls] == ["submit_job"]
    assert calls[0]["server"] == "corral" and calls[0]["arguments"]["prompt"] == f"echo {word}"
    assert results[0]["id"] == calls[0]["id"] and results[0]["is_error"] is False
    assert results[0]["duration_ms"] > 0
    started = events(http, job, "gateway.started")
    assert started and "submit_job" in started[0]["tools"]


def test_progress_and_an_upstream_stdio_tool_through_the_gateway(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic
) -> None:
    prompt = unique("progress and echo")
    fake.reply(
        tool_use("mcp__corral__report_progress", {"message": "halfway", "percent": 50}),
        match=prompt,
    )
    fake.reply(tool_use("mcp__corral__tools__echo", {"text": "through the gateway"}), match=prompt)
    fake.reply(text("all done"), match=prompt)
    job = wait_job(http, submit(http, prompt), timeout=90)
    assert job["state"] == "done", (job["reason"], job["error"], job["result"])

    assert events(http, job, "job.progress") == [{"message": "halfway", "percent": 50.0}]
    last = next(
        r
        for r in reversed(fake.requests)
        if prompt in json.dumps(r) and "through the gateway" in json.dumps(r["messages"][-1])
    )
    assert result_text(tool_result_of(last)) == "echo: through the gateway"
    results = events(http, job, "tool.result")
    assert [(r["server"], r["tool"], r["is_error"]) for r in results] == [
        ("corral", "report_progress", False),
        ("tools", "echo", False),
    ]
    # The CLI shows them: the progress in `jobs show`, the calls in `jobs logs`.
    shown = srv.cli("jobs", "show", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "progress  50%  halfway" in shown.stdout
    logs = srv.cli("jobs", "logs", job["id"])
    assert logs.returncode == 0, logs.stderr
    assert "tool corral.report_progress" in logs.stderr
    assert "tool tools.echo ok after" in logs.stderr
    # Only the allowed upstream tool is offered: tools.secret is not.
    started = events(http, job, "gateway.started")[0]
    assert "tools__echo" in started["tools"] and "tools__secret" not in started["tools"]


def test_a_narrow_provider_offers_only_its_tools(http: httpx.Client, fake: FakeAnthropic) -> None:
    prompt = unique("try to submit")
    fake.reply(tool_use("mcp__corral__submit_job", {"prompt": "echo no"}), match=prompt)
    fake.reply(text("could not"), match=prompt)
    job = wait_job(http, submit(http, prompt, provider="narrow"), timeout=90)
    assert job["state"] == "done", (job["reason"], job["error"], job["result"])
    started = events(http, job, "gateway.started")[0]
    assert started["tools"] == ["report_progress"]
    # The CLI never saw submit_job: the call did not reach the gateway.
    assert events(http, job, "tool.call") == []
    # The model's forced call was refused by the CLI: an error tool result.
    second = [r for r in fake.requests if prompt in json.dumps(r)][1]
    block = tool_result_of(second)
    assert block.get("is_error") is True, block


def _answer_when_asked(http: httpx.Client, job_id: str, text: str) -> dict[str, Any]:
    """Wait until the job shows a question, answer it; the question shown."""

    def asked() -> dict[str, Any] | None:
        shown: dict[str, Any] | None = http.get(f"/jobs/{job_id}").json()["waiting_for"]
        return shown

    shown = wait_for(asked, timeout=60, what="the job to ask")
    resp = http.post(f"/jobs/{job_id}/answer", json={"text": text})
    assert resp.status_code == 200, resp.text
    return shown


def test_ask_human_is_answered_while_the_agent_waits(
    http: httpx.Client, fake: FakeAnthropic
) -> None:
    prompt = unique("ask a person")
    fake.reply(
        tool_use(
            "mcp__corral__ask_human", {"question": "Which colour?", "options": ["red", "blue"]}
        ),
        match=prompt,
    )
    fake.reply(text("Blue it is."), match=prompt)
    job_id = submit(http, prompt)
    shown = _answer_when_asked(http, job_id, "blue")
    assert shown["question"] == "Which colour?" and shown["options"] == ["red", "blue"]
    job = wait_job(http, job_id, timeout=90)
    assert job["state"] == "done" and job["result"] == "Blue it is.", job
    second = [r for r in fake.requests if prompt in json.dumps(r)][1]
    answer = json.loads(result_text(tool_result_of(second)))
    assert answer["answered"] is True and answer["answer"] == "blue"


@pytest.mark.parametrize("decision", ["allow", "deny"])
def test_a_permission_prompt_is_answered_by_a_person(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic, decision: str
) -> None:
    prompt = unique(f"write a file, {decision}")
    fake.reply(tool_use("Bash", {"command": "echo hi > asked.txt"}), match=prompt)
    fake.reply(text("finished"), match=prompt)
    job_id = submit(http, prompt, provider="asking")
    shown = _answer_when_asked(http, job_id, decision)
    assert "Bash" in shown["question"] and "echo hi > asked.txt" in shown["question"]
    job = wait_job(http, job_id, timeout=90)
    assert job["state"] == "done", (job["reason"], job["error"], job["result"])
    second = [r for r in fake.requests if prompt in json.dumps(r)][1]
    block = tool_result_of(second)
    written = srv.data_dir / "workspaces" / job["session_id"] / "asked.txt"
    if decision == "allow":
        assert not block.get("is_error"), result_text(block)
        assert written.read_text() == "hi\n"
    else:
        assert block.get("is_error") is True
        assert "a person denied Bash" in result_text(block)
        assert not written.exists()
    calls = events(http, job, "tool.call")
    assert [c["tool"] for c in calls] == ["approve"]


def test_a_separate_runner_gives_its_agent_the_gateway_over_http(
    srv: ServerProcess, http: httpx.Client, fake: FakeAnthropic, tmp_path: Path
) -> None:
    """A `corral runner` process (as on another host) runs the claude job: its
    gateway reaches the control plane over the runner protocol's HTTP (the
    embedded runner calls it in-process), for a sub-job and a progress event."""
    key = create_key(srv, "runner")
    config = srv.data_dir.parent / "corral.toml"
    proc, log = start_runner(
        srv,
        key,
        tmp_path / "remote",
        "--name",
        "remote-host",
        "--provider",
        "remote",
        "--config",
        str(config),
    )
    try:
        prompt = unique("remote delegate")
        word = f"REMOTE{uuid.uuid4().hex[:6]}"
        fake.reply(
            tool_use(
                "mcp__corral__submit_job",
                {"prompt": f"echo {word}", "provider": "shell", "wait": True, "timeout": 60},
            ),
            match=prompt,
        )
        fake.reply(
            tool_use("mcp__corral__report_progress", {"message": "remote", "percent": 90}),
            match=prompt,
        )
        fake.reply(text("remote done"), match=prompt)
        job = wait_job(http, submit(http, prompt, provider="remote"), timeout=90)
        assert job["state"] == "done", (job, log.read_text()[-2000:])
        runner = http.get("/runners").json()
        assert job["runner_id"] in [r["id"] for r in runner if r["name"] == "remote-host"]
        calls = events(http, job, "tool.result")
        assert [(c["tool"], c["is_error"]) for c in calls] == [
            ("submit_job", False),
            ("report_progress", False),
        ]
        answer = json.loads(
            result_text(tool_result_of([r for r in fake.requests if prompt in json.dumps(r)][1]))
        )
        assert answer["state"] == "done" and word in answer["result"]
        assert http.get(f"/jobs/{answer['job_id']}").json()["parent_job_id"] == job["id"]
        assert events(http, job, "job.progress") == [{"message": "remote", "percent": 90.0}]
    finally:
        stop_process(proc)
