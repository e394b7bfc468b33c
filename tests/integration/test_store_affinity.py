"""Session affinity, on SQLite and PostgreSQL: a turn on a local provider
goes to the runner holding its session while that runner is alive; when it is
gone, another runner takes it, afresh (a session.moved event, no handle)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from corral.errors import Conflict
from corral.models import JobCreate, Outcome, Runner
from corral.store import Caps, Store
from corral.store.db import Tx
from corral.store.jobs import now_utc
from corral.store.schema import runners
from corral.testing import worker_claims as claims


@pytest.fixture
async def st(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(db_url, caps=Caps(local=frozenset({"shell", "claude"})))
    try:
        yield store
    finally:
        await store.close()


async def _runner(st: Store, name: str) -> Runner:
    return await st.runners.register(
        name=name,
        key_id="k",
        hostname=None,
        providers=["shell", "claude", "api"],
        labels=[],
        slots=4,
    )


async def _quiet(st: Store, name: str) -> None:
    def body(tx: Tx) -> None:
        tx.conn.execute(
            sa.update(runners)
            .where(runners.c.name == name)
            .values(last_seen_at=now_utc() - timedelta(minutes=5))
        )

    await st.db.write(body)


async def _finish(st: Store, runner: Runner, handle: str | None = None) -> str:
    (lease,) = await st.jobs.lease(runner, 1, ttl=30)
    c = claims(lease, runner)
    await st.jobs.start(c)
    if handle is not None:
        await st.jobs.set_handle(c, handle)
    await st.jobs.complete(c, Outcome(status="done"))
    return lease.session.id


async def test_turns_follow_the_runner_holding_the_session(st: Store) -> None:
    a, b = await _runner(st, "a"), await _runner(st, "b")
    _first, _ = await st.jobs.create(JobCreate(prompt="1", provider="claude"))
    session_id = await _finish(st, a, handle="claude:conv-1")
    assert (await st.sessions.get(session_id)).host == "a"

    second, _ = await st.jobs.create(
        JobCreate(prompt="2", provider="claude", session_id=session_id)
    )
    other, _ = await st.jobs.create(JobCreate(prompt="x", provider="claude"))
    # b may take other work, not the turn a's session waits for.
    assert [lease.job.id for lease in await st.jobs.lease(b, 4, ttl=30)] == [other.id]
    why = await st.jobs.waiting(await st.jobs.get(second.id))
    assert why is not None and why.startswith("session affinity: waiting for runner 'a'")
    (lease,) = await st.jobs.lease(a, 4, ttl=30)
    assert lease.job.id == second.id and lease.session.handle == "claude:conv-1"
    events = await st.events.list(session_id)
    assert "session.moved" not in [e.type for e in events]


async def test_a_gone_runner_lets_another_take_the_turn_afresh(st: Store) -> None:
    a, b = await _runner(st, "a"), await _runner(st, "b")
    await st.jobs.create(JobCreate(prompt="1", provider="claude"))
    session_id = await _finish(st, a, handle="claude:conv-1")
    turn, _ = await st.jobs.create(JobCreate(prompt="2", provider="claude", session_id=session_id))
    await _quiet(st, "a")
    (lease,) = await st.jobs.lease(b, 4, ttl=30)
    assert lease.job.id == turn.id
    assert lease.session.handle is None and lease.session.host == "b"
    moved = [e for e in await st.events.list(session_id) if e.type == "session.moved"]
    assert [(e.payload["from"], e.payload["to"], e.job_id) for e in moved] == [("a", "b", turn.id)]
    assert moved[0].payload["note"] == (
        "the session's runner 'a' is gone: this turn runs on 'b' "
        "in a new workspace and starts a new conversation"
    )
    assert lease.session.last_seq == (await st.sessions.get(session_id)).last_seq


async def test_remote_providers_are_not_pinned(st: Store) -> None:
    a, b = await _runner(st, "a"), await _runner(st, "b")
    await st.jobs.create(JobCreate(prompt="1", provider="api"))
    session_id = await _finish(st, a)
    assert (await st.sessions.get(session_id)).host is None
    turn, _ = await st.jobs.create(JobCreate(prompt="2", provider="api", session_id=session_id))
    assert [lease.job.id for lease in await st.jobs.lease(b, 4, ttl=30)] == [turn.id]


async def test_an_undelivered_lease_goes_back_with_nothing_spent(st: Store) -> None:
    a, b = await _runner(st, "a"), await _runner(st, "b")
    job, _ = await st.jobs.create(JobCreate(prompt="1", provider="claude"))
    (lease,) = await st.jobs.lease(a, 1, ttl=30)
    assert (await st.sessions.get(job.session_id)).host == "a"
    (back,) = await st.jobs.unlease([job.id], a)
    assert (back.state, back.attempt, back.infra_retries) == ("queued", 1, 0)
    assert back.reason == "lease_undelivered" and back.runner_id is None
    assert (await st.sessions.get(job.session_id)).host is None  # a first turn: not a's
    with pytest.raises(Conflict):  # had it arrived after all, a's writes are refused
        await st.jobs.start(claims(lease, a))
    assert await st.jobs.unlease([job.id], a) == []  # already back: nothing to do
    (again,) = await st.jobs.lease(b, 1, ttl=30)  # b may take it at once
    assert again.job.id == job.id and again.job.attempt == 1


async def test_a_holder_that_no_longer_serves_the_provider_lets_go(st: Store) -> None:
    a, b = await _runner(st, "a"), await _runner(st, "b")
    await st.jobs.create(JobCreate(prompt="1", provider="claude"))
    session_id = await _finish(st, a, handle="claude:conv-1")
    # a comes back without claude (reconfigured); it is alive, but cannot run the turn.
    await st.runners.register(
        name="a", key_id="k", hostname=None, providers=["shell"], labels=[], slots=4
    )
    turn, _ = await st.jobs.create(JobCreate(prompt="2", provider="claude", session_id=session_id))
    assert await st.jobs.waiting(await st.jobs.get(turn.id)) == "waiting for a free runner slot"
    (lease,) = await st.jobs.lease(b, 4, ttl=30)
    assert lease.job.id == turn.id and lease.session.handle is None
    moved = [e for e in await st.events.list(session_id) if e.type == "session.moved"]
    assert [(e.payload["from"], e.payload["to"]) for e in moved] == [("a", "b")]


async def test_unlease_gives_back_only_that_runners_undelivered_leases(st: Store) -> None:
    """A lease request answered while its runner went away: only the jobs
    still assigned to that runner go back; a job another runner holds, and a
    job the runner already started (so it did receive it), stay as they are,
    wherever they come in the list; only the new session lets go of the runner."""
    a, b = await _runner(st, "a"), await _runner(st, "b")
    await st.jobs.create(JobCreate(prompt="0", provider="claude"))
    pinned = await _finish(st, a)  # a session a holds, from an earlier turn
    others, _ = await st.jobs.create(JobCreate(prompt="1", provider="claude"))
    (on_b,) = await st.jobs.lease(b, 1, ttl=30)
    started, _ = await st.jobs.create(JobCreate(prompt="2", provider="claude"))
    (lease,) = await st.jobs.lease(a, 1, ttl=30)
    await st.jobs.start(claims(lease, a))
    lost, _ = await st.jobs.create(JobCreate(prompt="3", provider="claude"))
    await st.jobs.lease(a, 1, ttl=30)

    back = await st.jobs.unlease([others.id, started.id, lost.id], a)

    assert [(j.id, j.state, j.error) for j in back] == [
        (lost.id, "queued", "runner 'a' went away before it received the job")
    ]
    assert on_b.job.id == others.id and (await st.jobs.get(others.id)).state == "assigned"
    assert (await st.jobs.get(started.id)).state == "running"
    assert (await st.sessions.get(pinned)).host == "a"
    assert (await st.sessions.get(lost.session_id)).host is None
