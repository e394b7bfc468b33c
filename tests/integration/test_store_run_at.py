"""Scheduled jobs (``run_at``), on SQLite and PostgreSQL: queued at once,
leased no earlier than their time; retries still back off. Then the
``later`` flag that makes a lease walk past them (store/jobs/later.py). The
store's clock is stepped, not waited for."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from corral.jobs import JobState
from corral.models import JobCreate, Outcome, Runner
from corral.store import RetryPolicy, Store
from corral.store.jobs import later
from corral.store.schema import jobs, sessions
from corral.testing import job_row, session_row, worker_claims
from tests.integration._rows import flags, row_held

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TICK = later.PROMOTE_EVERY


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("corral.store.jobs.now_utc", clock)
    return clock


@pytest.fixture
async def st(db_url: str) -> AsyncIterator[Store]:
    policy = RetryPolicy(backoff_base=60, backoff_max=60, default_max_attempts=2)
    store = await Store.open(db_url, policy=policy)
    try:
        yield store
    finally:
        await store.close()


async def _runner(st: Store) -> Runner:
    return await st.runners.register(
        name="r", key_id="k", hostname=None, providers=["shell"], labels=[], slots=4
    )


@pytest.fixture
async def runner(st: Store) -> Runner:
    return await _runner(st)


async def test_a_scheduled_job_is_queued_but_not_leased_before_its_time(
    st: Store, clock: Clock
) -> None:
    runner = await _runner(st)
    at = T0 + timedelta(minutes=10)
    job, _ = await st.jobs.create(JobCreate(command="true", run_at=at))
    assert job.state is JobState.QUEUED
    assert (job.run_at, job.available_at) == (at, at)
    assert await st.jobs.waiting(job) == "scheduled: runs at 2030-01-01T12:10:00+00:00"
    assert await st.jobs.lease(runner, 4, ttl=30) == []

    clock.now = at - timedelta(seconds=1)
    assert await st.jobs.lease(runner, 4, ttl=30) == []
    clock.now = at
    (lease,) = await st.jobs.lease(runner, 4, ttl=30)
    assert lease.job.id == job.id
    assert (await st.jobs.get(job.id)).run_at == at


async def test_a_run_at_in_the_past_runs_now(st: Store, clock: Clock) -> None:
    runner = await _runner(st)
    job, _ = await st.jobs.create(JobCreate(command="true", run_at=T0 - timedelta(days=1)))
    assert job.available_at == T0
    assert [lease.job.id for lease in await st.jobs.lease(runner, 4, ttl=30)] == [job.id]


async def test_a_later_job_does_not_hold_back_an_earlier_one(st: Store, clock: Clock) -> None:
    runner = await _runner(st)
    later, _ = await st.jobs.create(
        JobCreate(command="true", priority=0, run_at=T0 + timedelta(hours=1))
    )
    now, _ = await st.jobs.create(JobCreate(command="true", priority=5))
    assert [lease.job.id for lease in await st.jobs.lease(runner, 4, ttl=30)] == [now.id]
    assert (await st.jobs.get(later.id)).state is JobState.QUEUED


async def test_retries_of_a_scheduled_job_still_back_off(st: Store, clock: Clock) -> None:
    runner = await _runner(st)
    at = T0 + timedelta(minutes=1)
    job, _ = await st.jobs.create(JobCreate(command="false", run_at=at))
    clock.now = at
    (lease,) = await st.jobs.lease(runner, 1, ttl=30)
    retried, _ = await st.jobs.complete(worker_claims(lease, runner), Outcome(status="failed"))
    assert retried.state is JobState.QUEUED and retried.attempt == 2
    backoff = retried.available_at
    assert at < backoff <= at + timedelta(seconds=60)  # jittered
    waiting = await st.jobs.waiting(retried)
    assert waiting == f"retry backoff until {backoff.isoformat(timespec='seconds')}"
    assert await st.jobs.lease(runner, 1, ttl=30) == []
    clock.now = backoff
    assert [lease.job.id for lease in await st.jobs.lease(runner, 1, ttl=30)] == [job.id]


async def test_a_cancelled_scheduled_job_retried_keeps_its_time(st: Store, clock: Clock) -> None:
    runner = await _runner(st)
    at = T0 + timedelta(hours=2)
    job, _ = await st.jobs.create(JobCreate(command="true", run_at=at))
    await st.jobs.cancel(job.id)
    clock.now = T0 + timedelta(hours=1)
    again = await st.jobs.retry(job.id)
    assert again.state is JobState.QUEUED and again.available_at == at
    assert await st.jobs.lease(runner, 1, ttl=30) == []
    assert await st.jobs.waiting(again) == "scheduled: runs at 2030-01-01T14:00:00+00:00"


# --- the later flag -------------------------------------------------------------


async def _flags(st: Store, *ids: str) -> list[bool]:
    return await flags(st, "later", *ids)


async def _leased(st: Store, runner: Runner) -> list[str]:
    return [lease.job.id for lease in await st.jobs.lease(runner, 8, ttl=30)]


async def test_a_job_is_flagged_while_its_time_is_ahead(
    st: Store, runner: Runner, clock: Clock
) -> None:
    soon, _ = await st.jobs.create(JobCreate(command="true", run_at=T0 + timedelta(minutes=1)))
    past, _ = await st.jobs.create(JobCreate(command="true", run_at=T0 - timedelta(minutes=1)))
    now, _ = await st.jobs.create(JobCreate(command="true"))
    assert await _flags(st, soon.id, past.id, now.id) == [True, False, False]
    assert sorted(await _leased(st, runner)) == sorted([past.id, now.id])

    clock.now = T0 + timedelta(minutes=1)  # its time: the next lease clears it and takes it
    assert await _leased(st, runner) == [soon.id]
    assert await _flags(st, soon.id) == [False]


async def test_a_retry_backing_off_is_flagged_and_a_requeue_now_is_not(
    st: Store, runner: Runner, clock: Clock
) -> None:
    job, _ = await st.jobs.create(JobCreate(command="false"))
    (lease,) = await st.jobs.lease(runner, 8, ttl=30)
    retried, _ = await st.jobs.complete(worker_claims(lease, runner), Outcome(status="failed"))
    assert retried.state is JobState.QUEUED and retried.available_at > T0
    assert await _flags(st, job.id) == [True]
    assert await _leased(st, runner) == []

    clock.now = retried.available_at
    (lease,) = await st.jobs.lease(runner, 8, ttl=30)
    # Lost by its runner: queued again at once, unflagged.
    (lost,) = await st.jobs.unlease([job.id], runner)
    assert lost.state is JobState.QUEUED and lost.available_at == clock.now
    assert await _flags(st, job.id) == [False]


async def test_a_cancelled_scheduled_job_retried_is_flagged_again(
    st: Store, runner: Runner, clock: Clock
) -> None:
    at = T0 + timedelta(hours=2)
    job, _ = await st.jobs.create(JobCreate(command="true", run_at=at))
    await st.jobs.cancel(job.id)
    clock.now = at + timedelta(hours=1)  # the flag of the cancelled job is cleared at its time
    assert await _leased(st, runner) == []
    assert await _flags(st, job.id) == [False]

    clock.now = T0  # and retried before it, by a clock set back: flagged again
    await st.jobs.retry(job.id)
    assert await _flags(st, job.id) == [True]
    assert await _leased(st, runner) == []
    clock.now = at
    assert await _leased(st, runner) == [job.id]


async def test_the_flag_is_cleared_at_most_once_per_tick(
    st: Store, runner: Runner, clock: Clock
) -> None:
    """The lease takes only unflagged jobs: a due job stays queued until a
    lease clears its flag, which a store does at most once per PROMOTE_EVERY
    (by its clock); a clock set back clears at once."""
    at = T0 + timedelta(seconds=1)
    job, _ = await st.jobs.create(JobCreate(command="true", run_at=at))
    clock.now = at - TICK / 10
    assert await _leased(st, runner) == []  # clears (nothing due) and takes nothing
    clock.now = at  # due, but within the tick of that lease: still flagged
    assert await _leased(st, runner) == []
    assert await _flags(st, job.id) == [True]
    clock.now = at - TICK / 10 + TICK
    assert await _leased(st, runner) == [job.id]

    back, _ = await st.jobs.create(JobCreate(command="true", run_at=clock.now + TICK / 2))
    clock.now += TICK  # due, a tick after the last clearing
    assert await _leased(st, runner) == [back.id]

    clock.now -= timedelta(hours=1)  # set back: the next lease clears at once, nothing due
    assert await _leased(st, runner) == []
    third, _ = await st.jobs.create(JobCreate(command="true", run_at=clock.now + TICK / 2))
    clock.now += TICK  # a tick after that clearing (not an hour before the last one)
    assert await _leased(st, runner) == [third.id]


async def test_a_clearing_does_not_wait_for_a_row_another_transaction_holds(
    st: Store, runner: Runner, clock: Clock
) -> None:
    """PostgreSQL: a job row held by another transaction (a cancel, a lease)
    is skipped, not waited for; the next clearing takes it."""
    at = T0 + timedelta(minutes=1)
    held, _ = await st.jobs.create(JobCreate(command="true", run_at=at))
    free, _ = await st.jobs.create(JobCreate(command="true", run_at=at))
    clock.now = at
    if st.db.is_sqlite:  # one write transaction at a time: nothing else holds a row
        assert sorted(await _leased(st, runner)) == sorted([held.id, free.id])
        return
    async with row_held(st, held.id):
        leased = await asyncio.wait_for(_leased(st, runner), timeout=10)
        assert leased == [free.id]
    assert await _flags(st, held.id) == [True]
    clock.now += TICK
    assert await _leased(st, runner) == [held.id]


async def test_a_clearing_reads_the_flagged_jobs_only(st: Store) -> None:
    """The clearing runs in a lease up to four times a second: by the partial
    index of the flagged jobs, never by a walk of the table."""
    at = T0
    sids = [uuid.uuid4().hex for _ in range(2000)]
    rows = [
        job_row(
            sid,
            at,
            state="queued",
            later=i < 5,
            available_at=at + timedelta(hours=1) if i < 5 else at,
        )
        for i, sid in enumerate(sids)
    ]

    def seed(tx: Any) -> None:
        tx.conn.execute(sa.insert(sessions), [session_row(sid, at) for sid in sids])
        tx.conn.execute(sa.insert(jobs), rows)
        if not st.db.is_sqlite:
            tx.conn.execute(sa.text("ANALYZE jobs"))

    await st.db.write(seed)
    promote = later._PROMOTE if st.db.is_sqlite else later._PROMOTE_SKIP_LOCKED
    params = {"now": at + timedelta(hours=2)}
    text = "\n".join(await st.db.read(lambda c: promote.explain(c, params)))
    assert "ix_jobs_later_available_at" in text, text
    assert "Seq Scan" not in text and "SCAN jobs" not in text, text
    cleared = await st.db.write(lambda tx: later.promote(tx, skip_locked=False, now=at))
    assert cleared == 0
    cleared = await st.db.write(
        lambda tx: later.promote(tx, skip_locked=False, now=at + timedelta(hours=1))
    )
    assert cleared == 5
