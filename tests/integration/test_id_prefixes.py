"""Job and session ids by a unique prefix (4+ hex digits), on both databases:
every route that takes an id resolves it; a prefix of several ids is a 409
naming them; a runner key gets no lookup (no other job's id is revealed)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from corral.auth import Role
from corral.config import load_settings
from corral.errors import AmbiguousId, JobNotFound, SessionNotFound
from corral.server import Server
from corral.store import Store
from corral.store.db import Tx
from corral.store.schema import sessions


def _ids_starting(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[len(prefix) :]


@pytest.fixture
async def api(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], Store]]:
    # Every job and session id made here starts with "abcd": prefixes collide.
    monkeypatch.setattr("corral.store.jobs.create.new_id", lambda: _ids_starting("abcd"))
    monkeypatch.setattr("corral.store.sessions.new_id", lambda: _ids_starting("abcd"))
    monkeypatch.chdir(tmp_path)
    async with Server(load_settings(data_dir=tmp_path, database_url=db_url)) as server:
        app = server.app
        store: Store = server.store
        await store.settings.set("paused", "true")  # the jobs stay queued
        keys = {
            role.value: (await store.keys.create(name=role.value, role=role))[1] for role in Role
        }
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://corral",
            headers={"Authorization": f"Bearer {keys['admin']}"},
        ) as http:
            yield http, keys, store


async def _submit(http: httpx.AsyncClient) -> dict[str, str]:
    resp = await http.post("/jobs", json={"command": "true", "title": "prefix test"})
    assert resp.status_code == 202, resp.text
    body: dict[str, str] = resp.json()
    return body


async def test_every_id_route_takes_a_unique_prefix(
    api: tuple[httpx.AsyncClient, dict[str, str], Store],
) -> None:
    http, _, _ = api
    first, second = await _submit(http), await _submit(http)
    job, session = first["job_id"], first["session_id"]
    assert job.startswith("abcd") and second["job_id"].startswith("abcd")
    short = job[:8]

    got = await http.get(f"/jobs/{short}")
    assert got.status_code == 200, got.text
    assert got.json()["id"] == job
    assert (await http.get(f"/jobs/{short.upper()}")).json()["id"] == job
    for path in ("events", "artifacts", "deliveries"):
        resp = await http.get(f"/jobs/{short}/{path}")
        assert resp.status_code == 200, (path, resp.text)
    listed = await http.get("/jobs", params={"session_id": session[:8]})
    assert [j["id"] for j in listed.json()["jobs"]] == [job]
    shown = await http.get(f"/sessions/{session[:8]}")
    assert shown.status_code == 200 and shown.json()["id"] == session
    assert (await http.get(f"/sessions/{session[:8]}/events")).status_code == 200
    turn = await http.post(f"/sessions/{session[:8]}/turns", json={"command": "true"})
    assert turn.status_code == 202, turn.text
    assert turn.json()["session_id"] == session

    cancelled = await http.post(f"/jobs/{short}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["id"] == job
    retried = await http.post(f"/jobs/{short}/retry")
    assert retried.status_code == 200 and retried.json()["id"] == job


async def test_an_ambiguous_prefix_names_the_candidates(
    api: tuple[httpx.AsyncClient, dict[str, str], Store],
) -> None:
    http, _, _ = api
    jobs = sorted([(await _submit(http))["job_id"], (await _submit(http))["job_id"]])
    for path in ("/jobs/abcd", "/jobs/abcd/events", "/sessions/abcd"):
        resp = await http.get(path)
        assert resp.status_code == 409, (path, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "ambiguous_id"
        assert "give more characters" in error["message"]
        assert len(error["candidates"]) == 2
        if path.startswith("/jobs"):
            assert error["candidates"] == jobs
            assert all(j in error["message"] for j in jobs)
    missing = await http.get("/jobs/0000")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no job 0000"
    assert (await http.get("/sessions/0000")).status_code == 404
    assert (await http.get("/jobs/abc")).status_code == 404  # too short to be a prefix


async def test_a_runner_key_gets_no_prefix_lookup(
    api: tuple[httpx.AsyncClient, dict[str, str], Store],
) -> None:
    http, keys, _ = api
    await _submit(http)
    await _submit(http)
    resp = await http.get("/jobs/abcd", headers={"Authorization": f"Bearer {keys['runner']}"})
    assert resp.status_code == 404, resp.text  # not 409: no candidates revealed


async def test_resolve_in_the_store(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        made = ["abcd0" + "0" * 27, "abcd1" + "0" * 27, "abce" + "0" * 28]

        def insert(tx: Tx) -> None:
            now = datetime.now(UTC)
            for sid in made:
                tx.conn.execute(
                    sa.insert(sessions).values(
                        id=sid, created_at=now, updated_at=now, epoch=0, last_seq=0, turns=0
                    )
                )

        await store.db.write(insert)
        assert await store.sessions.resolve("abcd1") == made[1]
        assert await store.sessions.resolve("ABCE") == made[2]
        assert await store.sessions.resolve(made[0]) == made[0]  # a whole id as it is
        assert await store.sessions.resolve("no-such") == "no-such"  # not hex: as it is
        with pytest.raises(AmbiguousId) as info:
            await store.sessions.resolve("abcd")
        assert info.value.candidates == made[:2]
        with pytest.raises(SessionNotFound):
            await store.sessions.resolve("abcf")
        with pytest.raises(JobNotFound):
            await store.jobs.resolve("abcd")  # no jobs at all
    finally:
        await store.close()
