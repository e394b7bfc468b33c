"""Replicas on one PostgreSQL database hear each other's commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from corral.bus.postgres import PostgresBus
from corral.models import Event, JobCreate, NewEvent
from corral.protocol import topics
from corral.store import Store
from corral.testing import worker_claims


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[tuple[Store, Store]]:
    a = await Store.open(pg_url)
    b = await Store.open(pg_url, migrate_schema=False)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def _collect(sub, done) -> list[object]:  # type: ignore[no-untyped-def]
    """Messages until ``done(messages)`` holds (or 5 s pass)."""
    got: list[object] = []
    for _ in range(50):
        got.extend(await sub.get(0.1))
        if done(got):
            break
    return got


def _has_seq(n: int):  # type: ignore[no-untyped-def]
    return lambda msgs: any(
        isinstance(m, list) and any(isinstance(e, Event) and e.seq == n for e in m) for m in msgs
    )


async def test_events_reach_subscribers_of_another_replica(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    assert isinstance(a.bus, PostgresBus) and isinstance(b.bus, PostgresBus)
    job, _ = await a.jobs.create(JobCreate(prompt="x"))
    runner = await a.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=1
    )
    with (
        b.bus.subscribe(topics.session(job.session_id)) as remote,
        a.bus.subscribe(topics.session(job.session_id)) as local,
    ):
        (lease,) = await a.jobs.lease(runner, 1, ttl=30)
        c = worker_claims(lease, runner)
        await a.jobs.append_events(
            c,
            [
                NewEvent(type="output", payload={"line": "one"}),
                NewEvent(type="delta", payload={"t": "live"}, ephemeral=True),
                NewEvent(type="output", payload={"line": "two"}),
            ],
        )
        remote_msgs = await _collect(remote, _has_seq(4))
        local_msgs = await _collect(local, _has_seq(4))

    def flat(msgs: list[object]) -> list[tuple[int | None, str]]:
        return [
            (e.seq, e.type) for m in msgs if isinstance(m, list) for e in m if isinstance(e, Event)
        ]

    stored = [(2, "job.state"), (3, "output"), (4, "output")]
    assert [x for x in flat(local_msgs) if x[0]] == stored
    remote_events = flat(remote_msgs)
    # Each once, in order (the create's notification may land after subscribing).
    assert [x for x in remote_events if x[0] and x[0] >= 2] == stored
    remote_seqs = [x[0] for x in remote_events if x[0]]
    assert remote_seqs == sorted(set(remote_seqs))
    assert (None, "delta") in remote_events  # ephemeral, inline


async def test_dispatch_and_cancel_messages_cross_replicas(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    with b.bus.subscribe(topics.DISPATCH) as sub:
        job, _ = await a.jobs.create(JobCreate(prompt="x"))
        assert job.id in await _collect(sub, lambda msgs: job.id in msgs)
    runner = await a.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=1
    )
    await a.jobs.lease(runner, 1, ttl=30)
    with b.bus.subscribe(f"runner:{runner.id}") as sub:
        await a.jobs.cancel(job.id)
        assert await _collect(sub, bool) == [f"cancel:{job.id}"]


async def test_a_transactions_messages_all_cross(replicas: tuple[Store, Store]) -> None:
    """One commit announces several topics (one statement notifies them all):
    another replica hears each of them (stored events are fetched when their
    seq is announced, so they may come after the rest)."""
    a, b = replicas
    with b.bus.subscribe(topics.JOB_STATES) as created:
        job, _ = await a.jobs.create(JobCreate(prompt="x"))
        # The create's own announcement reaches b first (notifications come
        # in commit order): heard here, not by the subscriptions below.
        assert job.id in await _collect(created, lambda msgs: job.id in msgs)
    watched = (topics.session(job.session_id), topics.JOB_STATES, topics.JOBS)

    def shape(msgs: list[object]) -> list[object]:
        return [
            tuple(e.seq for e in m) if isinstance(m, list) else m
            for m in msgs
            if not isinstance(m, list) or any(e.seq and e.seq > 1 for e in m)
        ]

    def complete(msgs: list[object]) -> bool:
        seqs = [n for m in shape(msgs) if isinstance(m, tuple) for n in m]
        return shape(msgs).count(job.id) == 2 and 2 in seqs

    with b.bus.subscribe(*watched) as remote, a.bus.subscribe(*watched) as local:
        await a.jobs.cancel(job.id)
        local_msgs = shape(await _collect(local, complete))
        remote_msgs = shape(await _collect(remote, complete))
    # job.state (seq 2); the job changed state (the dashboard); it ended (sinks)
    assert local_msgs == [(2,), job.id, job.id]
    assert [m for m in remote_msgs if isinstance(m, str)] == [job.id, job.id]
    assert complete(remote_msgs)  # and seq 2 (fetched, with seq 1 if it came late)


async def test_stop_lets_a_read_under_way_finish_and_starts_no_more(
    replicas: tuple[Store, Store],
) -> None:
    """A replica's bus reads a session's events when another announces them.
    stop() waits for a read under way instead of cancelling it (a read
    cancelled while the pool connected left that connection open: CI saw the
    unclosed socket), and a notification that arrives while it stops starts
    no new read (one would run against a disposed pool)."""
    a, b = replicas
    assert isinstance(b.bus, PostgresBus)
    started = asyncio.Event()
    release = asyncio.Event()
    reads: list[str] = []

    async def slow_fetch(session_id: str, since: int) -> list[Event]:
        reads.append("started")
        started.set()
        await release.wait()
        reads.append("finished")
        return []

    bus = PostgresBus(b.db.asyncpg_dsn, fetch=slow_fetch)
    await bus.start()
    stopped = False
    try:
        job, _ = await a.jobs.create(JobCreate(prompt="x"))  # announces seq 1
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.create_task(bus.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waiting for the read
        await a.jobs.cancel(job.id)  # announces seq 2 while the bus stops
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.wait_for(stopping, 5)
        stopped = True
        assert reads == ["started", "finished"]
    finally:
        release.set()
        if not stopped:
            await bus.stop()
