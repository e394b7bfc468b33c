"""Concurrency caps and waiting reasons, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.models import JobCreate, Outcome
from corral.store import Caps, RetryPolicy, Store
from corral.testing import worker_claims


@pytest.fixture
async def capped(db_url: str) -> AsyncIterator[Store]:
    st = await Store.open(
        db_url,
        caps=Caps(providers={"a": 1}, total=3),
        policy=RetryPolicy(backoff_base=60, backoff_max=60, default_max_attempts=2),
    )
    try:
        yield st
    finally:
        await st.close()


async def test_provider_and_global_caps_queue_the_rest(capped: Store) -> None:
    st = capped
    runner = await st.runners.register(
        name="r", key_id="k", hostname=None, providers=["a", "b"], labels=[], slots=10
    )
    a = [(await st.jobs.create(JobCreate(prompt="x", provider="a")))[0] for _ in range(3)]
    b = [(await st.jobs.create(JobCreate(prompt="x", provider="b")))[0] for _ in range(3)]
    leased = await st.jobs.lease(runner, 10, ttl=30)
    assert sorted(lease.job.provider for lease in leased) == ["a", "b", "b"]  # a: 1, all: 3
    assert (await st.jobs.waiting(await st.jobs.get(a[1].id))) == "provider cap: 1/1 a jobs active"
    assert (await st.jobs.waiting(await st.jobs.get(b[2].id))) == "global cap: 3/3 jobs active"
    assert await st.jobs.lease(runner, 10, ttl=30) == []
    first_a = next(lease for lease in leased if lease.job.provider == "a")
    await st.jobs.complete(worker_claims(first_a, runner), Outcome(status="done"))
    (next_one,) = await st.jobs.lease(runner, 10, ttl=30)
    assert next_one.job.id == a[1].id  # the freed slot goes to the oldest eligible job


async def test_waiting_reasons(capped: Store) -> None:
    st = capped
    lonely, _ = await st.jobs.create(JobCreate(prompt="x", provider="nobody"))
    assert await st.jobs.waiting(lonely) == "no active runner serves provider 'nobody'"
    runner = await st.runners.register(
        name="r", key_id="k", hostname=None, providers=["b"], labels=[], slots=1
    )
    first, _ = await st.jobs.create(JobCreate(prompt="x", provider="b"))
    second, _ = await st.jobs.create(
        JobCreate(prompt="y", provider="b", session_id=first.session_id)
    )
    third, _ = await st.jobs.create(JobCreate(prompt="z", provider="b"))
    (lease,) = await st.jobs.lease(runner, 1, ttl=30)
    assert await st.jobs.waiting(await st.jobs.get(second.id)) == (
        "turn lock: turn 1 of its session is assigned"
    )
    assert await st.jobs.waiting(await st.jobs.get(third.id)) == "waiting for a free runner slot"
    retried, _ = await st.jobs.complete(worker_claims(lease, runner), Outcome(status="failed"))
    assert (await st.jobs.waiting(retried) or "").startswith("retry backoff until ")
    await st.settings.set("paused", "true")
    assert await st.jobs.waiting(await st.jobs.get(third.id)) == (
        "paused: the kill switch is on (corral resume)"
    )
    assert await st.jobs.waiting(await st.jobs.cancel(third.id)) is None
