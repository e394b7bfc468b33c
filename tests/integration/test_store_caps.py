"""Concurrency caps and waiting reasons, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from corral.budgets import Budget
from corral.jobs import JobState
from corral.models import Job, JobCreate, Outcome, Runner
from corral.store import Caps, RetryPolicy, Store
from corral.store.jobs import now_utc, rules
from corral.store.jobs.board import Board
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


# Each dispatch rule, and a queued job held back by it alone: waiting() gives
# that rule's reason, and a runner's lease passes the job over. The test walks
# rules.RULES, so a rule added without a scenario here fails.
Scenario = Callable[[Store], Awaitable[tuple[Job, Runner, str]]]


async def _r(st: Store, name: str = "r", slots: int = 10) -> Runner:
    providers = ["b", "capped", "local", "q"]
    return await st.runners.register(
        name=name, key_id="k", hostname=None, providers=providers, labels=[], slots=slots
    )


async def _job(st: Store, provider: str = "b", **fields: Any) -> Job:
    return (await st.jobs.create(JobCreate(prompt="x", provider=provider, **fields)))[0]


async def _kill_switch(st: Store) -> tuple[Job, Runner, str]:
    runner, job = await _r(st), await _job(st)
    await st.settings.set("paused", "true")
    return job, runner, "paused: the kill switch is on (corral resume)"


async def _retry_backoff(st: Store) -> tuple[Job, Runner, str]:
    runner, job = await _r(st), await _job(st)
    (lease,) = await st.jobs.lease(runner, 1, ttl=30)
    await st.jobs.complete(worker_claims(lease, runner), Outcome(status="failed"))
    return job, runner, "retry backoff until "


async def _quota_pause(st: Store) -> tuple[Job, Runner, str]:
    runner, job = await _r(st), await _job(st, "q")
    (lease,) = await st.jobs.lease(runner, 1, ttl=30)
    quota = Outcome(status="failed", failure="quota", error="429")
    await st.jobs.complete(worker_claims(lease, runner), quota)
    return job, runner, "provider 'q' is paused by a quota limit until "


async def _spent(st: Store, cost: float, labels: list[str] | None = None) -> None:
    runner = await _r(st, "spender")
    await st.jobs.create(JobCreate(prompt="x", provider="b", labels=labels or []))
    (lease,) = await st.jobs.lease(runner, 1, ttl=30)
    await st.jobs.complete(worker_claims(lease, runner), Outcome(status="done", cost=cost))


async def _global_budget(st: Store) -> tuple[Job, Runner, str]:
    await _spent(st, 150.0)
    return await _job(st), await _r(st), "paused by budget 'all' (global): $150.00 of $100.00"


async def _label_budget(st: Store) -> tuple[Job, Runner, str]:
    await _spent(st, 2.0, ["team"])
    job = (await st.jobs.create(JobCreate(prompt="x", provider="b", labels=["x", "team"])))[0]
    other = await _job(st)  # no label: not held
    runner = await _r(st)
    assert [lease.job.id for lease in await st.jobs.lease(runner, 10, ttl=30)] == [other.id]
    return job, runner, "label 'team' is paused by budget 'team' (label:team): $2.00 of $1.00"


async def _turn_lock(st: Store) -> tuple[Job, Runner, str]:
    runner, first = await _r(st), await _job(st)
    second = await _job(st, session_id=first.session_id)
    await st.jobs.lease(runner, 10, ttl=30)
    return second, runner, "turn lock: turn 1 of its session is assigned"


async def _provider_cap(st: Store) -> tuple[Job, Runner, str]:
    runner, _, second = await _r(st), await _job(st, "capped"), await _job(st, "capped")
    await st.jobs.lease(runner, 10, ttl=30)
    return second, runner, "provider cap: 1/1 capped jobs active"


async def _repo_cap(st: Store) -> tuple[Job, Runner, str]:
    runner, _, second = await _r(st), await _job(st, repo="/src/a"), await _job(st, repo="/src/a")
    await st.jobs.lease(runner, 10, ttl=30)
    return second, runner, "repo cap: 1/1 jobs active in /src/a"


async def _global_cap(st: Store) -> tuple[Job, Runner, str]:
    runner, jobs = await _r(st), [await _job(st) for _ in range(4)]
    await st.jobs.lease(runner, 10, ttl=30)
    return jobs[-1], runner, "global cap: 3/3 jobs active"


async def _session_affinity(st: Store) -> tuple[Job, Runner, str]:
    a, b, first = await _r(st, "a"), await _r(st, "b"), await _job(st, "local")
    (lease,) = await st.jobs.lease(a, 1, ttl=30)
    await st.jobs.complete(worker_claims(lease, a), Outcome(status="done"))
    turn = await _job(st, "local", session_id=first.session_id)
    return turn, b, "session affinity: waiting for runner 'a'"


async def _served_by_a_runner(st: Store) -> tuple[Job, Runner, str]:
    return await _job(st, "nobody"), await _r(st), "no active runner serves provider 'nobody'"


async def _free_slot(st: Store) -> tuple[Job, Runner, str]:
    runner, _, second = await _r(st, slots=1), await _job(st), await _job(st)
    await st.jobs.lease(runner, 10, ttl=30)
    return second, runner, "waiting for a free runner slot"


SCENARIOS: dict[str, Scenario] = {
    "kill switch": _kill_switch,
    "run_at or retry backoff": _retry_backoff,
    "quota pause": _quota_pause,
    "global budget": _global_budget,
    "label budget": _label_budget,
    "turn lock": _turn_lock,
    "provider cap": _provider_cap,
    "repo cap": _repo_cap,
    "global cap": _global_cap,
    "session affinity": _session_affinity,
    "served by a runner": _served_by_a_runner,
    "free slot": _free_slot,
}


@pytest.fixture
async def ruled(db_url: str) -> AsyncIterator[Store]:
    st = await Store.open(
        db_url,
        caps=Caps(
            providers={"capped": 1},
            total=3,
            repo=1,
            local=frozenset({"local"}),
            budgets=(
                Budget("all", "global", 100.0, "day"),
                Budget("team", "label:team", 1.0, "day"),
            ),
        ),
        policy=RetryPolicy(backoff_base=60, backoff_max=60, default_max_attempts=2),
    )
    try:
        yield st
    finally:
        await st.close()


@pytest.mark.parametrize("rule", [rule.name for rule in rules.RULES])
async def test_each_rule_alone_holds_a_job_back_and_says_so(ruled: Store, rule: str) -> None:
    st = ruled
    job, runner, reason = await SCENARIOS[rule](st)
    job = await st.jobs.get(job.id)
    assert job.state is JobState.QUEUED

    def holding(conn: sa.Connection) -> list[str]:
        board = Board(conn, st.jobs.caps, now_utc())
        return [r.name for r in rules.RULES if r.explain(board, job) is not None]

    # With no runner in view, no slot is free: that rule holds every job.
    assert await st.db.read(holding) == list(dict.fromkeys([rule, "free slot"]))
    assert (await st.jobs.waiting(job) or "").startswith(reason)
    assert job.id not in [lease.job.id for lease in await st.jobs.lease(runner, 10, ttl=30)]
