"""A job's event stream (``corral.api.stream.follow``, behind
``GET /jobs/{id}/events`` as SSE): it ends with the job's final state, and
hands live events to a direct writer when it has one; on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import pytest

from corral.api import stream
from corral.api.sse import Direct
from corral.models import Event, JobCreate, NewEvent, Outcome, Runner
from corral.protocol import topics
from corral.services import Streams
from corral.store import Store
from corral.testing import worker_claims


async def test_it_ends_at_the_final_state_not_at_one_an_operator_retried(
    store: Store, runner: Runner
) -> None:
    """From the log, a terminal state the job has left since (a retry) is
    passed; a live one ends the stream (without reading the job again)."""
    job, _ = await store.jobs.create(JobCreate(command="true"))
    await store.jobs.cancel(job.id)
    await store.jobs.retry(job.id)
    seen: list[Event] = []

    async def follow() -> None:
        async for batch in stream.follow(store, job.session_id, since=0, buffer=100, job_id=job.id):
            seen.extend(batch)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    assert not task.done()  # the old "cancelled" did not end it
    [lease] = await store.jobs.lease(runner, 1, ttl=30)
    claims = worker_claims(lease, runner)
    await store.jobs.start(claims)
    await store.jobs.complete(claims, Outcome(status="done"))
    await asyncio.wait_for(task, 5)
    states = [e.payload["to"] for e in seen if e.type == "job.state"]
    assert states[-1] == "done" and "cancelled" in states
    assert states.index("cancelled") < states.index("queued", states.index("cancelled"))


async def test_live_events_go_to_the_direct_writer_and_the_rest_through_the_stream(
    store: Store, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events that continue the log go to ``direct.write`` from the
    publisher's call, not through the generator; one the writer declines, a
    gap (back to the log) and the job's final state (the end) come through
    the generator, each once and in seq order."""
    job, _ = await store.jobs.create(JobCreate(command="true"))
    [lease] = await store.jobs.lease(runner, 1, ttl=30)
    claims = worker_claims(lease, runner)
    await store.jobs.start(claims)
    written: list[Event] = []
    yielded: list[Event] = []
    accept = True

    def write(batch: list[Event]) -> bool:
        if accept:
            written.extend(batch)
        return accept

    direct = Direct[list[Event]]()
    direct.write = write

    async def follow() -> None:
        async for batch in stream.follow(
            store, job.session_id, since=0, buffer=100, job_id=job.id, direct=direct
        ):
            yielded.extend(batch)

    async def line(text: str) -> Event:
        [ev], _ = await store.jobs.append_events(
            claims, [NewEvent(type="out", payload={"l": text})]
        )
        return ev

    task = asyncio.create_task(follow())
    async with asyncio.timeout(5):
        while not any(e.payload.get("to") == "running" for e in yielded):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # waiting for live events now
    backfilled = len(yielded)
    a = await line("a")
    await asyncio.sleep(0.05)
    assert [e.event_id for e in written] == [a.event_id] and len(yielded) == backfilled
    accept = False
    b = await line("b")
    await asyncio.sleep(0.05)
    assert [e.event_id for e in yielded[backfilled:]] == [b.event_id]
    accept = True
    # A gap: a message whose seq skips one sends the stream back to the log,
    # which has nothing after b; the next real event is taken again.
    reads = 0
    read = store.events.list

    async def counted(*args: Any, **kwargs: Any) -> list[Event]:
        nonlocal reads
        got = await read(*args, **kwargs)
        reads += 1
        return got

    monkeypatch.setattr(store.events, "list", counted)
    ghost = dataclasses.replace(a, seq=(b.seq or 0) + 2, event_id="ghost")
    store.bus.publish(topics.session(job.session_id), [ghost])
    async with asyncio.timeout(5):
        while reads == 0:  # the stream went back to the log (and found nothing after b)
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)  # and waits for live events again
    c = await line("c")
    await asyncio.sleep(0.05)
    assert [e.event_id for e in written] == [a.event_id, c.event_id]
    await store.jobs.complete(claims, Outcome(status="done"))
    await asyncio.wait_for(task, 5)
    assert yielded[-1].payload.get("to") == "done"
    assert all(e.type != "job.state" for e in written)
    seqs = sorted(e.seq or 0 for e in written + yielded)
    assert seqs == sorted(set(seqs)) and "ghost" not in {e.event_id for e in yielded}


async def test_the_routes_stream_gives_its_source_the_direct_writer(store: Store) -> None:
    """``stream.response`` (both SSE routes) wires the fast path: the stream's
    writer is the one its source hands live events to."""
    job, _ = await store.jobs.create(JobCreate(command="true"))
    resp = stream.response(store, job.session_id, since=0, buffer=10, ping=15.0, streams=Streams())
    assert resp.direct is not None
    sent: list[bytes] = []
    listening = asyncio.Event()

    async def receive() -> dict[str, object]:
        await asyncio.Event().wait()
        return {}

    async def send(message: dict[str, object]) -> None:
        sent.append(message.get("body", b""))  # type: ignore[arg-type]
        if message["type"] == "http.response.body":
            listening.set()

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    task = asyncio.create_task(resp(scope, receive, send))
    async with asyncio.timeout(5):
        await listening.wait()  # the back-fill went out
        while resp.direct.write is None:
            await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert resp.direct.write is None
