"""The per-job MCP gateway against a real `corral serve` (no embedded runner:
the test is the runner), with the official MCP client: corral's tools over
runner protocol v1 with the job's worker token, epoch fencing, the allowlist,
and an upstream MCP server built with the SDK over streamable HTTP."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from corral.gateway.policy import Policy
from corral.gateway.server import Gateway
from corral.gateway.settings import McpServerSettings
from corral.runner.gateway import Control
from corral.runner.link import HttpLink
from corral.testing import ServerProcess

from ._helpers import running_server, session_events, wait_for

UPSTREAM = Path(__file__).parents[1] / "fixtures" / "mcp_upstream.py"
ENV = {
    "CORRAL_RUNNER__EMBEDDED": "false",
    "CORRAL_PROVIDERS": json.dumps({"gw": {"kind": "shell"}}),
}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("gw") / "data", env=ENV) as s:
        yield s


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[tuple[str, str]]:
    token = "upstream-token-0123456789"
    # Bound and listening here, served by the child: connections wait in the
    # backlog until it answers, and no other process can take the port.
    with socket.create_server(("127.0.0.1", 0)) as sock:
        fd = sock.fileno()
        proc = subprocess.Popen(
            [sys.executable, str(UPSTREAM), "http", f"fd={fd}", token], pass_fds=[fd]
        )
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    try:
        wait_for(lambda: _answers(url), timeout=20, what="the upstream MCP server")
        yield url, token
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 401  # no token: it is the upstream
    return False


def _lease(api: httpx.Client, name: str) -> dict[str, Any]:
    """Register runner ``name`` (serving provider gw) and lease one job."""
    resp = api.post("/runners/register", json={"name": name, "providers": ["gw"], "slots": 1})
    assert resp.status_code == 200, resp.text
    runner_id = resp.json()["runner_id"]
    resp = api.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10})
    assert resp.status_code == 200, resp.text
    (leased,) = resp.json()["jobs"]
    return {"runner_id": runner_id, **leased}


@asynccontextmanager
async def _gateway(
    srv: ServerProcess,
    token: str,
    events: list[tuple[str, dict[str, Any]]],
    *,
    rules: list[str],
    servers: dict[str, McpServerSettings] | None = None,
) -> AsyncIterator[Client]:
    async with HttpLink(
        srv.url, srv.admin_key, timeout=httpx.Timeout(90), max_connections=4
    ) as link:
        gateway = Gateway(
            job_id="test",
            policy=Policy.of("gw", rules, None),
            control=Control(link.worker(token)),
            emit=lambda type, payload, **_: events.append((type, dict(payload))),
            servers=servers,
        )
        endpoint = await gateway.start()
        try:
            headers = {"Authorization": f"Bearer {endpoint.token}"}
            async with (
                create_mcp_http_client(headers=headers) as http,
                Client(streamable_http_client(endpoint.url, http_client=http)) as client,
            ):
                yield client
        finally:
            await gateway.close()


def _answer(result: Any) -> dict[str, Any]:
    assert not result.is_error, result
    data: dict[str, Any] = json.loads(result.content[0].text)
    return data


async def test_sub_jobs_progress_and_fencing_over_the_protocol(bare: ServerProcess) -> None:
    with bare.http() as api:
        parent = api.post("/jobs", json={"command": "true", "provider": "gw"}).json()["job_id"]
        held = _lease(api, "gw-runner")
        assert held["job"]["id"] == parent
        events: list[tuple[str, dict[str, Any]]] = []
        async with _gateway(bare, held["token"], events, rules=["corral.*"]) as mcp:
            listed = {t.name for t in (await mcp.list_tools()).tools}
            assert listed == {
                "submit_job",
                "get_job",
                "wait_job",
                "cancel_job",
                "schedule_job",
                "ask_human",
                "send_message",
                "report_progress",
            }

            child = _answer(
                await mcp.call_tool("submit_job", {"prompt": "sleep 30", "provider": "gw"})
            )
            assert child["state"] == "queued" and child["ended"] is False
            stored = api.get(f"/jobs/{child['job_id']}").json()
            assert stored["parent_job_id"] == parent and stored["source"] == "mcp"
            assert (
                _answer(await mcp.call_tool("get_job", {"job_id": child["job_id"]}))["state"]
                == "queued"
            )
            waited = _answer(
                await mcp.call_tool("wait_job", {"job_id": child["job_id"], "timeout": 0.2})
            )
            assert waited["timed_out"] is True
            cancelled = _answer(await mcp.call_tool("cancel_job", {"job_id": child["job_id"]}))
            assert cancelled["state"] == "cancelled" and cancelled["ended"] is True

            # A scheduled job: queued now, not run before its time.
            later = _answer(
                await mcp.call_tool(
                    "schedule_job", {"prompt": "echo later", "provider": "gw", "delay": 3600}
                )
            )
            scheduled = api.get(f"/jobs/{later['job_id']}").json()
            assert scheduled["state"] == "queued" and scheduled["parent_job_id"] == parent
            assert scheduled["run_at"] == later["run_at"].replace("+00:00", "Z")
            both = await mcp.call_tool(
                "schedule_job", {"prompt": "x", "delay": 5, "run_at": "2030-01-01T00:00:00Z"}
            )
            assert both.is_error and "either run_at" in both.content[0].text
            naive = await mcp.call_tool(
                "schedule_job", {"prompt": "x", "run_at": "2030-01-01T00:00:00"}
            )
            assert naive.is_error and "run_at" in naive.content[0].text

            # Only its own sub-jobs: another job is refused.
            other = api.post("/jobs", json={"command": "true", "provider": "shell"}).json()[
                "job_id"
            ]
            refused = await mcp.call_tool("cancel_job", {"job_id": other})
            assert refused.is_error and "not a sub-job" in refused.content[0].text
            assert api.get(f"/jobs/{other}").json()["state"] == "queued"

            progress = _answer(
                await mcp.call_tool("report_progress", {"message": "half", "percent": 50})
            )
            shown = [
                e for e in session_events(api, held["session"]["id"]) if e["type"] == "job.progress"
            ]
            assert [e["seq"] for e in shown] == [progress["seq"]]
            assert shown[0]["payload"] == {"message": "half", "percent": 50.0}

            # Bad arguments are a tool error naming the field, not a crash.
            bad = await mcp.call_tool("submit_job", {"prompt": "x", "priority": 42})
            assert bad.is_error and "priority" in bad.content[0].text

            # The lease is lost: the runner registers again (a restart), the epoch moves on.
            api.post(
                "/runners/register", json={"name": "gw-runner", "providers": ["gw"], "slots": 1}
            )
            before = api.get("/jobs", params={"limit": 100}).json()["jobs"]
            fenced = await mcp.call_tool("submit_job", {"prompt": "echo late", "provider": "gw"})
            assert fenced.is_error
            assert "no longer holds its lease" in fenced.content[0].text
            assert "stale_epoch" in fenced.content[0].text
            fenced = await mcp.call_tool("report_progress", {"message": "late"})
            assert fenced.is_error and "no longer holds its lease" in fenced.content[0].text
            # ... and changed nothing.
            assert api.get("/jobs", params={"limit": 100}).json()["jobs"] == before
            shown = [
                e for e in session_events(api, held["session"]["id"]) if e["type"] == "job.progress"
            ]
            assert len(shown) == 1

        calls = [p["tool"] for t, p in events if t == "tool.call"]
        results = [p for t, p in events if t == "tool.result"]
        assert calls[:4] == ["submit_job", "get_job", "wait_job", "cancel_job"]
        assert len(calls) == len(results)
        assert [r["is_error"] for r in results][-2:] == [True, True]


async def test_allowlist_and_an_upstream_http_server(
    bare: ServerProcess, upstream_url: tuple[str, str]
) -> None:
    url, token = upstream_url
    servers = {"up": McpServerSettings(url=url, bearer=token)}
    with bare.http() as api:
        api.post("/jobs", json={"command": "true", "provider": "gw"})
        held = _lease(api, "gw-runner-2")
        events: list[tuple[str, dict[str, Any]]] = []
        rules = ["corral.report_progress", "up.echo", "up.sleep"]
        async with _gateway(bare, held["token"], events, rules=rules, servers=servers) as mcp:
            listed = {t.name for t in (await mcp.list_tools()).tools}
            # Not listed: corral's other tools, and the upstream's `secret`.
            assert listed == {"report_progress", "up__echo", "up__sleep"}
            echoed = await mcp.call_tool("up__echo", {"text": "hello", "api_key": "sk-hidden-1234"})
            assert not echoed.is_error and echoed.content[0].text == "echo: hello"
            # A forced call of a tool that is not listed: an MCP error naming the rule.
            for name in ("up__secret", "submit_job"):
                with pytest.raises(MCPError) as refused:
                    await mcp.call_tool(name, {})
                assert "not allowed" in refused.value.message
                assert (
                    "mcp_tools = ['corral.report_progress', 'up.echo', 'up.sleep']"
                    in refused.value.message
                )
        calls = [p for t, p in events if t == "tool.call"]
        assert calls[0]["server"] == "up" and calls[0]["tool"] == "echo"
        # Secret-named arguments are masked in the record.
        assert calls[0]["arguments"] == {"text": "hello", "api_key": "[redacted]"}
        results = [p for t, p in events if t == "tool.result"]
        assert results[0]["result"] == "echo: hello"
        assert [r.get("refused") for r in results[1:]] == [True, True]
        assert any(t == "gateway.started" for t, _ in events)
