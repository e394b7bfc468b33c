"""Turns held behind an earlier turn of their session: the ``behind`` flag
the lease walks past (store/jobs/turns.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from corral.errors import InvalidTransition, JobNotActive
from corral.jobs import ACTIVE, JobState
from corral.models import Job, JobCreate, Outcome, Runner
from corral.store import Store
from corral.store.jobs import turns
from corral.store.schema import jobs, sessions
from corral.testing import job_row, session_row
from corral.testing import worker_claims as claims
from tests.integration._rows import flags, row_held

LIVE = {JobState.QUEUED.value, *(s.value for s in ACTIVE)}


async def _flags(store: Store, *ids: str) -> list[bool]:
    return await flags(store, "behind", *ids)


async def _broken(store: Store) -> list[str]:
    """Queued turns flagged with no earlier live turn in their session: the
    lease would never take them (what the flag must never be)."""

    def read(conn: sa.Connection) -> list[str]:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.session_id, jobs.c.turn, jobs.c.state))
        rows = rows.all()
        flags = conn.execute(sa.select(jobs.c.id).where(jobs.c.behind == sa.true()))
        flagged = set(flags.scalars())
        live = [r for r in rows if r.state in LIVE]
        return [
            r.id
            for r in live
            if r.state == JobState.QUEUED.value
            and r.id in flagged
            and not any(o.session_id == r.session_id and o.turn < r.turn for o in live)
        ]

    return await store.db.read(read)


async def test_a_turn_created_behind_a_live_one_waits_flagged_until_its_turn(
    store: Store, runner: Runner
) -> None:
    first, _ = await store.jobs.create(JobCreate(prompt="1"))
    sid = first.session_id
    second, _ = await store.jobs.create(JobCreate(prompt="2", session_id=sid))
    third, _ = await store.jobs.create(JobCreate(prompt="3", session_id=sid))
    alone, _ = await store.jobs.create(JobCreate(prompt="alone"))
    assert await _flags(store, first.id, second.id, third.id, alone.id) == [
        False,
        True,
        True,
        False,
    ]

    leased = await store.jobs.lease(runner, 10, ttl=30)
    assert {lease.job.id for lease in leased} == {first.id, alone.id}
    ended = next(lease for lease in leased if lease.job.id == first.id)
    await store.jobs.complete(claims(ended, runner), Outcome(status="done"))
    # The next turn is its session's first live one now; the one after it waits.
    assert await _flags(store, second.id, third.id) == [False, True]
    # Created while the session's turn lock is free but turn 2 is still queued.
    fourth, _ = await store.jobs.create(JobCreate(prompt="4", session_id=sid))
    assert await _flags(store, fourth.id) == [True]

    # A queued turn that ends (cancelled) frees the one after it.
    await store.jobs.cancel(second.id)
    assert await _flags(store, third.id, fourth.id) == [False, True]
    [running] = await store.jobs.lease(runner, 10, ttl=30)
    assert running.job.id == third.id
    assert await store.jobs.lease(runner, 10, ttl=30) == []

    # Created while turn 3 runs and the turn before it (4) is cancelled: the
    # session's turn lock is what it waits behind.
    await store.jobs.cancel(fourth.id)
    fifth, _ = await store.jobs.create(JobCreate(prompt="5", session_id=sid))
    assert await _flags(store, fifth.id) == [True]

    # A turn queued again by a retry starts unflagged; the turn lock still
    # holds it behind the running turn 3, and turn 5 behind it.
    retried = await store.jobs.retry(fourth.id)
    assert retried.state is JobState.QUEUED
    assert await _flags(store, fourth.id, fifth.id) == [False, True]
    assert await store.jobs.lease(runner, 10, ttl=30) == []
    assert (await store.jobs.waiting(retried) or "").startswith("turn lock: turn 3")
    for expected in (fourth.id, fifth.id):  # then each in its turn
        await store.jobs.complete(claims(running, runner), Outcome(status="done"))
        [running] = await store.jobs.lease(runner, 10, ttl=30)
        assert running.job.id == expected


async def test_a_flagged_turn_is_always_behind_a_live_one_and_every_turn_runs(
    store: Store, runner: Runner
) -> None:
    """Random creates, leases, ends, cancels and retries over a few sessions:
    after each, no queued turn is flagged without an earlier live turn of its
    session; at the end every live turn runs to its end (none is left
    waiting for ever)."""
    rng = random.Random(18)
    sessions: list[str] = []
    made: list[Job] = []
    held: dict[str, object] = {}  # job id -> its lease

    for step in range(160):
        op = rng.random()
        if op < 0.35 or not made:
            sid = rng.choice(sessions) if sessions and rng.random() < 0.85 else None
            job, _ = await store.jobs.create(JobCreate(prompt=f"p{step}", session_id=sid))
            if sid is None:
                sessions.append(job.session_id)
            made.append(job)
        elif op < 0.6:
            for lease in await store.jobs.lease(runner, rng.randint(1, 3), ttl=60):
                held[lease.job.id] = lease
        elif op < 0.8 and held:
            job_id = rng.choice(sorted(held))
            lease = held.pop(job_id)
            status = rng.choice(["done", "failed"])
            await store.jobs.complete(claims(lease, runner), Outcome(status=status))  # type: ignore[arg-type]
        else:
            job = rng.choice(made)
            state = (await store.jobs.get(job.id)).state
            if state.value in LIVE:
                await store.jobs.cancel(job.id)
                held.pop(job.id, None)
            elif state in (JobState.CANCELLED, JobState.FAILED):
                await store.jobs.retry(job.id)
        assert await _broken(store) == [], f"step {step}"

    # Drain: every live turn is leased in its turn and ends.
    for _ in range(len(made) + 1):
        for lease in await store.jobs.lease(runner, 10, ttl=60):
            held[lease.job.id] = lease
        for job_id in sorted(held):
            await store.jobs.complete(claims(held.pop(job_id), runner), Outcome(status="done"))
        if not await store.jobs.list(states=[JobState.QUEUED]):
            break
    left = await store.jobs.list(states=[JobState.QUEUED, *ACTIVE])
    assert left == [], [(j.id, j.session_id, j.turn, j.state) for j in left]


async def test_free_heads_frees_a_first_turn_left_flagged(store: Store, runner: Runner) -> None:
    """What a freeing that skipped a locked row leaves (PostgreSQL), made
    here by hand: a session's first live turn flagged. The
    watchdog's ``free_heads`` finds and frees it; it leaves alone a flagged
    turn that does wait behind another."""
    first, _ = await store.jobs.create(JobCreate(prompt="1"))
    second, _ = await store.jobs.create(JobCreate(prompt="2", session_id=first.session_id))
    other, _ = await store.jobs.create(JobCreate(prompt="other"))

    def flag(tx: object) -> None:
        conn = tx.conn  # type: ignore[attr-defined]
        conn.execute(sa.update(jobs).where(jobs.c.id == other.id).values(behind=True))

    await store.db.write(flag)
    leased = await store.jobs.lease(runner, 10, ttl=30)
    assert [lease.job.id for lease in leased] == [first.id]  # `other` is walked past

    assert await store.jobs.free_heads() == [(other.id, other.session_id, 1)]
    assert await _flags(store, other.id, second.id) == [False, True]
    assert await store.jobs.free_heads() == []
    assert [lease.job.id for lease in await store.jobs.lease(runner, 10, ttl=30)] == [other.id]


async def test_an_ending_turn_does_not_wait_for_a_locked_next_turn(
    store: Store, runner: Runner
) -> None:
    """PostgreSQL: freeing the next turn skips its row when another
    transaction holds it (a cancel of that turn holds its row and then waits
    for the session's, which the ending turn holds: waiting would deadlock).
    The turn stays flagged until ``free_heads``. On SQLite (one writer) the
    same steps free it at once."""
    first, _ = await store.jobs.create(JobCreate(prompt="1"))
    second, _ = await store.jobs.create(JobCreate(prompt="2", session_id=first.session_id))
    [lease] = await store.jobs.lease(runner, 10, ttl=30)
    if store.db.is_sqlite:
        await store.jobs.complete(claims(lease, runner), Outcome(status="done"))
        assert await _flags(store, second.id) == [False]
        return

    async with row_held(store, second.id):
        ended = store.jobs.complete(claims(lease, runner), Outcome(status="done"))
        await asyncio.wait_for(ended, timeout=10)
    assert await _flags(store, second.id) == [True]
    assert await store.jobs.lease(runner, 10, ttl=30) == []
    assert await store.jobs.free_heads() == [(second.id, second.session_id, 2)]
    assert [lease.job.id for lease in await store.jobs.lease(runner, 10, ttl=30)] == [second.id]


async def test_concurrent_turns_never_deadlock_and_all_run(store: Store, runner: Runner) -> None:
    """Creates, leases, ends and cancels of one session's turns at once (on
    PostgreSQL, each in its own transaction and connection): none fails
    (no deadlock between an end freeing the next turn and a cancel of it),
    and once they stop, with the watchdog's ``free_heads`` for what a free
    skipped, every live turn runs in its turn. With ``FOR UPDATE`` instead
    of ``SKIP LOCKED`` in the free, PostgreSQL reported a deadlock in each
    of 6 runs (checked 2026-12-07)."""
    first, _ = await store.jobs.create(JobCreate(prompt="0"))
    sid = first.session_id
    stop = asyncio.Event()
    created: list[str] = [first.id]

    async def create() -> None:
        for i in range(80):
            job, _ = await store.jobs.create(JobCreate(prompt=f"{i}", session_id=sid))
            created.append(job.id)
        stop.set()

    async def work() -> None:
        while not stop.is_set():
            for lease in await store.jobs.lease(runner, 2, ttl=60):
                # Cancelled meanwhile (the canceller read it queued): refused.
                with contextlib.suppress(JobNotActive):
                    await store.jobs.complete(claims(lease, runner), Outcome(status="done"))
            await asyncio.sleep(0)

    async def cancel(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            job_id = rng.choice(created)
            if (await store.jobs.get(job_id)).state is JobState.QUEUED:
                # Ended meanwhile: refused as a transition, never a deadlock.
                with contextlib.suppress(InvalidTransition):
                    await store.jobs.cancel(job_id)
            await asyncio.sleep(0)

    together = asyncio.gather(create(), work(), work(), cancel(1), cancel(2))
    await asyncio.wait_for(together, timeout=60)
    await store.jobs.free_heads()
    assert await _broken(store) == []
    for _ in range(len(created) + 1):
        leases = await store.jobs.lease(runner, 4, ttl=60)
        if not leases:
            break
        for lease in leases:
            await store.jobs.complete(claims(lease, runner), Outcome(status="done"))
    left = await store.jobs.list(states=[JobState.QUEUED, *ACTIVE])
    assert left == [], [(j.turn, j.state) for j in left]


async def test_a_turn_s_statements_read_its_session_only_when_the_statistics_are_old(
    store: Store,
) -> None:
    """What a create and an end run for the flag (the turn before, the next
    live turn, the free) reach one session's turns through its index, not
    the table, also when a session's turns grew after PostgreSQL's last
    ANALYZE (3,000 finished jobs analyzed, then 500 turns of one session).
    The turn before a new one was first looked up with its state in the
    query: PostgreSQL then walked every queued job by the lease's index."""
    at = datetime.now(UTC) - timedelta(days=1)
    old = [uuid.uuid4().hex for _ in range(3000)]
    sid = uuid.uuid4().hex
    turns_ = [
        job_row(sid, at, turn=t, state="running" if t == 1 else "queued", behind=t > 1)
        for t in range(1, 501)
    ]

    def seed(tx: Any) -> None:
        tx.conn.execute(sa.insert(sessions), [session_row(s, at) for s in old])
        tx.conn.execute(sa.insert(jobs), [job_row(s, at) for s in old])
        if tx.conn.dialect.name == "postgresql":
            tx.conn.execute(sa.text("ANALYZE jobs"))
        tx.conn.execute(sa.insert(sessions), [session_row(sid, at, turns=500)])
        tx.conn.execute(sa.insert(jobs), turns_)

    await store.db.write(seed)
    by_id = "sqlite_autoindex_jobs_1" if store.db.is_sqlite else "pk_jobs"
    cases = [
        (turns._TURN_STATE, {"s_id": sid, "s_turn": 250}, "ix_jobs_session_id_turn"),
        (turns._NEXT_LIVE, {"s_id": sid, "s_turn": 1}, "ix_jobs_session_id_turn"),
        (turns._FREE, {"f_id": turns_[1]["id"]}, by_id),
    ]
    for stmt, params, index in cases:
        text = "\n".join(await store.db.read(lambda c: stmt.explain(c, params)))  # noqa: B023
        assert index in text, text
        assert "Seq Scan" not in text and "SCAN jobs" not in text, text
        assert "Sort" not in text and "TEMP B-TREE" not in text, text
