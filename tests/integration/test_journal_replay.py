"""A runner's journal, presented when it registers (POST /runners/register),
on SQLite and PostgreSQL: the outcome ends a job that was released or is
still held by the runner's previous registration; a job leased again keeps
its new run; presenting an entry twice changes nothing; events already
stored are not stored twice; only the key that ran the job may present it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.auth import Role
from corral.config import load_settings
from corral.models import new_id
from corral.server import Server


@dataclass
class Api:
    http: httpx.AsyncClient
    admin: dict[str, str]
    runner: dict[str, str]
    other: dict[str, str]
    server: Server

    async def register(
        self, name: str, journal: list[dict[str, Any]] | None = None, key: str = "runner"
    ) -> dict[str, Any]:
        body = {"name": name, "providers": ["shell"], "slots": 4, "journal": journal or []}
        resp = await self.http.post("/runners/register", json=body, headers=getattr(self, key))
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    async def lease(self, runner_id: str, key: str = "runner") -> dict[str, Any]:
        resp = await self.http.post(
            f"/runners/{runner_id}/lease",
            json={"max_jobs": 1, "wait": 0},
            headers=getattr(self, key),
        )
        assert resp.status_code == 200, resp.text
        [item] = resp.json()["jobs"]
        return dict(item)

    async def submit(self, command: str) -> str:
        resp = await self.http.post("/jobs", json={"command": command}, headers=self.admin)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict((await self.http.get(f"/jobs/{job_id}", headers=self.admin)).json())

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        job = await self.job(job_id)
        resp = await self.http.get(
            f"/sessions/{job['session_id']}/events", params={"since": 0}, headers=self.admin
        )
        return list(resp.json()["events"])

    async def worker(self, token: str, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture
async def api(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(data_dir=tmp_path, database_url=db_url, queue_enabled=False)
    async with Server(settings) as server:
        store = server.store
        admin = (await store.keys.create(name="admin", role=Role.ADMIN))[1]
        runner = (await store.keys.create(name="runner", role=Role.RUNNER))[1]
        other = (await store.keys.create(name="other", role=Role.RUNNER))[1]
        transport = httpx.ASGITransport(app=server.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as http:
            yield Api(
                http,
                {"Authorization": f"Bearer {admin}"},
                {"Authorization": f"Bearer {runner}"},
                {"Authorization": f"Bearer {other}"},
                server,
            )


def _line(text: str) -> dict[str, Any]:
    return {"event_id": new_id(), "type": "output", "payload": {"line": text}}


async def _ran(api: Api, name: str, command: str) -> tuple[str, dict[str, Any], list[Any]]:
    """Register ``name``, lease a job of ``command``, start it and send its
    first line: the job's process then "finished" with a second line unsent.
    Returns the job id, the journal entry and the two events."""
    job_id = await api.submit(command)
    runner = await api.register(name)
    item = await api.lease(runner["runner_id"])
    token = item["token"]
    started = datetime.now(UTC).isoformat()
    assert (await api.worker(token, "PUT", "/worker/state", {"state": "running"})).is_success
    first, second = _line("one"), _line("two")
    sent = await api.worker(token, "POST", "/worker/events", {"events": [first]})
    assert sent.json()["accepted"], sent.text
    entry = {
        "id": new_id(),
        "token": token,
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "outcome": {"status": "done", "result": "one\ntwo", "exit_code": 0},
        # The first line may or may not have reached the server: both are sent.
        "events": [first, second],
    }
    return job_id, entry, [first, second]


def _lines(events: list[dict[str, Any]]) -> list[str]:
    return [e["payload"]["line"] for e in events if e["type"] == "output"]


async def test_a_released_job_ends_with_the_journalled_outcome(api: Api) -> None:
    job_id, entry, _ = await _ran(api, "r1", "echo one; echo two")
    # The runner restarts without its journal (an older runner, say): the job
    # is released and queued again, at the next epoch.
    await api.register("r1")
    queued = await api.job(job_id)
    assert queued["state"] == "queued" and queued["reason"] == "runner_restarted"
    assert queued["infra_retries"] == 1

    answer = (await api.register("r1", [entry]))["journal"]
    assert answer == [
        {
            "id": entry["id"],
            "job_id": job_id,
            "result": "recovered",
            "state": "done",
            "detail": None,
        }
    ]
    job = await api.job(job_id)
    assert job["state"] == "done" and job["result"] == "one\ntwo" and job["attempt"] == 1
    assert job["infra_retries"] == 0, "the release's re-queue was not needed after all"
    assert job["recovered"]["from_runner"] == "r1" and job["recovered"]["reason"] == "journal"
    events = await api.events(job_id)
    assert _lines(events) == ["one", "two"], "a line already stored is not stored twice"
    recovered = [e for e in events if e["type"] == "job.recovered"]
    assert len(recovered) == 1 and recovered[0]["event_id"] == entry["id"]
    assert recovered[0]["payload"]["finished_at"] == entry["finished_at"]
    moves = [(e["payload"]["from"], e["payload"]["to"]) for e in events if e["type"] == "job.state"]
    assert moves == [
        (None, "queued"),
        ("queued", "assigned"),
        ("assigned", "running"),
        ("running", "queued"),
        ("queued", "running"),
        ("running", "done"),
    ]
    status = (await api.http.get("/watchdog/status", headers=api.admin)).json()
    assert status["recovered"] == 1


async def test_a_job_still_held_by_the_previous_registration_is_never_released(api: Api) -> None:
    job_id, entry, _ = await _ran(api, "r1", "true")
    answer = (await api.register("r1", [entry]))["journal"]
    assert [a["result"] for a in answer] == ["recovered"]
    job = await api.job(job_id)
    assert job["state"] == "done" and job["infra_retries"] == 0
    moves = [e["payload"]["to"] for e in await api.events(job_id) if e["type"] == "job.state"]
    assert moves == ["queued", "assigned", "running", "done"]


async def test_presented_twice_it_changes_nothing(api: Api) -> None:
    job_id, entry, _ = await _ran(api, "r1", "true")
    await api.register("r1", [entry])
    before = await api.events(job_id)
    again = (await api.register("r1", [entry]))["journal"]
    assert [(a["result"], a["state"]) for a in again] == [("recorded", "done")]
    assert await api.events(job_id) == before


async def test_a_completion_that_landed_is_recorded_not_applied_again(api: Api) -> None:
    job_id, entry, events = await _ran(api, "r1", "true")
    done = await api.worker(
        entry["token"], "POST", "/worker/complete", {"outcome": entry["outcome"], "events": events}
    )
    assert done.json()["state"] == "done", done.text
    before = await api.events(job_id)
    # The answer was lost with the runner: it presents the entry when it comes back.
    answer = (await api.register("r1", [entry]))["journal"]
    assert [(a["result"], a["state"]) for a in answer] == [("recorded", "done")]
    assert await api.events(job_id) == before


async def test_a_job_leased_again_keeps_its_new_run(api: Api) -> None:
    job_id, entry, _ = await _ran(api, "r1", "true")
    # Restarted without its journal: the job is released and leased again.
    r1 = await api.register("r1")
    again = await api.lease(r1["runner_id"])
    assert again["job"]["id"] == job_id

    # The journal turns up under another name of the same key (a runner
    # named after its pid, say): the new run is not touched.
    answer = (await api.register("r1-later", [entry]))["journal"]
    assert [a["result"] for a in answer] == ["dropped"]
    assert "leased again" in answer[0]["detail"]
    job = await api.job(job_id)
    assert job["state"] == "assigned" and job["runner_id"] == r1["runner_id"]
    assert job["recovered"] is None
    events = await api.events(job_id)
    dropped = [e for e in events if e["type"] == "job.journal_dropped"]
    assert len(dropped) == 1 and dropped[0]["payload"]["from_runner"] == "r1"
    assert _lines(events) == ["one"], "the first run's unsent lines are not mixed into the new run"
    # The new run's writes still go through.
    ok = await api.worker(again["token"], "PUT", "/worker/state", {"state": "running"})
    assert ok.json()["state"] == "running"
    # And the drop is not repeated when the entry comes again.
    assert [a["result"] for a in (await api.register("r1-later", [entry]))["journal"]] == [
        "recorded"
    ]


async def test_a_cancelled_job_stays_cancelled(api: Api) -> None:
    job_id, entry, _ = await _ran(api, "r1", "true")
    await api.http.post(f"/jobs/{job_id}/cancel", headers=api.admin)
    answer = (await api.register("r1", [entry]))["journal"]
    assert [(a["result"], a["state"]) for a in answer] == [("dropped", "cancelled")]
    assert (await api.job(job_id))["state"] == "cancelled"


async def test_only_the_key_that_ran_the_job_may_present_it(api: Api) -> None:
    job_id, entry, _ = await _ran(api, "r1", "true")
    answer = (await api.register("intruder", [entry], key="other"))["journal"]
    assert [a["result"] for a in answer] == ["dropped"]
    assert "another key" in answer[0]["detail"]
    forged = {**entry, "id": new_id(), "token": entry["token"][:-4] + "AAAA"}
    answer = (await api.register("r1", [forged]))["journal"]
    assert [a["result"] for a in answer] == ["dropped"]
    assert (await api.job(job_id))["state"] in ("assigned", "running", "queued")
    assert not [e for e in await api.events(job_id) if e["type"].startswith("job.journal")]
