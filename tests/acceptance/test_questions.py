"""A person in the loop, end to end on a real `corral serve` (SQLite and
PostgreSQL): a worker asks through the runner's own link and channel, the
job shows ``waiting_for``, a person answers through the API or `corral
answer`, and the waiting call returns the text; a timeout returns "no
answer"; a fenced worker's question is refused and changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.runner.channel import WorkerChannel
from corral.runner.link import HttpLink
from corral.testing import ServerProcess

from ._helpers import assert_error, create_key, running_server

NO_RUNNER = {
    "CORRAL_RUNNER__EMBEDDED": "false",
    "CORRAL_PROVIDERS": json.dumps({"asker": {"kind": "shell"}}),
}


@pytest.fixture
def srv(tmp_path: Path, db_url: str) -> Iterator[ServerProcess]:
    with running_server(tmp_path / "data", env=NO_RUNNER, database_url=db_url) as s:
        yield s


async def _register(api: httpx.AsyncClient, name: str = "hand") -> str:
    body = {"name": name, "providers": ["asker"], "slots": 1}
    resp = await api.post("/runners/register", json=body)
    assert resp.status_code == 200, resp.text
    runner_id: str = resp.json()["runner_id"]
    return runner_id


async def _lease(api: httpx.AsyncClient, runner_id: str) -> dict[str, Any]:
    resp = await api.post(f"/runners/{runner_id}/lease", json={"max_jobs": 1, "wait": 10})
    assert resp.status_code == 200, resp.text
    [item] = resp.json()["jobs"]
    return dict(item)


async def _submit(api: httpx.AsyncClient, **fields: Any) -> str:
    resp = await api.post("/jobs", json={"command": "true", "provider": "asker", **fields})
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


async def _job(api: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    resp = await api.get(f"/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def _waiting_for(api: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job's ``waiting_for``, once it shows one (the ask is in flight)."""
    for _ in range(600):
        shown = (await _job(api, job_id))["waiting_for"]
        if shown:
            return dict(shown)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never showed a question")


async def _events(api: httpx.AsyncClient, session_id: str, *types: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/sessions/{session_id}/events")
    assert resp.status_code == 200, resp.text
    return [e for e in resp.json()["events"] if e["type"] in types]


async def test_ask_then_answer_by_api_and_by_cli_and_time_out(
    srv: ServerProcess, api: httpx.AsyncClient, link: HttpLink
) -> None:
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["job.question"]}
    job_id = await _submit(api, webhook=hook)
    item = await _lease(api, await _register(api))
    stale: list[str] = []
    channel = WorkerChannel(link.worker(item["token"]), job_id=job_id, on_stale=stale.append)
    channel.started()
    try:
        # 1. Answered through the API, by an id prefix.
        asking = asyncio.create_task(channel.ask("Deploy to prod?", ["yes", "no"]))
        shown = await _waiting_for(api, job_id)
        assert shown["question"] == "Deploy to prod?" and shown["options"] == ["yes", "no"]
        assert shown["asked_at"] and shown["expires_at"] is None
        assert channel.waiting.active  # the executor's stall guards pause meanwhile
        resp = await api.post(f"/jobs/{job_id[:8]}/answer", json={"text": "yes, go"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "answered" and resp.json()["answered_by"] == "local admin"
        answered = await asking
        assert answered is not None and answered.reply() == "yes, go"
        assert not channel.waiting.active
        assert (await _job(api, job_id))["waiting_for"] is None

        # 2. Answered with `corral answer JOB TEXT --json`.
        asking = asyncio.create_task(channel.ask("Which branch?"))
        shown = await _waiting_for(api, job_id)
        cli = await asyncio.to_thread(srv.cli, "answer", job_id[:10], "main, please", "--json")
        assert cli.returncode == 0, cli.stderr
        printed = json.loads(cli.stdout)
        assert (
            printed["question_id"] == shown["question_id"] and printed["answer"] == "main, please"
        )
        answered = await asking
        assert answered is not None and answered.reply() == "main, please"
        cli = await asyncio.to_thread(srv.cli, "answer", job_id, "again")
        assert cli.returncode == 1 and "waits for no answer" in cli.stderr

        # 3. Nobody answers within the timeout: "no answer".
        asking = asyncio.create_task(channel.ask("Anyone there?", timeout=1))
        shown = await _waiting_for(api, job_id)
        assert shown["expires_at"] is not None
        expired = await asking
        assert expired is not None and expired.state == "expired"
        assert expired.reply().startswith("no answer")
        assert (await _job(api, job_id))["waiting_for"] is None
        assert_error(
            await api.post(f"/jobs/{job_id}/answer", json={"text": "late"}), 409, "not_waiting"
        )
        assert stale == []
    finally:
        await channel.close()

    events = await _events(api, item["session"]["id"], "job.question", "job.answer")
    assert [(e["type"], e["payload"].get("state")) for e in events] == [
        ("job.question", None),
        ("job.answer", "answered"),
        ("job.question", None),
        ("job.answer", "answered"),
        ("job.question", None),
        ("job.answer", "expired"),
    ]
    assert events[1]["payload"]["text"] == "yes, go" and events[1]["payload"]["by"] == "local admin"
    # The job's webhook asked for job.question: each one was queued for it.
    resp = await api.get(f"/jobs/{job_id}/deliveries")
    assert resp.status_code == 200, resp.text
    assert sorted(d["event"] for d in resp.json()).count("job.question") == 3


async def test_refusals_and_the_worker_state_path(
    srv: ServerProcess, api: httpx.AsyncClient, link: HttpLink
) -> None:
    job_id = await _submit(api, max_attempts=2)
    item = await _lease(api, await _register(api, "fenced"))
    auth = {"Authorization": f"Bearer {item['token']}"}

    # Not waiting: 409; unknown job: 404; a viewer may not answer: 403.
    assert_error(await api.post(f"/jobs/{job_id}/answer", json={"text": "x"}), 409, "not_waiting")
    assert_error(await api.post("/jobs/0123456789abcdef/answer", json={"text": "x"}), 404)
    assert_error(await api.post(f"/jobs/{job_id}/answer", json={"text": ""}), 422)
    viewer = await asyncio.to_thread(create_key, srv, "viewer")
    resp = await api.post(
        f"/jobs/{job_id}/answer", json={"text": "x"}, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert_error(resp, 403)

    # PUT /worker/state requires_action with a question is the same ask.
    body = {"state": "requires_action", "details": {"question": "Proceed?", "options": ["y"]}}
    resp = await api.put("/worker/state", json=body, headers=auth)
    assert resp.status_code == 200, resp.text
    question_id = resp.json()["question_id"]
    shown = (await _job(api, job_id))["waiting_for"]
    assert shown["question_id"] == question_id and shown["question"] == "Proceed?"
    bad = {"state": "requires_action", "details": {"question": ""}}
    err = assert_error(await api.put("/worker/state", json=bad, headers=auth), 422, "invalid_input")
    assert "details.question" in err["message"]
    # A wait of 0 answers at once: still open.
    resp = await api.post(f"/worker/questions/{question_id}/wait", json={"wait": 0}, headers=auth)
    assert resp.status_code == 200 and resp.json()["state"] == "open", resp.text

    # The runner registers again: the job is re-queued at a new epoch, and
    # the old worker's questions are refused and change nothing.
    await _register(api, "fenced")
    assert (await _job(api, job_id))["waiting_for"] is None
    stale: list[str] = []
    channel = WorkerChannel(link.worker(item["token"]), job_id=job_id, on_stale=stale.append)
    try:
        assert await channel.ask("Still mine?") is None
        assert stale and "stale_epoch" in stale[0]
    finally:
        await channel.close()
    resp = await api.post("/worker/questions", json={"question": "Hello?"}, headers=auth)
    assert_error(resp, 409, "stale_epoch")
    resp = await api.post(f"/worker/questions/{question_id}/wait", json={"wait": 1}, headers=auth)
    assert_error(resp, 409, "stale_epoch")
    assert_error(await api.post(f"/jobs/{job_id}/answer", json={"text": "x"}), 409, "not_waiting")
    questions = await _events(api, item["session"]["id"], "job.question")
    assert [e["payload"]["question"] for e in questions] == ["Proceed?"]
