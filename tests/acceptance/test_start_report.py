"""A job's start is reported with its completion when the job ends within
``START_WINDOW`` (one transaction on the server instead of two), and on its
own -- before anything else about the job -- otherwise (issue #18)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.models import Outcome
from corral.runner import channel as channel_module
from corral.runner.channel import WorkerChannel
from corral.runner.link import HttpLink
from corral.testing import ServerProcess

from ._helpers import running_server

NO_RUNNER = {
    "CORRAL_RUNNER__EMBEDDED": "false",
    "CORRAL_PROVIDERS": json.dumps({"hand": {"kind": "shell"}}),
}


@pytest.fixture
def srv(tmp_path: Path, db_url: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "data", env=NO_RUNNER, database_url=db_url) as s:
        yield s


async def _leased(api: httpx.AsyncClient) -> tuple[str, str, str]:
    """A job leased by a hand-driven runner: (job id, session id, worker token)."""
    resp = await api.post("/jobs", json={"command": "true", "provider": "hand"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    body = {"name": "hand", "providers": ["hand"], "slots": 1}
    runner_id = (await api.post("/runners/register", json=body)).json()["runner_id"]
    resp = await api.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10})
    [item] = resp.json()["jobs"]
    assert item["job"]["id"] == job_id
    return job_id, item["session"]["id"], item["token"]


async def _states(api: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/sessions/{session_id}/events")
    assert resp.status_code == 200, resp.text
    return [e for e in resp.json()["events"] if e["type"] in ("job.state", "progress")]


async def test_a_job_that_ends_at_once_reports_its_start_with_its_end(
    api: httpx.AsyncClient, link: HttpLink
) -> None:
    job_id, session_id, token = await _leased(api)
    started = datetime.now(UTC) - timedelta(milliseconds=5)
    ch = WorkerChannel(link.worker(token), job_id=job_id, on_stale=lambda _: None)
    ch.started(started)
    completed = await ch.complete(Outcome(status="done", exit_code=0))
    assert completed is not None and completed.state == "done"
    states = await _states(api, session_id)
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in states] == [
        (None, "queued"),
        ("queued", "assigned"),
        ("assigned", "running"),
        ("running", "done"),
    ]
    # One transaction: the start and the end share its time.
    assert states[2]["created_at"] == states[3]["created_at"]
    job = (await api.get(f"/jobs/{job_id}")).json()
    assert datetime.fromisoformat(job["started_at"]) == started


async def test_a_longer_job_reports_its_start_on_its_own(
    api: httpx.AsyncClient, link: HttpLink
) -> None:
    job_id, session_id, token = await _leased(api)
    ch = WorkerChannel(link.worker(token), job_id=job_id, on_stale=lambda _: None)
    ch.started()
    for _ in range(100):
        await asyncio.sleep(channel_module.START_WINDOW)
        if (await api.get(f"/jobs/{job_id}")).json()["state"] == "running":
            break
    else:
        raise AssertionError("the start was never reported while the job ran")
    await ch.complete(Outcome(status="done", exit_code=0))
    states = await _states(api, session_id)
    assert [e["payload"]["to"] for e in states] == ["queued", "assigned", "running", "done"]
    assert states[2]["created_at"] < states[3]["created_at"]


async def test_the_first_event_ends_the_wait_and_follows_the_start(
    api: httpx.AsyncClient, link: HttpLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window far longer than the test: only the event can end it.
    monkeypatch.setattr(channel_module, "START_WINDOW", 60.0)
    job_id, session_id, token = await _leased(api)
    ch = WorkerChannel(link.worker(token), job_id=job_id, on_stale=lambda _: None)
    ch.started()
    ch.emit("progress", {"message": "hello"})
    for _ in range(200):
        if any(e["type"] == "progress" for e in await _states(api, session_id)):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the event waited for the start window")
    await ch.complete(Outcome(status="done", exit_code=0))
    kinds = [(e["type"], e["payload"].get("to")) for e in await _states(api, session_id)]
    assert kinds.index(("job.state", "running")) < kinds.index(("progress", None))


async def test_a_handle_saved_while_the_start_is_on_its_way_is_reported(
    api: httpx.AsyncClient, link: HttpLink
) -> None:
    """The start goes out on its own (the window passed); while its call is
    on the way the executor saves its handle and the job ends. The handle is
    reported before the outcome, not dropped with the start the flush loop
    left (seen in CI: a delegated job's follow-up turn started a new remote
    session, its session had no handle)."""
    job_id, session_id, token = await _leased(api)
    worker = link.worker(token)
    sending, release = asyncio.Event(), asyncio.Event()
    state = worker.state

    async def held(body: Any) -> Any:
        sending.set()
        await release.wait()
        return await state(body)

    worker.state = held  # type: ignore[method-assign]
    ch = WorkerChannel(worker, job_id=job_id, on_stale=lambda _: None)
    ch.started()
    await asyncio.wait_for(sending.wait(), 10)  # the bare start, after the window
    ch.save_handle("the-handle")
    ending = asyncio.create_task(ch.complete(Outcome(status="done", exit_code=0)))
    await asyncio.sleep(0.1)  # complete() waits for the flush loop, it for the start
    release.set()
    completed = await asyncio.wait_for(ending, 10)
    assert completed is not None and completed.state == "done"
    session = (await api.get(f"/sessions/{session_id}")).json()
    assert session["handle"] == "the-handle", session
