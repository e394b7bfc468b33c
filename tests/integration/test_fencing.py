"""Epoch fencing of every worker write, on SQLite and PostgreSQL: a worker
whose job was taken from it (its runner re-registered, the job leased again
at a newer epoch) gets 409 ``stale_epoch`` from every call it can make with
its worker JWT, and nothing is written — not a row of any table changes.

The calls come from one list, ``WRITES``; a test checks it names every
worker-JWT route the app serves, so a new worker call cannot be added
without its stale-epoch case."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute

from corral.api.app import create_app
from corral.auth import Role
from corral.config import Settings, load_settings
from corral.models import new_id
from corral.protocol import calls, paths
from corral.server import Server
from corral.store.schema import metadata


@dataclass
class Held:
    """The job a stale worker lost and what its new owner made meanwhile."""

    job_id: str
    session_id: str
    stale: str  # the first worker's token (its epoch is gone)
    fresh: str  # the new owner's token
    question_id: str  # a question the new owner asked
    child_id: str  # a sub-job the new owner submitted


@dataclass(frozen=True)
class Write:
    name: str
    call: calls.Call[Any]
    path: Callable[[Held], str] | None = None  # None: the call's path as it is
    body: Any = None  # JSON, or bytes for a raw body


def _line(text: str) -> dict[str, Any]:
    return {"event_id": new_id(), "type": "output", "payload": {"line": text}}


WRITES: tuple[Write, ...] = (
    Write("events", calls.WORKER_EVENTS, body={"events": [_line("zombie")]}),
    Write("state running", calls.WORKER_STATE, body={"state": "running"}),
    Write("state idle", calls.WORKER_STATE, body={"state": "idle", "details": {"x": 1}}),
    # The handle is written before the state's own write: the handle must be fenced by itself.
    Write("handle", calls.WORKER_STATE, body={"state": "idle", "handle": "stale-thread"}),
    Write(
        "state requires_action (a question)",
        calls.WORKER_STATE,
        body={"state": "requires_action", "details": {"question": "go on?", "question_id": "q2"}},
    ),
    Write("heartbeat", calls.WORKER_HEARTBEAT),
    Write(
        "artifact", calls.WORKER_ARTIFACT, path=lambda h: paths.artifact("zombie.txt"), body=b"z"
    ),
    Write(
        "complete",
        calls.WORKER_COMPLETE,
        body={"outcome": {"status": "done", "result": "stale"}, "events": [_line("last")]},
    ),
    Write(
        "complete failed",
        calls.WORKER_COMPLETE,
        body={"outcome": {"status": "failed", "error": "stale", "failure": "agent"}},
    ),
    Write("ask", calls.WORKER_ASK, body={"question": "stale?", "question_id": "q3"}),
    Write(
        "answer wait",
        calls.WORKER_ANSWER_WAIT,
        path=lambda h: paths.question_wait(h.question_id),
        body={"wait": 0},
    ),
    Write("child submit", calls.CHILD_SUBMIT, body={"spec": {"command": "echo child"}}),
    Write("child wait", calls.CHILD_WAIT, path=lambda h: paths.child_wait(h.child_id), body={}),
    Write("child cancel", calls.CHILD_CANCEL, path=lambda h: paths.child_cancel(h.child_id)),
    Write("progress", calls.PROGRESS, body={"message": "half", "percent": 50}),
    Write("message", calls.WORKER_MESSAGE, body={"text": "hello from a zombie"}),
)


def _flat(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        yield from _flat(inner.routes) if inner is not None else [route]


def _needs_worker_token(route: APIRoute) -> bool:
    def walk(dependant: Any) -> Iterator[str]:
        for dep in dependant.dependencies:
            role = getattr(dep.call, "corral_role", None)
            if role is not None:
                yield role
            yield from walk(dep)

    return "worker JWT" in walk(route.dependant)


def test_every_worker_route_has_a_stale_epoch_case() -> None:
    served = {
        (method, route.path)
        for route in _flat(create_app(Settings()).routes)
        if isinstance(route, APIRoute) and _needs_worker_token(route)
        for method in route.methods or ()
    }
    covered = {(w.call.method, w.call.path) for w in WRITES}
    assert served - covered == set(), "worker calls without a stale-epoch case in WRITES"
    assert covered - served == set()


@dataclass
class Api:
    http: httpx.AsyncClient
    admin: dict[str, str]
    runner: dict[str, str]
    server: Server

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else self.admin
        if isinstance(body, bytes):
            return await self.http.request(method, path, content=body, headers=headers)
        return await self.http.request(method, path, json=body, headers=headers)

    async def register(self) -> str:
        body = {"name": "r", "providers": ["shell"], "slots": 4}
        resp = await self.http.post("/runners/register", json=body, headers=self.runner)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["runner_id"])

    async def lease(self, runner_id: str) -> dict[str, Any]:
        resp = await self.http.post(
            paths.lease(runner_id), json={"max_jobs": 1, "wait": 0}, headers=self.runner
        )
        assert resp.status_code == 200, resp.text
        [item] = resp.json()["jobs"]
        return dict(item)

    async def rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in a stable order."""

        def read(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
            found = {
                table.name: sorted((tuple(row) for row in conn.execute(sa.select(table))), key=repr)
                for table in metadata.sorted_tables
                if table.name != "job_counts"
            }
            # job_counts: the watchdog folds its +1/-1 rows (PostgreSQL) at any
            # time, which changes rows but never the sums, so compare the sums.
            counts = metadata.tables["job_counts"]
            sums = sa.select(counts.c.state, counts.c.provider, sa.func.sum(counts.c.n)).group_by(
                counts.c.state, counts.c.provider
            )
            found["job_counts"] = sorted(
                (tuple(row) for row in conn.execute(sums) if row[2]), key=repr
            )
            return found

        return await self.server.store.db.read(read)


@pytest.fixture
async def api(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(data_dir=tmp_path, database_url=db_url, queue_enabled=False)
    async with Server(settings) as server:
        store = server.store
        admin = (await store.keys.create(name="admin", role=Role.ADMIN))[1]
        runner = (await store.keys.create(name="runner", role=Role.RUNNER))[1]
        transport = httpx.ASGITransport(app=server.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as http:
            yield Api(
                http,
                {"Authorization": f"Bearer {admin}"},
                {"Authorization": f"Bearer {runner}"},
                server,
            )


async def _held(api: Api) -> Held:
    """A job leased, started and written to by a first worker, then lost to a
    second (its runner registered again and leased it at a newer epoch)."""
    resp = await api.call("POST", "/jobs", body={"command": "echo fenced", "max_attempts": 2})
    assert resp.status_code == 202, resp.text
    job_id, session_id = resp.json()["job_id"], resp.json()["session_id"]
    first = await api.lease(await api.register())
    stale = first["token"]
    assert (await api.call("PUT", paths.WORKER_STATE, stale, {"state": "running"})).is_success
    second = await api.lease(await api.register())  # the same name again: a restart
    assert second["job"]["id"] == job_id and second["epoch"] > first["epoch"]
    fresh = second["token"]
    for method, path, body in [
        ("PUT", paths.WORKER_STATE, {"state": "running", "handle": "fresh-thread"}),
        ("POST", paths.WORKER_QUESTIONS, {"question": "which way?", "question_id": "q1"}),
        ("POST", paths.WORKER_CHILDREN, {"spec": {"command": "echo a child"}}),
    ]:
        resp = await api.call(method, path, fresh, body)
        assert resp.is_success, resp.text
    return Held(job_id, session_id, stale, fresh, "q1", resp.json()["job_id"])


async def test_a_stale_worker_writes_nothing(api: Api) -> None:
    held = await _held(api)
    wrong: list[str] = []
    for write in WRITES:
        before = await api.rows()
        path = write.path(held) if write.path else write.call.path
        resp = await api.call(write.call.method, path, held.stale, write.body)
        after = await api.rows()
        code = resp.json().get("error", {}).get("code") if resp.is_error else None
        if (resp.status_code, code) != (409, "stale_epoch"):
            wrong.append(f"{write.name}: answered {resp.status_code} {resp.text[:200]}")
        changed = [name for name in before if before[name] != after[name]]
        if changed:
            wrong.append(f"{write.name}: wrote to {', '.join(changed)}")
    assert wrong == []

    # The new owner still holds the job, and it ends as its new owner says.
    resp = await api.call(
        "POST", paths.WORKER_COMPLETE, held.fresh, {"outcome": {"status": "done", "result": "ok"}}
    )
    assert resp.status_code == 200, resp.text
    job = (await api.call("GET", f"/jobs/{held.job_id}")).json()
    assert (job["state"], job["result"]) == ("done", "ok")
    session = (await api.call("GET", f"/sessions/{held.session_id}")).json()
    assert session["handle"] == "fresh-thread"
