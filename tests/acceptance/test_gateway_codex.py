"""The per-job MCP gateway with the real `codex exec` (pinned in agents/)
and a fake OpenAI Responses API scripted to call corral's tools through
codex's MCP client (the gateway comes in `-c mcp_servers.corral.*`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from corral.testing import ServerProcess
from tests.fakes import agent_bin
from tests.fakes.openai_responses import FakeResponses, function_call, text

from ._helpers import running_server, session_events, wait_job


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeResponses]:
    with FakeResponses() as f:
        yield f


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, fake: FakeResponses) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("codex-gw")
    env = {"OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": fake.api_key}
    env_table = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }"
    config = root / "corral.toml"
    config.write_text(
        "[runner]\nproviders = ['shell', 'codex']\n\n"
        "[providers.codex]\nkind = 'codex'\nmodel = 'gpt-5.5'\nstall_timeout = 30\n"
        f"command = [{json.dumps(str(agent_bin('codex')))}]\n"
        f"env = {env_table}\n"
    )
    with running_server(root / "data", args=("--config", str(config), "--no-queue")) as s:
        yield s


def events_of(http: httpx.Client, job: dict[str, Any], type: str) -> list[dict[str, Any]]:
    return [
        e["payload"]
        for e in session_events(http, job["session_id"])
        if e["type"] == type and e["job_id"] == job["id"]
    ]


def mcp_call(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A call of an MCP tool as the Responses API sends it to codex 0.169: the
    tool's own name in the server's namespace (codex defers MCP tools behind
    tool_search and routes a call by its namespace)."""
    return {**function_call(tool, arguments), "namespace": "mcp__corral"}


def test_codex_submits_a_sub_job_and_reads_its_result(
    srv: ServerProcess, fake: FakeResponses
) -> None:
    word = f"SUB{uuid.uuid4().hex[:6]}"
    args = {"prompt": f"echo {word}", "provider": "shell", "wait": True, "timeout": 60}
    fake.reply(mcp_call("submit_job", args))
    fake.reply(mcp_call("report_progress", {"message": "sub-job done", "percent": 100}))
    fake.reply(text(f"the sub-job printed {word}"))
    with srv.http() as http:
        resp = http.post("/jobs", json={"prompt": "delegate", "provider": "codex"})
        job = wait_job(http, resp.json()["job_id"], timeout=90)
        assert job["state"] == "done" and job["result"] == f"the sub-job printed {word}", job

        # The sub-job's result came back to the model as the call's output.
        outputs = [
            item for item in fake.requests[1]["input"] if item.get("type") == "function_call_output"
        ]
        answer = json.loads(outputs[-1]["output"].split("Output:\n", 1)[1])
        assert answer["state"] == "done" and word in answer["result"]
        child = http.get(f"/jobs/{answer['job_id']}").json()
        assert child["parent_job_id"] == job["id"]

        calls = events_of(http, job, "tool.call")
        assert [(c["server"], c["tool"]) for c in calls] == [
            ("corral", "submit_job"),
            ("corral", "report_progress"),
        ]
        assert [r["is_error"] for r in events_of(http, job, "tool.result")] == [False, False]
        assert events_of(http, job, "job.progress") == [
            {"message": "sub-job done", "percent": 100.0}
        ]
        # codex's own record of the MCP calls is kept too.
        assert [c["name"] for c in events_of(http, job, "agent.tool_call")][:1] == [
            "corral.submit_job"
        ]
