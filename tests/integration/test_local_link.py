"""The embedded runner's in-process transport (api/local.py), on SQLite and
PostgreSQL: the calls it carries need no HTTP (its HTTP link here points at a
closed port), and they answer as the routes do: the runner key and the worker
JWT are checked, a released job's old epoch is fenced off with a 409, an
unknown token gets a 401."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.local import LocalLink
from corral.auth import Role
from corral.config import load_settings
from corral.executors.process import Survivors
from corral.executors.sandbox import Sandbox
from corral.models import NewEvent, Outcome, new_id
from corral.protocol import Completion, EventBatch, LeaseRequest, RunnerRegister, WorkerState
from corral.runner import runner as runner_module
from corral.runner.journal import Journal
from corral.runner.link import HttpLink, Refused
from corral.runner.runner import Runner
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


def embedded_runner(server: Server, key: str, workdir: Path, name: str) -> Runner:
    """A one-slot runner on ``server``'s in-process transport, unsandboxed
    (its HTTP link points at a closed port)."""
    return Runner(
        f"http://127.0.0.1:{closed_port()}",
        key,
        workdir=workdir,
        name=name,
        slots=1,
        lease_wait=1.0,
        sandbox=Sandbox(mode="none"),
        in_process=partial(LocalLink, server.services, key),
    )


async def until_done(server: Server, job_id: str) -> None:
    for _ in range(200):
        job = await server.store.jobs.get(job_id)
        if job.state == "done":
            break
        await asyncio.sleep(0.05)
    assert job.state == "done", job


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


async def test_a_jobs_report_does_not_wait_for_its_journal_entry(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded runner journals a finished job's outcome and reports it
    side by side (runner/journal.py): the job is done while the entry's
    commit (an fsync) is still under way, and the entry, once committed, is
    deleted, the report having been answered."""
    # This process's child watcher and subreaper status stay as they are.
    monkeypatch.setattr(runner_module, "_watch_children_with_pidfd", lambda: None)
    monkeypatch.setattr(Survivors, "become_subreaper", lambda self: False)
    taken, release = threading.Event(), threading.Event()
    commit = Journal._commit

    def held(self: Journal, puts: Any, drops: Any) -> None:
        if puts:
            taken.set()
            release.wait(30)
        commit(self, puts, drops)

    monkeypatch.setattr(Journal, "_commit", held)
    store = server.store
    admin = (await store.keys.create(name="admin", role=Role.ADMIN))[1]
    key = (await store.keys.create(name="runner", role=Role.RUNNER))[1]
    work = tmp_path / "runner-work"
    runner = embedded_runner(server, key, work, "journal-test")
    running = asyncio.create_task(runner.run())
    try:
        await until_done(server, await submit(server, admin))
        assert taken.is_set() and not release.is_set()  # its entry's commit still held
        release.set()
        # Written, then deleted once the runner saw its report answered
        # (``pending`` returns once what was asked so far is committed).
        for _ in range(100):
            if await runner.journal.pending() == []:
                break
            await asyncio.sleep(0.05)
        assert _journalled(work) == 0
    finally:
        release.set()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


def _journalled(work: Path) -> int:
    with contextlib.closing(sqlite3.connect(work / "runner" / "journal.sqlite")) as conn:
        return int(conn.execute("SELECT count(*) FROM outcomes").fetchone()[0])


async def test_a_finished_job_is_freed_without_the_cycle_collector(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a job's run built (its executor, process, channel) is freed by
    reference counting once the job is over: no reference cycle is left for
    the cycle collector, whose full passes paused the server for 10-20 ms
    each under load (issue #18)."""
    import gc
    import weakref

    from corral.executors import process
    from corral.executors.shell import ShellExecutor

    made: list[weakref.ref[Any]] = []
    init = ShellExecutor.__init__

    def tracked(self: ShellExecutor) -> None:
        init(self)
        made.append(weakref.ref(self))

    children: list[weakref.ref[Any]] = []
    spawn = process.spawn

    def spawned(*args: Any, **kwargs: Any) -> Any:
        child = spawn(*args, **kwargs)
        children.append(weakref.ref(child))
        return child

    monkeypatch.setattr(ShellExecutor, "__init__", tracked)
    monkeypatch.setattr("corral.executors.shell.spawn", spawned)
    store = server.store
    admin = (await store.keys.create(name="admin", role=Role.ADMIN))[1]
    key = (await store.keys.create(name="runner", role=Role.RUNNER))[1]
    runner = embedded_runner(server, key, tmp_path / "runner-work", "cycles-test")
    running = asyncio.create_task(runner.run())
    gc.collect()
    gc.disable()
    try:
        await until_done(server, await submit(server, admin))
        for _ in range(100):  # the job's task ends just after its report
            if all(r() is None for r in made + children):
                break
            await asyncio.sleep(0.02)
        assert made and children
        assert [r() for r in made + children] == [None] * (len(made) + len(children))
    finally:
        gc.enable()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
