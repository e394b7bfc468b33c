"""Webhooks cannot reach the server's own network unless allowed, and known
secrets are stored redacted, on SQLite and PostgreSQL: the real sender
against a real receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from corral import redact
from corral.models import JobCreate, NewEvent, Outcome, WebhookSpec
from corral.sinks.webhook import Sender
from corral.store import Store
from corral.testing import worker_claims
from corral.webhooks import Endpoint, Rules


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


async def _settled(store: Store, job_id: str, n: int) -> list[dict[str, Any]]:
    for _ in range(200):
        rows = await store.outbox.list(job_id=job_id, attempts=True)
        if len(rows) >= n and all(r["state"] != "pending" for r in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError(f"deliveries of {job_id} still pending: {rows}")


async def test_delivery_time_check_refuses_private_addresses_but_not_the_admins(
    store: Store, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, got = receiver
    trusted = url.replace("/hook", "/admin-hook")
    store.db.webhooks = Rules((Endpoint(trusted, states=frozenset({"queued"})),))
    # Written straight to the store, as if the name had resolved elsewhere at
    # submit (DNS rebinding): `localhost` and 127.0.0.1 both resolve to loopback now.
    jobs = [
        (await store.jobs.create(JobCreate(command="true", webhook=u)))[0]
        for u in (url, url.replace("127.0.0.1", "localhost"))
    ]
    sender = Sender(store, default_secret="s" * 32, allow_private=False, trusted={trusted})
    task = asyncio.create_task(sender.run())
    try:
        for job in jobs:
            rows = {r["url"]: r for r in await _settled(store, job.id, 2)}
            hook = next(r for u, r in rows.items() if u != trusted)
            assert hook["state"] == "failed" and hook["attempts"] == 1, hook
            assert hook["last_error"].startswith("refused: ") and "loopback" in hook["last_error"]
            assert hook["last_status"] is None
            (attempt,) = hook["attempt_log"]
            assert attempt["error"] == hook["last_error"]
            assert rows[trusted]["state"] == "delivered"  # the admin's own endpoint
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Nothing reached the receiver but the trusted endpoint's two deliveries.
    assert len(got) == 2 and {g["job_id"] for g in got} == {j.id for j in jobs}


async def test_private_addresses_are_reached_when_allowed(
    store: Store, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, got = receiver
    job, _ = await store.jobs.create(JobCreate(command="true", webhook=url))
    task = asyncio.create_task(Sender(store, default_secret="s" * 32, allow_private=True).run())
    try:
        (row,) = await _settled(store, job.id, 1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert row["state"] == "delivered" and [g["job_id"] for g in got] == [job.id]


async def test_known_secrets_are_stored_redacted(store: Store) -> None:
    key = "sk-echoed-by-upstream-0123456789"
    redact.add(key)
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=1
    )
    hook = WebhookSpec(url="http://hooks.example.com/x", events=["chat.error"])
    job, _ = await store.jobs.create(JobCreate(command="true", webhook=hook, max_attempts=1))
    (lease,) = await store.jobs.lease(runner, 1, ttl=30)
    claims = worker_claims(lease, runner)
    await store.jobs.start(claims)
    await store.jobs.append_events(
        claims,
        [NewEvent(type="chat.error", payload={"detail": {"said": [f"Bearer {key}", "ok"]}})],
    )
    done, _ = await store.jobs.complete(
        claims,
        Outcome(status="failed", failure="input", error=f"gpu: HTTP 401: bad key {key}"),
        [NewEvent(type="output", payload={"line": f"key={key}"})],
    )
    assert done.error == "gpu: HTTP 401: bad key [redacted]"
    stored = await store.events.list(job.session_id, internal=True)
    deliveries = await store.outbox.list(job_id=job.id)
    everything = json.dumps(
        [done.model_dump(mode="json"), [e.to_dict() for e in stored], deliveries], default=str
    )
    assert key not in everything
    assert everything.count("[redacted]") >= 4  # error, two events, the bodies
