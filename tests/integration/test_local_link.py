"""The embedded runner's in-process transport (api/local.py), on SQLite and
PostgreSQL: the calls it carries need no HTTP (its HTTP link here points at a
closed port), and they answer as the routes do: the runner key and the worker
JWT are checked, a released job's old epoch is fenced off with a 409, an
unknown token gets a 401."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.api.local import LocalLink
from corral.auth import Role
from corral.config import load_settings
from corral.models import NewEvent, Outcome, new_id
from corral.protocol import Completion, EventBatch, LeaseRequest, RunnerRegister, WorkerState
from corral.runner.link import HttpLink, Refused
from corral.server import Server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def server(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Server]:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(data_dir=tmp_path, database_url=db_url, queue_enabled=False)
    async with Server(settings) as srv:
        yield srv


def local(server: Server, key: str) -> LocalLink:
    # Nothing listens there: a call that went over HTTP would fail as unreachable.
    http = HttpLink(
        f"http://127.0.0.1:{closed_port()}", key, timeout=httpx.Timeout(2.0), max_connections=2
    )
    return LocalLink(server.services, key, http)


async def submit(server: Server, admin: str) -> str:
    transport = httpx.ASGITransport(app=server.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://corral") as http:
        resp = await http.post(
            "/jobs", json={"command": "true"}, headers={"Authorization": f"Bearer {admin}"}
        )
        assert resp.status_code == 202, resp.text
        return str(resp.json()["job_id"])


REGISTER = RunnerRegister(name="embedded-test", providers=["shell"], slots=2)


async def test_a_job_runs_through_the_local_link_with_the_routes_checks(server: Server) -> None:
    store = server.store
    admin = (await store.keys.create(name="admin", role=Role.ADMIN))[1]
    key = (await store.keys.create(name="runner", role=Role.RUNNER))[1]
    async with local(server, key) as link:
        runner = await link.register(REGISTER)
        job_id = await submit(server, admin)
        leased = await link.lease(runner.runner_id, LeaseRequest(max_jobs=1, wait=0))
        [item] = leased.jobs
        assert item.job.id == job_id and item.epoch == item.job.epoch
        worker = link.worker(item.token)
        assert (await worker.state(WorkerState(state="running"))).state == "running"
        line = NewEvent(event_id=new_id(), type="output", payload={"line": "hi"})
        sent = await worker.events(EventBatch(events=[line]))
        assert len(sent.accepted) == 1 and sent.duplicates == []
        again = await worker.events(EventBatch(events=[line]))
        assert again.accepted == [] and again.duplicates == [line.event_id]
        beat = await worker.heartbeat()
        assert worker.token == beat.token and beat.state == "running"
        done = await worker.complete(Completion(outcome=Outcome(status="done", result="hi")))
        assert done.state == "done"
        assert (await store.jobs.get(job_id)).state == "done"


async def test_the_local_link_fences_and_refuses_as_http_does(server: Server) -> None:
    store = server.store
    admin = (await store.keys.create(name="admin", role=Role.ADMIN))[1]
    key = (await store.keys.create(name="runner", role=Role.RUNNER))[1]
    viewer = (await store.keys.create(name="viewer", role=Role.VIEWER))[1]
    async with local(server, viewer) as link:
        with pytest.raises(Refused) as refused:
            await link.register(REGISTER)
        assert refused.value.status == 403
    async with local(server, key) as link:
        runner = await link.register(REGISTER)
        await submit(server, admin)
        [item] = (await link.lease(runner.runner_id, LeaseRequest(max_jobs=1, wait=0))).jobs
        worker = link.worker(item.token)
        await worker.state(WorkerState(state="running"))
        # Registering the name again releases its jobs: the old epoch is stale.
        await link.register(REGISTER)
        with pytest.raises(Refused) as refused:
            await worker.complete(Completion(outcome=Outcome(status="done")))
        assert refused.value.status == 409
        with pytest.raises(Refused) as refused:
            await link.worker("not-a-token").state(WorkerState(state="running"))
        assert refused.value.status == 401
