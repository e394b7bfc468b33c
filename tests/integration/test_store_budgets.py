"""Budgets and usage totals in the store, on SQLite and PostgreSQL, with the
clock injected: each transaction body is given its ``now``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from corral.budgets import Budget
from corral.models import Job, JobCreate, Outcome, Runner
from corral.store import Caps, RetryPolicy, Store
from corral.store.jobs import budgets, dispatch, lifecycle
from corral.store.schema import events, webhook_deliveries
from corral.testing import worker_claims
from corral.webhooks import Endpoint, Rules

# Days ahead of the real clock: the jobs are created (available) now.
T0 = (datetime.now(UTC) + timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)
MIDNIGHT = T0.replace(hour=0) + timedelta(days=1)
DAY0, DAY1 = T0.date().isoformat(), MIDNIGHT.date().isoformat()
BUDGETS = (
    Budget("gpu-day", "provider:gpu", 1.0, "day"),
    Budget("fb-day", "provider:fb", 1.0, "day"),
    Budget("all-warn", "global", 100.0, "month", action="warn"),
)


@pytest.fixture
async def st(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(
        db_url,
        caps=Caps(budgets=BUDGETS),
        policy=RetryPolicy(fallbacks={"fb": "cpu"}),
    )
    store.db.webhooks = Rules(
        endpoints=(
            Endpoint(
                url="http://hooks.example/budget",
                events=frozenset({"budget.warning", "budget.exceeded"}),
            ),
        )
    )
    try:
        yield store
    finally:
        await store.close()


async def _runner(st: Store) -> Runner:
    return await st.runners.register(
        name="r", key_id="k", hostname=None, providers=["gpu", "fb", "cpu"], labels=[], slots=10
    )


async def _lease(st: Store, runner: Runner, now: datetime) -> list[dispatch.Lease]:
    caps = st.jobs.caps
    return await st.db.write(
        lambda tx: dispatch.lease(
            tx, runner, 10, 30, caps=caps, skip_locked=not st.db.is_sqlite, now=now
        )
    )


async def _run(
    st: Store,
    runner: Runner,
    provider: str,
    cost: float,
    now: datetime,
    labels: list[str] | None = None,
) -> Job:
    job, _ = await st.jobs.create(JobCreate(prompt="x", provider=provider, labels=labels or []))
    leases = await _lease(st, runner, now)
    (lease,) = [x for x in leases if x.job.id == job.id]
    outcome = Outcome(status="done", cost=cost)
    policy, caps = st.jobs.policy, st.jobs.caps
    done, _ = await st.db.write(
        lambda tx: lifecycle.complete(
            tx,
            worker_claims(lease, runner),
            outcome,
            [],
            policy=policy,
            budgets=caps.budgets,
            now=now,
        )
    )
    return done


async def _types(st: Store, job: Job) -> list[str]:
    rows = await st.db.read(
        lambda conn: conn.execute(
            sa.select(events.c.type)
            .where(events.c.job_id == job.id, events.c.type.like("budget.%"))
            .order_by(events.c.seq)
        ).all()
    )
    return [r.type for r in rows]


async def test_a_crossed_budget_pauses_its_provider_until_the_period_resets(st: Store) -> None:
    runner = await _runner(st)
    first = await _run(st, runner, "gpu", 0.85, T0)
    assert await _types(st, first) == ["budget.warning"]  # 85 % of $1.00
    second = await _run(st, runner, "gpu", 0.30, T0 + timedelta(minutes=5))
    assert await _types(st, second) == ["budget.exceeded"]
    hooks = await st.db.read(
        lambda conn: conn.execute(
            sa.select(webhook_deliveries.c.event, webhook_deliveries.c.body)
            .where(webhook_deliveries.c.event.like("budget.%"))
            .order_by(webhook_deliveries.c.seq)
        ).all()
    )
    assert [h.event for h in hooks] == ["budget.warning", "budget.exceeded"]
    payload = hooks[1].body["event"]["payload"]
    assert payload["budget"] == "gpu-day" and payload["percent"] == 100
    assert payload["spent"] == pytest.approx(1.15)
    assert payload["paused_until"] == MIDNIGHT.isoformat()

    waiting, _ = await st.jobs.create(JobCreate(prompt="x", provider="gpu"))
    later = T0 + timedelta(hours=1)
    assert await _lease(st, runner, later) == []
    caps = st.jobs.caps
    why = await st.db.read(lambda conn: dispatch.waiting(conn, waiting, caps=caps, now=later))
    assert why == (
        "provider 'gpu' is paused by budget 'gpu-day' (provider:gpu): $1.15 of $1.00 spent "
        f"this day until {MIDNIGHT.isoformat()}"
    )
    status = {b["name"]: b for b in await st.db.read(lambda c: _status(c, st, later))}
    assert status["gpu-day"]["paused_until"] == MIDNIGHT
    assert status["all-warn"]["spent"] == pytest.approx(1.15)
    assert status["all-warn"]["paused_until"] is None

    # A new day: the pause has ended by itself and the job runs.
    (lease,) = await _lease(st, runner, MIDNIGHT + timedelta(seconds=1))
    assert lease.job.id == waiting.id


def _status(conn: sa.Connection, st: Store, now: datetime) -> list[dict[str, object]]:
    from corral.store.jobs import budgets

    return budgets.status(conn, st.jobs.caps.budgets, now)


async def test_a_paused_provider_s_queued_jobs_go_to_its_fallback(st: Store) -> None:
    runner = await _runner(st)
    # Queued before the crossing; leased with it would be "fb" too: submit
    # it after the lease of the expensive one.
    await _run(st, runner, "fb", 2.0, T0)
    moved, _ = await st.jobs.create(JobCreate(prompt="x", provider="fb"))
    assert moved.provider == "cpu"
    assert "fb is paused" in (moved.route_reason or "")


async def test_a_warn_budget_announces_and_holds_nothing(st: Store) -> None:
    runner = await _runner(st)
    big = await _run(st, runner, "cpu", 85.0, T0)
    assert await _types(st, big) == ["budget.warning"]
    bigger = await _run(st, runner, "cpu", 20.0, T0)
    assert await _types(st, bigger) == ["budget.exceeded"]
    assert len(await _lease(st, runner, T0)) == 0  # nothing queued
    job, _ = await st.jobs.create(JobCreate(prompt="x", provider="cpu"))
    assert [x.job.id for x in await _lease(st, runner, T0)] == [job.id]


async def test_a_label_budget_counts_the_jobs_carrying_that_label(st: Store) -> None:
    """Exactly that label: the old sum matched a substring of the labels' JSON
    text, so a job labelled ``a"b`` counted for a budget on ``b``."""
    runner = await _runner(st)
    budget = Budget("b-day", "label:b", 1.0, "day")
    await _run(st, runner, "cpu", 0.5, T0, labels=["b", "x"])
    await _run(st, runner, "cpu", 0.7, T0 + timedelta(minutes=1), labels=['a"b'])
    await _run(st, runner, "cpu", 0.2, T0 + timedelta(minutes=2), labels=["bb"])
    start, end = budget.window(T0)
    got = await st.db.read(lambda conn: budgets.spent(conn, budget, start, end))
    assert got == pytest.approx(0.5)


async def test_a_priced_completion_sums_its_budgets_from_the_rollup(st: Store) -> None:
    """What a budget spent comes from GET /usage's hourly rollup: a priced
    completion does not sum every job of the period inside its write (a
    month of jobs per completion, issue #18)."""
    runner = await _runner(st)
    await _run(st, runner, "gpu", 0.1, T0 - timedelta(hours=3))  # earlier that day
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "cost" in statement.lower() and "sum(" in statement.lower():
            seen.append(" ".join(statement.split()))

    engine = st.db.writer.engine if st.db.is_sqlite else st.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        job = await _run(st, runner, "gpu", 0.85, T0)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert await _types(st, job) == ["budget.warning"]  # 0.95 of $1.00: both counted
    assert seen and all("usage_hours" in q for q in seen), seen


async def test_usage_groups(st: Store) -> None:
    runner, policy = await _runner(st), st.jobs.policy
    specs = [
        ("gpu", ["a"], 0.1, T0),
        ("gpu", ["a", "b"], 0.2, T0 + timedelta(days=1)),
        ("cpu", [], 0.4, T0 + timedelta(days=1)),
    ]
    for provider, labels, cost, when in specs:
        job, _ = await st.jobs.create(JobCreate(prompt="x", provider=provider, labels=labels))
        leases = await _lease(st, runner, when)
        (lease,) = [x for x in leases if x.job.id == job.id]
        outcome = Outcome(
            status="done", cost=cost, usage={"prompt_tokens": 100, "completion_tokens": 10}
        )
        await st.db.write(
            lambda tx, lease=lease, outcome=outcome, when=when: lifecycle.complete(
                tx, worker_claims(lease, runner), outcome, [], policy=policy, now=when
            )
        )
    span = {"start": T0 - timedelta(days=1), "end": T0 + timedelta(days=2)}
    by = await st.jobs.usage(group_by=["provider", "day"], **span)
    assert [(r["key"], r["jobs"], r["cost"]) for r in by] == [
        ({"provider": "cpu", "day": DAY1}, 1, 0.4),
        ({"provider": "gpu", "day": DAY0}, 1, 0.1),
        ({"provider": "gpu", "day": DAY1}, 1, 0.2),
    ]
    assert by[0]["input_tokens"] == 100 and by[0]["output_tokens"] == 10
    labels = await st.jobs.usage(group_by=["label"], **span)
    # A job counts under each of its labels; one without under none (null).
    got = {r["key"]["label"]: (r["jobs"], r["cost"]) for r in labels}
    assert got == {None: (1, 0.4), "a": (2, pytest.approx(0.3)), "b": (1, 0.2)}
    (total,) = await st.jobs.usage(group_by=[], label="a", **span)
    assert total["jobs"] == 2 and total["cost"] == pytest.approx(0.3)
