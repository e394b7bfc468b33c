"""Routing at submit, POST /route, and the kill switch, through the real app
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.api.app import create_app
from corral.auth import Role
from corral.config import load_settings

PROVIDERS = {
    "claude": {"kind": "claude-code", "tiers": {"high": "opus"}},
    "gpu": {"kind": "openai", "models": ["qwen"]},
    "off": {"kind": "openai", "enabled": False},
}


@pytest.fixture
async def http(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.chdir(tmp_path)
    app = create_app(load_settings(data_dir=tmp_path, database_url=db_url, providers=PROVIDERS))
    async with app.router.lifespan_context(app):
        store = app.state.services.store
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
        ({}, "shell", 5, None),
        ({"preferred_ai": "gpu"}, "gpu", 4, None),
        ({"provider": "gpu", "allow_delegation": False}, "shell", 3, None),
        ({"executor": "claude", "complexity_hint": "high"}, "claude", 2, "opus"),
        ({"needs_claude_code": True, "preferred_ai": "gpu"}, "shell", 1, None),
        ({"preferred_ai": "off"}, "shell", 5, None),
        ({"preferred_ai": "nope"}, "shell", 5, None),
    ],
    ids=["none", "remote", "no-delegation", "local-tier", "needs-local", "disabled", "unknown"],
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
    assert len(routed[0]["payload"]["skipped"]) == rule - 1


async def test_route_explains_without_storing(http: httpx.AsyncClient) -> None:
    decision = (await http.post("/route", json={"prompt": "x", "preferred_ai": "nope"})).json()
    assert decision["provider"] == "shell" and decision["rule"] == 5
    assert any("not a configured provider" in line for line in decision["skipped"])
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
    job = await _submit(http)
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
    app = create_app(load_settings(data_dir=tmp_path, database_url=db_url, paused=True))
    async with app.router.lifespan_context(app):
        store = app.state.services.store
        assert await store.settings.get("paused") == "true"
        await store.settings.set("paused", "false")
    # The database's value wins over the config default from then on.
    app = create_app(load_settings(data_dir=tmp_path, database_url=db_url, paused=True))
    async with app.router.lifespan_context(app):
        assert await app.state.services.store.settings.get("paused") == "false"
