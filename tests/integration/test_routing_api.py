"""Routing at submit, POST /route, and the kill switch, through the real app
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.auth import Role
from corral.config import load_settings
from corral.server import Server

PROVIDERS = {
    "claude": {"kind": "claude-code", "tiers": {"high": "opus"}},
    "gpu": {"kind": "openai", "models": ["qwen"]},
    "off": {"kind": "openai", "enabled": False},
}


@pytest.fixture
def defaults() -> dict[str, str]:
    return {"default_provider": "claude"}


@pytest.fixture
async def http(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defaults: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        data_dir=tmp_path, database_url=db_url, providers=PROVIDERS, **defaults
    )
    async with Server(settings) as server:
        app = server.app
        store = server.store
        keys = {r: (await store.keys.create(name=r.value, role=r))[1] for r in Role}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
            client.headers["Authorization"] = f"Bearer {keys[Role.ADMIN]}"
            client.keys = keys  # type: ignore[attr-defined]
            yield client


async def _submit(http: httpx.AsyncClient, **body: object) -> dict[str, object]:
    accepted = (await http.post("/jobs", json={"prompt": "x", **body})).json()
    job: dict[str, object] = (await http.get(f"/jobs/{accepted['job_id']}")).json()
    return job


@pytest.mark.parametrize(
    ("body", "provider", "rule", "model"),
    [
        ({}, "claude", 5, None),
        ({"command": "echo hi"}, "shell", 0, None),
        ({"command": "echo hi", "provider": "shell"}, "shell", 0, None),
        ({"provider": "shell"}, "shell", 2, None),
        ({"preferred_ai": "gpu"}, "gpu", 4, None),
        ({"provider": "gpu", "allow_delegation": False}, "claude", 3, None),
        ({"executor": "claude", "complexity_hint": "high"}, "claude", 2, "opus"),
        ({"needs_claude_code": True, "preferred_ai": "gpu"}, "claude", 1, None),
    ],
    ids=[
        "none",
        "command",
        "command-on-shell",
        "shell-named",
        "remote",
        "no-delegation",
        "local-tier",
        "needs-local",
    ],
)
async def test_submit_routes_and_records_the_decision(
    http: httpx.AsyncClient,
    body: dict[str, object],
    provider: str,
    rule: int,
    model: str | None,
) -> None:
    job = await _submit(http, **body)
    assert (job["provider"], job["route_rule"], job["model"]) == (provider, rule, model)
    assert job["route_reason"]
    events = (await http.get(f"/jobs/{job['id']}/events")).json()["events"]
    routed = [e for e in events if e["type"] == "job.routed"]
    assert len(routed) == 1 and routed[0]["payload"]["provider"] == provider
    assert len(routed[0]["payload"]["skipped"]) == rule


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"preferred_ai": "claud"}, "provider 'claud' is not configured"),
        ({"provider": "off"}, "provider 'off' is disabled"),
        ({"command": "ls", "provider": "claude"}, "a command runs only on a shell provider"),
    ],
    ids=["unknown", "disabled", "command-on-an-agent"],
)
async def test_a_named_provider_is_used_or_refused_never_replaced(
    http: httpx.AsyncClient, body: dict[str, object], says: str
) -> None:
    for path in ("/jobs", "/route"):
        resp = await http.post(path, json={"prompt": "now add a test", **body})
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "unroutable" and says in error["message"]
        if "provider" in body and body.get("command") is None:
            assert "enabled providers are: claude, gpu, shell" in error["message"]
    assert (await http.get("/jobs")).json()["jobs"] == []  # nothing was queued


@pytest.mark.parametrize("defaults", [{}], ids=["no-default"])
async def test_prose_with_no_default_provider_is_refused_with_the_how_to(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/jobs", "/route"):
        resp = await http.post(path, json={"prompt": "echo pwned > /tmp/x"})
        assert resp.status_code == 422, resp.text
        message = resp.json()["error"]["message"]
        assert 'set default_provider = "NAME" in corral.toml (one of: claude, gpu)' in message
        assert "--shell" in message
    assert (await http.get("/jobs")).json()["jobs"] == []
    # What is explicitly a command still runs on the shell, and so does a named shell.
    assert (await _submit(http, command="echo hi"))["provider"] == "shell"
    assert (await _submit(http, provider="shell"))["provider"] == "shell"


@pytest.mark.parametrize("defaults", [{}], ids=["no-default"])
async def test_a_follow_up_turn_inherits_its_sessions_provider(http: httpx.AsyncClient) -> None:
    first = await _submit(http, provider="claude")
    session = first["session_id"]
    for path, body in (
        (f"/sessions/{session}/turns", {"prompt": "now add a test"}),
        ("/jobs", {"prompt": "and a changelog entry", "session_id": session}),
    ):
        accepted = (await http.post(path, json=body)).json()
        turn = (await http.get(f"/jobs/{accepted['job_id']}")).json()
        assert (turn["provider"], turn["route_rule"]) == ("claude", 2)
        assert "inherited from the session" in turn["route_reason"]
    # It may still name another provider, or send a command.
    other = (
        await http.post(f"/sessions/{session}/turns", json={"prompt": "x", "provider": "gpu"})
    ).json()
    assert (await http.get(f"/jobs/{other['job_id']}")).json()["provider"] == "gpu"
    cmd = (await http.post(f"/sessions/{session}/turns", json={"command": "ls"})).json()
    assert (await http.get(f"/jobs/{cmd['job_id']}")).json()["provider"] == "shell"
    # The latest turn ran on a shell: prose does not follow it there.
    refused = await http.post(f"/sessions/{session}/turns", json={"prompt": "now add a test"})
    assert refused.status_code == 422
    assert "its session's provider shell runs only commands" in refused.json()["error"]["message"]


async def test_route_explains_without_storing(http: httpx.AsyncClient) -> None:
    decision = (await http.post("/route", json={"prompt": "x", "preferred_ai": "gpu"})).json()
    assert decision["provider"] == "gpu" and decision["rule"] == 4
    assert decision["skipped"][2] == "2: preferred_ai gpu is remote"
    assert (await http.get("/jobs")).json()["jobs"] == []
    viewer = {"Authorization": f"Bearer {http.keys[Role.VIEWER]}"}  # type: ignore[attr-defined]
    assert (await http.post("/route", json={"prompt": "x"}, headers=viewer)).status_code == 200
    bad = await http.post("/route", json={"prompt": "x", "prefered_ai": "gpu"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"


async def test_kill_switch_stops_leases_until_resumed(http: httpx.AsyncClient) -> None:
    runner_id = (
        await http.post("/runners/register", json={"name": "r", "providers": ["shell"], "slots": 4})
    ).json()["runner_id"]
    assert (await http.get("/status")).json()["paused"] is False
    assert (await http.post("/admin/pause")).json() == {"paused": True}
    job = await _submit(http, command="true")
    assert job["state"] == "queued"  # intake still accepts and queues
    lease = (
        await http.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 0.2})
    ).json()
    assert lease["jobs"] == [] and (await http.get("/status")).json()["paused"] is True
    operator = {"Authorization": f"Bearer {http.keys[Role.OPERATOR]}"}  # type: ignore[attr-defined]
    assert (await http.post("/admin/resume", headers=operator)).status_code == 403
    assert (await http.post("/admin/resume")).json() == {"paused": False}
    lease = (await http.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 1})).json()
    assert [item["job"]["id"] for item in lease["jobs"]] == [job["id"]]


async def test_config_default_pauses_a_new_database(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with Server(load_settings(data_dir=tmp_path, database_url=db_url, paused=True)) as server:
        store = server.store
        assert await store.settings.get("paused") == "true"
        await store.settings.set("paused", "false")
    # The database's value wins over the config default from then on.
    async with Server(load_settings(data_dir=tmp_path, database_url=db_url, paused=True)) as server:
        assert await server.store.settings.get("paused") == "false"
