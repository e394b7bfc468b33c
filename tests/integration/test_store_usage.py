"""GET /usage's rollup against the direct aggregation over ``jobs`` (the way
it was computed before the rollup), on SQLite and PostgreSQL: random jobs
through the real lifecycle (completions, failures, cancels, expiry, retries,
a cost changed afterwards), random ranges on and off the hour, groupings and
filters; before and after the rollup is folded; and the migration's fill of
the rollup from the jobs already there."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from corral.models import JobCreate, Outcome, Runner
from corral.store import Store, migrate
from corral.store.jobs import dispatch, lifecycle, usage
from corral.store.jobs.usage import GROUPS
from corral.store.schema import jobs, sessions, usage_hour_labels, usage_hours
from corral.testing import worker_claims

# Ahead of the real clock: the jobs are created (available) now.
T0 = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
SPAN = timedelta(days=3)
PROVIDERS = ("gpu", "cpu", "api")
MODELS = (None, "m1", "m2")
LABELS: tuple[list[str], ...] = ([], ["a"], ["a", "b"], ["b", "c"], ["c"], ["a", "a"], ["é"])
SOURCES = ("api", "cli")


def _at(rng: random.Random) -> datetime:
    return T0 + timedelta(seconds=rng.uniform(0, SPAN.total_seconds()))


async def _lease_all(st: Store, runner: Runner, now: datetime) -> list[dispatch.Lease]:
    caps = st.jobs.caps
    return await st.db.write(
        lambda tx: dispatch.lease(
            tx, runner, 500, 30, caps=caps, skip_locked=not st.db.is_sqlite, now=now
        )
    )


def _outcome(rng: random.Random) -> Outcome:
    tokens = {"input_tokens": rng.randint(1, 9000), "output_tokens": rng.randint(1, 900)}
    if rng.random() < 0.3:
        tokens["model"] = rng.choice(["u1", "m1"])
    cost = rng.choice([None, round(rng.uniform(0, 2), 4)])
    if rng.random() < 0.2:
        return Outcome(status="failed", error="no", cost=cost, usage=tokens)
    return Outcome(status="done", cost=cost, usage=tokens if rng.random() < 0.8 else None)


async def _finish(
    st: Store, runner: Runner, leases: Sequence[dispatch.Lease], rng: random.Random
) -> None:
    """Each leased job completes, fails, is cancelled or is left to expire."""
    policy = st.jobs.policy
    latest = T0
    for lease in leases:
        when = _at(rng)
        latest = max(latest, when)
        fate = rng.random()
        if fate < 0.1:
            await st.db.write(
                lambda tx, lease=lease, when=when: lifecycle.cancel(
                    tx, lease.job.id, by="test", now=when
                )
            )
        elif fate < 0.2:
            continue  # expires below
        else:
            started = when - timedelta(seconds=rng.uniform(0, 4000))
            outcome = _outcome(rng)
            await st.db.write(
                lambda tx, lease=lease, when=when, started=started, out=outcome: lifecycle.complete(
                    tx,
                    worker_claims(lease, runner),
                    out,
                    [],
                    policy=policy,
                    now=when,
                    started_at=started,
                )
            )
    await st.db.write(
        lambda tx: lifecycle.expire(
            tx, max_infra_retries=0, skip_locked=not st.db.is_sqlite, now=latest + SPAN
        )
    )


async def _jobs(st: Store, runner: Runner, rng: random.Random, n: int) -> None:
    for _ in range(n):
        spec = JobCreate(
            prompt="x",
            provider=rng.choice(PROVIDERS),
            model=rng.choice(MODELS),
            labels=rng.choice(LABELS),
            source=rng.choice(SOURCES),
            max_attempts=rng.choice([1, 1, 2]),
        )
        job, _ = await st.jobs.create(spec)
        if rng.random() < 0.1:  # cancelled while queued: never started
            at = _at(rng)
            await st.db.write(
                lambda tx, job=job, when=at: lifecycle.cancel(tx, job.id, by="test", now=when)
            )
    await _finish(st, runner, await _lease_all(st, runner, T0), rng)


async def _retry_some(st: Store, runner: Runner, rng: random.Random) -> None:
    ended = await st.db.read(
        lambda c: (
            c.execute(
                sa.select(jobs.c.id)
                .where(jobs.c.finished_at.is_not(None), jobs.c.state != "done")
                .order_by(jobs.c.id)
            )
            .scalars()
            .all()
        )
    )
    for job_id in rng.sample(list(ended), len(ended) // 3):
        await st.db.write(lambda tx, job_id=job_id: lifecycle.retry(tx, job_id, now=T0))
    # Failed attempts with attempts left came back too; all run again.
    await _finish(st, runner, await _lease_all(st, runner, T0), rng)
    # A finished job's figures changed afterwards, outside the lifecycle.
    done = await st.db.read(
        lambda c: (
            c.execute(sa.select(jobs.c.id).where(jobs.c.state == "done").order_by(jobs.c.id))
            .scalars()
            .all()
        )
    )
    for job_id in rng.sample(list(done), 3):
        await st.db.write(
            lambda tx, job_id=job_id: tx.conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id)
                .values(cost=1.5, input_tokens=jobs.c.input_tokens + 1, labels=["b"])
            )
        )


def _queries(rng: random.Random, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        start = T0 + timedelta(hours=rng.randint(-2, 70))
        if rng.random() < 0.5:
            start += timedelta(seconds=rng.uniform(1, 3599))
        length = rng.choice([timedelta(minutes=20), timedelta(hours=1), timedelta(hours=2)])
        length = length if rng.random() < 0.3 else timedelta(hours=rng.randint(1, 80))
        if rng.random() < 0.5:
            length += timedelta(seconds=rng.uniform(1, 3599))
        groups = list(rng.sample(GROUPS, rng.randint(0, 3)))
        out.append(
            {
                "start": start,
                "end": start + length,
                "group_by": groups,
                "provider": rng.choice([None, None, *PROVIDERS]),
                "model": rng.choice([None, None, None, "m1", "u1"]),
                # Not "é": the direct query's filter never matched a label
                # outside ASCII on PostgreSQL (test_label_filter_outside_ascii).
                "label": rng.choice([None, None, "a", "b", "c"]),
                "source": rng.choice([None, None, None, "cli"]),
            }
        )
    # The whole span, on the hour and not, by everything.
    for groups in itertools.permutations(GROUPS, 2):
        for off in (timedelta(0), timedelta(minutes=7)):
            out.append(
                {
                    "start": T0 - timedelta(hours=1) + off,
                    "end": T0 + SPAN * 2 + off,
                    "group_by": list(groups),
                    "provider": None,
                    "model": None,
                    "label": None,
                    "source": None,
                }
            )
    return out


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]], query: dict[str, Any]) -> None:
    assert [r["key"] for r in got] == [r["key"] for r in want], repr(query)
    for g, w in zip(got, want, strict=True):
        exact = ("jobs", "unpriced", "input_tokens", "output_tokens")
        assert {k: g[k] for k in exact} == {k: w[k] for k in exact}, (query, g, w)
        assert g["cost"] == pytest.approx(w["cost"], abs=1e-5), (query, g, w)
        assert g["run_time"] == pytest.approx(w["run_time"], abs=1e-2), (query, g, w)


async def _check(st: Store, queries: list[dict[str, Any]]) -> int:
    dialect = st.db.dialect
    counted = 0
    for q in queries:
        got = await st.db.read(lambda c, q=q: usage.usage(c, dialect=dialect, **q))
        want = await st.db.read(lambda c, q=q: usage.direct(c, dialect=dialect, **q))
        _same(got, want, q)
        counted += sum(r["jobs"] for r in want)
    return counted


async def test_rollup_matches_the_jobs(store: Store) -> None:
    rng = random.Random(18)
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=list(PROVIDERS), labels=[], slots=1000
    )
    await _jobs(store, runner, rng, 80)
    queries = _queries(rng, 150)
    assert await _check(store, queries) > 0
    await _retry_some(store, runner, rng)
    await _jobs(store, runner, rng, 40)
    assert await _check(store, queries) > 0  # PostgreSQL: unfolded, a row per change
    fresh = await store.db.read(
        lambda c: c.execute(sa.select(sa.func.count()).where(usage_hours.c.fresh == 1)).scalar()
    )
    assert fresh == 0 if store.db.is_sqlite else fresh > 0
    await store.jobs.compact_counts()
    assert not await store.db.read(usage.unfolded)
    assert await _check(store, queries) > 0
    await store.jobs.compact_counts()  # nothing to fold: nothing changes
    assert await _check(store, queries) > 0


async def test_label_filter_outside_ascii(store: Store) -> None:
    """The label filter keeps the jobs carrying the label. The direct query
    looked for the label's JSON text (``"\\u00e9"``) in the labels' text, which
    PostgreSQL's JSONB keeps as ``"é"``: no job was ever found there."""
    runner = await store.runners.register(
        name="r", key_id="k", hostname=None, providers=["gpu"], labels=[], slots=10
    )
    await store.jobs.create(JobCreate(prompt="x", provider="gpu", labels=["é", "a"]))
    await store.jobs.create(JobCreate(prompt="x", provider="gpu", labels=["a"]))
    (lease, other) = await _lease_all(store, runner, T0)
    for one in (lease, other):
        await store.db.write(
            lambda tx, one=one: lifecycle.complete(
                tx,
                worker_claims(one, runner),
                Outcome(status="done", cost=0.5),
                [],
                policy=store.jobs.policy,
                now=T0 + timedelta(minutes=30),
            )
        )
    span = {"start": T0 - timedelta(minutes=10), "end": T0 + timedelta(hours=3)}
    for start in (span["start"], T0):  # an edge from the jobs; all from the rollup
        (total,) = await store.jobs.usage(group_by=[], label="é", start=start, end=span["end"])
        assert total["jobs"] == 1
        rows = await store.jobs.usage(group_by=["label"], label="é", start=start, end=span["end"])
        assert [(r["key"]["label"], r["jobs"]) for r in rows] in (
            [("a", 1), ("é", 1)],
            [("é", 1), ("a", 1)],  # the database's collation orders them
        )


def _row(rng: random.Random, sid: str, i: int) -> dict[str, Any]:
    at = T0 + timedelta(seconds=rng.uniform(0, SPAN.total_seconds()))
    finished = rng.random() < 0.8
    cost = rng.choice([None, rng.uniform(0, 3)])
    return {
        "id": uuid.uuid4().hex,
        "session_id": sid,
        "turn": 1,
        "state": "done" if finished else "queued",
        "provider": rng.choice(PROVIDERS),
        "model": rng.choice(MODELS),
        "command": "x",
        "priority": 2,
        "attempt": 1,
        "max_attempts": 1,
        "labels": rng.choice(LABELS),
        "source": rng.choice(SOURCES),
        "epoch": 1,
        "created_at": at,
        "available_at": at,
        "started_at": at - timedelta(seconds=rng.uniform(0, 900)) if rng.random() < 0.9 else None,
        "finished_at": at if finished else None,
        "updated_at": at,
        "cost": cost,
        "input_tokens": rng.choice([None, rng.randint(0, 10**6)]),
        "output_tokens": rng.choice([None, rng.randint(0, 10**5)]),
        "usage": rng.choice([None, {"model": "u1"}, {"input_tokens": 3}]),
    }


async def test_migration_fills_the_rollup(empty_db_url: str) -> None:
    """Jobs stored before the rollup existed: the upgrade sums them once."""
    rng = random.Random(23)
    store = Store(empty_db_url)
    try:
        await migrate.upgrade(store.db, "0022")
        sid = uuid.uuid4().hex
        session = {"id": sid, "created_at": T0, "updated_at": T0, "epoch": 1}
        rows = [_row(rng, sid, i) for i in range(400)]

        def seed(tx: Any) -> None:
            tx.conn.execute(sa.insert(sessions), [{**session, "last_seq": 0, "turns": 1}])
            tx.conn.execute(sa.insert(jobs), rows)

        await store.db.write(seed)
        await store.migrate()
        for table in (usage_hours, usage_hour_labels):  # filled folded
            fresh = await store.db.read(
                lambda c, t=table: c.execute(
                    sa.select(sa.func.count()).where(t.c.fresh != 0)
                ).scalar()
            )
            assert fresh == 0
        queries = _queries(rng, 80)
        assert await _check(store, queries) > 0
        # Rows written straight into the table count too (the insert and
        # delete triggers): more jobs, and some of the first ones gone.
        more = [_row(rng, sid, i) for i in range(100)]
        gone = [r["id"] for r in rows[:50]]

        def change(tx: Any) -> None:
            tx.conn.execute(sa.insert(jobs), more)
            tx.conn.execute(sa.delete(jobs).where(jobs.c.id.in_(gone)))

        await store.db.write(change)
        assert await _check(store, queries) > 0
        await store.jobs.compact_counts()
        assert await _check(store, queries) > 0
    finally:
        await store.close()
