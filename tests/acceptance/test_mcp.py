"""The operator MCP server, driven by the official `mcp` client: over
streamable HTTP at `/mcp` of a real `corral serve`, and over stdio from a real
`corral mcp` process. Each role lists its tools; every tool is called; the
API's refusals come back as tool errors and the session goes on; requests
without a good key are refused."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from corral.auth import Role
from corral.mcp.tools import TOOLS
from corral.runner.channel import WorkerChannel
from corral.runner.link import HttpLink
from corral.store import Store
from corral.testing import ServerProcess

from ._helpers import assert_error, running_server

READ = {t.name for t in TOOLS if t.permission == "read"}
WRITE = {t.name for t in TOOLS if t.permission == "write"}
ADMIN = {t.name for t in TOOLS if t.permission == "admin"}

TICK = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)"
CONFIG = f"""
[providers.asker]
kind = "shell"

[agents.ticker]
command = {json.dumps([sys.executable, "-u", "-c", TICK])}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mcp")
    config = root / "corral.toml"
    config.write_text(CONFIG)
    with running_server(root / "data", args=("--config", str(config), "--no-queue")) as s:
        yield s


@pytest.fixture(scope="module")
def keys(srv: ServerProcess) -> dict[str, str]:
    """A key of each role (made in the server's database, as `corral keys create` does)."""

    async def make() -> dict[str, str]:
        store = await Store.open(f"sqlite:///{srv.data_dir / 'corral.db'}", migrate_schema=False)
        try:
            made = {}
            for role in (Role.OPERATOR, Role.VIEWER, Role.RUNNER):
                _, made[role.value] = await store.keys.create(name=f"mcp {role}", role=role)
            return made
        finally:
            await store.close()

    return {"admin": srv.admin_key, **asyncio.run(make())}


@asynccontextmanager
async def over_http(srv: ServerProcess, key: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(f"{srv.url}/mcp", http_client=http)) as c,
    ):
        yield c


@asynccontextmanager
async def over_stdio(srv: ServerProcess, key: str) -> AsyncIterator[Client]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(CORRAL_URL=srv.url, CORRAL_TOKEN=key)
    params = StdioServerParameters(command=sys.executable, args=["-m", "corral", "mcp"], env=env)
    async with Client(params) as c:
        yield c


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


def refused(result: CallToolResult, code: str) -> str:
    """The tool error's text, which carries the API's code and message."""
    assert result.is_error, result.structured_content
    text = result.content[0].text  # type: ignore[union-attr]
    assert f"{code}: " in text, text
    return str(text)


async def names(c: Client) -> set[str]:
    return {t.name for t in (await c.list_tools()).tools}


@pytest.mark.parametrize("transport", [over_http, over_stdio], ids=["http", "stdio"])
async def test_each_role_lists_the_tools_it_may_use(
    srv: ServerProcess, keys: dict[str, str], transport: Any
) -> None:
    async with transport(srv, keys["viewer"]) as c:
        assert await names(c) == READ
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["get_job"].annotations.read_only_hint is True
        assert tools["get_job"].input_schema["required"] == ["job_id"]
        # A tool the role does not list is refused by the API, with its message.
        refused(await c.call_tool("submit_job", {"command": "true"}), "forbidden")
        assert ok(await c.call_tool("status", {}))["paused"] is False
    async with transport(srv, keys["operator"]) as c:
        assert await names(c) == READ | WRITE
    async with transport(srv, keys["admin"]) as c:
        assert await names(c) == READ | WRITE | ADMIN
        assert c.server_info is not None and c.server_info.name == "corral"


async def test_every_tool_over_http(srv: ServerProcess, keys: dict[str, str]) -> None:
    called: set[str] = set()

    async def call(c: Client, tool: str, **args: Any) -> CallToolResult:
        called.add(tool)
        return await c.call_tool(tool, args)

    async with over_http(srv, keys["admin"]) as c:
        job = ok(await call(c, "submit_job", command="echo one; echo two", title="mcp"))
        job_id = job["job_id"]
        waited = ok(await call(c, "wait_job", job_id=job_id[:8], timeout=60))
        assert waited["ended"] and waited["job"]["state"] == "done"
        got = ok(await call(c, "get_job", job_id=job_id))
        assert got["source"] == "mcp" and got["title"] == "mcp"
        listed = ok(await call(c, "list_jobs", state=["done"], limit=500))
        assert job_id in [j["id"] for j in listed["jobs"]]
        logs = ok(await call(c, "job_logs", job_id=job_id))
        assert logs["lines"] == ["one", "two"]
        assert ok(await call(c, "job_logs", job_id=job_id, lines=1))["lines"] == ["two"]
        after = ok(await call(c, "job_logs", job_id=job_id, since=0, lines=2))
        assert len(after["events"]) == 2 and after["next_since"] == after["events"][-1]["seq"]

        turn = ok(await call(c, "send_turn", session_id=job["session_id"], command="echo again"))
        assert ok(await call(c, "wait_job", job_id=turn["job_id"]))["job"]["turn"] == 2

        slow = ok(await call(c, "submit_job", command="sleep 300"))["job_id"]
        assert ok(await call(c, "cancel_job", job_id=slow))["state"] == "cancelled"
        assert ok(await call(c, "retry_job", job_id=slow))["state"] == "queued"
        ok(await call(c, "cancel_job", job_id=slow))

        decision = ok(await call(c, "route", command="true"))
        assert decision["provider"] == "shell"
        assert ok(await call(c, "pause"))["paused"] is True
        assert ok(await call(c, "status"))["paused"] is True
        assert ok(await call(c, "resume"))["paused"] is False
        assert ok(await call(c, "resume", provider="shell"))["was_paused"] is False

        agents = ok(await call(c, "list_agents"))["agents"]
        assert [a["name"] for a in agents] == ["ticker"]
        restarted = ok(await call(c, "agent_action", name="ticker", action="restart"))
        assert restarted["status"] == "running"
        for _ in range(200):
            lines = ok(await call(c, "agent_logs", name="ticker", n=5))["lines"]
            if lines:
                break
            await asyncio.sleep(0.05)
        assert lines and lines[-1]["line"] == "tick"

        await _answered_through_mcp(srv, c, call)
    assert called == READ | WRITE | ADMIN


async def _answered_through_mcp(srv: ServerProcess, c: Client, call: Any) -> None:
    """A worker asks (through the runner's own link); the `answer` tool answers."""
    headers = {"Authorization": f"Bearer {srv.admin_key}"}
    async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=30) as api:
        job_id = (await api.post("/jobs", json={"command": "true", "provider": "asker"})).json()[
            "job_id"
        ]
        body = {"name": "mcp-hand", "providers": ["asker"], "slots": 1}
        runner_id = (await api.post("/runners/register", json=body)).json()["runner_id"]
        leased = await api.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10})
        [item] = leased.json()["jobs"]
    refused(await call(c, "answer", job_id=job_id, text="too early"), "not_waiting")
    timeout = httpx.Timeout(30, read=90)
    async with HttpLink(srv.url, srv.admin_key, timeout=timeout, max_connections=4) as link:
        channel = WorkerChannel(link.worker(item["token"]), job_id=job_id, on_stale=print)
        try:
            asking = asyncio.create_task(channel.ask("Ship it?", ["yes", "no"]))
            for _ in range(600):
                shown = ok(await call(c, "get_job", job_id=job_id))["waiting_for"]
                if shown:
                    break
                await asyncio.sleep(0.05)
            assert shown["question"] == "Ship it?"
            answered = ok(await call(c, "answer", job_id=job_id, text="yes"))
            assert answered["state"] == "answered"
            question = await asking
            assert question is not None and question.reply() == "yes"
        finally:
            await channel.close()


async def test_errors_are_tool_errors_and_the_session_goes_on(
    srv: ServerProcess, keys: dict[str, str]
) -> None:
    async with over_http(srv, keys["operator"]) as c:
        refused(await c.call_tool("get_job", {"job_id": "ffffffffffff"}), "job_not_found")
        refused(await c.call_tool("cancel_job", {"job_id": "ffffffffffff"}), "job_not_found")
        refused(await c.call_tool("submit_job", {"prompt": "hello"}), "unroutable")
        refused(
            await c.call_tool("submit_job", {"command": "true", "provider": "nope"}), "unroutable"
        )
        refused(await c.call_tool("pause", {}), "forbidden")  # an admin's tool
        refused(await c.call_tool("agent_action", {"name": "nope", "action": "start"}), "not_found")
        bad = await c.call_tool("list_jobs", {"limit": 0})
        assert bad.is_error and "limit" in bad.content[0].text  # type: ignore[union-attr]
        unknown = await c.call_tool("drop_database", {})
        assert unknown.is_error
        # Still the same session: it answers.
        assert ok(await c.call_tool("status", {}))["paused"] is False


ACCEPT = {"Accept": "application/json, text/event-stream"}
HELLO = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


async def test_a_request_without_a_good_key_is_refused(
    srv: ServerProcess, keys: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
        resp = await http.post("/mcp", json=HELLO, headers=ACCEPT)
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
        resp = await http.post("/mcp", json=HELLO, headers={**ACCEPT, "Authorization": "Bearer no"})
        assert_error(resp, 401)
        runner = {**ACCEPT, "Authorization": f"Bearer {keys['runner']}"}
        assert_error(await http.post("/mcp", json=HELLO, headers=runner), 403, "forbidden")
        viewer = {**ACCEPT, "Authorization": f"Bearer {keys['viewer']}"}
        resp = await http.post("/mcp", json=HELLO, headers=viewer)
        assert resp.status_code == 200, resp.text


def test_the_sdk_loads_at_the_first_request_with_a_good_key(tmp_path: Path) -> None:
    """``/mcp`` loads the MCP SDK (about a second of CPU and 26 MB here) when
    the first request with a good key comes, not at every ``corral serve``
    start; a request without one is refused before anything loads."""
    loaded = "/mcp: the MCP server loaded"
    with running_server(tmp_path / "data", args=("--no-queue",)) as s:
        assert_error(httpx.post(f"{s.url}/mcp", json=HELLO, headers=ACCEPT), 401)
        time.sleep(2)  # what loaded at start took ~1 s
        assert loaded not in s.log.read_text()
        admin = {**ACCEPT, "Authorization": f"Bearer {s.admin_key}"}
        resp = httpx.post(f"{s.url}/mcp", json=HELLO, headers=admin, timeout=60)
        assert resp.status_code == 200, resp.text
        assert s.log.read_text().count(loaded) == 1
        resp = httpx.post(f"{s.url}/mcp", json=HELLO, headers=admin, timeout=60)
        assert resp.status_code == 200, resp.text
        assert s.log.read_text().count(loaded) == 1


def test_corral_mcp_with_a_runner_key_or_no_server_says_why(
    srv: ServerProcess, keys: dict[str, str], tmp_path: Path
) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    argv = [sys.executable, "-m", "corral", "mcp"]
    done = subprocess.run(
        argv,
        env={**env, "CORRAL_URL": srv.url, "CORRAL_TOKEN": keys["runner"]},
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "runner key" in done.stderr and done.stdout == ""
    gone = subprocess.run(
        argv,
        env={**env, "CORRAL_URL": "http://127.0.0.1:9", "CORRAL_TOKEN": keys["viewer"]},
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gone.returncode == 1 and "cannot reach corral" in gone.stderr
    assert json.dumps(gone.stdout) == '""'


def _rpc(http: httpx.Client, key: str, tool: str, **args: Any) -> dict[str, Any]:
    """One tools/call as a bare JSON-RPC request: no initialize, no session."""
    headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": args},
    }
    resp = http.post("/mcp", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    data = next(line[5:] for line in resp.text.splitlines() if line.startswith("data:"))
    result = json.loads(data)["result"]
    assert not result.get("isError"), result
    return dict(result["structuredContent"])


def test_any_replica_answers_any_call(tmp_path: Path, pg_url: str) -> None:
    """/mcp keeps no session: a job submitted through one replica is read
    through another (PostgreSQL, no sticky load balancing needed)."""
    with (
        running_server(tmp_path / "a", database_url=pg_url) as a,
        running_server(tmp_path / "b", database_url=pg_url, args=("--no-runner",)) as b,
        httpx.Client(base_url=a.url, timeout=60) as to_a,
        httpx.Client(base_url=b.url, timeout=60) as to_b,
    ):
        submitted = _rpc(to_a, a.admin_key, "submit_job", command="echo across")
        waited = _rpc(to_b, b.admin_key, "wait_job", job_id=submitted["job_id"], timeout=60)
        assert waited["ended"] and waited["job"]["state"] == "done"
        assert _rpc(to_b, b.admin_key, "job_logs", job_id=submitted["job_id"])["lines"] == [
            "across"
        ]
