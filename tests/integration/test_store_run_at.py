"""Scheduled jobs (``run_at``), on SQLite and PostgreSQL: queued at once,
leased no earlier than their time; retries still back off. The store's
clock is stepped, not waited for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from corral.jobs import JobState
from corral.models import JobCreate, Outcome, Runner
from corral.store import RetryPolicy, Store
from corral.testing import worker_claims

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


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
